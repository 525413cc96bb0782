"""The durable spool: messages the API could not take right now, kept until delivered.

``base`` holds the contract (``SpoolBackend``, ``SpoolEntry``, ``SpoolStats``) every store
implements; ``sql`` the statements and methods both stores share, each in its dialect;
``sqlite`` is the SQLite store (``RELAY_SPOOL_DIR``), ``postgres`` the shared PostgreSQL
store (``RELAY_SPOOL_URL``) with its migrations in ``pg_schema``.
"""

from relay.delivery.spool.base import STATES, SpoolBackend, SpoolEntry, SpoolStats, State
from relay.delivery.spool.postgres import PostgresSpool
from relay.delivery.spool.sqlite import FILENAME, SqliteSpool

__all__ = [
    "FILENAME",
    "STATES",
    "PostgresSpool",
    "SpoolBackend",
    "SpoolEntry",
    "SpoolStats",
    "SqliteSpool",
    "State",
]
