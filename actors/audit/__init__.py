"""The audit log: one SQLite row of request metadata (never content), written off the event loop.

:class:`AuditWriter` takes :class:`AuditRecord` values from request handlers
without blocking and batches them into an :class:`AuditStore` from its own
thread; the store answers filtered queries and per-(model, endpoint) stats.
"""

from actors.audit.store import (
    MAX_QUERY_LIMIT,
    PERCENTILES,
    AuditRecord,
    AuditStore,
    GroupStats,
    hash_key,
)
from actors.audit.writer import AuditWriter, WriterStatistics

__all__ = [
    "MAX_QUERY_LIMIT",
    "PERCENTILES",
    "AuditRecord",
    "AuditStore",
    "AuditWriter",
    "GroupStats",
    "WriterStatistics",
    "hash_key",
]
