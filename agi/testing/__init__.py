"""Test doubles that ship with the package: the fake Asterisk (``simulate-call``, the tests, the
benchmarks) and the fake AMI. Production rooms never import it.
"""
