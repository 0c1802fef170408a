"""The ``consent-ivr`` command line: one module per command group, one table of commands and
routes (:mod:`agi.cli.main`).
"""
