"""Actors and refs: asks, tells, deadlines, crashes mid-ask, mailbox policies."""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from runtime import (
    NO_BACKOFF,
    ActorDied,
    ActorStopped,
    ActorSystem,
    AskTimeout,
    MailboxConfig,
    MailboxFull,
    ManualClock,
    Overflow,
    SupervisorSpec,
    UnexpectedReply,
)
from runtime.mailbox import DeadReason
from tests.support import Crash, CrashLater, Hold, Journal, Ping, Pong, probe, worker

pytestmark = pytest.mark.timeout(20)


def tree(journal: Journal, **mailbox: object) -> SupervisorSpec:
    config = MailboxConfig(**mailbox)  # type: ignore[arg-type]
    return SupervisorSpec("root", [probe("a", journal, mailbox=config)], backoff=NO_BACKOFF)


async def test_ask_returns_the_handlers_answer_and_tell_is_handled_in_order() -> None:
    journal = Journal()
    async with ActorSystem(tree(journal)) as system:
        ref = system.ref("a")
        for n in range(5):
            await ref.tell(Ping(n=n))
        ref.tell_nowait(Ping(n=5))
        answer = await ref.ask(Ping(n=6), timeout=5, expect=Pong)
        assert answer == Pong(n=6, incarnation=1)
        assert [n for _, n in journal.handled] == list(range(7))


async def test_ask_with_wrong_expected_type_is_a_typed_error() -> None:
    async with ActorSystem(tree(Journal())) as system:
        with pytest.raises(UnexpectedReply):
            await system.ref("a").ask(Ping(), timeout=5, expect=Crash)


async def test_only_messages_are_accepted() -> None:
    async with ActorSystem(tree(Journal())) as system:
        with pytest.raises(TypeError, match="Message"):
            await system.ref("a").tell(("not", "a", "message"))  # type: ignore[arg-type]


async def test_crash_while_handling_an_ask_fails_that_ask_at_once() -> None:
    journal = Journal()
    async with ActorSystem(tree(journal)) as system:
        ref = system.ref("a")
        with pytest.raises(ActorDied) as died:
            await ref.ask(Crash(), timeout=30)
        assert "RuntimeError" in died.value.reason
        await system.wait_idle()
        assert await ref.ask(Ping(n=1), timeout=5) == Pong(n=1, incarnation=2)


async def test_crash_in_the_middle_of_an_ask_from_another_task() -> None:
    """The actor is busy with an ask when its background task crashes it."""
    journal = Journal()
    async with ActorSystem(tree(journal)) as system:
        ref = system.ref("a")
        await ref.tell(CrashLater(key="boom"))
        outcome: list[BaseException] = []

        async def ask_held() -> None:
            try:
                await ref.ask(Hold(key="never"), timeout=30)
            except ActorDied as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_held)
            await wait_all_tasks_blocked()  # the ask is being handled, parked on its gate
            journal.gate("boom").set()
        assert len(outcome) == 1
        assert not journal.gate("never").is_set()


async def test_ask_past_its_deadline_times_out_and_is_skipped_if_still_queued() -> None:
    journal = Journal()
    async with ActorSystem(tree(journal)) as system:
        ref = system.ref("a")
        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.tell, Hold(key="g", n=1))
            await wait_all_tasks_blocked()
            with pytest.raises(AskTimeout):
                await ref.ask(Ping(n=2), timeout=0.05)
            journal.gate("g").set()
        await ref.ask(Ping(n=3), timeout=5)
        assert [n for _, n in journal.handled] == [1, 3]  # the expired ask never ran
        counts = system.services.dead_letters.counts
        assert counts[("a", DeadReason.EXPIRED)] == 1


