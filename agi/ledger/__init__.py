"""The consent ledger: records, the SQL that stores them, the journal, call sessions, the hash
chain, evidence, migrations. Imports :mod:`agi.ops` only.
"""
