"""The audit log's storage: one SQLite row of metadata per request.

The log answers "who asked which model for what kind of work, and how did it
go" without ever being able to answer "what did they say". That is enforced
by construction rather than by care at call sites: :class:`AuditRecord` has no
field that could hold prompt or response text, the table's columns are derived
from the record's fields, and the table is ``STRICT`` so SQLite itself refuses
a value of the wrong type (a stray string in a numeric column, say).

The database runs in WAL mode so that readers (the HTTP layer's queries) never
block the writer thread and the writer never blocks them. One
:class:`AuditStore` serializes its own calls with a lock; open a second store
on the same file to read from another thread without waiting on the writer.

Percentiles in :meth:`AuditStore.stats` are exact nearest-rank values taken
inside SQLite with ``ORDER BY duration_ms LIMIT 1 OFFSET rank - 1`` per group,
so memory stays constant however many rows a window selects; the cost is a
few sorted scans per (model, endpoint) group, which is fine for an
operator-facing report.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

MAX_QUERY_LIMIT = 1000
"""The most rows one :meth:`AuditStore.query` returns, whatever ``limit`` asks for."""

PERCENTILES = (50.0, 95.0, 99.0)
"""The latency percentiles :meth:`AuditStore.stats` reports."""

_KEY_HASH_PREFIX = b"mlx-troupe/audit/api-key/v1\x00"
"""Domain separation: this hash of a key never equals a hash of it made for another purpose."""

_KEY_HASH_CHARS = 16

_TABLE = "audit_log"

# Column name -> STRICT type. Listed in AuditRecord's field order; an import-time
# check below keeps the two in step, so a content field cannot slip into one alone.
_COLUMNS: dict[str, str] = {
    "request_id": "TEXT NOT NULL",
    "ts": "REAL NOT NULL",
    "model": "TEXT NOT NULL",
    "endpoint": "TEXT NOT NULL",
    "status": "INTEGER NOT NULL",
    "finish_reason": "TEXT",
    "duration_ms": "REAL NOT NULL",
    "ttft_ms": "REAL",
    "prompt_tokens": "INTEGER NOT NULL",
    "completion_tokens": "INTEGER NOT NULL",
    "error_type": "TEXT",
    "key_hash": "TEXT",
    "tenant": "TEXT",
}


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The metadata of one finished request; deliberately no prompt or response text.

    Attributes:
        request_id: The request's id as the API reported it.
        ts: When the request was received, in epoch seconds.
        model: The model that served (or was asked to serve) it.
        endpoint: The API route, e.g. ``/v1/chat/completions``.
        status: The HTTP status returned (504 for a timeout).
        duration_ms: Time from receipt to the last byte, in milliseconds.
        prompt_tokens: Tokens in the prompt (0 when it never got tokenized).
        completion_tokens: Tokens generated.
        finish_reason: ``stop``, ``length``, ``cancelled`` and so on; ``None`` on errors.
        ttft_ms: Time to the first token, ``None`` when none was produced.
        error_type: A short error class such as ``timeout``; never an error message.
        key_hash: :func:`hash_key` of the caller's API key, never the key.
        tenant: The tenant the key belongs to (a team's name, or the key's own
            ``key-...`` tenant); ``None`` on a server without keys.
    """

    request_id: str
    ts: float
    model: str
    endpoint: str
    status: int
    finish_reason: str | None = None
    duration_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_type: str | None = None
    key_hash: str | None = None
    tenant: str | None = None


if tuple(_COLUMNS) != AuditRecord.__struct_fields__:  # pragma: no cover - a programming error
    raise RuntimeError("audit columns and AuditRecord fields have drifted apart")


