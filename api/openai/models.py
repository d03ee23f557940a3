"""``GET /v1/models``: every model this server serves, loaded or not (a request loads it)."""

from __future__ import annotations

from collections.abc import Iterable

from api.http.asgi import Request, Responder
from api.openai.bodies import ModelCard, ModelList


class ModelsRoute:
    """The model list, in OpenAI's shape."""

    def __init__(self, names: Iterable[str], created: int) -> None:
        self._cards = [ModelCard(id=name, created=created) for name in names]

    async def list(self, request: Request, respond: Responder) -> None:
        """``GET /v1/models``."""
        await respond.json(200, ModelList(data=self._cards))
