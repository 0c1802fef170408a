"""Prompts for a real organisation: render the catalogue, or import studio recordings.

Both write a prompt directory ``serve`` can use (``CONSENT_IVR_SOUNDS_DIR``)::

    <dir>/manifest.json               id, lang, the exact text, file, sha256, samples
    <dir>/<lang>/consent-ivr/<id>.wav 8 kHz mono 16-bit PCM: what Asterisk plays natively

* :func:`build_prompts` renders the bundled ``catalogue.toml`` with the organisation's name
  and freephone number, synthesised by espeak-ng and resampled by sox (subprocesses).
* :func:`import_prompts` takes ``<src>/<lang>/<id>.wav|.flac|…`` (anything sox reads),
  converts each with sox (a WAV already in the target format is copied byte for byte, no
  sox needed), checks that every prompt a flow plays is there in every language, and
  records the text each recording must say (the catalogue's, or ``--texts``).

``scripts/make_prompts.py`` regenerates the repository's own ``sounds/`` with
:func:`build_prompts` and verifies it with :func:`check_prompt_dir`: one implementation.
That script may run with a bare ``python3`` (no venv), so this module needs only the
standard library and :mod:`agi.ops.resources` at import time; :func:`required_prompt_ids`
imports the flows when called.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import tomllib
import wave
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agi.ops import resources

if TYPE_CHECKING:  # agi.ops.config needs phonenumbers; scripts/make_prompts.py must not
    from agi.ops.config import Settings

__all__ = [
    "AUDIO_SUFFIXES",
    "PROMPT_DIR",
    "SAMPLE_RATE",
    "VOICES",
    "PromptBuildError",
    "build_prompts",
    "check_prompt_dir",
    "import_prompts",
    "load_catalogue",
    "required_prompt_ids",
    "speakable",
    "synthesise",
]

PROMPT_DIR = "consent-ivr"  # the sub-directory of <lang>/ and the STREAM FILE prefix
SAMPLE_RATE = 8000
#: espeak-ng voice per catalogue language; en-gb because the demo organisation is British
VOICES = {"en": "en-gb", "cy": "cy"}
DEFAULT_LANG = "en"
SPEED_WPM = 150
#: what import looks for, in this order of preference when one id has several
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")

_PROMPT_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# Runs of 3+ digits, possibly in space-separated groups: phone numbers. Read digit by digit.
_DIGIT_GROUPS = re.compile(r"\d{3,}(?: \d{3,})*")


class PromptBuildError(Exception):
    """A tool is missing, a recording is missing or unreadable, or a text is unknown."""


def required_prompt_ids(settings: Settings) -> tuple[str, ...]:
    """Every prompt id the flows play: ``serve`` refuses a manifest without one of them."""
    from agi.calls import consent, marketing

    ids = (*consent.PROMPTS, *consent.purpose_prompts(settings.default_purpose),
           *marketing.PROMPTS)
    return tuple(dict.fromkeys(ids))


def speakable(text: str) -> str:
    """The form handed to the synthesiser: phone numbers read digit by digit.

    >>> speakable("call 0800 046 1234 and press 2")
    'call 0 8 0 0, 0 4 6, 1 2 3 4, and press 2'
    """

    def spell(match: re.Match[str]) -> str:
        return ", ".join(" ".join(group) for group in match.group(0).split(" ")) + ","

    return _DIGIT_GROUPS.sub(spell, text).replace(",.", ".").replace(",,", ",")


def _tools(*names: str, what: str) -> dict[str, str]:
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise PromptBuildError(
            f"{what} needs {' and '.join(missing)} on PATH (Debian/Ubuntu: apt-get install "
            f"{' '.join(missing)})"
        )
    return {name: str(path) for name, path in found.items()}


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)  # noqa: S603
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip().splitlines()
        raise PromptBuildError(f"{Path(argv[0]).name} failed: "
                               f"{detail[-1] if detail else exc.returncode}") from None


def synthesise(text: str, lang: str, out: Path) -> None:
    """espeak-ng -> WAV -> sox (-3 dB headroom, no dither: repeatable) -> 8 kHz mono 16-bit."""
    tools = _tools("espeak-ng", "sox", what="synthesising prompts")
    with tempfile.TemporaryDirectory(prefix="prompts-") as tmp:
        raw = Path(tmp) / "espeak.wav"
        _run([tools["espeak-ng"], "-v", VOICES[lang], "-s", str(SPEED_WPM), "-w", str(raw),
              "--", text])
        _convert_with_sox(tools["sox"], raw, out, gain=-3)


def _convert_with_sox(sox: str, src: Path, out: Path, *, gain: int | None = None) -> None:
    effects = ["gain", str(gain)] if gain is not None else []
    _run([sox, "-D", str(src), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
          "-e", "signed-integer", str(out), *effects, "rate", str(SAMPLE_RATE)])


def _is_target_wav(path: Path) -> bool:
    try:
        with wave.open(str(path), "rb") as w:
            return (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
    except (wave.Error, EOFError, OSError):
        return False


def _samples(path: Path) -> int:
    with wave.open(str(path), "rb") as w:
        if w.getnframes() < SAMPLE_RATE // 10:
            raise PromptBuildError(f"{path}: less than 0.1 s of audio")
        return w.getnframes()


def _wav_format_errors(path: Path) -> list[str]:
    """Errors if ``path`` is not an 8 kHz mono 16-bit PCM WAV with at least 0.1 s of audio."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            frames = w.getnframes()
    except (wave.Error, EOFError) as exc:
        return [f"{path}: not a PCM WAV file ({exc})"]
    errors = []
    if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
        errors.append(f"{path}: {rate} Hz, {channels} channel(s), {8 * width}-bit; want 8000/1/16")
    if frames < SAMPLE_RATE // 10:
        errors.append(f"{path}: only {frames} samples of audio")
    return errors


