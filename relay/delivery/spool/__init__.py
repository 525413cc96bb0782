"""The durable spool: messages the API could not take right now, kept until delivered.

``base`` holds the contract (``SpoolBackend``, ``SpoolEntry``, ``SpoolStats``) every store
implements; ``sqlite`` is the SQLite store (``RELAY_SPOOL_DIR``).
"""

from relay.delivery.spool.base import STATES, SpoolBackend, SpoolEntry, SpoolStats, State
from relay.delivery.spool.sqlite import FILENAME, SqliteSpool

__all__ = [
    "FILENAME",
    "STATES",
    "SpoolBackend",
    "SpoolEntry",
    "SpoolStats",
    "SqliteSpool",
    "State",
]
