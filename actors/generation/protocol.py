"""Messages of the generation actor.

A request streams back explicit structs: any number of :class:`TokenChunk`,
then exactly one of :class:`Finished` or :class:`Failed`. They are posted to
the inbox the requester opened under the request id (see :mod:`runtime.inbox`),
so they are plain data that round-trips through msgpack like every message.
"""

from __future__ import annotations

import enum

import msgspec

from runtime import Message


class SamplingParams(Message, frozen=True, kw_only=True):
    """How to pick tokens; defaults mirror OpenAI's."""

    max_tokens: int = 256
    temperature: float = 1.0
    """0 means greedy (argmax)."""
    top_p: float = 1.0
    top_k: int = 0
    """0 means no top-k filter."""
    min_p: float = 0.0
    seed: int | None = None
    """With a seed, the same request gives the same tokens, batched or not."""
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_window: int = 64
    """How many recent tokens the penalties look at."""
    logit_bias: dict[int, float] = msgspec.field(default_factory=dict)
    stop: list[str] = msgspec.field(default_factory=list)
    """Stop strings; never part of the returned text."""
    grammar: str | None = None
    """What the output must match, as llguidance grammar text built and checked by
    :mod:`actors.generation.engine.constraints`; ``None``: unconstrained."""
    logprobs: int | None = None
    """``None``: no log-probabilities; ``k``: each token's, and the ``k`` (at most
    :data:`MAX_TOP_LOGPROBS`) most likely alternatives at its position."""


class Generate(Message, frozen=True, kw_only=True):
    """Start generating for ``prompt`` (token ids) and stream to ``request_id``."""

    request_id: str
    prompt: list[int]
    params: SamplingParams = msgspec.field(default_factory=SamplingParams)
    deadline: float | None = None
    """Wall-clock time (seconds since the epoch) after which the request is
    dropped if it has not started prefill yet."""
    submitted_at: float | None = None
    """Wall-clock time it was sent; the engine reports the wait until its
    prefill starts as :attr:`Finished.queued_s`."""
    resumed: list[int] = msgspec.field(default_factory=list)
    """Tokens this request already produced and delivered before an engine
    died: the new engine prefills them after the prompt and goes on from
    there, counting them as completion tokens (not as prompt tokens)."""
    prefill_group: str | None = None
    """Requests naming the same group (the ``n`` choices of one API request,
    same prompt) share one prefill of the prompt (see
    :mod:`actors.generation.engine.shared_prefill`)."""
    traceparent: str | None = None
    """The W3C trace context of the HTTP request's span, while tracing is on: the
    engine's spans (queue, prefill, decode) join that trace."""
    cache_namespace: str = ""
    """The prefix-cache namespace it reads and writes (an opaque digest of its tenant
    and ``cache_salt``); ``""``: the single namespace of a server without keys."""
    tenant: str = ""
    """Whose request it is: the engine shares its waiting queue fairly between tenants
    (:mod:`actors.generation.engine.fair_queue`); ``""``: the server without keys."""
    weight: float = 1.0
    """The tenant's weight: its share of the engine, relative to the others' while all wait."""
    priority: int = 0
    """Order among its tenant's waiting requests: lower first (vLLM's rule), then oldest."""


class Embed(Message, frozen=True, kw_only=True):
    """Embed every input of one request and answer with their vectors in one event.

    One message for the whole request, however many inputs it has: the engine
    pools its inputs (and other requests') into bounded forward passes, and
    answers with one :class:`Finished` whose :attr:`~Finished.embeddings` holds
    a vector per input, in order. Nothing is streamed before it.
    """

    request_id: str
    inputs: list[list[int]]
    """Each input's token ids."""
    deadline: float | None = None
    """Wall-clock time after which the request is dropped if it has not started."""
    submitted_at: float | None = None
    """Wall-clock time it was sent (for :attr:`Finished.queued_s`)."""
    traceparent: str | None = None
    """The W3C trace context of the HTTP request's span, while tracing is on."""

    @property
    def prompt_tokens(self) -> int:
        """Tokens of every input together."""
        return sum(len(tokens) for tokens in self.inputs)


