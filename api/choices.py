"""The choices of one request (``n``): their engine requests, retries and combined end.

Each choice is its own engine request, streamed into its own inbox, so that
cancellation, deadlines, resumption after an engine death and transparent
retries work per choice exactly as for one; they name one ``prefill_group``
so that the engine computes their shared prompt once. The inputs of one
embeddings request are handled the same way, one engine request each.
"""

from __future__ import annotations

import time

import msgspec

from actors.generation.protocol import Failed, Finished, Generate, SamplingParams
from api.outcome import Outcome


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


def embedding_requests(
    request_id: str, prompts: list[list[int]], deadline: float
) -> list[Generate]:
    """One engine request per input to embed; the engine batches them."""
    now = time.time()
    return [
        Generate(
            request_id=f"{request_id}.e{index}",
            prompt=prompt,
            # Nothing is generated: the inbox needs room for the one terminal event.
            params=SamplingParams(max_tokens=1),
            deadline=deadline,
            submitted_at=now,
            embed=True,
        )
        for index, prompt in enumerate(prompts)
    ]


def combined_end(runs: list[Outcome]) -> Finished | Failed | None:
    """The end of a request from its choices' ends: the first failure, or all finished."""
    ends = [run.end for run in runs]
    failed = next((end for end in ends if isinstance(end, Failed)), None)
    if failed is not None or not all(isinstance(end, Finished) for end in ends):
        return failed
    finished = [end for end in ends if isinstance(end, Finished)]
    first = finished[0]
    return msgspec.structs.replace(
        first,
        completion_tokens=sum(end.completion_tokens for end in finished),
        # Choices share one prompt; inputs to embed are prompts each.
        prompt_tokens=(
            sum(end.prompt_tokens for end in finished)
            if first.embedding is not None
            else first.prompt_tokens
        ),
        embedding=None,
    )


def retry_of(generate: Generate, attempt: int) -> Generate:
    """The request of a transparent retry: prefilled on its own (its group has moved on)."""
    return msgspec.structs.replace(
        generate,
        request_id=f"{generate.request_id}~{attempt}",
        submitted_at=time.time(),  # the wait before this attempt, not the failed one's
        prefill_group=None,
    )
