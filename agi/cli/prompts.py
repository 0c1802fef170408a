"""``consent-ivr prompts build|import``: the prompt directory for a real organisation.

``build`` renders the bundled catalogue with the organisation's name and freephone number
(espeak-ng + sox); ``import`` takes the organisation's own studio recordings. Either way
the result is checked as ``serve`` checks it, and ``CONSENT_IVR_SOUNDS_DIR`` points at it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from agi.cli.table import Command

__all__: list[str] = []


def _langs(text: str) -> list[str]:
    langs = [p.strip() for p in text.split(",") if p.strip()]
    if not langs:
        raise argparse.ArgumentTypeError("--lang needs at least one language, e.g. en or en,cy")
    return langs


def _args(p: argparse.ArgumentParser) -> None:
    p.description = "make the prompt directory serve plays (CONSENT_IVR_SOUNDS_DIR)"
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("build", "render the catalogue for your organisation (espeak-ng, sox)"),
                         ("import", "import your own recordings (WAV/FLAC; sox converts)")):
        a = sub.add_parser(action, help=text, description=text)
        if action == "import":
            a.add_argument("source", type=Path, metavar="DIR",
                           help="recordings as DIR/<lang>/<prompt id>.wav|.flac")
            a.add_argument("--texts", type=Path, default=None, metavar="TOML",
                           help="what each recording says, in catalogue.toml's format "
                                "(default: the bundled catalogue)")
        else:
            a.add_argument("--lang", type=_langs, default=["en"],
                           help="languages, comma-separated (default en; en,cy for Welsh too)")
        a.add_argument("--organisation", required=True, help="who is asking, as callers hear it")
        a.add_argument("--freephone", required=True,
                       help="the free number to withdraw consent, e.g. '0800 046 1234'")
        a.add_argument("--address", default=None)
        a.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="the prompt directory to write")


async def cmd_prompts(settings: Any, args: argparse.Namespace) -> int:
    from agi.calls.promptkit import (
        PromptBuildError,
        build_prompts,
        import_prompts,
        required_prompt_ids,
    )
    from agi.calls.prompts import PromptCatalogue, PromptError
    from agi.ledger.database import CommandError

    required = required_prompt_ids(settings)
    out = args.out.expanduser().absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
        if args.action == "build":
            document = await asyncio.to_thread(
                build_prompts, out, organisation=args.organisation, freephone=args.freephone,
                address=args.address, langs=args.lang, required=required)
        else:
            document = await asyncio.to_thread(
                import_prompts, args.source, out, organisation=args.organisation,
                freephone=args.freephone, address=args.address, required=required,
                texts_file=args.texts)
        catalogue = PromptCatalogue.load(out, prefix=settings.prompt_prefix)
        catalogue.require(required)  # what serve checks, before anyone relies on it
    except (PromptBuildError, PromptError) as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(f"cannot write {out}: {exc.strerror}") from exc
    langs = sorted({p["lang"] for p in document["prompts"]})
    print(f"{len(document['prompts'])} prompts ({', '.join(langs)}) for "
          f"{document['organisation']} written to {out}")
    print(f"use them: CONSENT_IVR_SOUNDS_DIR={out} CONSENT_IVR_ORGANISATION="
          f"'{document['organisation']}' consent-ivr serve", file=sys.stderr)
    return 0


#: what this module adds to ``consent-ivr`` (listed in agi.cli.main.command_table)
COMMANDS = (
    Command("prompts", _args, cmd_prompts,
            help="build the prompts for your organisation, or import your recordings"),
)
