"""The audit log's writer: a dedicated thread that batches records into SQLite.

Request handlers run on the event loop and must never wait on disk, so they
hand records to :meth:`AuditWriter.submit`, which only puts them on a bounded
:class:`queue.Queue` and returns at once. When the queue is full the record
is dropped and counted: losing an audit row under overload is better than
slowing every request down to the speed of the disk.

The writer thread owns every write. It drains the queue in batches (one
transaction per batch, written once ``batch_size`` records are collected or
``flush_interval`` seconds after the batch's first record), and deletes rows
older than ``retention_days`` every ``cleanup_interval`` seconds. A failed
write is logged (type and origin only, never the records) and counted; the
thread carries on with the next batch.

Batching deadlines use the monotonic clock; retention reads the injectable
``now`` (epoch seconds), so tests can age records without sleeping.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import msgspec

from actors.audit.store import AuditRecord, AuditStore
from runtime.errors import describe_failure

log = logging.getLogger("troupe.audit")

_DAY = 86_400.0


@dataclass(eq=False)
class _Control:
    """A marker queued behind the records it must follow: flush, or flush and stop."""

    stop: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class WriterStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What an :class:`AuditWriter` has done so far.

    Attributes:
        written: Records committed to the database.
        dropped: Records refused by :meth:`AuditWriter.submit` (queue full or writer closed).
        queued: Records accepted but not yet written or failed.
        failed: Records lost because their batch failed to write.
        write_errors: Batches that failed to write.
        deleted: Rows removed by retention.
    """

    written: int
    dropped: int
    queued: int
    failed: int
    write_errors: int
    deleted: int


class AuditWriter:
    """Batches audit records into an :class:`AuditStore` from its own thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        queue_size: int = 10_000,
        retention_days: float = 30.0,
        cleanup_interval: float = 3600.0,
        now: Callable[[], float] = time.time,
        hold: Callable[[], object] | None = None,
    ) -> None:
        """Open the store at ``path`` and start the writer thread.

        Args:
            path: The SQLite file.
            batch_size: Records written per transaction at most.
            flush_interval: Seconds a partial batch waits for more records.
            queue_size: Records that may wait for the writer; more are dropped.
            retention_days: Age, in days, after which rows are deleted.
            cleanup_interval: Seconds between retention passes (the first runs at start).
            now: Reads the wall clock in epoch seconds (retention only).
            hold: Called on the writer thread before each batch; tests pass an
                ``Event.wait`` to hold the writer still.

        Raises:
            ValueError: A size or interval is not positive.
            sqlite3.Error: The database cannot be opened.
        """
        if batch_size < 1 or queue_size < 1:
            raise ValueError("batch_size and queue_size must be at least 1")
        if min(flush_interval, retention_days, cleanup_interval) <= 0:
            raise ValueError("intervals and retention must be positive")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retention_days = retention_days
        self.cleanup_interval = cleanup_interval
        self._now = now
        self._hold = hold
        self._store = AuditStore(path)
        self._queue: queue.Queue[AuditRecord | _Control] = queue.Queue(maxsize=queue_size)
        # Counters are bumped from callers' threads and the writer's: one lock for all.
        self._lock = threading.Lock()
        self._accepted = self._written = self._dropped = 0
        self._failed = self._write_errors = self._deleted = 0
        self._closed = False
        self._stop_queued = False
        self._last_cleanup: float | None = None
        self._thread = threading.Thread(target=self._run, name="troupe-audit", daemon=True)
        self._thread.start()

    def submit(self, record: AuditRecord) -> bool:
        """Queue ``record`` for writing; never blocks.

        Args:
            record: The request's metadata.

        Returns:
            ``True`` if queued, ``False`` if dropped (queue full or writer closed).
        """
        with self._lock:
            if not self._closed:
                try:
                    self._queue.put_nowait(record)
                except queue.Full:
                    pass
                else:
                    self._accepted += 1
                    return True
            self._dropped += 1
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every record submitted before this call is written (or failed).

        Also runs a retention pass if one is due by ``now``.

        Args:
            timeout: Seconds to wait at most; ``None`` waits for as long as it takes.

        Returns:
            ``True`` once flushed, ``False`` if ``timeout`` passed first.
        """
        if self._closed:
            return not self._thread.is_alive()
        return self._send(_Control(), timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Write what is queued, stop the thread and close the store. Idempotent.

        The thread is a daemon, so a process that exits without calling this
        loses whatever was still queued instead of hanging on it.

        Args:
            timeout: Seconds to wait for the thread at most; ``None`` waits indefinitely.

        Returns:
            ``True`` if the thread finished, ``False`` if ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closed = True
        if not self._stop_queued:
            try:
                # Behind every accepted record: submit refuses new ones once closed.
                self._queue.put(_Control(stop=True), timeout=timeout)
            except queue.Full:
                return False
            self._stop_queued = True
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._thread.join(remaining)
        return not self._thread.is_alive()

    def statistics(self) -> WriterStatistics:
        """A snapshot of the writer's counters."""
        with self._lock:
            return WriterStatistics(
                written=self._written,
                dropped=self._dropped,
                queued=self._accepted - self._written - self._failed,
                failed=self._failed,
                write_errors=self._write_errors,
                deleted=self._deleted,
            )

    @property
    def dropped(self) -> int:
        """Records refused by :meth:`submit` so far."""
        with self._lock:
            return self._dropped

    def _send(self, control: _Control, timeout: float | None) -> bool:
        """Queue ``control`` behind everything already submitted and wait for the writer."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # Blocking is fine here: flush and close are the callers who asked to wait.
            self._queue.put(control, timeout=timeout)
        except queue.Full:
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return control.done.wait(remaining)

    def _run(self) -> None:
        try:
            self._maintain()  # the first retention pass, before any new record
            while True:
                if self._hold is not None:
                    self._hold()
                batch, control = self._collect()
                self._write(batch)
                self._maintain()
                if control is not None:
                    control.done.set()
                    if control.stop:
                        return
        finally:
            self._store.close()

    def _collect(self) -> tuple[list[AuditRecord], _Control | None]:
        """The next batch, cut short by a control marker; empty when idle a whole interval."""
        batch: list[AuditRecord] = []
        try:
            # Waking up when idle lets retention run on schedule without traffic.
            item = self._queue.get(timeout=self.flush_interval)
        except queue.Empty:
            return batch, None
        deadline = time.monotonic() + self.flush_interval
        while True:
            if isinstance(item, _Control):
                return batch, item
            batch.append(item)
            remaining = deadline - time.monotonic()
            if len(batch) >= self.batch_size or remaining <= 0:
                return batch, None
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return batch, None

    def _write(self, batch: list[AuditRecord]) -> None:
        if not batch:
            return
        try:
            self._store.insert_many(batch)
        except Exception as exc:  # the writer thread must outlive any bad batch
            # Never log the records: only how many and what kind of failure.
            log.warning("audit: lost %d records: %s", len(batch), describe_failure(exc))
            with self._lock:
                self._failed += len(batch)
                self._write_errors += 1
        else:
            with self._lock:
                self._written += len(batch)

    def _maintain(self) -> None:
        """Delete rows past retention when a cleanup is due by ``now``."""
        now = self._now()
        if self._last_cleanup is not None and now - self._last_cleanup < self.cleanup_interval:
            return
        self._last_cleanup = now
        try:
            deleted = self._store.delete_older_than(now - self.retention_days * _DAY)
        except Exception as exc:  # a failed cleanup is retried next interval
            log.warning("audit: retention cleanup failed: %s", describe_failure(exc))
            return
        with self._lock:
            self._deleted += deleted

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
