"""Streaming chat: print tokens as they arrive, then the usage the server reports."""

from __future__ import annotations

from _client import client, model_name


def main() -> None:
    c = client()
    stream = c.chat.completions.create(
        model=model_name(c),
        messages=[{"role": "user", "content": "Write a haiku about continuous batching."}],
        max_tokens=60,
        temperature=0.7,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage is not None:
            print(f"\n\n[{chunk.usage.completion_tokens} tokens streamed]")


if __name__ == "__main__":
    main()
