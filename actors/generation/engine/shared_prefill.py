"""One prefill for the n choices of a request (``n > 1``).

The choices of one request arrive as separate :class:`Generate` messages that
name the same ``prefill_group``. The first to be scheduled starts a prefill of
the prompt (all but its last token) into a KV cache of its own, one chunk per
engine step sized by the step's token budget (as the batch's prompts are), so
running streams wait one chunk at most. Choices that arrive meanwhile wait with it.
Once the prompt is prefilled, every waiting choice enters the batch with a
private copy of that cache and prefills only the last token, so the prompt is
computed once however many choices share it.

A choice that arrives after its group's prefill finished, or one resumed after
an engine death, is prefilled as an ordinary request: slower, never wrong.

Engine thread only (no anyio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from actors.generation.protocol import Generate
from actors.kvcache.layers import private_copy


@dataclass(frozen=True)
class SharedHit:
    """A private copy of a group's prefilled prompt, as the prefix store hands them out."""

    cache: list[Any]
    length: int


@dataclass
class SharedPrefill:
    """One group's prompt, its KV cache so far, and the choices waiting for it."""

    prefix: list[int]
    """The prompt but its last token: what is prefilled once."""
    cache: list[Any]
    members: list[Generate] = field(default_factory=list)
    done: int = 0
    """Tokens of ``prefix`` prefilled so far."""

    @property
    def complete(self) -> bool:
        """Whether the whole prefix is in the cache."""
        return self.done >= len(self.prefix)

    def lookup(self, tokens: Sequence[int], namespace: str = "") -> SharedHit | None:
        """The prefix store's answer for one member: a private copy of the prefilled prompt.

        Every member is a choice of one request, so of one namespace.
        """
        if list(tokens[: len(self.prefix)]) != self.prefix or len(tokens) <= len(self.prefix):
            return None
        return SharedHit(private_copy(self.cache, len(self.prefix), 0), len(self.prefix))

    def insert(self, tokens: Sequence[int], cache: list[Any], namespace: str = "") -> object:
        """Nothing is kept: a member's finished cache goes to the real store, if any."""
        return False

    def clear(self) -> object:
        """Nothing to drop."""
        return None


class SharedPrefills:
    """The groups being prefilled, by ``prefill_group``."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._groups: dict[str, SharedPrefill] = {}

    def __bool__(self) -> bool:
        return bool(self._groups)

    def remaining(self) -> int:
        """Prompt tokens the group being prefilled has left (0 when none is)."""
        group = next(iter(self._groups.values()), None)
        return 0 if group is None else len(group.prefix) - group.done

    def waiting(self) -> int:
        """Choices waiting for their group's prefill."""
        return sum(len(group.members) for group in self._groups.values())

    def hold(self, request: Generate) -> bool:
        """Take ``request`` into its group; ``False`` if it is to be prefilled on its own."""
        group_id = request.prefill_group
        if group_id is None or request.resumed or len(request.prompt) < 2:
            return False
        group = self._groups.get(group_id)
        if group is None:
            prefix = list(request.prompt[:-1])
            group = SharedPrefill(prefix=prefix, cache=make_prompt_cache(self._model))
            self._groups[group_id] = group
        elif request.prompt[:-1] != group.prefix:
            return False  # not the same prompt after all: no sharing
        group.members.append(request)
        return True

    def step(self, chunk: int) -> list[tuple[Generate, SharedPrefill]]:
        """Prefill ``chunk`` tokens of the oldest group; the members of a group now complete."""
        if not self._groups:
            return []
        group_id, group = next(iter(self._groups.items()))
        if not group.complete:
            tokens = group.prefix[group.done : group.done + chunk]
            self._model(mx.array([tokens]), cache=group.cache)
            mx.eval([layer.state for layer in group.cache])
            group.done += len(tokens)
        if not group.complete:
            return []
        del self._groups[group_id]
        return [(member, group) for member in group.members]

    def cancel(self, request_id: str) -> Generate | None:
        """Remove a waiting choice; its group goes on for the others."""
        for group_id, group in list(self._groups.items()):
            for member in group.members:
                if member.request_id == request_id:
                    group.members.remove(member)
                    if not group.members:
                        del self._groups[group_id]
                    return member
        return None

    def drain(self) -> list[Generate]:
        """Every waiting choice, groups dropped (the engine is ending or starting over)."""
        members = [member for group in self._groups.values() for member in group.members]
        self._groups.clear()
        return members
