"""Memory-aware admission: KV cache estimates against what the budget has left."""

from __future__ import annotations

import pytest

from actors.intake.protocol import Admit, Admitted, Rejected, ReportMemory, ShedReason, Tokenized
from actors.intake.settings import IntakeSettings
from tests.intake_harness import Intake, running

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]
KIB = 1000  # bytes per KV token in these tests: 1,000 tokens are 1 MB


async def ask(intake: Intake, request_id: str, max_tokens: int, choices: int = 1) -> object:
    admit = Admit(
        request_id=request_id,
        client="c",
        endpoint="chat",
        prompt_chars=0,  # estimated at 8 tokens (the template's overhead)
        max_tokens=max_tokens,
        choices=choices,
    )
    return await intake.ref.ask(admit, timeout=5.0)


async def test_memory_is_not_checked_until_the_engine_reports_its_figures() -> None:
    async with running(IntakeSettings(memory_budget=1_000)) as intake:
        assert isinstance(await ask(intake, "a", 10_000), Admitted)
        assert isinstance(await ask(intake, "b", 10_000), Admitted)
        assert (await intake.stats()).memory_left_bytes is None


async def test_a_request_whose_kv_cache_would_not_fit_is_shed_before_prefill() -> None:
    async with running(IntakeSettings(memory_budget=1_000_000)) as intake:
        await intake.ref.tell(ReportMemory(kv_bytes_per_token=KIB, model_bytes=500_000))
        assert isinstance(await ask(intake, "r1", 300), Admitted)  # 308 tokens: 308 kB
        refused = await ask(intake, "r2", 300)  # 616 kB would pass the 500 kB left
        assert isinstance(refused, Rejected)
        assert refused.reason is ShedReason.MEMORY_FULL
        assert refused.retry_after >= 1
        assert "memory budget" in refused.detail
        assert "0.3 MiB booked by 1 requests" in refused.detail
        assert isinstance(await ask(intake, "r3", 150), Admitted)  # 466 kB in all
        stats = await intake.stats()
        assert (stats.kv_tokens_booked, stats.memory_left_bytes) == (466, 500_000)
        assert stats.shed_memory_full == 1
        await intake.release("r1")
        assert (await intake.stats()).kv_tokens_booked == 158
        assert isinstance(await ask(intake, "r2", 300), Admitted)


async def test_real_prompt_sizes_and_choices_count_in_the_booking() -> None:
    async with running(IntakeSettings(memory_budget=10_000_000)) as intake:
        await intake.ref.tell(ReportMemory(kv_bytes_per_token=KIB, model_bytes=0))
        assert isinstance(await ask(intake, "n3", 30, choices=3), Admitted)
        assert (await intake.stats()).kv_tokens_booked == 3 * 8 + 30
        await intake.ref.tell(Tokenized(request_id="n3", prompt_tokens=100))
        assert (await intake.stats()).kv_tokens_booked == 3 * 100 + 30


async def test_a_growing_prefix_cache_leaves_less_and_a_lone_giant_still_runs() -> None:
    async with running(IntakeSettings(memory_budget=1_000_000)) as intake:
        await intake.ref.tell(ReportMemory(kv_bytes_per_token=KIB, model_bytes=0))
        assert isinstance(await ask(intake, "giant", 5_000), Admitted)  # alone: admitted
        assert isinstance(await ask(intake, "small", 10), Rejected)
        await intake.release("giant")
        assert isinstance(await ask(intake, "r1", 400), Admitted)
        assert isinstance(await ask(intake, "r2", 400), Admitted)  # 816 kB of 1 MB
        await intake.ref.tell(ReportMemory(kv_bytes_per_token=KIB, model_bytes=300_000))
        assert isinstance(await ask(intake, "r3", 10), Rejected)  # 700 kB left now
        assert (await intake.stats()).memory_left_bytes == 700_000
