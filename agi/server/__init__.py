"""The FastAGI server: sessions, the :class:`~agi.server.call.Call` a route gets, the route table.
Imports :mod:`agi.wire` and :mod:`agi.ops` only: it knows nothing of consent.
"""