async def test_reject_policy_refuses_when_full_and_counts_dead_letters() -> None:
    journal = Journal()
    async with ActorSystem(tree(journal, capacity=2)) as system:
        ref = system.ref("a")
        await ref.tell(Hold(key="g"))
        await wait_all_tasks_blocked()  # the Hold is being handled: the mailbox is empty
        await ref.tell(Ping(n=1))
        ref.tell_nowait(Ping(n=2))
        with pytest.raises(MailboxFull):
            ref.tell_nowait(Ping(n=3))
        with pytest.raises(MailboxFull):
            await ref.tell(Ping(n=4))
        with pytest.raises(MailboxFull):
            await ref.ask(Ping(n=5), timeout=5)
        status = worker(system, "a")
        assert (status.mailbox_depth, status.mailbox_capacity) == (2, 2)
        assert status.dead_letters == 3
        journal.gate("g").set()
        await wait_all_tasks_blocked()  # the actor drains its mailbox
        await ref.ask(Ping(n=6), timeout=5)
        assert [n for _, n in journal.handled] == [0, 1, 2, 6]


async def test_block_policy_waits_for_room_then_gives_up_after_its_timeout() -> None:
    journal = Journal()
    async with ActorSystem(
        tree(journal, capacity=1, overflow=Overflow.BLOCK, block_timeout=5.0)
    ) as system:
        ref = system.ref("a")
        await ref.tell(Hold(key="g"))
        await wait_all_tasks_blocked()
        await ref.tell(Ping(n=1))  # fills the mailbox
        delivered = anyio.Event()

        async def blocked_sender() -> None:
            await ref.tell(Ping(n=2))
            delivered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_sender)
            await wait_all_tasks_blocked()
            assert not delivered.is_set()
            with pytest.raises(MailboxFull):
                ref.tell_nowait(Ping(n=99))  # tell_nowait never waits, whatever the policy
            journal.gate("g").set()
        await ref.ask(Ping(n=3), timeout=5)
        assert [n for _, n in journal.handled] == [0, 1, 2, 3]


async def test_block_policy_times_out_with_mailbox_full() -> None:
    journal = Journal()
    async with ActorSystem(
        tree(journal, capacity=1, overflow=Overflow.BLOCK, block_timeout=0.05)
    ) as system:
        ref = system.ref("a")
        await ref.tell(Hold(key="g"))
        await wait_all_tasks_blocked()
        await ref.tell(Ping(n=1))
        with pytest.raises(MailboxFull):
            await ref.tell(Ping(n=2))
        journal.gate("g").set()


async def test_messages_sent_during_a_restart_are_held_and_delivered_in_order() -> None:
    clock = ManualClock()
    journal = Journal()
    spec = SupervisorSpec("root", [probe("a", journal, mailbox=MailboxConfig(capacity=3))])
    async with ActorSystem(spec, clock=clock) as system:
        ref = system.ref("a")
        for _ in range(2):  # the second consecutive crash is delayed by the backoff
            with pytest.raises(ActorDied):
                await ref.ask(Crash(), timeout=5)
            await system.wait_idle()
        assert worker(system, "a").state == "restarting"
        answers: list[Pong] = []

        async def ask(n: int) -> None:
            answers.append(await ref.ask(Ping(n=n), timeout=30, expect=Pong))

        async with anyio.create_task_group() as tg:
            await ref.tell(Ping(n=1))
            tg.start_soon(ask, 2)
            await wait_all_tasks_blocked()
            ref.tell_nowait(Ping(n=3))
            with pytest.raises(MailboxFull):  # held messages are bounded by the capacity
                ref.tell_nowait(Ping(n=4))
            assert worker(system, "a").mailbox_depth == 3
            clock.advance(system.spec.backoff.nominal(2))
        assert [n for _, n in journal.handled] == [1, 2, 3]
        assert answers == [Pong(n=2, incarnation=3)]


async def test_stopped_actor_rejects_new_messages_and_fails_queued_asks() -> None:
    journal = Journal()
    async with ActorSystem(tree(journal)) as system:
        ref = system.ref("a")
        outcomes: list[BaseException] = []

        async def queued_ask() -> None:
            try:
                await ref.ask(Ping(n=2), timeout=30)
            except ActorDied as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ref.tell, Hold(key="g"))
            await wait_all_tasks_blocked()
            tg.start_soon(queued_ask)
            await wait_all_tasks_blocked()
            await system.stop()
        assert len(outcomes) == 1
        with pytest.raises(ActorStopped):
            await ref.tell(Ping())
        with pytest.raises(ActorStopped):
            await ref.ask(Ping(), timeout=5)
