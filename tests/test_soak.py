"""Reliability: a soak at 64 concurrent clients (scenario 7).

With ``--long`` (``make reliability``), 20,000 streaming requests: none lost,
the server's resident memory peaks less than 10 % higher in the last tenth
than during warm-up (the first tenth) and grows by less than 6 KiB per request
served after the warm-up, and the p95 latency of the last tenth of the
requests stays within 1.5x of the first tenth's.

The default suite runs 500 and asserts only that none is lost, recording the
same figures: a memory trend needs the long run's samples to stand out of
MLX's buffer-cache noise, and a latency ratio holds only on a machine that
nothing else shares, which a test suite cannot assume.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import psutil
import pytest

from tests.drills import model_name
from tests.load import Result, chat_body, kinds, percentile, run_clients
from tests.server import running_server

pytestmark = pytest.mark.timeout(3600)

CLIENTS = 64
SAMPLE_EVERY = 20
"""Completions between two readings of the server's resident memory."""
PROMPTS = 100
"""Distinct prompts: more than the prefix cache holds, so it hits, misses and evicts."""
GROWTH_PER_REQUEST = 6 * 1024
"""Bytes of resident memory a request served after the warm-up may add, on average.

The 10 % bound on peaks alone lets about 14 KiB a request through at the
default scale (10 % of ~210 MiB over 1,500 requests). Measured at the default
scale on the 2-core machine: -0.6 to 2.5 KiB a request in six runs without a
leak, 16.3 and 18.5 KiB in two runs with a deliberate leak of 15 KiB a request.
"""


@pytest.fixture
def anyio_backend() -> str:
    """The server is a separate process; one client backend is enough."""
    return "asyncio"


async def test_soak_loses_nothing_and_neither_leaks_nor_slows_down(
    model_dir: Path, tmp_path: Path, long_run: bool, figures: dict[str, object]
) -> None:
    total = 20_000 if long_run else 500
    # Warm-up: until MLX's buffer cache has seen the batch shapes of a full
    # client pool many times over and the prefix cache is full (it holds 32).
    warm_up = max(total // 10, 500)
    audit = ("--audit-path", str(tmp_path / "a.db"))
    # The BLAS `troupe serve` picks: no answer is compared here (see conftest).
    with running_server(model_dir, tmp_path, *audit, env={"TROUPE_BLAS": "auto"}) as server:
        model = model_name(server)
        process = psutil.Process(server.process.pid)
        # Resident memory moves by tens of MiB with what MLX's buffer cache holds
        # at the instant it is read (it depends on the batch then running), so
        # peaks are compared: the highest reading while warming up against the
        # highest over the last tenth. A leak raises the second; noise does not.
        warm_peak = end_peak = 0
        finished = 0
        # (requests finished, resident bytes) of every reading after the warm-up.
        after_warm_up: list[tuple[int, int]] = []

        def after_each(result: Result) -> None:
            nonlocal finished, warm_peak, end_peak
            finished += 1
            if finished % SAMPLE_EVERY:
                return
            reading = process.memory_info().rss
            if finished <= warm_up:
                warm_peak = max(warm_peak, reading)
                return
            after_warm_up.append((finished, reading))
            if finished > total - total // 10:
                end_peak = max(end_peak, reading)

        def body(n: int) -> dict[str, object]:
            return chat_body(model, f"Question {n % PROMPTS}: what is {n % 7}?", 8)

        results = await run_clients(server.url, CLIENTS, total, body, on_result=after_each)

    seen = kinds(results)
    assert seen == {"completed": total}, seen
    if not long_run:
        figures.update(requests=total, clients=CLIENTS, outcomes=dict(seen))
        return
    growth = (end_peak - warm_peak) / warm_peak
    # Per request, as a leak grows: the least-squares slope of every reading
    # after the warm-up against the requests served. The two peaks' difference
    # divided by the requests served swung from -2 to +8.5 KiB a request without
    # a leak (a peak is one reading, at the mercy of the batch then running),
    # too close to a 15 KiB leak's figure; the slope, fitted through 75
    # readings, stayed within -0.6 to 2.5 KiB.
    served = [count for count, _ in after_warm_up]
    resident = [reading for _, reading in after_warm_up]
    per_request = statistics.linear_regression(served, resident).slope
    tenth = total // 10
    first = percentile([r.latency for r in results[:tenth]], 95)
    last = percentile([r.latency for r in results[-tenth:]], 95)
    figures.update(
        requests=total,
        clients=CLIENTS,
        outcomes=dict(seen),
        rss_warm_peak_mb=round(warm_peak / 2**20, 1),
        rss_end_peak_mb=round(end_peak / 2**20, 1),
        rss_growth_pct=round(growth * 100, 2),
        rss_growth_per_request_kib=round(per_request / 1024, 2),
        p95_first_tenth_ms=round(first * 1000, 1),
        p95_last_tenth_ms=round(last * 1000, 1),
    )
    assert per_request < GROWTH_PER_REQUEST, f"{per_request / 1024:.1f} KiB a request"
    assert growth < 0.10
    assert last <= 1.5 * first
