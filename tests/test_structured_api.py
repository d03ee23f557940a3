"""Structured outputs end to end: the official ``openai`` client against ``troupe serve``.

The generated model writes gibberish, so every valid document here is the
grammar's doing. Schemas from hypothesis bound every string and array (an
unbounded string from a random model may never close within max_tokens);
examples are derandomized, and every request is seeded, so a run is repeatable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server import Server, running_server
from tests.test_api import assert_problem, client, model_name

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(model_dir, tmp_path_factory.mktemp("structured")) as running:
        yield running


NAMES = st.from_regex(r"[a-z]{1,6}", fullmatch=True)
LEAVES: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 8)),
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-1000, 1000),
        st.integers(0, 5000),
    ),
    st.builds(
        lambda lo, span: {"type": "number", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(1, 100),
    ),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(NAMES, min_size=1, max_size=4, unique=True).map(lambda values: {"enum": values}),
)


def _object(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in required if name in properties],
        "additionalProperties": False,
    }


SCHEMAS: st.SearchStrategy[dict[str, Any]] = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(
            lambda items, most: {"type": "array", "items": items, "maxItems": most},
            inner,
            st.integers(0, 3),
        ),
        st.builds(
            _object,
            st.dictionaries(NAMES, inner, min_size=1, max_size=4),
            st.lists(NAMES, max_size=4, unique=True),
        ),
    ),
    max_leaves=8,
)


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }


def ask(server: Server, **fields: Any) -> Any:
    return client(server).chat.completions.create(
        model=model_name(server),
        messages=[{"role": "user", "content": "Answer in JSON."}],
        **fields,
    )


@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    schema=SCHEMAS.filter(lambda s: s.get("type") in ("object", "array")),
    seed=st.integers(0, 2**31),
)
def test_json_schema_output_always_validates(
    server: Server, schema: dict[str, Any], seed: int
) -> None:
    answer = ask(
        server, response_format=schema_format(schema), seed=seed, temperature=1.0, max_tokens=600
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop", (schema, choice.message.content)
    jsonschema.validate(json.loads(choice.message.content or ""), schema)


def test_streamed_json_schema_output_validates(server: Server) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 10},
            "days": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 31},
                "maxItems": 4,
            },
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    for seed in range(3):
        stream = ask(
            server, response_format=schema_format(schema), seed=seed, max_tokens=300, stream=True
        )
        text, reasons = "", []
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                reasons.append(choice.finish_reason)
        assert reasons[-1] == "stop"
        jsonschema.validate(json.loads(text), schema)


class Weather(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=12)
    celsius: int = pydantic.Field(ge=-60, le=60)
    windy: bool


def test_the_openai_clients_parse_helper_gets_a_valid_pydantic_object(server: Server) -> None:
    parsed = client(server).beta.chat.completions.parse(
        model=model_name(server),
        messages=[{"role": "user", "content": "The weather?"}],
        response_format=Weather,
        seed=7,
        max_tokens=200,
    )
    weather = parsed.choices[0].message.parsed
    assert isinstance(weather, Weather)
    assert -60 <= weather.celsius <= 60


def test_json_object_output_parses_whenever_it_ends_on_its_own(server: Server) -> None:
    ended = 0
    for seed in range(6):
        choice = ask(
            server,
            response_format={"type": "json_object"},
            seed=seed,
            temperature=0.7,
            max_tokens=400,
        ).choices[0]
        text = choice.message.content or ""
        if choice.finish_reason == "stop":
            ended += 1
            assert isinstance(json.loads(text), dict)
        else:
            assert choice.finish_reason == "length" and text.startswith("{")
    assert ended >= 4


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "object", "if": {"required": ["a"]}}, '"if"'),
        ({"type": "string", "format": "no-such-format"}, "no-such-format"),
        ({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, "nowhere"),
    ],
)
def test_a_schema_the_server_cannot_enforce_is_a_422_naming_why(
    server: Server, schema: dict[str, Any], named: str
) -> None:
    body = {
        "model": model_name(server),
        "messages": [{"role": "user", "content": "x"}],
        "response_format": schema_format(schema),
    }
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    problem = assert_problem(response, 422)
    assert str(problem["detail"]).startswith("`response_format.json_schema.schema`")
    assert named in str(problem["detail"])


def test_a_malformed_response_format_is_a_422(server: Server) -> None:
    bad = [
        {"type": "json_schema"},
        {"type": "yaml"},
        {"type": "json_schema", "json_schema": {"name": "a b"}},
    ]
    for response_format in bad:
        body = {"model": model_name(server), "messages": [{"role": "user", "content": "x"}]}
        response = httpx.post(
            server.url + "/v1/chat/completions",
            json={**body, "response_format": response_format},
            timeout=30,
        )
        assert_problem(response, 422)


def test_response_format_is_in_the_openapi_document(server: Server) -> None:
    document = httpx.get(server.url + "/openapi.json", timeout=10).json()
    text = json.dumps(document["components"]["schemas"])
    assert "json_schema" in text and "json_object" in text
