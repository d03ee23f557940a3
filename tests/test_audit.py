"""The audit log: a metadata-only schema, queries, stats, restarts, retention and back-pressure.

Every test uses a real SQLite file under ``tmp_path``. Writer tests order
themselves with ``flush()`` and events, never with sleeps.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from actors.audit import (
    MAX_QUERY_LIMIT,
    AuditRecord,
    AuditStore,
    AuditWriter,
    GroupStats,
    hash_key,
)

pytestmark = pytest.mark.timeout(60)

# Recent, so a writer's default 30-day retention on the real clock keeps these rows.
T0 = float(int(time.time())) - 3600.0
DAY = 86_400.0
CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"

METADATA_COLUMNS = {
    "request_id": "TEXT",
    "ts": "REAL",
    "model": "TEXT",
    "endpoint": "TEXT",
    "status": "INTEGER",
    "finish_reason": "TEXT",
    "duration_ms": "REAL",
    "ttft_ms": "REAL",
    "prompt_tokens": "INTEGER",
    "completion_tokens": "INTEGER",
    "error_type": "TEXT",
    "key_hash": "TEXT",
    "tenant": "TEXT",
}


def rec(n: int, **changes: Any) -> AuditRecord:
    """A successful chat request received ``n`` seconds after ``T0``."""
    base = AuditRecord(
        request_id=f"req-{n}",
        ts=T0 + n,
        model="tiny",
        endpoint=CHAT,
        status=200,
        finish_reason="stop",
        duration_ms=100.0 + n,
        ttft_ms=10.0,
        prompt_tokens=5,
        completion_tokens=7,
        key_hash=hash_key("sk-test"),
    )
    return msgspec.structs.replace(base, **changes)


OUTCOMES = {
    "ok": rec(1),
    "failed": rec(2, status=500, finish_reason=None, ttft_ms=None, error_type="internal"),
    "cancelled": rec(3, finish_reason="cancelled", completion_tokens=2),
    "timeout": rec(4, status=504, finish_reason=None, ttft_ms=None, error_type="timeout"),
}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[AuditStore]:
    with AuditStore(db) as s:
        yield s


class FakeNow:
    """A settable wall clock in epoch seconds."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_log_from_before_a_column_gains_it_and_keeps_its_rows(db: Path) -> None:
    with sqlite3.connect(db) as conn:  # the schema before the tenant column
        old = ", ".join(
            f"{name} {kind}" for name, kind in METADATA_COLUMNS.items() if name != "tenant"
        )
        conn.execute(f"CREATE TABLE audit_log ({old}) STRICT")
        conn.execute(
            "INSERT INTO audit_log (request_id, ts, model, endpoint, status, duration_ms,"
            " prompt_tokens, completion_tokens) VALUES ('old', 1.0, 'm', 'chat', 200, 5.0, 1, 2)"
        )
    with AuditStore(db) as store:
        store.insert_many([rec(1, tenant="research")])
        rows = {row.request_id: row.tenant for row in store.query()}
    assert rows == {"old": None, rec(1).request_id: "research"}


