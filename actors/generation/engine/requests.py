"""One request's life inside the engine: admission checks, text, stops, counts.

Runs on the engine thread (no anyio). Admission rejects bad requests with a
typed :class:`Failed` before any MLX work, looks up the longest cached prefix,
and prepares the per-request sampler; :class:`ActiveRequest` then turns each
sampled token into streamed text, holding back anything that may be a stop
string, and produces exactly one terminal event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors.generation.engine.constraints import ConstraintError
from actors.generation.engine.grammar_mask import GrammarBook, TokenMask
from actors.generation.engine.sampling import (
    LogitsProcessor,
    RequestSampler,
    logits_processors,
    validate,
)
from actors.generation.engine.spans import EngineTrace
from actors.generation.engine.stops import StopMatcher
from actors.generation.protocol import (
    EngineRequest,
    Failed,
    FailureKind,
    Finished,
    FinishReason,
    Generate,
    StreamEvent,
    TokenChunk,
    TokenLogprob,
    prompt_length,
)

if TYPE_CHECKING:
    from actors.generation.engine.ports import ModelLike, PrefixStore


@dataclass
class ActiveRequest:
    """Streaming state of one admitted request."""

    request_id: str
    prompt_tokens: int
    cached_tokens: int
    detokenizer: Any
    stops: StopMatcher
    special: frozenset[int] = frozenset()
    """Control tokens (pad, role markers): counted, never turned into text."""
    completion_tokens: int = 0
    tokens_sent: int = 0
    done: bool = False
    queued_s: float | None = None
    """Seconds it waited before its prefill started (``None``: unknown)."""
    logprobs: int | None = None
    """Alternatives per token to report (``None``: no log-probabilities)."""
    trace: EngineTrace | None = None
    """Its times, for its engine spans, when the request is traced."""
    cache_namespace: str = ""
    """Where its KV state goes in the prefix cache when it ends (its tenant's namespace)."""
    _unsent: list[int] = field(default_factory=list)
    _unsent_logprobs: list[TokenLogprob] = field(default_factory=list)

    def on_token(
        self, token: int, finish_reason: str | None, logprob: TokenLogprob | None = None
    ) -> list[StreamEvent]:
        """Account for one sampled token; return the events it produces."""
        self.completion_tokens += 1
        if self.trace is not None:
            self.trace.token()
        if finish_reason == "stop":  # an EOS token: it ends the text, it is not text
            return self._end(FinishReason.STOP, self._tail())
        if token not in self.special:
            self.detokenizer.add_token(token)
        self._unsent.append(token)
        if logprob is not None:
            self._unsent_logprobs.append(logprob)
        text = self.stops.feed(self.detokenizer.last_segment)
        if self.stops.stopped:
            return self._end(FinishReason.STOP, text)
        if finish_reason == "length":
            text += self._tail()
            # The flush may complete a stop string: then it ended on the stop.
            reason = FinishReason.STOP if self.stops.stopped else FinishReason.LENGTH
            return self._end(reason, text)
        return self._chunk(text)

    def replay(self, tokens: Sequence[int]) -> None:
        """Take in tokens a previous engine produced and delivered, silently.

        Their text was streamed already; feeding them through the same
        detokenizer and stop matcher leaves both exactly where the previous
        engine's were after its last delivered chunk, so the text that follows
        continues it (a held-back partial stop string included).
        """
        for token in tokens:
            self.completion_tokens += 1
            if token not in self.special:
                self.detokenizer.add_token(token)
            self.stops.feed(self.detokenizer.last_segment)
        self.tokens_sent += len(tokens)

    def finish(self, reason: FinishReason) -> Finished:
        """The terminal event for a request ended from outside (cancellation)."""
        self.done = True
        self._traced(reason.value)
        return Finished(
            request_id=self.request_id,
            reason=reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            queued_s=self.queued_s,
            stop_string=self.stops.matched,
        )

    def fail(self, kind: FailureKind, detail: str, retryable: bool) -> Failed:
        """The terminal event for a request the engine could not finish."""
        self.done = True
        self._traced(kind.value)
        return Failed(
            request_id=self.request_id,
            kind=kind,
            retryable=retryable,
            detail=detail,
            tokens_sent=self.tokens_sent,
        )

    def _traced(self, outcome: str) -> None:
        if self.trace is not None:
            self.trace.end(
                self.request_id,
                prompt_tokens=self.prompt_tokens,
                cached_tokens=self.cached_tokens,
                completion_tokens=self.completion_tokens,
                outcome=outcome,
            )
            self.trace = None  # one set of spans, however it ends

    def _tail(self) -> str:
        self.detokenizer.finalize()
        return self.stops.feed(self.detokenizer.last_segment) + self.stops.flush()

    def _chunk(self, text: str) -> list[StreamEvent]:
        if not text:
            return []  # token ids wait until their text is released
        return [self._release(text)]

    def _end(self, reason: FinishReason, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if text or self._unsent:
            events.append(self._release(text))
        events.append(self.finish(reason))
        return events

    def _release(self, text: str) -> TokenChunk:
        """``text`` with the token ids (and log-probabilities) held back for it."""
        ids, self._unsent = self._unsent, []
        logprobs, self._unsent_logprobs = self._unsent_logprobs, []
        self.tokens_sent += len(ids)
        return TokenChunk(
            request_id=self.request_id,
            text=text,
            token_ids=ids,
            logprobs=logprobs if self.logprobs is not None else None,
        )


@dataclass
class Admission:
    """Everything the batch generator needs to take a request in."""

    request: ActiveRequest
    remaining: list[int]
    """Prompt tokens still to prefill (all but the cached prefix)."""
    cached_prefix: list[int]
    cache: list[Any] | None
    max_tokens: int
    sampler: RequestSampler | None
    """``None`` for greedy decoding: the batch's shared argmax (one call for every
    greedy sequence of a step, instead of one per sequence)."""
    processors: list[LogitsProcessor]


def vocab_size(loaded: ModelLike) -> int:
    """Rows of the embedding: the token ids the model accepts."""
    args = getattr(loaded.model, "args", None)
    size = getattr(args, "vocab_size", None)
    if isinstance(size, int):
        return size
    return int(loaded.tokenizer.vocab_size)


def special_tokens(loaded: ModelLike) -> frozenset[int]:
    """The tokenizer's special token ids, which are never shown as text."""
    return frozenset(int(token) for token in getattr(loaded.tokenizer, "all_special_ids", ()))


def admit(
    request: Generate,
    loaded: ModelLike,
    store: PrefixStore | None,
    special: frozenset[int] = frozenset(),
    grammars: GrammarBook | None = None,
) -> Admission | Failed:
    """Check ``request`` and prepare it, or say why it cannot run."""
    problem = _problem(request, loaded)
    if problem is not None:
        return problem
    try:
        processors = _processors(request, loaded, grammars)
    except ConstraintError as exc:
        return Failed(
            request_id=request.request_id,
            kind=FailureKind.INVALID_REQUEST,
            retryable=False,
            detail=f"the output constraint cannot be enforced: {exc}",
        )
    prompt, resumed = request.prompt, request.resumed
    sequence = [*prompt, *resumed] if resumed else prompt
    hit = store.lookup(sequence, request.cache_namespace) if store is not None else None
    prefix = 0 if hit is None else hit.length
    params = request.params
    active = ActiveRequest(
        request_id=request.request_id,
        prompt_tokens=len(prompt),
        cached_tokens=min(prefix, len(prompt)),
        detokenizer=loaded.tokenizer.detokenizer,
        stops=StopMatcher(params.stop),
        special=special,
        queued_s=_waited(request),
        logprobs=params.logprobs,
        trace=EngineTrace.begin(request.traceparent, request.submitted_at),
        cache_namespace=request.cache_namespace,
    )
    active.replay(resumed)
    return Admission(
        request=active,
        remaining=list(sequence[prefix:]),
        cached_prefix=list(sequence[:prefix]),
        cache=None if hit is None else hit.cache,
        max_tokens=min(params.max_tokens - len(resumed), loaded.context_length - len(sequence)),
        sampler=None if params.temperature == 0.0 else RequestSampler(params, skip=len(resumed)),
        processors=processors,
    )


def _processors(
    request: Generate, loaded: ModelLike, grammars: GrammarBook | None
) -> list[LogitsProcessor]:
    """The request's logits processors: its penalties and biases, then its grammar's mask."""
    processors = logits_processors(request.params)
    grammar = request.params.grammar
    if grammar is None:
        return processors
    if grammars is None:
        raise ConstraintError("this engine does not support constrained decoding")
    matcher = grammars.matcher(grammar, consumed=request.resumed)
    # Last: a bias or penalty must not bring back a token the grammar forbids.
    return [*processors, TokenMask(matcher, vocab_size(loaded), sorted(loaded.eos_token_ids))]


def _waited(request: Generate) -> float | None:
    """Seconds since the request was sent; wall clock, as its sender may be another process."""
    return None if request.submitted_at is None else max(0.0, time.time() - request.submitted_at)


def _problem(request: Generate, loaded: ModelLike) -> Failed | None:
    def failed(kind: FailureKind, detail: str) -> Failed:
        return Failed(request_id=request.request_id, kind=kind, retryable=False, detail=detail)

    prompt: Sequence[int] = request.prompt
    vocab = vocab_size(loaded)
    if not prompt:
        return failed(FailureKind.INVALID_REQUEST, "the prompt is empty")
    if any(not 0 <= token < vocab for token in (*prompt, *request.resumed)):
        return failed(FailureKind.INVALID_REQUEST, f"prompt token ids must be below {vocab}")
    problems = validate(request.params, vocab)
    if len(request.resumed) >= request.params.max_tokens:
        problems.append("a resumed request must have tokens left to generate")
    if problems:
        return failed(FailureKind.INVALID_REQUEST, "; ".join(problems))
    window = loaded.context_length
    if len(prompt) + len(request.resumed) >= window:
        return failed(
            FailureKind.PROMPT_TOO_LONG,
            f"the prompt has {len(prompt)} tokens but the context window is {window} "
            "tokens, which must also hold at least one generated token",
        )
    return None


def expired(request: EngineRequest) -> Failed:
    """The end of a request whose deadline passed before its prefill started."""
    return Failed(
        request_id=request.request_id,
        kind=FailureKind.DEADLINE_EXCEEDED,
        retryable=False,
        detail="the request's deadline passed while it was queued",
    )


def never_started(request: EngineRequest) -> Finished:
    """The end of a request cancelled before its prefill started."""
    return Finished(
        request_id=request.request_id,
        reason=FinishReason.CANCELLED,
        prompt_tokens=prompt_length(request),
        completion_tokens=0,
    )


def unpreparable(request: Generate) -> Failed:
    """The end of a request whose sampler or logits processors could not be built."""
    return Failed(
        request_id=request.request_id,
        kind=FailureKind.INVALID_REQUEST,
        retryable=False,
        detail="the request's sampling parameters could not be applied",
    )


def duplicate(request: Generate) -> Failed:
    """The refusal of a request whose id is already running."""
    return Failed(
        request_id=request.request_id,
        kind=FailureKind.INVALID_REQUEST,
        retryable=False,
        detail="a request with this id is already running",
    )
