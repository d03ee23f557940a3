"""Models from the Hugging Face Hub: downloaded with retries, never used half-written.

``huggingface_hub`` writes each file as ``blobs/<hash>.incomplete``, renames it
when it is whole, and only then links it into the snapshot; an interrupted
file resumes where it stopped. What it does not do is try again when the Hub
cannot be reached or answers 429/5xx: then it falls back to the local cache and
fails if the model is not there. :func:`download` retries those failures with
exponential backoff and full jitter (each delay drawn between 0 and
``initial x 2^n``, capped), gives up at once on what a retry cannot fix (no
such repository, no access), and checks the snapshot before handing it out,
so a model with files missing is never loaded.

``HF_ENDPOINT`` points it at a mirror; ``HF_HUB_OFFLINE=1`` uses the cache only.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

log = logging.getLogger("troupe.model")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try: timeouts, rate limits, server trouble."""
TRANSPORT_ERRORS = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "ReadError",
        "RemoteProtocolError",
        "TimeoutException",
        "ConnectionError",
        "Timeout",
    }
)
"""Network failures by class name: huggingface_hub has used requests, httpx and
httpx2 in turn, and a name check holds across all three."""


@dataclass(frozen=True)
class HubRetry:
    """How often and how patiently a download is tried (defaults: about a minute in all)."""

    attempts: int = 6
    initial: float = 1.0
    """Seconds: the first delay is drawn from [0, initial], the next from [0, 2 x initial] ..."""
    cap: float = 30.0
    """Seconds no single delay exceeds."""

    def delay(self, failures: int, rng: random.Random) -> float:
        """The delay after ``failures`` failed tries (full jitter)."""
        return rng.uniform(0.0, min(self.cap, self.initial * 2 ** (failures - 1)))


def download(
    repo_id: str,
    retry: HubRetry | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Path:
    """The local snapshot of ``repo_id`` (downloaded, or from the cache).

    Raises:
        Exception: huggingface_hub's error for a failure a retry cannot fix, or
            the last one once the tries are spent.
    """
    retry = retry or HubRetry()
    rng = rng or random.Random()
    failures = 0
    while True:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=DEFAULT_ALLOW_PATTERNS))
        except Exception as exc:
            failures += 1
            if failures >= retry.attempts or not transient(exc):
                raise
            wait = retry.delay(failures, rng)
            log.warning(
                "downloading %s failed (%s); try %d of %d in %.1fs",
                repo_id,
                type(exc).__name__,
                failures + 1,
                retry.attempts,
                wait,
                extra={"event": "hub_retry", "model": repo_id},
            )
            sleep(wait)


def transient(exc: BaseException) -> bool:
    """Whether ``exc``, or what caused it, is a failure another try may not meet."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status in RETRY_STATUSES
        if type(current).__name__ in TRANSPORT_ERRORS or isinstance(current, TimeoutError):
            return True
        current = current.__cause__ or current.__context__
    return False