EngineRequest = Generate | Embed
"""What the generation actor and its engine take as a request."""


def prompt_length(request: EngineRequest) -> int:
    """The request's prompt tokens: the prompt's, or every input's."""
    match request:
        case Generate(prompt=prompt):
            return len(prompt)
        case Embed():
            return request.prompt_tokens


def max_events(request: EngineRequest) -> int:
    """The most events the request's stream can carry: a chunk per token and its end."""
    match request:
        case Generate(params=params):
            return max(params.max_tokens, 0) + 2
        case Embed():
            return 2


class Cancel(Message, frozen=True, kw_only=True):
    """Stop a request; it leaves the batch before the next decode step."""

    request_id: str


class Accepted(Message, frozen=True, kw_only=True):
    """The request was handed to the engine."""

    request_id: str


MAX_TOP_LOGPROBS = 20
"""The most alternatives a request may ask for per token (OpenAI's limit)."""
LOGPROB_FLOOR = -9999.0
"""Stands for minus infinity (a token a grammar forbids), which JSON cannot carry."""


class TokenLogprob(Message, frozen=True, kw_only=True):
    """One generated token's log-probability, and the most likely tokens at its place.

    Of the distribution it was sampled from: after logit bias, penalties and a
    grammar's mask, before temperature and top-k/p/min-p filtering.
    """

    token: int
    logprob: float
    top_tokens: list[int] = msgspec.field(default_factory=list)
    top_logprobs: list[float] = msgspec.field(default_factory=list)
    """Most likely first, aligned with ``top_tokens``."""


class TokenChunk(Message, frozen=True, kw_only=True):
    """New text (stop strings held back) and the token ids that produced it."""

    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    """One per token id, when the request asked for them."""


class FinishReason(enum.StrEnum):
    """Why a request ended normally."""

    STOP = "stop"
    """EOS or a stop string."""
    LENGTH = "length"
    """max_tokens, or the context window, was reached."""
    CANCELLED = "cancelled"


