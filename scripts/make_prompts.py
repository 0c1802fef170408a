#!/usr/bin/env python3
"""Generate consent-ivr prompt audio from ``sounds/catalogue.toml``.

Every prompt in the catalogue becomes ``sounds/<lang>/consent-ivr/<id>.wav``: 8 kHz, mono,
16-bit signed PCM, the format Asterisk plays natively (no transcoding on an 8 kHz call).
The flows play prompts as ``STREAM FILE consent-ivr/<id>``, so Asterisk's own language
lookup (``<astdatadir>/sounds/<lang>/consent-ivr/<id>``, falling back to ``en``) picks the
caller's language.

``sounds/manifest.json`` records, for each (id, lang), the exact rendered text, the file
(relative to ``sounds/``), the sha256 of the file's bytes and its length in 8 kHz samples.
The audio is synthesised with espeak-ng and resampled with sox, both run as subprocesses;
sox runs with dithering off (``-D``) so the same tool versions give byte-identical files.

Usage::

    python3 scripts/make_prompts.py           # (re)generate WAVs + manifest
    python3 scripts/make_prompts.py --check   # verify manifest, files and catalogue; no audio tools

The module has no side effects at import time; tests import ``check`` from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT_DIR = "consent-ivr"  # the sub-directory of sounds/<lang>/ and the STREAM FILE prefix
SAMPLE_RATE = 8000
# espeak-ng voice per catalogue language; en-gb because the demo organisation is British.
VOICES = {"en": "en-gb", "cy": "cy"}
DEFAULT_LANG = "en"
SPEED_WPM = 150

_PROMPT_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# Runs of 3+ digits, possibly in space-separated groups: phone numbers. Read digit by digit.
_DIGIT_GROUPS = re.compile(r"\d{3,}(?: \d{3,})*")


def load_catalogue(root: Path = ROOT) -> dict[str, Any]:
    """Parse ``sounds/catalogue.toml`` and validate its shape."""
    with (root / "sounds" / "catalogue.toml").open("rb") as fh:
        data = tomllib.load(fh)
    variables = data.get("vars", {})
    prompts = data.get("prompts", {})
    if not isinstance(variables, dict) or not isinstance(prompts, dict) or not prompts:
        raise ValueError("catalogue needs a [vars] table and [prompts.<id>] tables")
    for prompt_id, texts in prompts.items():
        if not _PROMPT_ID.match(prompt_id):
            raise ValueError(f"prompt id {prompt_id!r} is not lower-case-kebab")
        if DEFAULT_LANG not in texts:
            raise ValueError(f"prompt {prompt_id!r} has no {DEFAULT_LANG} text")
        unknown = set(texts) - set(VOICES)
        if unknown:
            raise ValueError(f"prompt {prompt_id!r}: no voice for languages {sorted(unknown)}")
    return data


def render(text: str, variables: dict[str, str]) -> str:
    """Fill ``{placeholders}``; an unknown placeholder is an error, not silence."""
    return text.format_map(variables)


def speakable(text: str) -> str:
    """The form handed to the synthesiser: phone numbers read digit by digit.

    >>> speakable("call 0800 046 1234 and press 2")
    'call 0 8 0 0, 0 4 6, 1 2 3 4, and press 2'
    """

    def spell(match: re.Match[str]) -> str:
        return ", ".join(" ".join(group) for group in match.group(0).split(" ")) + ","

    return _DIGIT_GROUPS.sub(spell, text).replace(",.", ".").replace(",,", ",")


def expected_entries(root: Path = ROOT) -> list[dict[str, str]]:
    """Every (id, lang) the catalogue defines, with rendered text and target file."""
    data = load_catalogue(root)
    variables = {k: str(v) for k, v in data["vars"].items()}
    entries = []
    for prompt_id, texts in data["prompts"].items():
        for lang, text in texts.items():
            entries.append(
                {
                    "id": prompt_id,
                    "lang": lang,
                    "text": render(text, variables),
                    "file": f"{lang}/{PROMPT_DIR}/{prompt_id}.wav",
                }
            )
    return sorted(entries, key=lambda e: (e["id"], e["lang"]))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wav_samples(path: Path) -> int:
    """Length in 8 kHz samples (the unit of STREAM FILE's endpos), for the flows' timeouts."""
    with wave.open(str(path), "rb") as w:
        return w.getnframes()


def wav_format_errors(path: Path) -> list[str]:
    """Errors if ``path`` is not an 8 kHz mono 16-bit PCM WAV with some audio."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width, frames = (
                w.getframerate(),
                w.getnchannels(),
                w.getsampwidth(),
                w.getnframes(),
            )
    except (wave.Error, EOFError) as exc:
        return [f"{path}: not a PCM WAV file ({exc})"]
    errors = []
    if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
        errors.append(f"{path}: {rate} Hz, {channels} channel(s), {8 * width}-bit; want 8000/1/16")
    if frames < SAMPLE_RATE // 10:
        errors.append(f"{path}: only {frames} samples of audio")
    return errors


