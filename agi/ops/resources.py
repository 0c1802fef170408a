"""Where the files that ship with consent-ivr are: migrations, the prompt catalogue.

``db/migrations/`` and ``sounds/`` at the top of the repository are the only copies. The
wheel carries them as ``agi/_data/migrations`` and ``agi/_data/sounds`` (hatchling's
``force-include`` in ``pyproject.toml``), read through :mod:`importlib.resources`; a source
checkout or an editable install has no ``agi/_data`` and reads the top-level directories.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["migrations_dir", "packaged", "sounds_dir"]

_CHECKOUT = Path(__file__).resolve().parents[2]


def packaged(name: str, checkout_path: str) -> Path:
    """``agi/_data/<name>`` of an installed wheel, else ``<checkout>/<checkout_path>``."""
    resource = files("agi").joinpath("_data", name)
    # pip always unpacks wheels, so the resource is a real directory; a zipped install
    # (not supported) would fall through to the checkout path and fail loudly there
    if isinstance(resource, Path) and resource.is_dir():
        return resource
    return _CHECKOUT / checkout_path


def migrations_dir() -> Path:
    """The ``NNN_name.sql`` files :func:`agi.ledger.ledger.apply_migrations` applies."""
    return packaged("migrations", "db/migrations")


def sounds_dir() -> Path:
    """The bundled prompts: ``manifest.json``, ``catalogue.toml``, ``<lang>/consent-ivr/*.wav``."""
    return packaged("sounds", "sounds")
