"""ToolCallParser: final results, streaming deltas, and stream == final for every chunking."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.tools import ContentDelta, ToolCallDelta, ToolCallParser, format_call

PARIS = format_call("get_weather", {"city": "Paris", "tags": ["a}", {"b": "\\\"]"}]})
TIME = format_call("get_time", {})


def parse(text: str) -> ToolCallParser:
    parser = ToolCallParser()
    parser.feed(text)
    parser.finish()
    return parser


def stream(pieces: list[str]) -> tuple[ToolCallParser, str | None, list[dict]]:
    """Feed pieces; rebuild content and calls from the deltas alone, as a client does."""
    parser = ToolCallParser()
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    calls: list[dict] = []
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.id is not None:
                assert e.index == len(calls) and e.name
                calls.append({"id": e.id, "name": e.name, "arguments": ""})
            else:
                assert e.name is None
            calls[e.index]["arguments"] += e.arguments
    return parser, content or None, calls


def final_calls(parser: ToolCallParser) -> list[dict]:
    return [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in parser.tool_calls]


def test_plain_text_is_content():
    parser = parse("Hello, <b>world</b>!\n")
    assert parser.content == "Hello, <b>world</b>!\n"
    assert parser.tool_calls == []


def test_one_call_only():
    parser = parse(PARIS)
    assert parser.content is None
    [call] = parser.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris", "tags": ["a}", {"b": "\\\"]"}]}
    assert call.id.startswith("call_") and len(call.id) > 10


def test_text_then_parallel_calls():
    parser = parse("Let me check both.\n" + PARIS + "\n" + TIME + "\n")
    assert parser.content == "Let me check both."
    assert [c.name for c in parser.tool_calls] == ["get_weather", "get_time"]
    assert parser.tool_calls[1].arguments == "{}"
    assert len({c.id for c in parser.tool_calls}) == 2


def test_calls_without_arguments_or_with_arguments_first():
    parser = parse('<tool_call>\n{"name": "ping"}\n</tool_call>'
                   '<tool_call>{"parameters": {"x": 1}, "name": "set"}</tool_call>')
    assert [(c.name, c.arguments) for c in parser.tool_calls] == [
        ("ping", "{}"), ("set", '{"x": 1}')]


def test_a_block_holding_a_list_of_calls():
    parser = parse('Ok <tool_call>[\n{"name": "get_time", "arguments": {}},\n'
                   '{"name": "get_weather", "arguments": {"city": "Rome"}}\n]</tool_call>')
    assert parser.content == "Ok"
    assert [(c.name, c.arguments) for c in parser.tool_calls] == [
        ("get_time", "{}"), ("get_weather", '{"city": "Rome"}')]
    empty = parse("<tool_call>[]</tool_call>")
    assert (empty.content, empty.tool_calls) == (None, [])


def test_partial_marker_is_held_back_while_streaming():
    parser = ToolCallParser()
    assert parser.feed("Sure <tool") == [ContentDelta("Sure")]
    assert parser.feed("_ca") == []
    events = parser.feed('ll>\n{"name": "get_time", "argu')
    assert len(events) == 1 and events[0].name == "get_time" and events[0].arguments == ""
    assert parser.feed('ments": {"a": ') == [ToolCallDelta(0, None, None, '{"a": ')]
    assert parser.feed("1}}\n</tool_call>") == [ToolCallDelta(0, None, None, "1}")]
    assert parser.finish() == []
    assert parser.content == "Sure"


def test_text_that_only_looks_like_a_marker_is_content():
    parser = ToolCallParser()
    events = parser.feed("a <tool_cal") + parser.feed("x> b <")
    events += parser.finish()
    assert "".join(e.text for e in events) == "a <tool_calx> b <"


def test_malformed_block_before_the_name_becomes_content():
    parser = parse("<tool_call>\nnot json\n</tool_call>")
    assert parser.tool_calls == []
    assert parser.content == "<tool_call>\nnot json\n</tool_call>"


def test_truncated_call_keeps_its_partial_arguments():
    parser = parse('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')
    [call] = parser.tool_calls
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Par')


def test_feed_after_finish_is_refused():
    parser = parse("x")
    try:
        parser.feed("y")
    except ValueError as e:
        assert str(e).startswith("text:")
    else:
        raise AssertionError("feed after finish must raise")


def test_ids_are_stable_between_stream_and_final():
    parser, _, calls = stream([PARIS[:20], PARIS[20:], "\n", TIME])
    assert [c["id"] for c in calls] == [c.id for c in parser.tool_calls]


# -- property: stream == final for every chunking -------------------------------------------

_ARG_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
_CALLS = st.builds(
    format_call,
    st.sampled_from(["get_weather", "get_time", "f"]),
    st.dictionaries(st.text(max_size=6), _ARG_VALUES, max_size=3),
)
_TOKENS = list("ab <>/\n{}[]\"_:,é東") + ["<tool_call>", "</tool_call>", "<tool_c", '"name": ']


def _list_block(calls: list[str]) -> str:
    objects = [c.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>") for c in calls]
    return "<tool_call>[" + ", ".join(objects) + "]</tool_call>"


_TEXTS = st.lists(st.sampled_from(_TOKENS), max_size=12).map("".join)
_PIECES = st.lists(st.one_of(_CALLS, _TEXTS, st.lists(_CALLS, max_size=3).map(_list_block),
                             st.sampled_from(["\n", " ", "<tool_call>\n{", "<tool_call>["])),
                   max_size=6)


@st.composite
def texts_and_chunkings(draw):
    text = "".join(draw(_PIECES))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)], strict=True)]
    return text, pieces


@settings(max_examples=400, deadline=None)
@given(texts_and_chunkings())
def test_stream_equals_final_for_every_chunking(case):
    text, pieces = case
    parser, content, calls = stream(pieces)
    # The same parser's final view equals its own stream ...
    assert parser.content == content
    assert final_calls(parser) == calls
    # ... and equals a one-shot parse of the whole text (ids differ between parsers).
    whole = parse(text)
    assert whole.content == content
    assert [(c.name, c.arguments) for c in whole.tool_calls] == [
        (c["name"], c["arguments"]) for c in calls]
    # One character at a time, too.
    _, content_chars, calls_chars = stream(list(text))
    assert content_chars == content
    assert [(c["name"], c["arguments"]) for c in calls_chars] == [
        (c["name"], c["arguments"]) for c in calls]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["get_weather", "f"]),
                          st.dictionaries(st.text(max_size=6), _ARG_VALUES, max_size=3)),
                min_size=1, max_size=4),
       st.text(alphabet="ab .\n", max_size=10))
def test_well_formed_calls_round_trip(calls, preface):
    text = preface + "\n".join(format_call(name, args) for name, args in calls)
    parser = parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in parser.tool_calls] == calls
    assert parser.content == (preface.rstrip() or None)