def manifest_document(root: Path, entries: list[dict[str, str]]) -> dict[str, Any]:
    data = load_catalogue(root)
    prompts = []
    for entry in entries:
        path = root / "sounds" / entry["file"]
        prompts.append({**entry, "sha256": sha256_file(path), "samples": wav_samples(path)})
    return {
        "organisation": str(data["vars"].get("organisation", "")),
        "freephone": str(data["vars"].get("freephone", "")),
        "address": str(data["vars"].get("address", "")),
        "format": {"container": "wav", "rate": SAMPLE_RATE, "channels": 1, "bits": 16},
        "prompts": prompts,
    }


def dump_manifest(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def check(root: Path = ROOT) -> list[str]:
    """Compare catalogue, manifest and files; return human-readable errors (empty = good)."""
    errors: list[str] = []
    manifest_path = root / "sounds" / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{manifest_path}: unreadable ({exc})"]
    expected = {(e["id"], e["lang"]): e for e in expected_entries(root)}
    listed = {(p["id"], p["lang"]): p for p in manifest.get("prompts", [])}
    for key in sorted(expected.keys() - listed.keys()):
        errors.append(f"catalogue prompt {key} missing from manifest: regenerate")
    for key in sorted(listed.keys() - expected.keys()):
        errors.append(f"manifest prompt {key} is not in the catalogue: regenerate")
    for key in sorted(expected.keys() & listed.keys()):
        want, have = expected[key], listed[key]
        for field in ("text", "file"):
            if want[field] != have.get(field):
                errors.append(f"{key}: manifest {field} {have.get(field)!r} != {want[field]!r}")
        path = root / "sounds" / have.get("file", "")
        if not path.is_file():
            errors.append(f"{key}: {path} is missing")
            continue
        if sha256_file(path) != have.get("sha256"):
            errors.append(f"{key}: {path} sha256 differs from manifest")
        format_errors = wav_format_errors(path)
        errors.extend(format_errors)
        if not format_errors and wav_samples(path) != have.get("samples"):
            errors.append(f"{key}: manifest samples {have.get('samples')} != {wav_samples(path)}")
    if manifest.get("prompts") != sorted(
        manifest.get("prompts", []), key=lambda p: (p["id"], p["lang"])
    ):
        errors.append("manifest prompts are not sorted by (id, lang)")
    return errors


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"make_prompts: install {name} (apt-get install espeak-ng sox)")
    return path


def synthesise(text: str, lang: str, out: Path) -> None:
    """espeak-ng -> 22.05 kHz WAV -> sox (-3 dB headroom, no dither) -> 8 kHz mono 16-bit WAV."""
    with tempfile.TemporaryDirectory(prefix="prompts-") as tmp:
        raw = Path(tmp) / "espeak.wav"
        # Fixed argv from our own catalogue, no shell: nothing untrusted reaches a command line.
        subprocess.run(  # noqa: S603
            [_tool("espeak-ng"), "-v", VOICES[lang], "-s", str(SPEED_WPM), "-w", str(raw),
             "--", text],
            check=True,
        )
        subprocess.run(  # noqa: S603
            [_tool("sox"), "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
             "-e", "signed-integer", str(out), "gain", "-3", "rate", str(SAMPLE_RATE)],
            check=True,
        )


def generate(root: Path = ROOT) -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        tools = " and ".join(missing)
        raise SystemExit(f"make_prompts: install {tools} (apt-get install espeak-ng sox)")
    entries = expected_entries(root)
    wanted = {root / "sounds" / e["file"] for e in entries}
    for entry in entries:
        out = root / "sounds" / entry["file"]
        out.parent.mkdir(parents=True, exist_ok=True)
        synthesise(speakable(entry["text"]), entry["lang"], out)
    for stale in (root / "sounds").glob(f"*/{PROMPT_DIR}/*.wav"):
        if stale not in wanted:
            stale.unlink()
    (root / "sounds" / "manifest.json").write_text(
        dump_manifest(manifest_document(root, entries)), encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify only; needs no audio tools")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    if not args.check:
        generate(args.root)
    errors = check(args.root)
    for error in errors:
        print(error, file=sys.stderr)
    if not errors:
        print(f"prompts ok: {len(expected_entries(args.root))} files match the manifest")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
