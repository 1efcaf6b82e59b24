"""gpt-oss's harmony format: channels, with calls addressed to `functions.NAME`.

After the prompt's `<|start|>assistant` the model may reason in the analysis channel, then
either answers in the final channel or makes one call (a call ends the turn at `<|call|>`),
which a preamble to the user in the commentary channel may come before:

    <|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant
    <|channel|>commentary<|message|>Let me look it up.<|end|><|start|>assistant
    <|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{...}<|call|>

Every marker is a special token (the output is decoded with them, see `harmony_parser`).
The grammar leaves the analysis unconstrained (ended after `max_reasoning_tokens` if set) and
holds the call's arguments, or a JSON answer in the final channel, to their schemas.
"""

from __future__ import annotations

from typing import Any

from corral.tools.formats.base import ToolFormat
from corral.tools.formats.harmony_parser import CALL, END, MESSAGE, RETURN, HarmonyParser
from corral.tools.formats.harmony_prompt import render_harmony
from corral.tools.functions import FunctionSpec, ToolChoice
from corral.tools.lark_text import ANY_TEXT, arguments_schema, json_rule
from corral.tools.output_parser import OutputParser

CHANNEL, START, CONSTRAIN = "<|channel|>", "<|start|>", "<|constrain|>"


class HarmonyFormat(ToolFormat):
    """OpenAI harmony (gpt-oss): analysis / commentary / final channels."""

    name = "harmony"
    call_marker = CHANNEL + "commentary to=functions."
    token_texts = (CHANNEL, START, CONSTRAIN, MESSAGE, END, CALL, RETURN)
    skip_special_tokens = False
    is_single_call = True
    frames_answer = True

    def render_prompt(self, tokenizer: Any, chat: list[dict[str, Any]],
                      specs: list[FunctionSpec], *, add_generation_prompt: bool = True,
                      template_kwargs: dict[str, Any] | None = None) -> str:
        return render_harmony(chat, specs, add_generation_prompt, template_kwargs)

    def stop_token_ids(self) -> list[int]:
        return [self.markers.ids[CALL]] if self.markers.is_token(CALL) else []

    def reasoning_mode(self, prompt: str) -> str:
        return "optional"  # the analysis channel may always come first

    def grammar(self, specs: list[FunctionSpec], choice: ToolChoice | None, max_calls: int,
                answer: str | None = None, reasoning_mode: str = "off",
                max_reasoning_tokens: int | None = None) -> str:
        seq = self.markers.seq
        final = f"{seq(CHANNEL + 'final' + MESSAGE)} {answer or 'FINAL_TEXT'}"
        lines = [
            "%llguidance {}",
            "start: analysis? body",
            f"analysis: {seq(CHANNEL + 'analysis' + MESSAGE)} analysis_text "
            f"{seq(END + START + 'assistant')}",
            "analysis_text: " + (self.markers.any_text_tokens(max_reasoning_tokens)
                                 if max_reasoning_tokens else "ANALYSIS_TEXT"),
            f"ANALYSIS_TEXT: {ANY_TEXT}",
            f"final: {final}",
            f"FINAL_TEXT: {ANY_TEXT}",
        ]
        mode = "none" if choice is None else choice.mode
        if mode == "named":
            specs = [s for s in specs if s.name == choice.name]  # type: ignore[union-attr]
        if mode == "none" or not specs:
            return "\n".join([*lines, "body: final"]) + "\n"
        lines.append("call: preamble? (" + " | ".join(f"fn_{i}" for i in range(len(specs))) + ")")
        lines.append(f"preamble: {seq(CHANNEL + 'commentary' + MESSAGE)} PREAMBLE_TEXT "
                     f"{seq(END + START + 'assistant')}")
        lines.append(f"PREAMBLE_TEXT: {ANY_TEXT}")
        for i, spec in enumerate(specs):
            head = seq(f"{CHANNEL}commentary to=functions.{spec.name} {CONSTRAIN}json{MESSAGE}")
            lines.append(f"fn_{i}: {head} args_{i} {seq(CALL)}")
            lines.append(f"args_{i}: {json_rule(arguments_schema(spec.parameters))}")
        lines.append("body: call" if mode in ("named", "required") else "body: final | call")
        return "\n".join(lines) + "\n"

    def output_parser(self, tools: list[dict[str, Any]] | None, *, parse_calls: bool = True,
                      reasoning_mode: str = "off") -> OutputParser:
        return HarmonyParser(parse_calls)
