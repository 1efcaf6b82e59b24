"""LangChain on Corral: `ChatOpenAI.bind_tools`, `with_structured_output` in each of its
methods, and a streamed tool call.

    pip install langchain-openai
    python examples/langchain_tools.py
"""

from __future__ import annotations

from typing import Any

from _client import API_KEY, BASE_URL, client, model_name
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel


class Weather(BaseModel):
    city: str
    temperature_c: int


WEATHER_SCHEMA = {"title": "Weather", "type": "object", "properties": {
    "city": {"type": "string"}, "temperature_c": {"type": "integer"}},
    "required": ["city", "temperature_c"]}


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny and 24 C in {city}"


def run(base_url: str = BASE_URL, api_key: str = API_KEY) -> dict[str, Any]:
    """Each way of calling: a forced tool call, structured output by json_schema,
    function_calling and json_mode, and a streamed tool call."""
    llm = ChatOpenAI(model=model_name(client(base_url, api_key)), base_url=base_url,
                     api_key=api_key, temperature=0, max_tokens=96, max_retries=0)
    ask = "What is the weather in Paris? Answer in JSON."
    out: dict[str, Any] = {}
    out["bind_tools"] = llm.bind_tools([get_weather], tool_choice="any").invoke(ask)
    for method in ("json_schema", "function_calling"):
        out[method] = llm.with_structured_output(Weather, method=method).invoke(ask)
    out["json_mode"] = llm.with_structured_output(WEATHER_SCHEMA, method="json_mode").invoke(ask)
    merged = None
    for chunk in llm.bind_tools([get_weather], tool_choice="get_weather").stream(ask):
        merged = chunk if merged is None else merged + chunk
    out["stream"] = merged
    return out


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name}: {getattr(value, 'tool_calls', value)!r}")
