#!/usr/bin/env python3
"""Generate consent-ivr prompt audio from ``sounds/catalogue.toml``.

Every prompt in the catalogue becomes ``sounds/<lang>/consent-ivr/<id>.wav`` (8 kHz mono
16-bit PCM, what Asterisk plays natively) and ``sounds/manifest.json`` records, for each
(id, lang), the exact rendered text, the file, its sha256 and its length in 8 kHz samples.

This is a thin wrapper over :mod:`agi.calls.promptkit` — the same code as ``consent-ivr prompts
build`` — with the catalogue's own ``[vars]`` (the demo organisation) and every language
it has. agi.calls.promptkit needs only the standard library, so the script puts the checkout on
``sys.path`` and runs with a bare ``python3``, venv or not.

Usage::

    python3 scripts/make_prompts.py           # (re)generate WAVs + manifest (espeak-ng, sox)
    python3 scripts/make_prompts.py --check   # verify manifest, files and catalogue; no audio tools

Importing it (tests/static/prompts_check.py does) defines functions and makes the checkout
importable; nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's agi/, with or without a venv

from agi.calls import promptkit  # noqa: E402  (needs the path above)


def _catalogue_path(root: Path) -> Path:
    return root / "sounds" / "catalogue.toml"


def load_catalogue(root: Path = ROOT) -> dict[str, Any]:
    """Parse and validate ``<root>/sounds/catalogue.toml``."""
    return promptkit.load_catalogue(_catalogue_path(root))


def check(root: Path = ROOT) -> list[str]:
    """Compare catalogue, manifest and files; return human-readable errors (empty = good)."""
    return promptkit.check_prompt_dir(root / "sounds", catalogue=_catalogue_path(root))


def generate(root: Path = ROOT) -> None:
    """Render every catalogue prompt in every language into ``<root>/sounds``."""
    data = load_catalogue(root)
    variables = data.get("vars", {})
    langs = sorted({lang for texts in data["prompts"].values() for lang in texts})
    sounds = root / "sounds"
    document = promptkit.build_prompts(
        sounds,
        organisation=str(variables.get("organisation", "")),
        freephone=str(variables.get("freephone", "")),
        address=str(variables["address"]) if "address" in variables else None,
        langs=langs,
        catalogue=_catalogue_path(root),
    )
    wanted = {sounds / entry["file"] for entry in document["prompts"]}
    for stale in sounds.glob(f"*/{promptkit.PROMPT_DIR}/*.wav"):
        if stale not in wanted:  # a prompt removed from the catalogue
            stale.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify only; needs no audio tools")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    try:
        if not args.check:
            generate(args.root)
        errors = check(args.root)
    except promptkit.PromptBuildError as exc:
        print(f"make_prompts: {exc}", file=sys.stderr)
        return 1
    for error in errors:
        print(error, file=sys.stderr)
    if not errors:
        print(f"prompts ok: {_count(args.root)} files match the manifest")
    return 1 if errors else 0


def _count(root: Path) -> int:
    return sum(len(texts) for texts in load_catalogue(root)["prompts"].values())


if __name__ == "__main__":
    sys.exit(main())
