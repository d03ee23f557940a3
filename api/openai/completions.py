"""``POST /v1/chat/completions`` and ``POST /v1/completions``: OpenAI's completions.

Each body becomes a job (:mod:`api.serving.jobs`) answered by a chat or text
reply writer (:mod:`api.openai.chat_reply`); the serving pipeline does the rest.
"""

from __future__ import annotations

from api.http.asgi import Request, Responder
from api.openai.chat_reply import chat_reply, text_reply
from api.openai.request_types import NOT_HONOURED, ChatCompletionRequest, CompletionRequest
from api.serving.jobs import Job, text_job
from api.serving.pipeline import Pipeline


class Completions:
    """The handlers of OpenAI's chat and text completions, over the serving pipeline."""

    def __init__(self, core: Pipeline) -> None:
        self._core = core

    async def chat(self, request: Request, respond: Responder) -> None:
        """``POST /v1/chat/completions``."""
        await self._core.handle(request, respond, "chat", self._chat_job)

    async def text(self, request: Request, respond: Responder) -> None:
        """``POST /v1/completions``."""
        await self._core.handle(request, respond, "completions", self._text_job)

    async def _chat_job(self, request: Request) -> Job:
        core = self._core
        body = await request.json_body(
            ChatCompletionRequest, core.limits.max_body_bytes, NOT_HONOURED
        )
        await core.check_model(body.model)
        return await core.chat_job_of(body, lambda context, tools: chat_reply(context, body, tools))

    async def _text_job(self, request: Request) -> Job:
        core = self._core
        body = await request.json_body(CompletionRequest, core.limits.max_body_bytes, NOT_HONOURED)
        entry = await core.check_model(body.model)
        return text_job(body, entry.tokenizer, lambda context, _: text_reply(context, body))
