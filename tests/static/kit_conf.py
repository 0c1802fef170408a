"""A small reader for Asterisk ``.conf`` files and dialplan, for the static kit tests.

Why not pyst2 (PyPI ``pyst2``, ``asterisk.config``)? It was tried (0.5.1, 2019, on
Python 3.11): its parser raises ``ParseError`` on template sections such as
``[6001](consent-phone)`` and ``[consent-phone](!)``, and on ``#include`` lines (no ``=``),
both of which these files use; it keeps ``=>`` as ``=`` with a stray ``>`` style marker;
it ignores ``\\;`` escapes; and it opens files without closing them, which this project's
``filterwarnings = error`` turns into test errors. What is needed here is small: sections
with their template options, ``key = value`` / ``key => value`` items with line numbers,
and a dialplan view (extensions, priorities, labels, applications). That is below.

Asterisk syntax handled: ``;`` comments (``\\;`` is a literal semicolon), ``;-- ... --;``
block comments, ``[name]``, ``[name](!)``, ``[name](tmpl1,tmpl2)``, ``[name](+)``,
``#include``/``#tryinclude`` (recorded, not followed), ``=`` and ``=>``; dialplan
``exten => ext,prio(label),App(args)`` and ``same => n(label),App(args)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Dialplan",
    "Item",
    "Priority",
    "Section",
    "parse_conf",
    "parse_dialplan",
    "split_args",
]


@dataclass
class Item:
    key: str
    value: str
    line: int
    arrow: bool  # "=>" rather than "="


@dataclass
class Section:
    name: str
    options: tuple[str, ...]  # ("!",), ("consent-phone",), ("+",) ...
    line: int
    items: list[Item] = field(default_factory=list)

    def get(self, key: str) -> list[str]:
        return [i.value for i in self.items if i.key == key]

    @property
    def is_template(self) -> bool:
        return "!" in self.options


@dataclass
class ConfFile:
    path: Path
    sections: list[Section]
    includes: list[str]

    def named(self, name: str) -> list[Section]:
        return [s for s in self.sections if s.name == name]


_SECTION = re.compile(r"^\[([^\]]+)\](?:\(([^)]*)\))?$")


def _strip_comment(line: str) -> str:
    out = []
    i = 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] == ";":
            out.append(";")
            i += 2
            continue
        if line[i] == ";":
            break
        out.append(line[i])
        i += 1
    return "".join(out).strip()


def parse_conf(path: Path) -> ConfFile:
    """Parse one file (``#include`` is recorded, not followed)."""
    sections: list[Section] = []
    includes: list[str] = []
    in_block = False
    text = Path(path).read_text(encoding="utf-8")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw
        if in_block:
            if "--;" not in line:
                continue
            line = line.split("--;", 1)[1]
            in_block = False
        if ";--" in line:
            before, after = line.split(";--", 1)
            if "--;" in after:
                line = before + after.split("--;", 1)[1]
            else:
                line, in_block = before, True
        line = _strip_comment(line)
        if not line:
            continue
        if line.startswith("#"):
            directive, _, arg = line.partition(" ")
            if directive in {"#include", "#tryinclude"}:
                includes.append(arg.strip().strip('"'))
                continue
            raise ValueError(f"{path}:{number}: unknown directive {directive}")
        match = _SECTION.match(line)
        if match:
            options = tuple(o.strip() for o in (match.group(2) or "").split(",") if o.strip())
            sections.append(Section(match.group(1).strip(), options, number))
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{number}: not 'key = value': {raw!r}")
        if not sections:  # a fragment #included inside a section, e.g. [globals]
            sections.append(Section("", (), number))
        key, _, value = line.partition("=")
        arrow = value.startswith(">")
        if arrow:
            value = value[1:]
        sections[-1].items.append(Item(key.strip(), value.strip(), number, arrow))
    if in_block:
        raise ValueError(f"{path}: unterminated ;-- block comment")
    return ConfFile(Path(path), sections, includes)


def split_args(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside ``()``, ``[]``, ``{}`` and double quotes."""
    parts, depth, quoted, current = [], 0, False, []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "([{":
            depth += 1
        elif not quoted and ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


@dataclass
class Priority:
    context: str
    exten: str
    number: int
    label: str | None
    app: str
    args: str
    line: int
    path: Path

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line} ({self.context},{self.exten},{self.number})"


_PRIO = re.compile(r"^(?P<prio>n|\d+|hint)(?:\((?P<label>[A-Za-z0-9_-]+)\))?$")
_APP = re.compile(r"^(?P<app>[A-Za-z][A-Za-z0-9_]*)(?:\((?P<args>.*)\))?$", re.S)


@dataclass
class Dialplan:
    """Contexts -> extensions -> ordered priorities, from one or more files."""

    contexts: dict[str, dict[str, list[Priority]]] = field(default_factory=dict)
    files: list[ConfFile] = field(default_factory=list)

    def priorities(self) -> list[Priority]:
        return [p for exts in self.contexts.values() for prios in exts.values() for p in prios]

    def extension(self, context: str, exten: str) -> list[Priority]:
        return self.contexts[context][exten]

    def has_target(self, context: str, exten: str, prio: str) -> bool:
        prios = self.contexts.get(context, {}).get(exten)
        if not prios:
            return False
        if prio.isdigit():
            return any(p.number == int(prio) for p in prios)
        return any(p.label == prio for p in prios)


def parse_dialplan(*paths: Path) -> Dialplan:
    plan = Dialplan()
    for path in paths:
        conf = parse_conf(path)
        plan.files.append(conf)
        for section in conf.sections:
            if section.name in {"general", "globals"}:
                continue
            context = plan.contexts.setdefault(section.name, {})
            last: tuple[str, int] | None = None
            for item in section.items:
                if item.key not in {"exten", "same"}:
                    raise ValueError(f"{path}:{item.line}: unexpected {item.key!r} in dialplan")
                fields = split_args(item.value)
                if item.key == "exten":
                    if len(fields) < 3:
                        raise ValueError(f"{path}:{item.line}: exten needs ext,prio,app")
                    exten, prio_text = fields[0].strip(), fields[1].strip()
                    app_text = ",".join(fields[2:])
                else:
                    if last is None:
                        raise ValueError(f"{path}:{item.line}: 'same' before any 'exten'")
                    exten, prio_text, app_text = last[0], fields[0].strip(), ",".join(fields[1:])
                match = _PRIO.match(prio_text)
                if not match:
                    raise ValueError(f"{path}:{item.line}: bad priority {prio_text!r}")
                if match["prio"] == "n":
                    if last is None or last[0] != exten:
                        raise ValueError(f"{path}:{item.line}: priority n without a previous one")
                    number = last[1] + 1
                else:
                    number = int(match["prio"])
                app_match = _APP.match(app_text.strip())
                if not app_match:
                    raise ValueError(f"{path}:{item.line}: cannot read application {app_text!r}")
                prios = context.setdefault(exten, [])
                if any(p.number == number for p in prios):
                    raise ValueError(f"{path}:{item.line}: duplicate priority {exten},{number}")
                prios.append(
                    Priority(section.name, exten, number, match["label"], app_match["app"],
                             app_match["args"] or "", item.line, Path(path))
                )
                last = (exten, number)
    return plan
