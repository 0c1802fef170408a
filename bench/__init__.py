"""Benchmarks of consent-ivr against its peers: ``python -m bench`` (docs/benchmarks.md)."""
