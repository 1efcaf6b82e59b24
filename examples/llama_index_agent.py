"""LlamaIndex on Corral through `OpenAILike`: a chat, `structured_predict` into a pydantic
model, and a function-calling agent made to call its tool first (the tool's result is the
answer).

    pip install llama-index-core llama-index-llms-openai-like
    python examples/llama_index_agent.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from _client import API_KEY, BASE_URL, client, model_name
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel


class City(BaseModel):
    name: str
    country: str


def run(base_url: str = BASE_URL, api_key: str = API_KEY) -> dict[str, Any]:
    """A chat reply, a `City` and the agent's answer (with the cities its tool saw)."""
    llm = OpenAILike(model=model_name(client(base_url, api_key)), api_base=base_url,
                     api_key=api_key, is_chat_model=True, is_function_calling_model=True,
                     context_window=2048, max_tokens=64, temperature=0, max_retries=0)
    out: dict[str, Any] = {}
    out["chat"] = llm.chat([ChatMessage(role="user", content="Say hello.")]).message.content
    out["structured_predict"] = llm.structured_predict(
        City, PromptTemplate("Extract the city: {text}"), text="Paris is in France.")
    calls: list[str] = []

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"Sunny and 24 C in {city}"

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(get_weather, return_direct=True)],
                          llm=llm, system_prompt="Use get_weather to answer.",
                          initial_tool_choice="get_weather")

    async def ask() -> Any:
        return await agent.run(user_msg="What is the weather in Paris?")

    out["agent"] = str(asyncio.run(ask()))
    out["agent_calls"] = calls
    return out


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name}: {value!r}")
