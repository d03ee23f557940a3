"""The arithmetic of admission control: token buckets, drain rate, prompt estimates.

Everything here is pure: no actor, no I/O, no clock of its own. Every method
that depends on time takes ``now``, monotonic seconds read by the caller from
the actor system's clock, so tests drive time by hand and the same state works
under any clock.

* :class:`TokenBucket` and :class:`ClientBuckets`: a per-client request-rate
  limit with a bounded, least-recently-used map of buckets.
* :class:`DrainRate`: an exponentially weighted estimate of how many requests
  per second leave the queue, measured only while something is in flight.
* :func:`estimate_prompt_tokens` and :func:`backlog_retry_after`: the prompt
  size guessed before tokenization, and the ``Retry-After`` derived from the
  drain rate.
"""

from __future__ import annotations

import math
from collections import OrderedDict

CHARS_PER_TOKEN = 2
"""Characters counted as one token by the estimate before tokenization.

Byte-level BPE tokenizers average about 4 characters per token on English
prose and 2 to 3 on code; 2 makes the estimate an upper bound for most text,
so admission errs on the side of the queue. Scripts that take one or more
tokens per character (CJK, emoji) can exceed it; ``Tokenized`` then corrects
the figure once the prompt has really been tokenized."""
TOKENS_PER_MESSAGE = 8
"""Tokens added per chat message for the template's role markers and separators."""

DEFAULT_RETRY_AFTER = 1
"""Seconds suggested while no drain rate has been measured yet."""
MAX_RETRY_AFTER = 60
"""Longest ``Retry-After`` ever suggested, seconds; beyond it clients give up anyway."""
DRAIN_RATE_FLOOR = 0.1
"""Requests per second assumed at least, so a stalled queue yields the maximum, not infinity."""
DRAIN_TIME_CONSTANT = 10.0
"""Seconds of busy time over which the drain-rate estimate forgets (1/e) old releases."""
MIN_SPAN = 1.0
"""Shortest busy time, seconds, over which a rate is computed; avoids dividing by ~0."""


def ceil_seconds(seconds: float) -> int:
    """Whole seconds to wait, rounded up, at least 1 (``Retry-After`` has no fractions)."""
    if math.isnan(seconds):
        return 1
    return max(1, math.ceil(min(seconds, 1e9)))


def estimate_prompt_tokens(prompt_chars: int, messages: int = 1) -> int:
    """Upper-bound-ish prompt size before tokenization.

    The formula is ``ceil(prompt_chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE
    * messages``: 2 characters per token, plus 8 tokens of template per
    message (a text completion counts as one message). Negative inputs count
    as 0 characters and 1 message.
    """
    chars = max(0, prompt_chars)
    return -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * max(1, messages)


def backlog_retry_after(
    in_flight: int,
    drain_rate: float | None,
    *,
    floor: float = DRAIN_RATE_FLOOR,
    default: int = DEFAULT_RETRY_AFTER,
    maximum: int = MAX_RETRY_AFTER,
) -> int:
    """Seconds until the requests in flight should have left the queue.

    ``ceil(in_flight / max(drain_rate, floor))`` clamped to ``[1, maximum]``;
    ``default`` while nothing has been measured. Waiting for the whole backlog
    rather than for one free slot spreads the retries of every client turned
    away at the same moment, so they do not refill the queue in one stampede.
    """
    if drain_rate is None:
        return max(1, min(default, maximum))
    return max(1, min(maximum, ceil_seconds(in_flight / max(drain_rate, floor))))


