"""``response_format`` as the grammar the engine enforces, or the 422 that refuses it.

A schema the server cannot enforce exactly (a keyword llguidance does not
implement, a format it does not know, a schema too costly to compile) is
refused with a message that names the problem: an answer that only looks
constrained would be worse than none.
"""

from __future__ import annotations

from actors.generation.engine.constraints import (
    ConstraintError,
    json_object_grammar,
    json_schema_grammar,
)
from api.http.problems import HTTPProblem
from api.openai.request_types import (
    JsonObjectFormat,
    JsonSchemaFormat,
    ResponseFormat,
    TextResponseFormat,
)


def response_grammar(response_format: ResponseFormat | None) -> str | None:
    """The grammar ``response_format`` asks for; ``None`` for free text."""
    match response_format:
        case None | TextResponseFormat():
            return None
        case JsonObjectFormat():
            return json_object_grammar()
        case JsonSchemaFormat(json_schema=spec):
            try:
                return json_schema_grammar({} if spec.schema is None else spec.schema)
            except ConstraintError as exc:
                raise HTTPProblem(
                    422,
                    "unsupported-schema",
                    f"`response_format.json_schema.schema` cannot be enforced: {exc}",
                ) from None