def test_schema_holds_only_metadata(store: AuditStore, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        info = conn.execute("PRAGMA table_info(audit_log)").fetchall()
        indexes = conn.execute("PRAGMA index_list(audit_log)").fetchall()
        indexed = {
            row[1]: [c[2] for c in conn.execute(f"PRAGMA index_info({row[1]})")] for row in indexes
        }
    assert {row[1]: row[2] for row in info} == METADATA_COLUMNS
    # The only text columns are the enumerated metadata: nowhere to put a prompt.
    text = {row[1] for row in info if row[2] == "TEXT"}
    assert text == {
        "request_id",
        "model",
        "endpoint",
        "finish_reason",
        "error_type",
        "key_hash",
        "tenant",
    }
    assert set(AuditRecord.__struct_fields__) == set(METADATA_COLUMNS)
    assert sorted(indexed.values()) == [["model", "endpoint"], ["ts"]]


def test_wal_mode_is_on(store: AuditStore, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_strict_table_refuses_wrong_types(store: AuditStore) -> None:
    bad = rec(1, status=cast(Any, "not a status"))
    with pytest.raises(sqlite3.Error):
        store.insert_many([rec(2), bad])
    assert store.query() == []  # the whole batch rolled back


def test_outcomes_are_written_and_filterable(db: Path) -> None:
    with AuditWriter(db, flush_interval=60.0) as writer:
        for record in OUTCOMES.values():
            assert writer.submit(record)
        assert writer.flush(timeout=10)
        assert writer.statistics().written == 4
    with AuditStore(db) as store:
        assert store.query() == [OUTCOMES[k] for k in ("timeout", "cancelled", "failed", "ok")]
        assert store.query(status=500) == [OUTCOMES["failed"]]
        assert store.query(status=504)[0].error_type == "timeout"
        assert [r.finish_reason for r in store.query(status=200)] == ["cancelled", "stop"]
        assert store.query(model="other") == []
        assert store.query(endpoint=TEXT) == []
        assert len(store.query(model="tiny", endpoint=CHAT)) == 4
        assert store.query(since=T0 + 2, until=T0 + 4) == [
            OUTCOMES["cancelled"],
            OUTCOMES["failed"],
        ]


def test_records_encode_as_json(store: AuditStore) -> None:
    store.insert_many([OUTCOMES["failed"]])
    (back,) = store.query()
    decoded = msgspec.json.decode(msgspec.json.encode(back), type=AuditRecord)
    assert decoded == OUTCOMES["failed"]


def test_pagination_is_newest_first_and_capped(store: AuditStore) -> None:
    assert store.insert_many(rec(n) for n in range(1200)) == 1200
    first = store.query(limit=5000)
    assert len(first) == MAX_QUERY_LIMIT
    assert [r.request_id for r in first[:2]] == ["req-1199", "req-1198"]
    rest = store.query(limit=5000, offset=MAX_QUERY_LIMIT)
    assert [r.request_id for r in rest] == [f"req-{n}" for n in range(199, -1, -1)]
    page = store.query(limit=3, offset=3)
    assert [r.request_id for r in page] == ["req-1196", "req-1195", "req-1194"]
    for limit, offset in ((0, 0), (10, -1)):
        with pytest.raises(ValueError, match="limit"):
            store.query(limit=limit, offset=offset)


def test_stats_per_model_and_endpoint(store: AuditStore) -> None:
    # 100 chat requests lasting 1..100 ms, every tenth a 500; 4 completions, one 504.
    chat = [rec(n, duration_ms=float(n), status=500 if n % 10 == 0 else 200) for n in range(1, 101)]
    text = [rec(200 + n, endpoint=TEXT, duration_ms=float(n)) for n in range(4)]
    text[3] = msgspec.structs.replace(text[3], status=504, error_type="timeout")
    other = [rec(300, model="big", duration_ms=7.0)]
    store.insert_many([*chat, *text, *other])
    stats = store.stats()
    assert stats == [
        GroupStats(
            model="big", endpoint=CHAT, count=1, errors=0, error_rate=0.0,
            p50_ms=7.0, p95_ms=7.0, p99_ms=7.0,
        ),
        GroupStats(
            model="tiny", endpoint=CHAT, count=100, errors=10, error_rate=0.1,
            p50_ms=50.0, p95_ms=95.0, p99_ms=99.0,
        ),
        GroupStats(
            model="tiny", endpoint=TEXT, count=4, errors=1, error_rate=0.25,
            p50_ms=1.0, p95_ms=3.0, p99_ms=3.0,
        ),
    ]  # fmt: skip
    windowed = store.stats(since=T0 + 51, until=T0 + 101)
    assert [(s.model, s.endpoint, s.count, s.errors) for s in windowed] == [("tiny", CHAT, 50, 5)]
    assert windowed[0].p50_ms == 75.0
    assert store.stats(since=T0 + 10_000) == []


def test_rows_survive_a_restart(db: Path) -> None:
    with AuditWriter(db) as writer:
        for n in range(10):
            writer.submit(rec(n))
    # close() flushed what was queued; a new process sees it all.
    with AuditStore(db) as store:
        assert len(store.query()) == 10
        store.insert_many([rec(10)])
    with AuditWriter(db) as writer:
        writer.submit(rec(11))
    with AuditStore(db) as store:
        assert [r.request_id for r in store.query(limit=3)] == ["req-11", "req-10", "req-9"]


def test_delete_older_than_keeps_the_cutoff(store: AuditStore) -> None:
    store.insert_many(rec(n) for n in range(5))
    assert store.delete_older_than(T0 + 2) == 2
    assert [r.request_id for r in store.query()] == ["req-4", "req-3", "req-2"]
    assert store.delete_older_than(T0) == 0


def test_retention_deletes_only_old_rows(db: Path) -> None:
    now = FakeNow(T0 + 10 * DAY)
    with AuditWriter(db, retention_days=7.0, cleanup_interval=3600.0, now=now) as writer:
        old = [rec(n, ts=T0 + n) for n in range(3)]  # ten days old
        new = [rec(10 + n, ts=now.t - DAY) for n in range(2)]  # one day old
        for record in [*old, *new]:
            writer.submit(record)
        assert writer.flush(timeout=10)
        # The pass at start ran before these rows existed; the next is not due yet.
        assert writer.statistics().deleted == 0
        now.t += 3600.0
        assert writer.flush(timeout=10)
        assert writer.statistics().deleted == 3
    with AuditStore(db) as store:
        assert {r.request_id for r in store.query()} == {"req-10", "req-11"}


def test_full_queue_drops_and_counts_without_blocking(db: Path) -> None:
    go = threading.Event()
    writer = AuditWriter(db, queue_size=3, hold=go.wait)
    try:
        assert all(writer.submit(rec(n)) for n in range(3))
        started = time.monotonic()
        assert not writer.submit(rec(3))
        assert not writer.submit(rec(4))
        assert time.monotonic() - started < 1.0
        assert writer.dropped == 2
        assert not writer.flush(timeout=0.05)  # held: nothing can be written yet
        stats = writer.statistics()
        assert (stats.written, stats.dropped, stats.queued) == (0, 2, 3)
    finally:
        go.set()
        assert writer.close(timeout=10)
    stats = writer.statistics()
    assert (stats.written, stats.dropped, stats.queued) == (3, 2, 0)
    assert not writer.submit(rec(5))  # closed: refused and counted
    assert writer.dropped == 3


def test_write_errors_are_counted_and_not_fatal(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-the-prompt-said-something-private"
    bad = rec(1, status=cast(Any, secret))
    with caplog.at_level(logging.WARNING, logger="troupe.audit"), AuditWriter(db) as writer:
        writer.submit(bad)
        assert writer.flush(timeout=10)
        writer.submit(rec(2))
        assert writer.flush(timeout=10)
        stats = writer.statistics()
    assert (stats.written, stats.failed, stats.write_errors, stats.queued) == (1, 1, 1, 0)
    assert "lost 1 records" in caplog.text
    assert secret not in caplog.text
    assert "req-1" not in caplog.text


def test_batches_are_cut_at_batch_size(db: Path) -> None:
    go, third_batch = threading.Event(), threading.Event()
    holds: list[int] = []

    def hold() -> None:
        # Called before each batch: the third call means two batches were written.
        holds.append(1)
        if len(holds) == 3:
            third_batch.set()
        go.wait()

    # A 60 s interval outlasts the test: only full batches can be written without flush().
    writer = AuditWriter(db, batch_size=2, flush_interval=60.0, queue_size=10, hold=hold)
    try:
        for n in range(4):
            writer.submit(rec(n))
        go.set()
        assert third_batch.wait(10)
        assert writer.statistics().written == 4
    finally:
        writer.close(timeout=10)


def test_writer_rejects_bad_settings(db: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AuditWriter(db, batch_size=0)
    with pytest.raises(ValueError, match="positive"):
        AuditWriter(db, flush_interval=0.0)


def test_closed_store_refuses_calls(db: Path) -> None:
    store = AuditStore(db)
    store.close()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.query()


def test_key_hash_is_stable_and_not_the_key() -> None:
    key = "sk-live-0123456789abcdef"
    tag = hash_key(key)
    assert tag is not None
    assert tag == hash_key(key)
    assert len(tag) == 16
    assert int(tag, 16) >= 0  # hex
    assert key not in tag and tag not in key
    assert hash_key("sk-live-0123456789abcdeg") != tag
    assert hash_key(None) is None
