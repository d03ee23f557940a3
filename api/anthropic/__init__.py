"""Anthropic's Messages API (``POST /v1/messages``), translated to and from a chat job."""