def load_catalogue(path: Path | None = None) -> dict[str, Any]:
    """The prompt catalogue (default: the one shipped with consent-ivr)."""
    path = path or resources.sounds_dir() / "catalogue.toml"
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PromptBuildError(f"cannot read the prompt catalogue {path}: {exc}") from None
    prompts, variables = data.get("prompts"), data.get("vars", {})
    if not isinstance(prompts, dict) or not prompts or not isinstance(variables, dict):
        raise PromptBuildError(f"{path}: want a [vars] table and [prompts.<id>] tables")
    for prompt_id, texts in prompts.items():
        # the id becomes a file name and the STREAM FILE argument
        if not _PROMPT_ID.match(prompt_id):
            raise PromptBuildError(f"{path}: prompt id {prompt_id!r} is not lower-case-kebab")
        if not isinstance(texts, dict) or DEFAULT_LANG not in texts:
            raise PromptBuildError(f"{path}: prompt {prompt_id!r} has no {DEFAULT_LANG} text "
                                   "(the language Asterisk falls back to)")
    return data


def _texts(catalogue: dict[str, Any], variables: dict[str, str]) -> dict[tuple[str, str], str]:
    merged = {k: str(v) for k, v in catalogue.get("vars", {}).items()} | variables
    out: dict[tuple[str, str], str] = {}
    for prompt_id, by_lang in catalogue["prompts"].items():
        for lang, text in by_lang.items():
            try:
                out[(prompt_id, lang)] = str(text).format_map(merged)
            except KeyError as exc:
                raise PromptBuildError(f"prompt {prompt_id} ({lang}) uses {{{exc.args[0]}}}, "
                                       "which has no value") from None
    return out


def _variables(organisation: str, freephone: str, address: str | None) -> dict[str, str]:
    if not organisation.strip():
        raise PromptBuildError("--organisation must name the organisation asking")
    if not re.fullmatch(r"[0-9 +]{6,20}", freephone.strip()):
        raise PromptBuildError(f"--freephone {freephone!r} is not a phone number "
                               "(digits and spaces, e.g. '0800 046 1234')")
    variables = {"organisation": organisation.strip(), "freephone": freephone.strip()}
    if address:
        variables["address"] = address.strip()
    return variables


