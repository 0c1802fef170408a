"""consent-ivr: a consent-first IVR for Asterisk (FastAGI server, ledger, gate, dialer)."""

__version__ = "0.1.0"
