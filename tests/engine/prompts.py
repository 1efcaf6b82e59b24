"""Chat prompts shared by the engine's behaviour tests (one long enough for chunked prefill)."""

from __future__ import annotations

_LONG_DOC = " ".join(
    f"Section {i}: the river town of Corrie kept {i * 3} boats, {i + 7} bridges and a market "
    f"that opened at {6 + i % 5} o'clock, selling apples, rope and lamp oil."
    for i in range(40)
)

CHATS: list[list[dict]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You answer in one sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "List three prime numbers and explain why they are prime."}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish and German."}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Give me a recipe for pancakes."}],
    [{"role": "user", "content": f"{_LONG_DOC}\n\nSummarise the text above in two sentences."}],
]
