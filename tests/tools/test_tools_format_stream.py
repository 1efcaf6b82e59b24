"""Every format's output parser: streamed events, joined, equal the final parse for every way
the text is cut (hypothesis), with reasoning, content, calls and cut-off endings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.tools import ContentDelta, ReasoningDelta, ToolCallDelta
from corral.tools.formats import format_class
from corral.tools.output_parser import TextDropper

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}},
         {"type": "function", "function": {"name": "get_time"}}]

# (format, reasoning, reasoning mode, text, expected (reasoning, content, calls)).
CASES = [
    ("hermes", "think", "optional",
     '<think>\nThe user wants </thin weather.\n</think>\n\nSure <tool_ <b>.\n<tool_call>\n'
     '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     ("The user wants </thin weather.", "Sure <tool_ <b>.",
      [("get_weather", {"city": "Paris"})])),
    ("hermes", "think", "open", "plan\n</think>\n\nHello", ("plan", "Hello", [])),
    ("qwen3_coder", None, "off",
     "Let me look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nNew\n</par York\n"
     "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n"
     "<tool_call>\n<function=get_time>\n</function>\n</tool_call>",
     (None, "Let me look.", [("get_weather", {"city": "New\n</par York", "days": 3}),
                             ("get_time", {})])),
    ("llama3_json", None, "off",
     ' {"name": "get_weather", "parameters": {"city": "Pa\\"ris}"}}',
     (None, None, [("get_weather", {"city": 'Pa"ris}'})])),
    ("llama3_json", None, "off", 'I think {"name": is not a call',
     (None, 'I think {"name": is not a call', [])),
    ("mistral", None, "off",
     '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
     '{"name": "get_time", "arguments": {}}]</s>',
     (None, None, [("get_weather", {"city": "Paris"}), ("get_time", {})])),
    ("mistral", None, "off", "No tools [needed] </b></s>", (None, "No tools [needed] </b>", [])),
    ("harmony", None, "optional",
     "<|channel|>analysis<|message|>Need <|en the weather.<|end|><|start|>assistant"
     '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
     '{"city": "Paris"}<|call|>',
     ("Need <|en the weather.", None, [("get_weather", {"city": "Paris"})])),
    ("harmony", None, "optional",
     "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final"
     "<|message|>It is 21 degrees.<|return|>",
     ("Easy.", "It is 21 degrees.", [])),
]


def new_parser(name: str, reasoning: str | None, mode: str):
    return format_class(name)(None, reasoning).output_parser(TOOLS, reasoning_mode=mode)


def run(parser, pieces: list[str], truncated: bool = False):
    """Stream `pieces`; rebuild reasoning, content and calls from the events alone."""
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish(truncated)
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta)) or None
    content = "".join(e.text for e in events if isinstance(e, ContentDelta)) or None
    calls: list[dict] = []
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.id is not None:
                assert e.index == len(calls) and e.name
                calls.append({"name": e.name, "arguments": ""})
            calls[e.index]["arguments"] += e.arguments
    return reasoning, content, [(c["name"], c["arguments"]) for c in calls]


def final(parser):
    return parser.reasoning, parser.content, [(c.name, c.arguments) for c in parser.tool_calls]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_whole_text_parses_as_expected(case):
    name, reasoning, mode, text, (want_reasoning, want_content, want_calls) = CASES[case]
    parser = new_parser(name, reasoning, mode)
    streamed = run(parser, [text])
    assert streamed == final(parser)
    got_reasoning, got_content, calls = streamed
    assert (got_reasoning, got_content) == (want_reasoning, want_content)
    assert [(n, json.loads(a)) for n, a in calls] == want_calls


def cuts(text: str):
    return st.lists(st.integers(0, len(text)), max_size=12).map(
        lambda points: [text[a:b] for a, b in zip([0, *sorted(points)],
                                                  [*sorted(points), len(text)], strict=True)])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_stream_equals_final_for_every_chunking(case):
    name, reasoning, mode, text, _ = CASES[case]
    whole = new_parser(name, reasoning, mode)
    expected = run(whole, [text])

    @settings(max_examples=60, deadline=None)
    @given(pieces=cuts(text), truncate_at=st.integers(0, len(text)), truncated=st.booleans())
    def check(pieces, truncate_at, truncated):
        parser = new_parser(name, reasoning, mode)
        assert run(parser, pieces) == expected == final(parser)
        # A text cut anywhere (by max_tokens or not) streams as it parses, too.
        head = text[:truncate_at]
        cut = new_parser(name, reasoning, mode)
        assert run(cut, [head[i:i + 3] for i in range(0, len(head), 3)], truncated) \
            == final(cut)

    check()


def test_text_dropper_holds_only_what_may_be_dropped():
    dropper = TextDropper(("</s>",))
    out = "".join(dropper.feed(c) for c in "a</b></s>c<") + dropper.finish()
    assert out == "a</b>c<"
