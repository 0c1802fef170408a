"""``python -m agi`` → the ``consent-ivr`` command line."""

from agi.cli import main

raise SystemExit(main())
