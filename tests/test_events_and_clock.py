"""The event bus never blocks its publisher; the manual clock wakes sleepers in order."""

from __future__ import annotations

import anyio
import pytest

from runtime import EventBus, ManualClock

pytestmark = pytest.mark.timeout(10)


async def test_each_subscriber_has_its_own_bound_and_drop_count() -> None:
    bus = EventBus[int]()
    roomy = bus.subscribe(capacity=10)
    tight = bus.subscribe(capacity=2)
    for n in range(5):
        bus.publish_nowait(n)
    assert [roomy.receive_nowait() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert [tight.receive_nowait() for _ in range(2)] == [0, 1]
    assert (roomy.dropped, tight.dropped) == (0, 3)
    stats = bus.statistics()
    assert (stats.subscribers, stats.published, stats.dropped) == (2, 5, 3)
    await tight.aclose()
    bus.publish_nowait(5)
    assert bus.statistics().subscribers == 1
    bus.close()
    assert roomy.receive_nowait() == 5
    with pytest.raises(anyio.EndOfStream):
        await roomy.receive()
    await roomy.aclose()


async def test_iterating_a_subscription_ends_when_the_bus_closes() -> None:
    bus = EventBus[str]()
    async with bus.subscribe() as subscription:
        bus.publish_nowait("a")
        bus.publish_nowait("b")
        bus.close()
        assert [event async for event in subscription] == ["a", "b"]


async def test_manual_clock_wakes_sleepers_by_deadline_only_when_advanced() -> None:
    clock = ManualClock(start=100.0)
    woke: list[float] = []

    async def sleeper(deadline: float) -> None:
        await clock.sleep_until(deadline)
        woke.append(deadline)

    async with anyio.create_task_group() as tg:
        for deadline in (103.0, 101.0, 102.0):
            tg.start_soon(sleeper, deadline)
        await anyio.wait_all_tasks_blocked()
        assert clock.sleepers == 3
        clock.advance(1.5)
        await anyio.wait_all_tasks_blocked()
        assert woke == [101.0]
        clock.advance(1.0)  # sleepers woken by one advance run in scheduler order
        await anyio.wait_all_tasks_blocked()
        assert woke == [101.0, 102.0]
        clock.advance(10.0)
    assert woke == [101.0, 102.0, 103.0]
    await clock.sleep_until(50.0)  # a past deadline returns at once
    assert clock.wall() - clock.monotonic() == pytest.approx(1_767_225_600.0 - 100.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1.0)
