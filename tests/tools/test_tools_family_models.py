"""Tiny random-weight Llama, Mistral, Qwen3 and gpt-oss models with their families' real
tokenizers and templates, run by Corral's engine under each format's grammar: for every
tool_choice the calls come out in the family's own syntax, parse, and hold to their schemas;
streamed equals final for every chunking of a generated text; reasoning is split off and the
schema holds on the answer after it."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.engine import LLM, SamplingParams
from corral.grammars.params import StructuredOutputsParams
from corral.tools import (
    ContentDelta,
    ReasoningDelta,
    ToolCallDelta,
    chat_constraint,
    render_chat_prompt,
    tool_format,
)

from .families import build_tiny_checkpoint, load_tokenizer, unpack_tokenizer

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {
            "city": {"type": "string", "maxLength": 12},
            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}
# How each family's generated calls begin.
CALL_OPENINGS = {"llama3.1": '{"name": "', "mistral": '[TOOL_CALLS] [{"name": "',
                 "qwen3": '<tool_call>\n{"name": "', "qwen3_coder": "<tool_call>\n<function=",
                 "gpt-oss": "<|channel|>commentary to=functions."}
# Where reasoning ends and the answer (the calls) begins.
REASONING_END = re.compile(r"</think>|<\|end\|><\|start\|>assistant")
# (tool_choice, parallel_tool_calls)
CHOICES = [("required", True), ("required", False), (NAMED, True), ("auto", True),
           ("none", True)]


@pytest.fixture(scope="module", params=sorted(CALL_OPENINGS))
def family_llm(request, model_families_dir, tmp_path_factory):
    family = request.param
    path = unpack_tokenizer(model_families_dir, family,
                            tmp_path_factory.mktemp(family.replace(".", "_")))
    build_tiny_checkpoint(path, load_tokenizer(path), family)
    return family, LLM(str(path), dtype="float32", num_blocks=96, max_model_len=1024)


def token_pieces(tokenizer, prompt_ids: list[int], token_ids: list[int],
                 skip_special_tokens: bool) -> list[str]:
    """The text deltas a stream carries, one per token, from the engine's detokenizer."""
    from corral.engine.detokenizer import IncrementalDetokenizer

    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
    return [detokenizer.update(prompt_ids + token_ids[:i]) for i in range(1, len(token_ids) + 1)]


def streamed(parser, pieces: list[str], truncated: bool):
    """Reasoning, content and calls [(name, arguments)] rebuilt from the events alone."""
    events = [e for piece in pieces for e in parser.feed(piece)] + parser.finish(truncated)
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta)) or None
    content = "".join(e.text for e in events if isinstance(e, ContentDelta)) or None
    calls: list[list[str]] = []
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.id is not None:
                assert e.index == len(calls)
                calls.append([e.name, ""])
            calls[e.index][1] += e.arguments
    return reasoning, content, [tuple(c) for c in calls]


def final(parser):
    return parser.reasoning, parser.content, [(c.name, c.arguments) for c in parser.tool_calls]


def test_each_tool_choice_makes_calls_in_the_family_syntax(family_llm):
    family, llm = family_llm
    tokenizer = llm.tokenizer
    fmt = tool_format(tokenizer)
    prompt = render_chat_prompt(tokenizer, ASK, TOOLS, fmt=fmt)
    mode = fmt.reasoning_mode(prompt)
    params = [SamplingParams(
        temperature=0.9, seed=7 + i, max_tokens=48, skip_special_tokens=fmt.skip_special_tokens,
        structured_outputs=chat_constraint(fmt, TOOLS, choice, parallel, reasoning_mode=mode,
                                           max_reasoning_tokens=8))
        for i, (choice, parallel) in enumerate(CHOICES)]
    outputs = llm.generate([prompt] * len(CHOICES), params)
    texts = {}
    for (choice, parallel), out in zip(CHOICES, outputs, strict=True):
        completion = out.outputs[0]
        truncated = completion.finish_reason == "length"
        parser = fmt.output_parser(TOOLS, parse_calls=choice != "none", reasoning_mode=mode)
        pieces = token_pieces(tokenizer, list(out.prompt_token_ids), list(completion.token_ids),
                              fmt.skip_special_tokens)
        assert "".join(pieces) == completion.text
        result = streamed(parser, pieces, truncated)
        assert result == final(parser)
        whole = fmt.output_parser(TOOLS, parse_calls=choice != "none", reasoning_mode=mode)
        assert streamed(whole, [completion.text], truncated) == result
        calls = parser.tool_calls
        if choice in ("required", NAMED):
            assert completion.finish_reason == "stop", completion.text  # the grammar ended it
            call_text = REASONING_END.split(completion.text)[-1].lstrip()
            assert call_text.startswith(CALL_OPENINGS[family]), completion.text
            assert calls and parser.content is None
        if choice == NAMED or not parallel or fmt.is_single_call:
            assert len(calls) <= 1
        if choice == NAMED:
            assert [c.name for c in calls] == ["get_weather"]
        if choice == "none":
            assert fmt.call_marker is None or fmt.call_marker not in completion.text
            assert not completion.text.lstrip().startswith('{"name"')
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        texts[json.dumps(choice)] = (completion.text, truncated)

    # Any cut of a real generated text streams to the same result as the whole text.
    text, truncated = texts['"required"']

    @settings(max_examples=40, deadline=None)
    @given(points=st.lists(st.integers(0, len(text)), max_size=10))
    def check(points):
        bounds = [0, *sorted(points), len(text)]
        pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        parser = fmt.output_parser(TOOLS, reasoning_mode=mode)
        whole = fmt.output_parser(TOOLS, reasoning_mode=mode)
        assert streamed(parser, pieces, truncated) == streamed(whole, [text], truncated) \
            == final(parser)

    check()


def test_reasoning_comes_first_and_the_schema_holds_after_it(family_llm):
    family, llm = family_llm
    if family != "qwen3":
        pytest.skip("only Qwen3 reasons among the families with a runnable architecture")
    tokenizer = llm.tokenizer
    fmt = tool_format(tokenizer)
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"], "additionalProperties": False}
    think = tokenizer.convert_tokens_to_ids("<think>")
    prompts, params = [], []
    for kwargs in ({}, {"enable_thinking": False}):
        prompt = render_chat_prompt(tokenizer, ASK, fmt=fmt, template_kwargs=kwargs)
        mode = fmt.reasoning_mode(prompt)
        spec = chat_constraint(fmt, None, answer=StructuredOutputsParams(json=schema),
                               reasoning_mode=mode, max_reasoning_tokens=6)
        prompts.append(prompt)
        # A random model rarely opens a block by itself: the bias makes it start with one.
        params.append(SamplingParams(temperature=0, max_tokens=40, structured_outputs=spec,
                                     logit_bias={think: 50.0}))
    outputs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outputs, strict=True):
        mode = fmt.reasoning_mode(prompt)
        completion = out.outputs[0]
        parser = fmt.output_parser(None, parse_calls=False, reasoning_mode=mode)
        parser.feed(completion.text)
        parser.finish(completion.finish_reason == "length")
        if mode == "off":
            assert parser.reasoning is None and "<think>" not in completion.text
        else:
            assert completion.text.startswith("<think>") and parser.reasoning
            assert len(tokenizer.encode(parser.reasoning)) <= 8  # cut after 6 tokens
        jsonschema.validate(json.loads(parser.content), schema)
