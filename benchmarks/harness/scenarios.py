"""What the harness sends: fixed prompts, fixed ``max_tokens``, greedy decoding.

Every scenario is a list of chat conversations built from a seeded random
generator over the words of the text the embedded tokenizer was trained on,
so a run sends the same requests to every server, and the next run sends them
again. Decoding is greedy (``temperature`` 0): both servers then do exactly the
same work without a sampling seed, which matters because mlx_lm.server 0.32
serves a request that carries ``seed`` on its own, outside the batch
(``ResponseGenerator._is_batchable``). ``--sampling-seed`` sends seeded
sampling anyway, for a comparison of that path.

Scenarios (groups):

* ``single``: one client, one request at a time.
* ``sweep``: N clients at once for each N of the concurrency levels.
* ``shared_prefix``: chats sharing one long system prompt, so a prefix cache
  saves most of the prefill; time to first token is its figure of merit.
* ``long_prompt``: long, distinct prompts (prefill-bound).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import msgspec

GROUPS: Final = ("single", "sweep", "shared_prefix", "long_prompt")
CORPUS: Final = Path(__file__).resolve().parents[2] / "actors" / "model" / "corpus.txt"

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Scenario:
    """One measured load: conversations sent by ``concurrency`` clients."""

    name: str
    group: str
    description: str
    concurrency: int
    max_tokens: int
    conversations: list[Conversation]

    @property
    def requests(self) -> int:
        """How many requests the scenario sends."""
        return len(self.conversations)

    def bodies(self, model: str, sampling_seed: int | None = None) -> list[bytes]:
        """The request bodies for a server that serves ``model``."""
        bodies = []
        for index, messages in enumerate(self.conversations):
            body: dict[str, object] = {
                "model": model,
                "messages": messages,
                "max_tokens": self.max_tokens,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if sampling_seed is not None:
                body |= {"temperature": 0.8, "seed": sampling_seed + index}
            bodies.append(msgspec.json.encode(body))
        return bodies


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes of the suite, per round; the default four rounds take about 7 minutes on two cores."""

    groups: Sequence[str] = GROUPS
    levels: Sequence[int] = (1, 4, 16, 64)
    seed: int = 0
    single_requests: int = 16
    single_max_tokens: int = 128
    sweep_max_tokens: int = 128
    sweep_requests_per_client: int = 4
    sweep_min_requests: int = 24
    prefix_words: int = 560
    prefix_requests: int = 48
    prefix_concurrency: int = 4
    prefix_max_tokens: int = 16
    long_words: int = 760
    long_requests: int = 12
    long_concurrency: int = 4
    long_max_tokens: int = 32
    warmup_requests: int = 4


@cache
def words() -> tuple[str, ...]:
    """The vocabulary prompts are drawn from: the embedded tokenizer's training text."""
    # Read by path: importing actors.model would load MLX into the load generator.
    text = CORPUS.read_text(encoding="utf-8")
    stripped = (word.strip(".,;:!?\"'()") for word in text.split())
    return tuple(word for word in stripped if word and word.isascii())


def _text(rng: random.Random, count: int) -> str:
    return " ".join(rng.choices(words(), k=count))


def _chats(rng: random.Random, count: int, label: str) -> list[Conversation]:
    return [
        [{"role": "user", "content": f"{label} {n}: {_text(rng, rng.randint(12, 30))}"}]
        for n in range(count)
    ]


def warmup(config: SuiteConfig) -> Scenario:
    """A few short requests that load kernels and weights; never reported."""
    rng = random.Random(f"{config.seed}:warmup")
    chats = _chats(rng, config.warmup_requests, "Warm-up")
    return Scenario("warmup", "warmup", "warm-up", 2, 8, chats)


def build_suite(config: SuiteConfig) -> list[Scenario]:
    """The scenarios of ``config.groups``, in a fixed order."""
    suite: list[Scenario] = []
    if "single" in config.groups:
        rng = random.Random(f"{config.seed}:single")
        suite.append(
            Scenario(
                "single",
                "single",
                "one client, short chats",
                1,
                config.single_max_tokens,
                _chats(rng, config.single_requests, "Single"),
            )
        )
    if "sweep" in config.groups:
        for level in config.levels:
            rng = random.Random(f"{config.seed}:sweep:{level}")
            count = max(config.sweep_min_requests, config.sweep_requests_per_client * level)
            suite.append(
                Scenario(
                    f"c{level}",
                    "sweep",
                    f"{level} concurrent clients, short chats",
                    level,
                    config.sweep_max_tokens,
                    _chats(rng, count, f"Client load {level}"),
                )
            )
    if "shared_prefix" in config.groups:
        suite.append(shared_prefix(config))
    if "long_prompt" in config.groups:
        suite.append(long_prompt(config))
    return suite


def shared_prefix(config: SuiteConfig) -> Scenario:
    """Chats that share one long system prompt and differ in the question."""
    rng = random.Random(f"{config.seed}:shared_prefix")
    system = "You are a patient assistant. Background notes: " + _text(rng, config.prefix_words)
    chats = [
        [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Question {n}: {_text(rng, rng.randint(8, 16))}?"},
        ]
        for n in range(config.prefix_requests)
    ]
    return Scenario(
        "shared-prefix",
        "shared_prefix",
        f"{config.prefix_concurrency} clients, one {config.prefix_words}-word system prompt",
        config.prefix_concurrency,
        config.prefix_max_tokens,
        chats,
    )


def long_prompt(config: SuiteConfig) -> Scenario:
    """Long prompts with nothing in common beyond the chat template."""
    rng = random.Random(f"{config.seed}:long_prompt")
    chats = [
        [{"role": "user", "content": f"Document {n}. {_text(rng, config.long_words)} Sum it up."}]
        for n in range(config.long_requests)
    ]
    return Scenario(
        "long-prompt",
        "long_prompt",
        f"{config.long_concurrency} clients, distinct {config.long_words}-word prompts",
        config.long_concurrency,
        config.long_max_tokens,
        chats,
    )
