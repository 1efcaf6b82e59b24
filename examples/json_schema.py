"""Structured output from a pydantic model: every answer parses, by construction.

The server turns the model's JSON Schema into a grammar that masks the tokens the model may
emit, so `message.parsed` is always a valid `Recipe` (unless max_tokens cuts it short, which
`finish_reason == "length"` tells).
"""

from __future__ import annotations

from typing import Literal

from _client import client, model_name
from pydantic import BaseModel, Field


class Ingredient(BaseModel):
    name: str = Field(max_length=40)
    grams: int = Field(ge=0, le=5000)


class Recipe(BaseModel):
    title: str = Field(max_length=60)
    difficulty: Literal["easy", "medium", "hard"]
    ingredients: list[Ingredient] = Field(min_length=1, max_length=6)


def main() -> None:
    c = client()
    completion = c.chat.completions.parse(
        model=model_name(c),
        messages=[{"role": "user", "content": "Give me a simple pancake recipe as JSON."}],
        response_format=Recipe,
        max_tokens=300,
        temperature=0.0,
    )
    choice = completion.choices[0]
    print("raw:", choice.message.content)
    recipe = choice.message.parsed
    print(f"\n{recipe.title} ({recipe.difficulty})")
    for item in recipe.ingredients:
        print(f"  {item.grams:>5} g  {item.name}")


if __name__ == "__main__":
    main()
