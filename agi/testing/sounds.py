"""The fake's sound files: how long each prompt Asterisk would play is, in samples at 8 kHz.

``DEFAULT_SOUNDS`` are Asterisk's core sounds the transcripts use; the repository's
``sounds/<lang>/…wav`` are scanned for the product's own prompts; ``number_files`` is English
``ast_say_number``'s file list.
"""

from __future__ import annotations

import contextlib
import functools
import json
import wave
from pathlib import Path
from typing import Final

from agi.ops import resources
from agi.testing.res_agi import RATE, Marker

__all__ = ["DEFAULT", "DEFAULT_SOUNDS", "DEFAULT_SOUNDS_DIR", "SAY_CHAR", "number_files",
           "scan_sounds_dir"]



#: Stock Asterisk sounds as they behave in the transcripts (8 kHz samples). beep and
#: demo-thanks are measured (endpos when played to the end: 04); demo-congrats is only known
#: to exceed 24160 (30), 92000 is an estimate; digits/* are inferred from SAY DIGITS taking
#: ~0.84 s per digit (18: "123" in 2.52 s; 28: ten digits in 8.37 s).
DEFAULT_SOUNDS: Final[dict[str, int]] = {
    "beep": 3520,
    "demo-thanks": 44160,
    "demo-congrats": 92000,
    **{f"digits/{n}": 6720 for n in range(0, 21)},
    **{f"digits/{n}": 6720 for n in range(30, 100, 10)},
    "digits/hundred": 6720,
    "digits/thousand": 6720,
    "digits/million": 6720,
    "digits/minus": 6720,
    "digits/star": 6720,
    "digits/pound": 6720,
}

DEFAULT_SOUNDS_DIR: Final = resources.sounds_dir()
DEFAULT: Final = Marker("DEFAULT")


@functools.lru_cache(maxsize=8)
def scan_sounds_dir(directory: str) -> dict[tuple[str, str], int]:
    """``{(lang, "consent-ivr/identify"): samples}`` for ``<dir>/<lang>/**/*.wav``.

    The manifest's ``samples`` is used when present; otherwise the WAV header is read.
    """
    root = Path(directory)
    out: dict[tuple[str, str], int] = {}
    if not root.is_dir():
        return out
    manifest: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        for item in data.get("prompts", []):
            if "samples" in item:
                manifest[str(item["file"])] = int(item["samples"])
    for path in sorted(root.glob("*/**/*.wav")):
        rel = path.relative_to(root).as_posix()
        lang, _, name = rel.partition("/")
        samples = manifest.get(rel)
        if samples is None:
            try:
                with wave.open(str(path), "rb") as wav:
                    samples = wav.getnframes() * RATE // max(wav.getframerate(), 1)
            except (OSError, wave.Error, EOFError):
                continue
        out[(lang, name.removesuffix(".wav"))] = samples
    return out


def number_files(num: int) -> list[str]:
    """English ``ast_say_number`` file list (enough for phone flows)."""
    files: list[str] = []
    if num < 0:
        files.append("digits/minus")
        num = -num
    if num == 0:
        return [*files, "digits/0"]
    for size, word in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if num >= size:
            files += [*number_files(num // size), f"digits/{word}"]
            num %= size
    if num >= 20:
        files.append(f"digits/{num - num % 10}")
        num %= 10
    if num:
        files.append(f"digits/{num}")
    return files


SAY_CHAR: Final = {"*": "digits/star", "#": "digits/pound", "-": "digits/minus"}


