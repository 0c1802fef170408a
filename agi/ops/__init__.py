"""Running the process: configuration, the data home, logging, metrics and health, embedded
PostgreSQL, signals. Imports nothing else of :mod:`agi`: every other room may use it.
"""
