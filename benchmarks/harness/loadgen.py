"""The load generator: streaming chat completions over HTTP/1.1, one outcome each.

Each client is a task with its own connection (kept alive when the server
allows it, as OpenAI's clients do). Requests go out over anyio sockets with
h11 framing the HTTP: httpx costs about four times the CPU per streamed chunk
(its connection pool and line iterator), and on a two-core machine every cycle
the client spends is taken from the server it measures. ``troupe bench
--servers instant`` shows the ceiling.

Every request ends in exactly one :class:`Outcome`: success (the stream ended
with ``data: [DONE]`` and no error event) or one error kind. A failed request
is counted, never dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11
import msgspec

CHAT_PATH: Final = "/v1/chat/completions"
READ_SIZE: Final = 65536
ERROR_BODY_LIMIT: Final = 64 * 1024


class ErrorKind:
    """The ways a request can fail; an HTTP status is ``http_<code>``."""

    TIMEOUT: Final = "timeout"
    """No complete answer before the request's deadline."""
    CONNECT: Final = "connect_error"
    """The connection could not be opened (refused, unreachable)."""
    RESET: Final = "connection_reset"
    """The connection was reset or closed before the response was complete."""
    NO_DONE: Final = "no_done"
    """The response ended cleanly but the event stream had no ``[DONE]``."""
    STREAM_ERROR: Final = "stream_error"
    """The event stream carried an error event."""
    PROTOCOL: Final = "protocol_error"
    """The response was not valid HTTP or its events not valid JSON."""

    @staticmethod
    def http(status: int) -> str:
        """The kind for a response with a non-200 status."""
        return f"http_{status}"


@dataclass(frozen=True)
class Target:
    """Where requests go: ``http://host:port[/prefix]``."""

    host: str
    port: int
    path: str

    @classmethod
    def from_url(cls, url: str) -> Target:
        """Parse a base URL; the chat path is appended to its path."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url}")
        prefix = parts.path.rstrip("/").removesuffix("/v1")
        return cls(parts.hostname, parts.port or 80, prefix + CHAT_PATH)


@dataclass
class Outcome:
    """What happened to one request; times are ``time.perf_counter()`` seconds."""

    index: int
    start: float
    end: float = 0.0
    error: str | None = None
    first_token: float | None = None
    last_token: float | None = None
    content_chunks: int = 0
    completion_tokens: int | None = None
    prompt_tokens: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the request succeeded."""
        return self.error is None

    @property
    def tokens(self) -> int:
        """Tokens generated: the usage the server reported, else content chunks."""
        return self.content_chunks if self.completion_tokens is None else self.completion_tokens


@dataclass
class Load:
    """Outcomes of one or more runs in request order, with their wall and client CPU time."""

    outcomes: list[Outcome]
    wall: float
    """Seconds from the first request sent to the last outcome (summed over runs)."""
    cpu_seconds: float = 0.0
    """CPU seconds this process spent meanwhile (the load generator's cost)."""
    server_cpu_seconds: float | None = None
    """CPU seconds the server's process spent meanwhile, when it is known."""

    @classmethod
    def merge(cls, loads: Sequence[Load]) -> Load:
        """Several runs of one scenario as one: outcomes pooled, times added."""
        outcomes = [outcome for load in loads for outcome in load.outcomes]
        server = [load.server_cpu_seconds for load in loads]
        return cls(
            outcomes,
            sum(load.wall for load in loads),
            sum(load.cpu_seconds for load in loads),
            None if None in server else sum(value or 0.0 for value in server),
        )


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: object = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class _PeerClosed(Exception):
    """The server closed or reset the connection before the response was complete."""


