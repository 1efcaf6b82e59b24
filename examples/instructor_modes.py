"""instructor on Corral: one pydantic model extracted in each of instructor's OpenAI modes.

`TOOLS` (a forced function call) and `JSON_SCHEMA` (a `json_schema` response format) are
constrained by the model's schema, so they always validate; `JSON` asks for a JSON object
(the schema goes in the prompt only), so it always parses.

    pip install instructor
    python examples/instructor_modes.py
"""

from __future__ import annotations

import instructor
import openai
from _client import API_KEY, BASE_URL, client, model_name
from pydantic import BaseModel

MODES = {"TOOLS": instructor.Mode.TOOLS, "JSON": instructor.Mode.JSON,
         "JSON_SCHEMA": instructor.Mode.JSON_SCHEMA}


class City(BaseModel):
    name: str
    country: str


class Mention(BaseModel):
    """For JSON mode, where only JSON is enforced: every field has a default."""

    name: str = ""
    country: str = ""


def run(mode: str, base_url: str = BASE_URL, api_key: str = API_KEY) -> BaseModel:
    """Extract a city from a sentence in `mode` ("TOOLS", "JSON" or "JSON_SCHEMA")."""
    raw = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    patched = instructor.from_openai(raw, mode=MODES[mode])
    return patched.chat.completions.create(
        model=model_name(client(base_url, api_key)),
        response_model=Mention if mode == "JSON" else City, max_retries=0,
        messages=[{"role": "user", "content": "Paris is the capital of France. Extract the city."}],
        temperature=0, max_tokens=64)


if __name__ == "__main__":
    for mode in MODES:
        print(f"{mode}: {run(mode)!r}")
