"""``python -m agi`` → the ``consent-ivr`` command line."""

from agi.cli.main import main

raise SystemExit(main())
