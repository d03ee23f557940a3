"""Tenants never share cached prompt prefixes (issue 30: cache isolation).

A real ``troupe serve`` with three API keys, two of them one team (the
tenants file). Whether a prompt was cached is read from what the server
reports (``usage.prompt_tokens_details.cached_tokens``, Anthropic's
``cache_read_input_tokens``, Responses' ``input_tokens_details``), never from
how long a request took: the times to first token are recorded as figures, to
show the attack's signal is gone, and asserted on nowhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.http.tenants import TenantDirectory
from api.serving.cache_scope import cache_namespace
from tests.server import Server, running_server

pytestmark = pytest.mark.timeout(240)

ALICE, BOB, TEAM_ONE, TEAM_TWO = "key-alice", "key-bob", "key-team-1", "key-team-2"
TENANTS = f"""
[tenants.research]
keys = ["{TEAM_ONE}", "{TEAM_TWO}"]
"""
MEMO = " ".join(
    f"Item {n}: the quarterly figures for region {n % 7} stay private." for n in range(16)
)
"""A long prompt (an "internal memo"): its prefill is what a cache hit saves."""
OTHER = " ".join(
    f"Entry {n}: the weekly notes for office {n % 5} are public now." for n in range(16)
)
"""An unrelated prompt of about the same length."""


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tenancy")
    (tmp / "tenants.toml").write_text(TENANTS)
    flags = ("--api-keys", f"{ALICE},{BOB}", "--tenants", str(tmp / "tenants.toml"))
    with running_server(model_dir, tmp, *flags, "--cache-dir", str(tmp / "kv")) as running:
        yield running


def chat(server: Server, key: str, content: str, **extra: Any) -> dict[str, Any]:
    """A short greedy chat completion as ``key``; its JSON."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        "temperature": 0,
        **extra,
    }
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def hit(answer: dict[str, Any]) -> bool:
    """Whether most of the prompt came from the cache.

    Any two chats of one tenant share the chat template's first tokens, so a
    miss may still reuse those few; a hit covers nearly the whole prompt.
    """
    usage = answer["usage"]
    return bool(usage["prompt_tokens_details"]["cached_tokens"] > usage["prompt_tokens"] // 2)


def streamed(server: Server, key: str, content: str) -> tuple[float, bool]:
    """A streamed chat completion: (seconds to its first token, whether it hit)."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 2,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] | None = None
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = httpx.Response(200, content=line[6:]).json()
            if chunk["choices"] and first is None:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                usage = chunk["usage"]
    assert first is not None and usage is not None
    return first, hit({"usage": usage})


def test_another_tenants_prompt_is_not_a_cache_hit(
    server: Server, figures: dict[str, object]
) -> None:
    alice_first, alice_hit = streamed(server, ALICE, MEMO)
    assert not alice_hit
    bob_same, bob_hit = streamed(server, BOB, MEMO)
    bob_other, other_hit = streamed(server, BOB, OTHER)
    alice_repeat, repeat_hit = streamed(server, ALICE, MEMO)
    assert not bob_hit  # Alice's memo tells Bob nothing
    assert not other_hit
    assert repeat_hit  # her own repeat still hits
    figures.update(
        ttft_s_alice_first=round(alice_first, 3),
        ttft_s_bob_alices_prompt=round(bob_same, 3),
        ttft_s_bob_unrelated_prompt=round(bob_other, 3),
        ttft_s_alice_repeat=round(alice_repeat, 3),
    )


def test_cached_tokens_are_reported_on_chat_and_completions(server: Server) -> None:
    prompt = "Cached-token accounting: " + OTHER
    assert not hit(chat(server, ALICE, prompt))
    again = chat(server, ALICE, prompt)
    assert hit(again)
    assert (
        again["usage"]["prompt_tokens_details"]["cached_tokens"] < again["usage"]["prompt_tokens"]
    )
    for expected_hit in (False, True):
        response = httpx.post(
            server.url + "/v1/completions",
            json={"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0},
            headers={"authorization": f"Bearer {ALICE}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert set(response.json()["usage"]["prompt_tokens_details"]) == {"cached_tokens"}
        assert hit(response.json()) is expected_hit  # untemplated text: another sequence


def test_a_cache_salt_splits_one_tenants_cache(server: Server) -> None:
    prompt = "Salted: " + MEMO
    assert not hit(chat(server, ALICE, prompt, cache_salt="project-a"))
    assert not hit(chat(server, ALICE, prompt, cache_salt="project-b"))
    assert not hit(chat(server, ALICE, prompt))  # no salt is a namespace of its own
    assert hit(chat(server, ALICE, prompt, cache_salt="project-a"))
    refused = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "cache_salt": ""},
        headers={"authorization": f"Bearer {ALICE}"},
        timeout=60,
    )
    assert refused.status_code == 422
    assert "cache_salt" in refused.json()["detail"]


def test_a_team_shares_one_cache(server: Server) -> None:
    prompt = "Team notes: " + MEMO
    assert not hit(chat(server, TEAM_ONE, prompt))
    assert hit(chat(server, TEAM_TWO, prompt))  # the same tenant: a hit
    assert not hit(chat(server, BOB, prompt))


def test_messages_and_responses_take_a_salt_and_stay_isolated(server: Server) -> None:
    prompt = "Other protocols: " + OTHER
    headers = {"x-api-key": ALICE, "anthropic-version": "2023-06-01"}
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": prompt}]}
    for expected_hit in (False, True):
        answer = httpx.post(
            server.url + "/v1/messages",
            json={**body, "cache_salt": "m"},
            headers=headers,
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]
        read, fresh = usage["cache_read_input_tokens"], usage["input_tokens"]
        assert (read > fresh) is expected_hit
    bob = httpx.post(
        server.url + "/v1/responses",
        json={"model": "tiny", "input": prompt, "max_output_tokens": 2, "cache_salt": "m"},
        headers={"authorization": f"Bearer {BOB}"},
        timeout=120,
    )
    assert bob.status_code == 200, bob.text
    usage = bob.json()["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] < usage["input_tokens"] // 2


def test_persisted_entries_keep_their_namespace(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tenants.toml").write_text(TENANTS)
    flags = (
        "--api-keys",
        f"{ALICE},{BOB}",
        "--tenants",
        str(tmp_path / "tenants.toml"),
        "--cache-dir",
        str(tmp_path / "kv"),
    )
    prompt = "Kept across a restart: " + MEMO[:800]
    with running_server(model_dir, tmp_path, *flags) as server:
        assert not hit(chat(server, ALICE, prompt))
        assert server.stop() == 0  # a clean stop saves the cache
    assert list((tmp_path / "kv").glob("*.safetensors"))
    with running_server(model_dir, tmp_path, *flags) as server:
        assert not hit(chat(server, BOB, prompt))
        assert hit(chat(server, ALICE, prompt))


def test_namespaces_separate_tenants_and_salts() -> None:
    assert cache_namespace(None, None) == ""  # a server without keys: one namespace
    spaces = {
        cache_namespace(tenant, salt)
        for tenant in (None, "a", "b", "a\0")
        for salt in (None, "", "s", "\0s")
    }
    assert len(spaces) == 16
    directory = TenantDirectory(["k1", "k2"])
    one, two = directory.resolve(b"k1"), directory.resolve(b"k2")
    assert one is not None and two is not None and one.name != two.name
    assert directory.resolve(b"k3") is None and directory.resolve(None) is None