class Client:
    """One simulated user: sends requests one after another on its own connection."""

    def __init__(self, target: Target, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.target = target
        self.headers = [("host", f"{target.host}:{target.port}"), *headers]
        self._stream: anyio.abc.ByteStream | None = None
        self._http = h11.Connection(h11.CLIENT)
        self._eof = False

    async def request(self, index: int, body: bytes, timeout: float) -> Outcome:
        """POST ``body`` to the chat endpoint and follow its event stream."""
        outcome = Outcome(index=index, start=time.perf_counter())
        try:
            with anyio.fail_after(timeout):
                await self._exchange(body, outcome)
        except TimeoutError:
            outcome.error = ErrorKind.TIMEOUT
        except _PeerClosed:
            outcome.error = ErrorKind.RESET
        except h11.RemoteProtocolError:
            outcome.error = ErrorKind.PROTOCOL
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream):
            outcome.error = ErrorKind.RESET
        outcome.end = time.perf_counter()
        if not outcome.ok:
            await self.aclose()
        return outcome

    async def aclose(self) -> None:
        """Close the connection (a new one is opened for the next request)."""
        stream, self._stream = self._stream, None
        self._http = h11.Connection(h11.CLIENT)
        self._eof = False
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _exchange(self, body: bytes, outcome: Outcome) -> None:
        if self._stream is None:
            try:
                self._stream = await anyio.connect_tcp(self.target.host, self.target.port)
            except OSError:
                outcome.error = ErrorKind.CONNECT
                return
        headers = [
            *self.headers,
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("content-length", str(len(body))),
        ]
        data = self._http.send(h11.Request(method="POST", target=self.target.path, headers=headers))
        data = (data or b"") + (self._http.send(h11.Data(data=body)) or b"")
        data += self._http.send(h11.EndOfMessage()) or b""
        await self._stream.send(data)
        response = await self._next_event()
        while not isinstance(response, h11.Response):
            response = await self._next_event()  # an informational 1xx answer
        if response.status_code != 200:
            outcome.error = ErrorKind.http(response.status_code)
            await self._drain_error_body()
        else:
            await self._follow_events(outcome)
        if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
            self._http.start_next_cycle()  # keep-alive: the next request reuses it
        else:
            await self.aclose()

    async def _follow_events(self, outcome: Outcome) -> None:
        events = _EventStream(outcome)
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                events.feed(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        events.finish()

    async def _drain_error_body(self) -> None:
        seen = 0
        while seen <= ERROR_BODY_LIMIT:  # past that the connection is given up
            event = await self._next_event()
            if isinstance(event, h11.EndOfMessage):
                return
            if isinstance(event, h11.Data):
                seen += len(event.data)

    async def _next_event(self) -> object:
        """The next h11 event (``h11.Response``, ``h11.Data``, ...), reading as needed."""
        assert self._stream is not None
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof:  # the bytes so far were fine; then the peer went away
                    raise _PeerClosed from exc
                raise
            if isinstance(event, h11.ConnectionClosed):
                raise _PeerClosed
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self._stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                if self._eof:
                    raise _PeerClosed from None
                self._eof = True
                data = b""  # h11 decides: end of a close-delimited body, or cut short
            self._http.receive_data(data)


class _EventStream:
    """Server-sent events of one response, parsed as they arrive."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.buffer = b""
        self.done = False
        self.failed: str | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        now = time.perf_counter()
        for line in lines:
            if line.startswith(b"data:"):
                self._on_data(line[5:].strip(), now)

    def finish(self) -> None:
        if self.buffer.startswith(b"data:"):
            self._on_data(self.buffer[5:].strip(), time.perf_counter())
        if self.failed is not None:
            self.outcome.error = self.failed
        elif not self.done:
            self.outcome.error = ErrorKind.NO_DONE

    def _on_data(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            chunk = _decode_chunk(payload)
        except msgspec.DecodeError:
            self.failed = self.failed or ErrorKind.PROTOCOL
            return
        if chunk.error is not None:
            self.failed = ErrorKind.STREAM_ERROR
        if chunk.usage is not None:
            self.outcome.completion_tokens = chunk.usage.completion_tokens
            self.outcome.prompt_tokens = chunk.usage.prompt_tokens
        if any(choice.delta and choice.delta.content for choice in chunk.choices):
            outcome = self.outcome
            outcome.content_chunks += 1
            if outcome.first_token is None:
                outcome.first_token = now
            outcome.last_token = now


async def run_load(
    target: Target,
    bodies: Sequence[bytes],
    concurrency: int,
    *,
    timeout: float,
    headers: Sequence[tuple[str, str]] = (),
    on_outcome: Callable[[Outcome], None] | None = None,
) -> Load:
    """Send ``bodies`` from ``concurrency`` clients, each taking the next unsent one.

    A closed loop: a client sends its next request when its last one ended, so
    at most ``concurrency`` are in flight. Returns the outcomes in body order.
    """
    slots: list[Outcome | None] = [None] * len(bodies)
    pending = iter(range(len(bodies)))  # shared: each index is taken exactly once

    async def client_loop() -> None:
        client = Client(target, headers)
        try:
            for index in pending:
                outcome = await client.request(index, bodies[index], timeout)
                slots[index] = outcome
                if on_outcome is not None:
                    on_outcome(outcome)
        finally:
            await client.aclose()

    cpu, started = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(max(1, min(concurrency, len(bodies)))):
            tg.start_soon(client_loop)
    wall = max(time.perf_counter() - started, 1e-9)
    outcomes = [outcome for outcome in slots if outcome is not None]
    assert len(outcomes) == len(bodies), "every request has exactly one outcome"
    return Load(outcomes, wall, time.process_time() - cpu)


def greedy_chat_bodies(model: str, count: int, max_tokens: int, start: int) -> list[bytes]:
    """``count`` streamed chat bodies with distinct prompts that each run to ``max_tokens``.

    Greedy, and with the first seven token ids (the special tokens of the
    embedded model, end-of-text among them) kept out, so that every request
    generates the same number of tokens and runs compare token for token.
    """
    return [
        json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": f"Tell me about item {start + n}"}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "logit_bias": {str(token): -100 for token in range(7)},
            }
        ).encode()
        for n in range(count)
    ]
