"""pydantic-ai on Corral: an agent with a tool and a typed output, the output either as
JSON in the answer (`NativeOutput`, a `json_schema` response format next to the tools) or
through pydantic-ai's output tool (its default).

The tool is offered until it has been called once, so even a small model moves on to
its answer.

    pip install pydantic-ai-slim[openai]
    python examples/pydantic_ai_agent.py
"""

from __future__ import annotations

from _client import API_KEY, BASE_URL, client, model_name
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput, RunContext, Tool
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.tools import ToolDefinition


class Weather(BaseModel):
    city: str
    summary: str


def run(native: bool = True, base_url: str = BASE_URL,
        api_key: str = API_KEY) -> tuple[Weather, list[str]]:
    """Run the agent once: its output and the cities the tool was called with."""
    calls: list[str] = []

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"Sunny and 24 C in {city}"

    async def until_called(ctx: RunContext[None], tool_def: ToolDefinition
                           ) -> ToolDefinition | None:
        return None if calls else tool_def

    model = OpenAIChatModel(model_name(client(base_url, api_key)),
                            provider=OpenAIProvider(base_url=base_url, api_key=api_key))
    agent = Agent(model, output_type=NativeOutput(Weather) if native else Weather,
                  tools=[Tool(get_weather, prepare=until_called)],
                  instructions="Look the weather up, then answer.",
                  model_settings={"temperature": 0, "max_tokens": 96})
    result = agent.run_sync("What is the weather in Paris?")
    return result.output, calls


if __name__ == "__main__":
    for native in (True, False):
        output, calls = run(native)
        print(f"{'NativeOutput' if native else 'output tool'}: called get_weather for {calls}; "
              f"output {output!r}")
