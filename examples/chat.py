"""Chat completion with the official OpenAI client against a Corral server.

    make serve            # in one terminal
    python examples/chat.py
"""

from __future__ import annotations

from _client import client, model_name


def main() -> None:
    c = client()
    response = c.chat.completions.create(
        model=model_name(c),
        messages=[
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is a paged KV cache, in two sentences?"},
        ],
        max_tokens=80,
        temperature=0.2,
    )
    print(response.choices[0].message.content)
    u = response.usage
    print(f"\n[{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens, "
          f"finish_reason={response.choices[0].finish_reason}]")


if __name__ == "__main__":
    main()
