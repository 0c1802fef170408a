"""Outbound calls: the campaign model, the calling policy, the gate, the stores by aggregate
(campaigns, lists, screening, claims, plays), the AMI client and the dialer. Imports
:mod:`agi.ledger`, :mod:`agi.wire` (variable names) and :mod:`agi.ops`.
"""
