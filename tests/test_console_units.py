"""The console's parts without a server: the audit feed, rate-limit changes, saving settings."""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import pytest

from actors.audit import AuditRecord
from actors.intake.limits import ClientBuckets
from actors.intake.settings import IntakeSettings
from actors.intake.state import IntakeState
from api.admin.audit_feed import AuditFeed, RowFilter
from api.config.toml_file import ConfigFile
from api.http.problems import HTTPProblem

pytestmark = pytest.mark.timeout(30)


def row(number: int, endpoint: str = "chat") -> AuditRecord:
    return AuditRecord(
        request_id=f"r{number}", ts=1.0, model="m", endpoint=endpoint, status=200, duration_ms=1.0
    )


@pytest.mark.anyio
async def test_a_client_a_whole_buffer_behind_is_cut_off_and_others_are_not() -> None:
    feed = AuditFeed(buffer=2, max_clients=2)
    with feed.subscribe() as (slow, slow_client), feed.subscribe() as (fast, fast_client):
        for number in range(3):
            feed.publish(row(number))
            if number < 2:
                assert (await fast.receive())["request_id"] == f"r{number}"
        assert slow_client.lagged and not fast_client.lagged
        assert feed.lagged_total == 1 and feed.clients == 1
        # The slow one gets what its buffer held, then the end.
        assert [(await slow.receive())["request_id"] for _ in range(2)] == ["r0", "r1"]
        with pytest.raises(anyio.EndOfStream):
            await slow.receive()
        assert (await fast.receive())["request_id"] == "r2"
    assert feed.clients == 0


@pytest.mark.anyio
async def test_the_feed_bounds_clients_and_ends_every_stream_when_closed() -> None:
    feed = AuditFeed(max_clients=1)
    with feed.subscribe() as (rows, _):
        with pytest.raises(HTTPProblem) as too_many, feed.subscribe():
            pass
        assert too_many.value.problem.status == 429
        feed.close()
        with pytest.raises(anyio.EndOfStream):
            await rows.receive()
    with pytest.raises(HTTPProblem) as stopping, feed.subscribe():
        pass
    assert stopping.value.problem.status == 503


def test_row_filters_match_like_the_query_route() -> None:
    record = {"model": "m", "endpoint": "chat", "status": 200}
    assert RowFilter()(record)
    assert RowFilter(model="m", endpoint="chat", status=200)(record)
    assert not RowFilter(endpoint="messages")(record)
    assert not RowFilter(status=500)(record)


def test_a_new_rate_limit_keeps_what_clients_have_left_up_to_the_new_burst() -> None:
    buckets = ClientBuckets(rate=1.0, burst=5, max_clients=10)
    for _ in range(3):
        assert buckets.take("a", now=0.0) == 0.0  # a has 2 left
    buckets.reconfigure(rate=0.5, burst=1, now=0.0)
    assert buckets.take("a", now=0.0) == 0.0
    assert buckets.take("a", now=0.0) == pytest.approx(2.0)  # one token at 0.5/s
    buckets.reconfigure(rate=0.0, burst=1, now=0.0)  # off: every bucket forgotten
    assert len(buckets) == 0 and buckets.take("a", now=0.0) == 0.0
    with pytest.raises(ValueError, match="burst"):
        buckets.reconfigure(rate=1.0, burst=0, now=0.0)


def test_intake_refuses_a_rate_limit_start_up_would_refuse_and_keeps_its_own() -> None:
    state = IntakeState(IntakeSettings(rate_limit_per_second=2.0, rate_limit_burst=3))
    for rate, burst in ((math.inf, 3), (-1.0, 3), (1.0, 0)):
        with pytest.raises(ValueError):
            state.set_rate_limit(rate, burst, now=0.0)
    assert (state.settings.rate_limit_per_second, state.buckets.rate) == (2.0, 2.0)
    state.set_rate_limit(0.5, 1, now=0.0)
    assert (state.settings.rate_limit_burst, state.buckets.burst) == (1, 1)


def test_saving_keeps_comments_and_warns_about_overriding_flags(tmp_path: Path) -> None:
    path = tmp_path / "troupe.toml"
    path.write_text("# mine\nport = 9000  # fixed\n")
    file = ConfigFile.of(str(path), {"TROUPE_CHAT_TIMEOUT": "5"}, ["rate_limit_burst"])
    assert file is not None
    warnings = file.save({"chat_timeout": 30.0, "messages_timeout": 60.0, "rate_limit_burst": 2})
    text = path.read_text()
    assert text.startswith("# mine\nport = 9000  # fixed\n")
    assert "chat_timeout = 30.0" in text and "rate_limit_burst = 2" in text
    assert [w.split()[0] for w in warnings] == ["chat_timeout", "rate_limit_burst"]
    assert ConfigFile.of(None, {}, []) is None


def test_a_file_that_cannot_be_saved_is_left_whole_and_no_path_is_told(tmp_path: Path) -> None:
    path = tmp_path / "troupe.toml"
    path.write_text("port = [unclosed\n")
    with pytest.raises(HTTPProblem) as failed:
        ConfigFile(path).save({"chat_timeout": 30.0})
    assert failed.value.problem.status == 500
    assert str(tmp_path) not in failed.value.problem.detail
    assert path.read_text() == "port = [unclosed\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
