"""`ToolFormat`: one model family's tool-call format, declared once.

A format yields the three things tool calling needs, kept apart:
- the prompt: validated messages and tools through the model's own chat template, with the
  message fields that template expects (`render_prompt`);
- the grammar for every `tool_choice` (`grammar`): Lark text for llguidance in which each
  call's arguments are held to the function's JSON schema and the family's call syntax is
  fixed; reasoning (when the model has it) comes first, unconstrained;
- the streaming parser (`output_parser`), whose events, joined, equal its final result for
  every way the text is cut.

A subclass declares its markers and writes `calls_rules` (one or more calls, as the family
writes them) and `call_parser`; the grammar around the calls (text before them, a JSON answer
instead of them, no calls at all) is the same for every marker-led format and lives here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from corral.grammars.param_error import ParamError
from corral.tools.functions import FunctionSpec, ToolChoice
from corral.tools.lark_text import (
    ANY_TEXT,
    TokenMarkers,
    nonempty_text_without,
    text_until,
    text_without,
)
from corral.tools.output_parser import ChatOutputParser, OutputParser
from corral.tools.prompt import apply_template, native_messages
from corral.tools.reasoning import (
    THINK_END,
    THINK_START,
    ThinkSplitter,
    think_mode,
    think_start_rules,
)


class ToolFormat:
    """A tool-call format bound to one tokenizer (see the module docstring).

    `reasoning` is "think" when the model writes `<think>...</think>` before its answer
    (detected from its template and vocabulary), else None.
    """

    name: ClassVar[str] = ""
    # The text that opens the model's calls; with tool_choice "none" it may not appear.
    call_marker: ClassVar[str | None] = None
    # Texts that are looked up as single tokens of the vocabulary (see `TokenMarkers`).
    token_texts: ClassVar[tuple[str, ...]] = ()
    # Whether special tokens are decoded out of the output text (False where markers are
    # special tokens); `eos_texts` are then dropped from it.
    skip_special_tokens: ClassVar[bool] = True
    eos_texts: ClassVar[tuple[str, ...]] = ()
    # The family makes at most one call per turn, whatever parallel_tool_calls says.
    is_single_call: ClassVar[bool] = False
    # The answer sits inside the format's own framing (harmony's final channel), so even
    # a plain JSON-schema answer needs the format's grammar.
    frames_answer: ClassVar[bool] = False

    def __init__(self, tokenizer: Any = None, reasoning: str | None = None) -> None:
        texts = self.token_texts + ((THINK_START, THINK_END) if reasoning == "think" else ())
        self.markers = TokenMarkers.of(tokenizer, texts)
        self.reasoning = reasoning

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reasoning={self.reasoning!r})"

    # -- prompt ----------------------------------------------------------------------------

    def render_prompt(self, tokenizer: Any, chat: list[dict[str, Any]],
                      specs: list[FunctionSpec], *, add_generation_prompt: bool = True,
                      template_kwargs: dict[str, Any] | None = None) -> str:
        """The prompt for validated messages (`normalize_messages`) and callable `specs`."""
        return apply_template(tokenizer, self.template_messages(chat),
                              [s.to_openai() for s in specs] or None, add_generation_prompt,
                              template_kwargs)

    def template_messages(self, chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages with the fields the family's template reads."""
        return native_messages(chat)

    def stop_token_ids(self) -> list[int]:
        """Tokens besides EOS that end the model's turn (harmony's `<|call|>`)."""
        return []

    def reasoning_mode(self, prompt: str) -> str:
        """"off", "optional" or "open" for a rendered prompt (see `reasoning`)."""
        return think_mode(prompt) if self.reasoning == "think" else "off"

    # -- grammar ---------------------------------------------------------------------------

    def check_function(self, spec: FunctionSpec, where: str) -> None:
        """Refuse (ParamError at `where`) a function whose arguments this format cannot
        hold to their schema; JSON-argument formats hold any schema llguidance does."""

    def max_calls(self, parallel_tool_calls: bool, max_parallel_calls: int) -> int:
        return 1 if self.is_single_call or not parallel_tool_calls else max_parallel_calls

    def grammar(self, specs: list[FunctionSpec], choice: ToolChoice | None, max_calls: int,
                answer: str | None = None, reasoning_mode: str = "off",
                max_reasoning_tokens: int | None = None) -> str:
        """The whole grammar: reasoning as `reasoning_mode` allows, then the body.

        `choice` None means no tools (the body is `answer`, or any text); `answer` is a Lark
        expression for the answer allowed instead of calls (or, without tools, required).
        """
        lines = ["%llguidance {}"]
        lines += think_start_rules(self.markers, reasoning_mode, max_reasoning_tokens)
        lines += self.body_rules(specs, choice, max_calls, answer)
        return "\n".join(lines) + "\n"

    def body_rules(self, specs: list[FunctionSpec], choice: ToolChoice | None, max_calls: int,
                   answer: str | None) -> list[str]:
        """Rules for `body`, the output after any reasoning."""
        if choice is None:
            return [f"body: {answer}" if answer else "body: ANY", f"ANY: {ANY_TEXT}"]
        if choice.mode == "none":
            return [f"body: {answer}"] if answer else ["body: PLAIN", *self.plain_rules()]
        if choice.mode == "named":
            specs = [s for s in specs if s.name == choice.name]
            max_calls = 1
        if not specs:
            raise ParamError("tools", "no function can be called")
        after, rules = self.calls_rules(specs, max_calls)
        mark = self.markers.seq(self.call_marker or "")
        if choice.mode in ("named", "required"):
            return [f"body: {mark} {after}", *rules]
        if answer:
            return [f"body: {answer} | {mark} {after}", *rules]
        return [*self.auto_rules(after), *rules, *self.plain_rules()]

    def auto_rules(self, after: str) -> list[str]:
        """`body` for tool_choice "auto": text without the marker, or any text up to the
        marker and then only calls."""
        marker = self.call_marker or ""
        if self.markers.is_token(marker):
            # A special token ends any text lexeme before it.
            return [f"body: PLAIN | TEXT? {self.markers.seq(marker)} {after}",
                    f"TEXT: {nonempty_text_without(marker)}"]
        # Text and a spelled-out marker are one lexeme that ends at the first marker: it
        # cannot go on past it. Greedy, not lazy: llguidance adds whole token slices at once
        # only while no lazy lexeme is alive (a full-vocabulary walk per step otherwise).
        return [f"body: PLAIN | HEAD {after}", f"HEAD: {text_until(marker)}"]

    def plain_rules(self) -> list[str]:
        """`PLAIN`: text in which no call can start."""
        return [f"PLAIN: {text_without([self.call_marker] if self.call_marker else [])}"]

    def calls_rules(self, specs: list[FunctionSpec], max_calls: int) -> tuple[str, list[str]]:
        """A Lark expression for 1..`max_calls` calls of `specs` after the first
        `call_marker` (which the caller writes), and the rules it uses."""
        raise NotImplementedError

    # -- parsing ---------------------------------------------------------------------------

    def call_parser(self, tools: list[dict[str, Any]] | None) -> Any:
        """A parser of content and calls (feed/finish/content/tool_calls)."""
        raise NotImplementedError

    def output_parser(self, tools: list[dict[str, Any]] | None, *, parse_calls: bool = True,
                      reasoning_mode: str = "off") -> OutputParser:
        """The parser of one completion: reasoning (when `reasoning_mode` allows it), then
        content and, when `parse_calls`, the calls."""
        splitter = None
        if self.reasoning == "think" and reasoning_mode != "off":
            splitter = ThinkSplitter(is_open=reasoning_mode == "open")
        calls = self.call_parser(tools) if parse_calls else None
        drop = self.eos_texts if not self.skip_special_tokens else ()
        return ChatOutputParser(calls, splitter, drop)
