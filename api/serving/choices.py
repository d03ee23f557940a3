"""The choices of one request (``n``): their engine requests, retries and combined end.

Each choice is its own engine request, streamed into its own inbox, so that
cancellation, deadlines, resumption after an engine death and transparent
retries work per choice exactly as for one; they name one ``prefill_group``
so that the engine computes their shared prompt once.
"""

from __future__ import annotations

import time
from typing import TypeVar

import msgspec

from actors.generation.protocol import Embed, Failed, Finished, Generate
from api.serving.outcome import Outcome

R = TypeVar("R", Generate, Embed)


def choice_requests(generate: Generate, n: int) -> list[Generate]:
    """The request for each of ``n`` choices: one prefill shared, a seed each (``seed + i``)."""
    if n == 1:
        return [generate]
    seed = generate.params.seed
    return [
        msgspec.structs.replace(
            generate,
            request_id=f"{generate.request_id}.c{index}",
            params=msgspec.structs.replace(
                generate.params, seed=None if seed is None else seed + index
            ),
            prefill_group=generate.request_id,
        )
        for index in range(n)
    ]


def combined_end(runs: list[Outcome]) -> Finished | Failed | None:
    """The end of a request from its choices' ends: the first failure, or all finished."""
    ends = [run.end for run in runs]
    failed = next((end for end in ends if isinstance(end, Failed)), None)
    if failed is not None or not all(isinstance(end, Finished) for end in ends):
        return failed
    finished = [end for end in ends if isinstance(end, Finished)]
    return msgspec.structs.replace(  # choices share one prompt
        finished[0], completion_tokens=sum(end.completion_tokens for end in finished)
    )


def retry_of(request: R, attempt: int) -> R:
    """The request of a transparent retry: prefilled on its own (its group has moved on)."""
    fields: dict[str, object] = {
        "request_id": f"{request.request_id}~{attempt}",
        "submitted_at": time.time(),  # the wait before this attempt, not the failed one's
    }
    if isinstance(request, Generate):
        fields["prefill_group"] = None
    return msgspec.structs.replace(request, **fields)
