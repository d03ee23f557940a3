"""The agent-facing routes as this server serves them: Messages, Responses, embeddings.

Their operations, and their requests narrowed to what this server accepts.
msgspec's schemas say what the types decode; these limits (the served model
names, the token limit, the vocabulary, the embedding size, the input item
counts) are the server's, so they are written into the components here.
"""

from __future__ import annotations

from typing import Any

from api.openai.embeddings import MAX_INPUTS
from api.openai.responses.response_types import INPUT_ITEM_TYPES, MAX_INPUT_ITEMS
from api.openapi.parts import (
    COMPLETION_ERRORS,
    JSON,
    OBJECT,
    REF,
    SSE,
    Guard,
    ServedApi,
    named_events,
)


def fit_agent_requests(components: dict[str, Any], served: ServedApi) -> None:
    """Narrow the Messages, Responses and embeddings requests to what this server accepts."""
    model = {"type": "string", "enum": served.model_names}
    limit = {"type": "integer", "minimum": 1, "maximum": served.max_tokens}
    for name in ("MessagesRequest", "CountTokensRequest", "ResponsesRequest", "EmbeddingRequest"):
        components[name]["properties"]["model"] = model
    components["MessagesRequest"]["properties"]["max_tokens"] = limit
    components["ResponsesRequest"]["properties"]["max_output_tokens"] = {
        "anyOf": [limit, {"type": "null"}]
    }
    # A message item may leave out its ``type`` (the server fills it in).
    message = components["MessageItem"]
    message["required"] = [field for field in message.get("required", []) if field != "type"]
    items = [{"$ref": REF.format(name=kind.__name__)} for kind in INPUT_ITEM_TYPES]
    components["ResponsesRequest"]["properties"]["input"] = {
        "anyOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {"anyOf": items},
                "minItems": 1,
                "maxItems": MAX_INPUT_ITEMS,
            },
        ]
    }
    token_id: dict[str, Any] = {"type": "integer", "minimum": 0}
    if served.vocab_size:
        token_id["maximum"] = served.vocab_size - 1
    text = {"type": "string", "minLength": 1}
    fields = components["EmbeddingRequest"]["properties"]
    fields["input"] = {
        "anyOf": [
            text,
            {"type": "array", "items": text, "minItems": 1, "maxItems": MAX_INPUTS},
            {"type": "array", "items": token_id, "minItems": 1},
            {
                "type": "array",
                "items": {"type": "array", "items": token_id, "minItems": 1},
                "minItems": 1,
                "maxItems": MAX_INPUTS,
            },
        ]
    }
    if served.embedding_size:
        fields["dimensions"] = {"anyOf": [{"const": served.embedding_size}, {"type": "null"}]}


def agent_paths(api: Guard, ref: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Anthropic's Messages, OpenAI's Responses, and embeddings."""
    anthropic = Guard(api.scheme, api.refusals, ref["ErrorBody"])
    any_event = named_events(OBJECT)
    return {
        "/v1/messages": {
            "post": anthropic.operation(
                "Create a message, Anthropic's Messages API (SSE when `stream` is true).",
                {JSON: ref["MessageResponse"], SSE: any_event},
                anthropic_statuses(COMPLETION_ERRORS),
                body=ref["MessagesRequest"],
            )
        },
        "/v1/messages/count_tokens": {
            "post": anthropic.operation(
                "Count a message's prompt tokens.",
                {JSON: ref["InputTokenCount"]},
                anthropic_statuses((400, 404, 408, 413, 415, 422, 500, 503, 504)),
                body=ref["CountTokensRequest"],
            )
        },
        "/v1/responses": {
            "post": api.operation(
                "Create a response, OpenAI's Responses API, stateless (SSE when `stream` is true).",
                {JSON: ref["Response"], SSE: any_event},
                COMPLETION_ERRORS,
                body=ref["ResponsesRequest"],
            )
        },
        "/v1/embeddings": {
            "post": api.operation(
                "Embed strings or token ids with the served model.",
                {JSON: ref["EmbeddingList"]},
                COMPLETION_ERRORS,
                body=ref["EmbeddingRequest"],
            )
        },
    }


def anthropic_statuses(statuses: tuple[int, ...]) -> tuple[int, ...]:
    """The statuses an Anthropic route answers: 400 where other routes say 415 or 422."""
    return tuple(status for status in statuses if status not in (415, 422))