class GroupStats(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregates for one (model, endpoint) pair over a time window.

    Attributes:
        model: The model.
        endpoint: The API route.
        count: Requests in the window.
        errors: Requests answered with a status of 400 or more.
        error_rate: ``errors / count``.
        p50_ms: Median ``duration_ms`` (nearest rank).
        p95_ms: 95th percentile ``duration_ms``.
        p99_ms: 99th percentile ``duration_ms``.
    """

    model: str
    endpoint: str
    count: int
    errors: int
    error_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def hash_key(api_key: str | None) -> str | None:
    """A stable, non-reversible tag for an API key, so requests can be grouped by caller.

    API keys are long random secrets, so a truncated SHA-256 cannot be brute
    forced back to the key; the fixed prefix keeps this tag distinct from any
    other hash of the same key.

    Args:
        api_key: The key the caller presented, or ``None`` when there was none.

    Returns:
        16 hex characters, or ``None`` when ``api_key`` is ``None``.
    """
    if api_key is None:
        return None
    digest = hashlib.sha256(_KEY_HASH_PREFIX + api_key.encode("utf-8")).hexdigest()
    return digest[:_KEY_HASH_CHARS]


def _nearest_rank(q: float, count: int) -> int:
    """The 1-based nearest rank of the ``q``-th percentile among ``count`` values."""
    return max(1, math.ceil(q / 100.0 * count))


class AuditStore:
    """A SQLite file of :class:`AuditRecord` rows; every method is thread-safe."""

    def __init__(self, path: str | Path) -> None:
        """Open (creating if needed) the database at ``path`` and its schema.

        Args:
            path: The database file.

        Raises:
            sqlite3.Error: The file cannot be opened or initialized.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        # The writer opens the store on the caller's thread (so a bad path fails
        # at construction) and then uses it from its own thread; the lock above
        # is what makes sharing the connection safe. Autocommit mode: every
        # transaction below is explicit.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=5.0
        )
        try:
            self._init_schema(self._conn)
        except BaseException:
            self._conn.close()
            raise

    @staticmethod
    def _init_schema(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across process crashes in WAL mode; only a power
        # loss can drop the last commits, an acceptable trade for an audit trail.
        conn.execute("PRAGMA synchronous=NORMAL")
        columns = ", ".join(f"{name} {kind}" for name, kind in _COLUMNS.items())
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} ({columns}) STRICT")
        # A log written before a column existed gains it (empty for the old rows).
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})")}
        for name, kind in _COLUMNS.items():
            if name not in present:
                conn.execute(f"ALTER TABLE {_TABLE} ADD COLUMN {name} {kind}")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {_TABLE}_ts ON {_TABLE} (ts)")
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {_TABLE}_model_endpoint ON {_TABLE} (model, endpoint)"
        )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the audit store is closed")
        return self._conn

    def insert_many(self, records: Iterable[AuditRecord]) -> int:
        """Write ``records`` in one transaction: all of them or, on an error, none.

        Args:
            records: The rows to add.

        Returns:
            How many rows were written.

        Raises:
            sqlite3.Error: The write failed; nothing was written.
        """
        rows = [tuple(getattr(r, name) for name in _COLUMNS) for r in records]
        if not rows:
            return 0
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(f"INSERT INTO {_TABLE} VALUES ({marks})", rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return len(rows)

    def query(
        self,
        *,
        model: str | None = None,
        status: int | None = None,
        endpoint: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
        tenant: str | None = None,
    ) -> list[AuditRecord]:
        """Matching records, newest first.

        Args:
            model: Only this model.
            status: Only this HTTP status.
            endpoint: Only this route.
            since: Only records with ``ts >= since``.
            until: Only records with ``ts < until``.
            limit: Page size, capped at :data:`MAX_QUERY_LIMIT`.
            offset: Records to skip, for the next pages.
            tenant: Only this tenant's requests.

        Returns:
            At most ``min(limit, MAX_QUERY_LIMIT)`` records.

        Raises:
            ValueError: ``limit`` is below 1 or ``offset`` below 0.
        """
        if limit < 1 or offset < 0:
            raise ValueError("limit must be at least 1 and offset at least 0")
        where, params = _where(model=model, status=status, endpoint=endpoint, tenant=tenant)
        where, params = _add_window(where, params, since, until)
        sql = (
            f"SELECT {', '.join(_COLUMNS)} FROM {_TABLE}{_clause(where)}"
            " ORDER BY ts DESC, rowid DESC LIMIT ? OFFSET ?"
        )
        with self._lock:
            rows = (
                self._connection()
                .execute(sql, [*params, min(limit, MAX_QUERY_LIMIT), offset])
                .fetchall()
            )
        names = tuple(_COLUMNS)
        return [AuditRecord(**dict(zip(names, row, strict=True))) for row in rows]

    def stats(self, *, since: float | None = None, until: float | None = None) -> list[GroupStats]:
        """Counts, error rate and latency percentiles per (model, endpoint).

        Args:
            since: Only records with ``ts >= since``.
            until: Only records with ``ts < until``.

        Returns:
            One entry per pair with records in the window, sorted by model then endpoint.
        """
        where, params = _add_window([], [], since, until)
        grouped = (
            f"SELECT model, endpoint, COUNT(*), SUM(status >= 400) FROM {_TABLE}"
            f"{_clause(where)} GROUP BY model, endpoint ORDER BY model, endpoint"
        )
        pick = (
            f"SELECT duration_ms FROM {_TABLE}"
            f"{_clause([*where, 'model = ?', 'endpoint = ?'])}"
            " ORDER BY duration_ms LIMIT 1 OFFSET ?"
        )
        result: list[GroupStats] = []
        with self._lock:
            conn = self._connection()
            # One read transaction, so counts and percentiles see the same rows.
            conn.execute("BEGIN")
            try:
                for model, endpoint, count, errors in conn.execute(grouped, params).fetchall():
                    p50, p95, p99 = (
                        float(
                            conn.execute(
                                pick, [*params, model, endpoint, _nearest_rank(q, count) - 1]
                            ).fetchone()[0]
                        )
                        for q in PERCENTILES
                    )
                    result.append(
                        GroupStats(
                            model=model,
                            endpoint=endpoint,
                            count=count,
                            errors=errors,
                            error_rate=errors / count,
                            p50_ms=p50,
                            p95_ms=p95,
                            p99_ms=p99,
                        )
                    )
            finally:
                conn.execute("COMMIT")
        return result

    def delete_older_than(self, ts: float) -> int:
        """Remove records with ``ts`` strictly before ``ts``.

        Args:
            ts: The cutoff, in epoch seconds.

        Returns:
            How many rows were removed.
        """
        with self._lock:
            cursor = self._connection().execute(f"DELETE FROM {_TABLE} WHERE ts < ?", (ts,))
            return cursor.rowcount

    def close(self) -> None:
        """Close the database; later calls raise :class:`sqlite3.ProgrammingError`. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _where(**equals: Any) -> tuple[list[str], list[Any]]:
    """Equality conditions for the filters that are set (column names are ours, not input)."""
    pairs = [(name, value) for name, value in equals.items() if value is not None]
    return [f"{name} = ?" for name, _ in pairs], [value for _, value in pairs]


def _add_window(
    where: list[str], params: list[Any], since: float | None, until: float | None
) -> tuple[list[str], list[Any]]:
    """Add a half-open ``[since, until)`` time window to ``where``."""
    where, params = list(where), list(params)
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts < ?")
        params.append(until)
    return where, params


def _clause(where: list[str]) -> str:
    return f" WHERE {' AND '.join(where)}" if where else ""
