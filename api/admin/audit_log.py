"""The audit log as the server uses it: one row per request, and the admin reads.

Rows are submitted to the writer thread without waiting (a full queue is a
counted drop). Reads run on a worker thread against their own connection;
SQLite's WAL mode lets them proceed while the writer writes.
"""

from __future__ import annotations

import time
from typing import TypeVar
from urllib.parse import parse_qs

import anyio

from actors.audit import MAX_QUERY_LIMIT, AuditRecord, AuditStore, AuditWriter, hash_key
from api.admin.audit_feed import AuditFeed, RowFilter, stream_rows
from api.http.asgi import Request, Responder
from api.http.middleware import bearer_token
from api.http.problems import HTTPProblem
from api.http.tenants import tenant_of

Number = TypeVar("Number", int, float)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The integers a query parameter may carry (SQLite's)."""


class AuditLog:
    """The writer and a read connection, open for the server's lifetime."""

    def __init__(self, path: str, retention_days: float, feed: AuditFeed | None = None) -> None:
        self.writer = AuditWriter(path, retention_days=retention_days)
        self.store = AuditStore(path)
        self.feed = feed or AuditFeed()
        """Where each new row goes live, to the consoles that follow the log."""
        # Reads share one read connection, so one runs at a time; on a thread of
        # their own, a burst of them never takes the threads streams depend on.
        self.reads = anyio.CapacityLimiter(1)

    def record(
        self,
        request: Request,
        *,
        model: str,
        endpoint: str,
        status: int,
        duration_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        finish_reason: str | None,
        error_type: str | None,
    ) -> None:
        """Submit the row of one finished request (never blocks)."""
        row = AuditRecord(
            request_id=request.request_id,
            ts=time.time(),
            model=model,
            endpoint=endpoint,
            status=status,
            finish_reason=finish_reason,
            duration_ms=duration_s * 1000.0,
            ttft_ms=None if ttft_s is None else ttft_s * 1000.0,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            error_type=error_type,
            key_hash=hash_key(_presented_key(request)),
            tenant=tenant_of(request),
        )
        self.writer.submit(row)
        self.feed.publish(row)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the read connection."""
        self.writer.close()
        self.store.close()

    async def logs(self, request: Request, respond: Responder) -> None:
        """``GET /admin/audit-logs`` filtered by model, status, endpoint, tenant, since, until."""
        query = _query(request)
        try:
            rows = await anyio.to_thread.run_sync(
                lambda: self.store.query(
                    model=query.get("model"),
                    status=_number(query, "status", int),
                    endpoint=query.get("endpoint"),
                    tenant=query.get("tenant"),
                    since=_number(query, "since", float),
                    until=_number(query, "until", float),
                    limit=min(_number(query, "limit", int) or 100, MAX_QUERY_LIMIT),
                    offset=_number(query, "offset", int) or 0,
                ),
                limiter=self.reads,
            )
        except ValueError:
            raise HTTPProblem(400, "invalid-query", "limit and offset must be positive") from None
        await respond.json(200, {"data": rows, "limit_max": MAX_QUERY_LIMIT})

    async def stream(self, request: Request, respond: Responder) -> None:
        """``GET /admin/audit-logs/stream?model=&endpoint=&status=``: new rows, live (SSE)."""
        query = _query(request)
        wanted = RowFilter(query.get("model"), query.get("endpoint"), _number(query, "status", int))
        await stream_rows(self.feed, wanted, request, respond)

    async def stats(self, request: Request, respond: Responder) -> None:
        """``GET /admin/audit-logs/stats?since=&until=``: per model and endpoint."""
        query = _query(request)
        since, until = _number(query, "since", float), _number(query, "until", float)
        groups = await anyio.to_thread.run_sync(
            lambda: self.store.stats(since=since, until=until), limiter=self.reads
        )
        await respond.json(200, {"data": groups, "writer": self.writer.statistics()})


def _query(request: Request) -> dict[str, str]:
    # `since=` is a mistake to point out (400), not a filter to drop silently.
    raw = parse_qs(
        bytes(request.scope.get("query_string", b"")).decode("latin-1"), keep_blank_values=True
    )
    return {name: values[-1] for name, values in raw.items()}


def _number(query: dict[str, str], name: str, kind: type[Number]) -> Number | None:
    if name not in query:
        return None
    try:
        value = kind(query[name])
    except ValueError:
        raise HTTPProblem(400, "invalid-query", f"{name} must be a number") from None
    if kind is int and not INT64_MIN <= value <= INT64_MAX:
        # SQLite's integers are 64-bit: a larger one would fail the query itself.
        raise HTTPProblem(400, "invalid-query", f"{name} is out of range")
    return value


def _presented_key(request: Request) -> str | None:
    token = bearer_token(request.header("authorization"))
    return None if token is None else token.decode("latin-1")
