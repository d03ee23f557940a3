"""The engine process's output thread: in order, never blocking the engine, flushed at the end.

A parent that reads slowly is played by a send that blocks until the test
releases it; every wait is on an event, never on time passing.
"""

from __future__ import annotations

import threading

import pytest

from actors.generation.engine.output_thread import OutputThread
from actors.generation.protocol import Finished, FinishReason, StreamEvent, TokenChunk

pytestmark = pytest.mark.timeout(30)


def chunk(request_id: str, token: int) -> TokenChunk:
    return TokenChunk(request_id=request_id, text=str(token), token_ids=[token])


class SlowParent:
    """A send that holds its first frame until released, recording every frame."""

    def __init__(self) -> None:
        self.frames: list[list[StreamEvent]] = []
        self.first_arrived = threading.Event()
        self.release = threading.Event()

    def send(self, events: list[StreamEvent]) -> None:
        if not self.frames:
            self.first_arrived.set()
            assert self.release.wait(20)
        self.frames.append(events)


def test_steps_queued_behind_a_slow_send_go_out_together_in_order() -> None:
    parent = SlowParent()
    outputs = OutputThread(parent.send)
    outputs.start()
    outputs.put([chunk("a", 1)])
    assert parent.first_arrived.wait(20)
    # The send is blocked: the engine's next steps are queued, not waited on.
    for token in (2, 3, 4):
        outputs.put([chunk("a", token), chunk("b", token)])
    parent.release.set()
    assert outputs.close(20)
    tokens = [
        [event.token_ids[0] for event in frame if isinstance(event, TokenChunk)]
        for frame in parent.frames
    ]
    assert tokens == [[1], [2, 2, 3, 3, 4, 4]]
    assert outputs.frames == 2


def test_close_sends_everything_put_before_it() -> None:
    sent: list[StreamEvent] = []
    outputs = OutputThread(sent.extend)
    outputs.start()
    end = Finished(request_id="a", reason=FinishReason.STOP, prompt_tokens=1, completion_tokens=9)
    for token in range(9):
        outputs.put([chunk("a", token)])
    outputs.put([end])
    assert outputs.close(20)
    assert [event.token_ids[0] for event in sent if isinstance(event, TokenChunk)] == list(range(9))
    assert sent[-1] == end


def test_close_from_a_thread_that_never_started_it_returns() -> None:
    outputs = OutputThread(lambda events: None)
    assert outputs.close(1) is True
