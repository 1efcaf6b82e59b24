"""Where the examples find the server: `make serve` listens on http://127.0.0.1:8000/v1.

Override with CORRAL_BASE_URL and CORRAL_API_KEY (when the server was started with
--api-key).
"""

from __future__ import annotations

import os

import openai

BASE_URL = os.environ.get("CORRAL_BASE_URL", "http://127.0.0.1:8000/v1")
API_KEY = os.environ.get("CORRAL_API_KEY", "not-needed")


def client(base_url: str = BASE_URL, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key)


def model_name(c: openai.OpenAI) -> str:
    """The server's chat model (the first model it lists)."""
    return c.models.list().data[0].id
