"""Reasoning written between `<think>` and `</think>` before the answer (Qwen3 and kin).

Three facts about one request, read from its rendered prompt (`think_mode`):
- "optional": the model may open a reasoning block first (Qwen3 with thinking on);
- "open": the prompt itself opened the block, so the output starts inside it;
- "off": the prompt holds a closed, empty block (Qwen3's `enable_thinking: false`).

The grammar lets reasoning through unconstrained and applies the answer's grammar only
after `</think>`; with `max_reasoning_tokens` the end marker is forced after that many
reasoning tokens. `ThinkSplitter` cuts the output text into reasoning and the rest one
character at a time, so a stream and the final text split the same way.
"""

from __future__ import annotations

from corral.tools.lark_text import TokenMarkers, text_without

THINK_START = "<think>"
THINK_END = "</think>"
THINK_MODES = ("off", "optional", "open")


def think_mode(prompt: str) -> str:
    """"open", "off" or "optional" for a rendered prompt (see the module docstring)."""
    last_start = prompt.rfind(THINK_START)
    last_end = prompt.rfind(THINK_END)
    if last_start > last_end:
        return "open"
    if last_end != -1 and not prompt[last_end + len(THINK_END):].strip():
        return "off"
    return "optional"


def think_start_rules(markers: TokenMarkers, mode: str, max_tokens: int | None) -> list[str]:
    """Lark rules for `start`: the reasoning block `mode` allows, then `body`. With
    `max_tokens`, the reasoning is a run of at most that many ordinary tokens, so the end
    marker is forced once they are spent."""
    if mode == "off":
        return ["start: body"]
    if max_tokens is not None:
        rules = [f"think_text: {markers.any_text_tokens(max_tokens)}"]
    else:
        rules = ["think_text: THINK_TEXT", f"THINK_TEXT: {text_without([THINK_END])}"]
    rules.append(r"THINK_GAP: /[ \t\r\n]{1,3}/")  # bounded: a model cannot loop on blanks
    end = markers.seq(THINK_END)
    if mode == "open":
        return [f"start: think_text {end} THINK_GAP? body", *rules]
    return ["start: think? body", f"think: {markers.seq(THINK_START)} think_text {end} THINK_GAP?",
            *rules]


class ThinkSplitter:
    """Cuts output text into reasoning and answer text, one character at a time.

    `feed` and `finish` return (is_reasoning, text) pieces in order. Reasoning is the text
    inside the block with the whitespace around it dropped; the whitespace between the
    block and the answer is dropped too. Without a block at the start (in "optional" mode)
    all the text is answer text.
    """

    def __init__(self, is_open: bool) -> None:
        self._state = "lead_in" if is_open else "lead"
        self._hold = ""  # text not yet known to be reasoning or answer

    def feed(self, text: str) -> list[tuple[bool, str]]:
        pieces: list[tuple[bool, str]] = []
        for c in text:
            self._step(c, pieces)
        return _joined(pieces)

    def finish(self) -> list[tuple[bool, str]]:
        """Settle held text at the end of the output."""
        held, self._hold = self._hold, ""
        if self._state == "lead":
            return [(False, held)] if held else []
        if self._state == "in":
            held = held.rstrip()
            return [(True, held)] if held else []
        return []

    def _step(self, c: str, pieces: list[tuple[bool, str]]) -> None:
        state = self._state
        if state == "answer":
            pieces.append((False, c))
        elif state == "lead":
            self._hold += c
            head = self._hold.lstrip()
            if head == THINK_START:
                self._state, self._hold = "lead_in", ""
            elif not THINK_START.startswith(head):
                self._state = "answer"
                pieces.append((False, self._hold))
                self._hold = ""
        elif state == "lead_in":
            if not c.isspace():
                self._state = "in"
                self._step(c, pieces)
        elif state == "in":
            self._hold += c
            if self._hold.endswith(THINK_END):
                self._state, self._hold = "gap", ""
                return
            cut = _held_from(self._hold)
            if cut:
                pieces.append((True, self._hold[:cut]))
                self._hold = self._hold[cut:]
        elif state == "gap" and not c.isspace():
            self._state = "answer"
            pieces.append((False, c))


def _held_from(text: str) -> int:
    """Where the part of `text` that may still turn out to be trailing whitespace before
    the end marker (or a piece of it) begins."""
    for i in range(len(text)):
        if THINK_END.startswith(text[i:].lstrip()):
            return i
    return len(text)


def _joined(pieces: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    for is_reasoning, text in pieces:
        if out and out[-1][0] == is_reasoning:
            out[-1] = (is_reasoning, out[-1][1] + text)
        elif text:
            out.append((is_reasoning, text))
    return out
