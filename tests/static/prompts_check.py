"""Prompt manifest helpers for tests (static kit tests here; the lead's flow tests may reuse).

``load_manifest(root)`` returns ``sounds/manifest.json`` as a dict; ``prompt_index(root)``
maps (id, lang) to its entry; ``check_prompts(root)`` returns the generator's own
``--check`` errors (catalogue vs manifest vs files: presence, sha256, 8 kHz mono 16-bit).
Standard library only.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["check_prompts", "load_manifest", "make_prompts_module", "prompt_index"]


def load_manifest(root: Path) -> dict[str, Any]:
    """``sounds/manifest.json`` under the repository ``root``."""
    return json.loads((Path(root) / "sounds" / "manifest.json").read_text(encoding="utf-8"))


def prompt_index(root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["id"], p["lang"]): p for p in load_manifest(root)["prompts"]}


def make_prompts_module(root: Path) -> ModuleType:
    """``scripts/make_prompts.py`` imported by path (scripts/ is not a package)."""
    path = Path(root) / "scripts" / "make_prompts.py"
    spec = importlib.util.spec_from_file_location("make_prompts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_prompts(root: Path) -> list[str]:
    return list(make_prompts_module(root).check(Path(root)))