def _write_manifest(out_dir: Path, variables: dict[str, str],
                    entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    document = {
        "organisation": variables["organisation"],
        "freephone": variables["freephone"],
        "address": variables.get("address", ""),
        "format": {"container": "wav", "rate": SAMPLE_RATE, "channels": 1, "bits": 16},
        "prompts": sorted(entries, key=lambda e: (e["id"], e["lang"])),
    }
    (out_dir / "manifest.json").write_text(
        json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    return document


def _rel_file(prompt_id: str, lang: str) -> str:
    """Where Asterisk looks for ``consent-ivr/<id>`` in ``lang``, relative to the sounds dir."""
    return f"{lang}/{PROMPT_DIR}/{prompt_id}.wav"


def _entry(out_dir: Path, prompt_id: str, lang: str, text: str) -> dict[str, Any]:
    rel = _rel_file(prompt_id, lang)
    path = out_dir / rel
    return {"id": prompt_id, "lang": lang, "text": text, "file": rel,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "samples": _samples(path)}


def _check_complete(have: set[tuple[str, str]], langs: Sequence[str],
                    required: Sequence[str], what: str) -> None:
    gaps = []
    for lang in langs:
        missing = [pid for pid in required if (pid, lang) not in have]
        if missing:
            gaps.append(f"{lang}: {', '.join(missing)}")
    if gaps:
        raise PromptBuildError(f"{what} lacks prompts the flows play — " + "; ".join(gaps))


def build_prompts(out_dir: Path, *, organisation: str, freephone: str,
                  address: str | None = None, langs: Sequence[str] = ("en",),
                  required: Sequence[str] = (), catalogue: Path | None = None) -> dict[str, Any]:
    """Render every catalogue prompt in ``langs`` for this organisation into ``out_dir``."""
    variables = _variables(organisation, freephone, address)
    unknown = [lang for lang in langs if lang not in VOICES]
    if unknown or DEFAULT_LANG not in langs:
        raise PromptBuildError(f"--lang: {DEFAULT_LANG} is required (the fallback) and each "
                               f"language needs a voice ({', '.join(VOICES)}); got "
                               f"{', '.join(langs)}")
    _tools("espeak-ng", "sox", what="prompts build")
    texts = {k: v for k, v in _texts(load_catalogue(catalogue), variables).items()
             if k[1] in langs}
    _check_complete(set(texts), langs, required, "the catalogue")
    entries = []
    for (prompt_id, lang), text in sorted(texts.items()):
        out = out_dir / _rel_file(prompt_id, lang)
        out.parent.mkdir(parents=True, exist_ok=True)
        synthesise(speakable(text), lang, out)
        entries.append(_entry(out_dir, prompt_id, lang, text))
    return _write_manifest(out_dir, variables, entries)


def _preference(path: Path) -> tuple[int, str]:
    suffix = path.suffix.lower()
    return (AUDIO_SUFFIXES.index(suffix) if suffix in AUDIO_SUFFIXES else 99, path.name)


def _recordings(src: Path) -> dict[tuple[str, str], Path]:
    """``{(id, lang): file}`` from ``<src>/<lang>/[consent-ivr/]<id>.<audio suffix>``."""
    found: dict[tuple[str, str], Path] = {}
    if not src.is_dir():
        raise PromptBuildError(f"{src} is not a directory of recordings (<lang>/<id>.wav)")
    for lang_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        for folder in (lang_dir, lang_dir / PROMPT_DIR):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir(), key=_preference):
                if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
                    found.setdefault((path.stem, lang_dir.name), path)
    if not found:
        raise PromptBuildError(f"no recordings under {src} (want <lang>/<id>.wav or .flac)")
    return found


def import_prompts(src: Path, out_dir: Path, *, organisation: str, freephone: str,
                   address: str | None = None, required: Sequence[str] = (),
                   texts_file: Path | None = None) -> dict[str, Any]:
    """Convert an organisation's recordings into ``out_dir`` and write their manifest."""
    variables = _variables(organisation, freephone, address)
    recordings = _recordings(src)
    langs = sorted({lang for _, lang in recordings})
    if DEFAULT_LANG not in langs:
        raise PromptBuildError(f"{src} has no {DEFAULT_LANG}/ recordings: {DEFAULT_LANG} is the "
                               "language Asterisk falls back to")
    _check_complete(set(recordings), langs, required, f"{src}")
    texts = _texts(load_catalogue(texts_file), variables)
    unknown = sorted(f"{lang}/{pid}" for pid, lang in recordings if (pid, lang) not in texts)
    if unknown:
        raise PromptBuildError(
            f"no text for {', '.join(unknown)}: the ledger records what each caller heard; give "
            "it in a catalogue (--texts FILE, same format as the bundled catalogue.toml)")
    sox: str | None = None
    entries = []
    for (prompt_id, lang), path in sorted(recordings.items()):
        out = out_dir / _rel_file(prompt_id, lang)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".wav" and _is_target_wav(path):
            shutil.copyfile(path, out)  # already what Asterisk plays: keep the studio's bytes
        else:
            sox = sox or _tools("sox", what=f"converting {path.name}")["sox"]
            _convert_with_sox(sox, path, out)
        entries.append(_entry(out_dir, prompt_id, lang, texts[(prompt_id, lang)]))
    return _write_manifest(out_dir, variables, entries)


def check_prompt_dir(prompt_dir: Path, *, catalogue: Path | None = None,
                     variables: Mapping[str, str] | None = None,
                     langs: Sequence[str] | None = None) -> list[str]:
    """Compare a prompt directory with the catalogue it was rendered from; ``[]`` = good.

    Every catalogue (id, lang) — in ``langs``, default all — must be in ``manifest.json``
    with the catalogue's text (rendered with the catalogue's ``[vars]`` updated by
    ``variables``) and the file Asterisk looks up; every file must exist, match its sha256
    and sample count, and be 8 kHz mono 16-bit PCM; the manifest must list nothing else
    and be sorted by (id, lang). Reads only: needs no audio tools.
    """
    errors: list[str] = []
    manifest_path = prompt_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        listed = {(p["id"], p["lang"]): p for p in manifest.get("prompts", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{manifest_path}: unreadable ({exc})"]
    try:
        texts = _texts(load_catalogue(catalogue), dict(variables or {}))
    except PromptBuildError as exc:
        return [str(exc)]
    expected = {key: text for key, text in texts.items() if langs is None or key[1] in langs}
    for key in sorted(expected.keys() - listed.keys()):
        errors.append(f"catalogue prompt {key} missing from manifest: regenerate")
    for key in sorted(listed.keys() - expected.keys()):
        errors.append(f"manifest prompt {key} is not in the catalogue: regenerate")
    for key in sorted(expected.keys() & listed.keys()):
        have = listed[key]
        for field, want in (("text", expected[key]), ("file", _rel_file(*key))):
            if want != have.get(field):
                errors.append(f"{key}: manifest {field} {have.get(field)!r} != {want!r}")
        path = prompt_dir / str(have.get("file", ""))
        if not path.is_file():
            errors.append(f"{key}: {path} is missing")
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() != have.get("sha256"):
            errors.append(f"{key}: {path} sha256 differs from manifest")
        format_errors = _wav_format_errors(path)
        errors.extend(format_errors)
        if not format_errors:
            with wave.open(str(path), "rb") as w:
                samples = w.getnframes()
            if samples != have.get("samples"):
                errors.append(f"{key}: manifest samples {have.get('samples')} != {samples}")
    order = [(p["id"], p["lang"]) for p in manifest.get("prompts", [])]
    if order != sorted(order):
        errors.append("manifest prompts are not sorted by (id, lang)")
    return errors