class Finished(Message, frozen=True, kw_only=True):
    """The request ended normally; always the last event of its stream."""

    request_id: str
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens reused from the prefix cache."""
    queued_s: float | None = None
    """Seconds from ``Generate.submitted_at`` to the start of prefill (``None``: unknown)."""
    stop_string: str | None = None
    """The stop string that ended the text (``None``: another reason, EOS included)."""
    embeddings: list[bytes] | None = None
    """For an :class:`Embed` request: one vector per input, in order, each as
    little-endian float32 (the bytes OpenAI's ``encoding_format: base64`` sends)."""


class FailureKind(enum.StrEnum):
    """Why a request failed; the HTTP layer maps each to a status."""

    PROMPT_TOO_LONG = "prompt_too_long"
    INVALID_REQUEST = "invalid_request"
    ENGINE_CRASHED = "engine_crashed"
    OUT_OF_MEMORY = "out_of_memory"
    SHUTTING_DOWN = "shutting_down"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    MODEL_UNAVAILABLE = "model_unavailable"


class Failed(Message, frozen=True, kw_only=True):
    """The request failed; always the last event of its stream.

    ``detail`` is written by the engine for people and never contains prompt
    text, paths or exception messages.
    """

    request_id: str
    kind: FailureKind
    retryable: bool
    detail: str
    tokens_sent: int = 0
    """Tokens already streamed before the failure (0: safe to retry transparently)."""


StreamEvent = TokenChunk | Finished | Failed


class GetEngineStats(Message, frozen=True, kw_only=True):
    """Ask the generation actor for its counters."""


class EngineStats(Message, frozen=True, kw_only=True):
    """Counters of the generation actor's current engine."""

    model: str
    context_length: int
    vocab_size: int = 0
    """Token ids the model accepts (0 where unknown)."""
    embedding_size: int = 0
    """Dimensions of the model's embeddings (0 where unknown)."""
    running: int
    waiting: int
    steps: int
    prompt_tokens: int
    generated_tokens: int
    cached_tokens: int
    weights_loads: int
    """How often weights were loaded: stays 1 across engine restarts."""
    faults_pending: int = 0
    """Injected engine faults still to fire."""
    recovery_seconds: list[float] = msgspec.field(default_factory=list)
    """Recent crash-to-next-token intervals (seconds, oldest first)."""
    process: EngineProcessInfo | None = None
    """The engine process (``None``: the engine runs in the server's process)."""


MODEL_RETRY_AFTER = 10.0
"""Seconds a model that failed to load answers its requests with that failure
before a new request tries to load it again."""


class AwaitModel(Message, frozen=True, kw_only=True):
    """Ask for the model's figures once it is loaded, loading it if it is not.

    Answered with :class:`EngineStats` once an engine is up, or with
    :class:`ModelUnavailable` if loading failed.
    """


class ModelUnavailable(Message, frozen=True, kw_only=True):
    """The model could not be loaded; ``retry_after`` seconds before it is tried again."""

    model: str
    retry_after: float


class EngineExit(Message, frozen=True, kw_only=True):
    """How an engine process ended."""

    pid: int
    reason: str
    """One line: the signal or exit code, or the hang that was detected."""
    signal: str | None = None
    """The signal's name (``SIGKILL``) if it died of one."""
    code: int | None = None
    """Its exit status if it exited."""
    at: float
    """Wall-clock time it was seen to end."""


class EngineProcessInfo(Message, frozen=True, kw_only=True):
    """The engine process as the server sees it."""

    pid: int | None
    """``None`` while no engine process serves (starting or restarting)."""
    uptime_seconds: float | None
    restarts: int
    """Engine processes started after the first one."""
    heartbeat_age_seconds: float | None
    """Seconds since its last heartbeat."""
    steps: int
    last_exit: EngineExit | None
    retried: int
    """Requests with no token yet that were sent again to a new engine."""
    resumed: int
    """Requests with tokens already sent that continued on a new engine."""
    poisoned: int
    """Requests failed because the engine died each time they ran."""
    suspects: int = 0
    """Requests in flight now that were also in flight at an engine death."""


class EngineFault(enum.StrEnum):
    """What an injected engine fault does."""

    CRASH = "crash"
    """The engine thread dies; the actor crashes and is restarted."""
    OOM = "oom"
    """An allocation failure: caches are cleared and only the requests in flight fail."""
    KILL = "kill"
    """The engine process kills itself with SIGKILL, as a native crash would (process mode)."""
    HANG = "hang"
    """The engine stops stepping, as a native deadlock would (process mode)."""
    POISON = "poison"
    """The engine process is killed whenever request ``request_id`` is in the batch."""
    EXIT_ON_LOAD = "exit_on_load"
    """The engine process exits while it loads the model (process mode)."""


class InjectEngineFault(Message, frozen=True, kw_only=True):
    """Fault injection: make the engine fail after ``after_tokens`` more tokens.

    With ``times`` > 1 the fault fires again after every ``after_tokens``
    tokens, across engine restarts, until it has fired ``times`` times.
    """

    kind: EngineFault
    after_tokens: int = 1
    times: int = 1
    request_id: str = ""
    """For ``POISON``: the request (by the id the client sent, or a prefix of
    the engine's id) whose presence in the batch kills the engine."""


class ClearEngineFaults(Message, frozen=True, kw_only=True):
    """Disarm every injected engine fault; answered with :class:`EngineFaultsCleared`."""


class EngineFaultsCleared(Message, frozen=True, kw_only=True):
    """How many firings were still pending when the faults were disarmed."""

    pending: int
