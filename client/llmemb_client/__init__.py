"""The Python client of the LLMEmb service: sync and async, typed by the API's own models.

    from llmemb_client import LLMEmbClient
    with LLMEmbClient("http://127.0.0.1:8000", api_key="...", max_retries=3) as c:
        c.recommend(["1", "2", "3"], k=5)
"""
from llmemb_client.client import AsyncLLMEmbClient, LLMEmbClient, LLMEmbError, decode_base64_embedding

__all__ = ["AsyncLLMEmbClient", "LLMEmbClient", "LLMEmbError", "decode_base64_embedding"]
