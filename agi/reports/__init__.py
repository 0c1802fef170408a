"""Read-only documents over the ledger: the campaign report, the evidence page, signed receipts.
"""
