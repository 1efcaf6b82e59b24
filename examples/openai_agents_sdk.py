"""The OpenAI Agents SDK on Corral: function tools and a typed final output, together.

The agent may call `get_weather` (in parallel, if it likes), gets the results back, and
ends with a `Weather` object: over the Responses API (the SDK's default model) and over
Chat Completions. Tool arguments and the final JSON are constrained by grammars built from
their schemas, so both always parse. The tool is offered until it has been called once, so
even a small model moves on to its answer.

    pip install openai-agents
    python examples/openai_agents_sdk.py
"""

from __future__ import annotations

from _client import API_KEY, BASE_URL, client, model_name
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI
from pydantic import BaseModel


class Weather(BaseModel):
    city: str
    summary: str


def run(api: str = "responses", base_url: str = BASE_URL,
        api_key: str = API_KEY) -> tuple[Weather, list[str]]:
    """Run the agent once over `api` ("responses" or "chat"): its output and the cities
    `get_weather` was called with."""
    set_tracing_disabled(True)  # no traces sent to OpenAI
    calls: list[str] = []

    @function_tool(is_enabled=lambda ctx, agent: not calls)
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"Sunny and 24 C in {city}"

    openai_client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    name = model_name(client(base_url, api_key))
    model = (OpenAIResponsesModel(model=name, openai_client=openai_client) if api == "responses"
             else OpenAIChatCompletionsModel(model=name, openai_client=openai_client))
    agent = Agent(name="weather", instructions="Look the weather up, then answer.",
                  tools=[get_weather], output_type=Weather, model=model,
                  model_settings=ModelSettings(tool_choice="required", temperature=0,
                                               max_tokens=96))
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    return result.final_output, calls


if __name__ == "__main__":
    for api in ("responses", "chat"):
        output, calls = run(api)
        print(f"{api}: called get_weather for {calls}; final output {output!r}")