class TokenBucket:
    """A classic token bucket: ``rate`` tokens per second, holding at most ``burst``.

    A new bucket starts full, so a client's first ``burst`` requests pass at
    once. ``now`` must not go backwards; if it does, no tokens are added.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError("a token bucket needs a positive, finite rate")
        if burst < 1:
            raise ValueError("a token bucket needs a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (refills the bucket up to ``burst``)."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
            self._stamp = now
        return self._tokens

    def take(self, now: float) -> float:
        """Take one token; return 0.0 if it was taken, else seconds until one is there."""
        available = self.tokens(now)
        if available >= 1.0:
            self._tokens = available - 1.0
            return 0.0
        return (1.0 - available) / self.rate

    def take_many(self, count: float, now: float) -> float:
        """Take ``count`` tokens; 0.0 if they were taken, else seconds until they are there."""
        available = self.tokens(now)
        if available >= count:
            self._tokens = available - count
            return 0.0
        return (count - available) / self.rate

    def reconfigure(self, rate: float, burst: int, now: float) -> None:
        """Refill at ``rate`` and hold at most ``burst`` from ``now`` on (tokens kept, capped)."""
        self.tokens(now)  # credit the time so far at the old rate
        self.rate, self.burst = rate, burst
        self._tokens = min(self._tokens, float(burst))


class ClientBuckets:
    """One :class:`TokenBucket` per client, at most ``max_clients`` of them.

    When the map is full, the least recently used bucket is forgotten. That
    bucket has had the longest time to refill, so forgetting it (a client seen
    again starts with a full bucket) usually loses nothing; the cap keeps a
    flood of distinct client keys from growing memory without bound.
    """

    def __init__(self, rate: float, burst: int, max_clients: int) -> None:
        if rate < 0 or not math.isfinite(rate):
            raise ValueError("the rate limit must be a finite number >= 0 (0: off)")
        if burst < 1:
            raise ValueError("the rate-limit burst must be at least 1")
        if max_clients < 1:
            raise ValueError("at least one client bucket must be kept")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.evictions = 0

    def reconfigure(self, rate: float, burst: int, now: float) -> None:
        """A new rate and burst for every client, at run time (an operator's change).

        Clients keep what they have left, up to the new burst, so tightening
        the limit does not hand everyone a fresh burst; turning the limit off
        forgets every bucket, and turning it on again starts them full.
        """
        if rate < 0 or not math.isfinite(rate) or burst < 1:
            raise ValueError("need a finite rate limit >= 0 (0: off) and a burst >= 1")
        self.rate, self.burst = rate, burst
        if not self.enabled:
            self._buckets.clear()
        for bucket in self._buckets.values():
            bucket.reconfigure(rate, burst, now)

    @property
    def enabled(self) -> bool:
        """Whether requests are limited at all (a rate of 0 turns the limit off)."""
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, client: str) -> bool:
        return client in self._buckets

    def take(self, client: str, now: float) -> float:
        """Charge ``client`` one request: 0.0 if allowed, else seconds until it would be."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
                self.evictions += 1
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(client)
        return bucket.take(now)


class DrainRate:
    """Requests leaving the queue per second, exponentially weighted over busy time.

    Time counts only while the queue is busy (between :meth:`busy` and
    :meth:`idle`): an idle server releases nothing because nothing was asked,
    which says nothing about how fast it drains. Each release adds 1 to a sum
    that decays by ``exp(-dt / time_constant)``; at a steady rate ``r`` the sum
    tends to ``r * time_constant``. Early on the sum has not filled up yet, so
    it is divided by ``time_constant * (1 - exp(-T / time_constant))`` instead
    (``T``: busy time so far, at least :data:`MIN_SPAN`), which makes the first
    estimates plain averages (releases / busy time) rather than underestimates.
    """

    def __init__(self, time_constant: float = DRAIN_TIME_CONSTANT) -> None:
        if not time_constant > 0 or not math.isfinite(time_constant):
            raise ValueError("the drain-rate time constant must be positive and finite")
        self.time_constant = time_constant
        self.observed = 0
        self._sum = 0.0
        self._at = 0.0  # busy time of the last update of _sum
        self._busy_total = 0.0  # busy time accumulated before the current busy period
        self._busy_since: float | None = None

    def busy(self, now: float) -> None:
        """Start counting time: something is in flight (idempotent)."""
        if self._busy_since is None:
            self._busy_since = now

    def idle(self, now: float) -> None:
        """Stop counting time: nothing is in flight (idempotent)."""
        if self._busy_since is not None:
            self._busy_total += max(0.0, now - self._busy_since)
            self._busy_since = None

    def busy_time(self, now: float) -> float:
        """Seconds spent busy so far."""
        running = 0.0 if self._busy_since is None else max(0.0, now - self._busy_since)
        return self._busy_total + running

    def observe(self, now: float, count: int = 1) -> None:
        """Record ``count`` requests leaving the queue at ``now``."""
        self._decay(self.busy_time(now))
        self._sum += max(0, count)
        self.observed += max(0, count)

    def rate(self, now: float) -> float | None:
        """Estimated releases per second, or ``None`` before the first release."""
        if self.observed == 0:
            return None
        span = self.busy_time(now)
        self._decay(span)
        filled = 1.0 - math.exp(-max(span, MIN_SPAN) / self.time_constant)
        return self._sum / (self.time_constant * filled)

    def _decay(self, busy_now: float) -> None:
        elapsed = busy_now - self._at
        if elapsed > 0:
            self._sum *= math.exp(-elapsed / self.time_constant)
            self._at = busy_now
