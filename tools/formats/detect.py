"""Which tool-call format (and reasoning) a tokenizer's chat template and vocabulary speak."""

from __future__ import annotations

from typing import Any

# Checked in this order; the first whose test passes wins, Hermes is the fallback.
FORMAT_NAMES = ("hermes", "qwen3_coder", "llama3_json", "mistral", "harmony")


def detect_format_name(tokenizer: Any) -> str:
    """The format the model was trained on, read from its template and special tokens:

    harmony: `<|channel|>` and `<|message|>` are tokens; mistral: `[TOOL_CALLS]` is a token;
    qwen3_coder: the template writes `<function=` and `<parameter=` tags; llama3_json:
    `<|python_tag|>` is a token and the template speaks of the `ipython` role; otherwise
    hermes (`<tool_call>` JSON blocks, or Corral's built-in tool prompt).
    """
    vocab = _added_vocab(tokenizer)
    template = _template_text(tokenizer)
    if "<|channel|>" in vocab and "<|message|>" in vocab:
        return "harmony"
    if "[TOOL_CALLS]" in vocab:
        return "mistral"
    if "<function=" in template and "<parameter=" in template:
        return "qwen3_coder"
    if "<|python_tag|>" in vocab and "ipython" in template:
        return "llama3_json"
    return "hermes"


def detect_reasoning(tokenizer: Any, format_name: str) -> str | None:
    """"think" when the template writes `<think>` blocks and both markers are tokens;
    harmony's reasoning is its analysis channel (part of the format itself)."""
    if format_name == "harmony":
        return None
    vocab = _added_vocab(tokenizer)
    if "<think>" in vocab and "</think>" in vocab and "<think>" in _template_text(tokenizer):
        return "think"
    return None


def _added_vocab(tokenizer: Any) -> dict[str, int]:
    if tokenizer is None:
        return {}
    try:
        return dict(tokenizer.get_added_vocab())
    except (AttributeError, NotImplementedError):
        return {}


def _template_text(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(t) for t in template.values())
    return template if isinstance(template, str) else ""
