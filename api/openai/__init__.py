"""OpenAI's API: chat and text completions, embeddings, and (in responses/) the Responses API."""
