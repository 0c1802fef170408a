"""The wire: the AGI protocol (sans-IO), the asyncio stream, the typed AGI channel, the dialplan's
variable names. Imports nothing else of :mod:`agi`.
"""
