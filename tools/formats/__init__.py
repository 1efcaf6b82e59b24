"""One declarative tool-call format per model family (see `base.ToolFormat`).

    fmt = tool_format(tokenizer)                 # detected, or tool_format(tokenizer, "mistral")
    prompt = fmt.render_prompt(tokenizer, chat, specs, template_kwargs={...})
    mode = fmt.reasoning_mode(prompt)
    grammar = fmt.grammar(specs, choice, max_calls, answer, mode)
    parser = fmt.output_parser(tools, reasoning_mode=mode)
"""

from __future__ import annotations

from typing import Any

from corral.grammars.param_error import ParamError
from corral.tools.formats.base import ToolFormat
from corral.tools.formats.detect import FORMAT_NAMES, detect_format_name, detect_reasoning
from corral.tools.formats.hermes import HermesFormat

TOOL_CALL_FORMATS = (*FORMAT_NAMES, "auto")


def format_class(name: str) -> type[ToolFormat]:
    """The `ToolFormat` subclass named `name` (one of `FORMAT_NAMES`)."""
    if name == "hermes":
        return HermesFormat
    if name == "llama3_json":
        from corral.tools.formats.llama3_json import Llama3JsonFormat

        return Llama3JsonFormat
    if name == "mistral":
        from corral.tools.formats.mistral import MistralFormat

        return MistralFormat
    if name == "qwen3_coder":
        from corral.tools.formats.qwen3_coder import Qwen3CoderFormat

        return Qwen3CoderFormat
    if name == "harmony":
        from corral.tools.formats.harmony import HarmonyFormat

        return HarmonyFormat
    raise ParamError("tool_call_format",
                     f"must be one of {', '.join(TOOL_CALL_FORMATS)} (got {name!r})")


_cache: dict[tuple[int, str, str], ToolFormat] = {}


def tool_format(tokenizer: Any, name: str | None = "auto") -> ToolFormat:
    """The format for `tokenizer`: `name`, or the detected one for "auto"/None."""
    template = str(getattr(tokenizer, "chat_template", None))
    key = (id(tokenizer), template, name or "auto")
    if key not in _cache:
        chosen = detect_format_name(tokenizer) if name in (None, "auto") else name
        cls = format_class(chosen)
        _cache[key] = cls(tokenizer, detect_reasoning(tokenizer, chosen))
    return _cache[key]


def detect_format(tokenizer: Any) -> ToolFormat:
    """The format detected from `tokenizer`'s chat template and special tokens."""
    return tool_format(tokenizer, "auto")


__all__ = ["FORMAT_NAMES", "TOOL_CALL_FORMATS", "HermesFormat", "ToolFormat",
           "detect_format", "format_class", "tool_format"]
