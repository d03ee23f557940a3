"""OpenAI's Responses API (``POST /v1/responses``), translated to and from a chat job."""
