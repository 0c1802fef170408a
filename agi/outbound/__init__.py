"""Outbound calls: the campaign model, the calling policy, the gate, the campaign stores, the AMI
dialer. Imports :mod:`agi.ledger`, :mod:`agi.wire` (variable names) and :mod:`agi.ops`.
"""
