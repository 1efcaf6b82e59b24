"""Each family's own format with its real tokenizer and template: detection, the prompt (tool
history round-trips; reference ids for Mistral and harmony), the grammar for every
tool_choice, and the parser reading the family's syntax back."""

from __future__ import annotations

import json

import pytest

from corral.grammars.param_error import ParamError
from corral.tools import chat_constraint, render_chat_prompt, tool_format

from .families import EXPECTED_FORMATS, FAMILIES
from .grammar_check import GrammarCheck

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "metric": {"type": "boolean"}},
        "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "UTC time.",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
PARIS = ("get_weather", {"city": "Paris", "days": 3})
NOW = ("get_time", {})
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def call_text(family: str, calls: list[tuple[str, dict]]) -> str:
    """Calls written the way `family` generates them."""
    if family == "qwen3":
        return "\n".join(f'<tool_call>\n{{"name": "{n}", "arguments": {json.dumps(a)}}}\n'
                         "</tool_call>" for n, a in calls)
    if family == "qwen3_coder":
        def param(k, v):
            return f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
        return "\n".join(f"<tool_call>\n<function={n}>\n"
                         + "".join(param(k, v) for k, v in a.items())
                         + "</function>\n</tool_call>" for n, a in calls)
    if family == "llama3.1":
        [(n, a)] = calls
        return json.dumps({"name": n, "parameters": a})
    if family == "mistral":
        return "[TOOL_CALLS] [" + ", ".join(json.dumps({"name": n, "arguments": a})
                                            for n, a in calls) + "]"
    [(n, a)] = calls
    return (f"<|channel|>commentary to=functions.{n} <|constrain|>json<|message|>"
            f"{json.dumps(a)}<|call|>")


def answer_text(family: str, text: str = "It is sunny.") -> str:
    """A plain answer as `family` writes it."""
    return "<|channel|>final<|message|>" + text if family == "gpt-oss" else text


def parse(fmt, text: str, mode: str = "off"):
    parser = fmt.output_parser(TOOLS, reasoning_mode=mode)
    parser.feed(text)
    parser.finish()
    return parser


def calls_of(parser) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in parser.tool_calls]


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


def test_format_is_detected_from_template_and_tokens(family, family_tokenizer):
    fmt = tool_format(family_tokenizer(family))
    assert fmt.name == EXPECTED_FORMATS[family]
    assert fmt.reasoning == ("think" if family == "qwen3" else None)


def test_the_flag_overrides_detection(family_tokenizer):
    tokenizer = family_tokenizer("qwen3")
    assert tool_format(tokenizer, "llama3_json").name == "llama3_json"
    with pytest.raises(ParamError) as e:
        tool_format(tokenizer, "nope")
    assert e.value.param == "tool_call_format"


def test_mistral_tool_conversation_renders_the_reference_ids(model_families_dir,
                                                              family_tokenizer):
    golden = json.loads((model_families_dir / "mistral-7b-v0.3" / "golden.mistral-common.json")
                        .read_text())
    tokenizer = family_tokenizer("mistral")
    prompt = render_chat_prompt(tokenizer, golden["messages"], golden["tools"])
    assert tokenizer(prompt, add_special_tokens=False).input_ids == golden["token_ids"]


def test_mistral_client_ids_become_nine_characters_consistently(family_tokenizer):
    tokenizer = family_tokenizer("mistral")
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_Xy12", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_Xy12", "content": '{"temp": 21}'}]
    prompt = render_chat_prompt(tokenizer, history, TOOLS)
    call_id = prompt.split('"id": "')[1][:9]
    assert call_id.isalnum() and prompt.count(call_id) == 2
    assert '"call_id": "' + call_id + '"' in prompt


def test_harmony_tool_conversation_renders_the_reference_ids(model_families_dir,
                                                             family_tokenizer):
    golden = json.loads((model_families_dir / "gpt-oss" / "golden.openai-harmony.json")
                        .read_text())
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"}}, "required": ["city"]}}}
    messages = [
        {"role": "developer", "content": "You are a helpful assistant."}, *ASK,
        {"role": "assistant", "content": None, "reasoning_content": "Need to call the tool.",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {
             "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}]
    tokenizer = family_tokenizer("gpt-oss")
    prompt = render_chat_prompt(tokenizer, messages, [tool],
                                template_kwargs={"conversation_start_date": "2026-11-30"})
    assert prompt == golden["text"]
    assert tokenizer(prompt, add_special_tokens=False).input_ids == golden["token_ids"]


def _assistant_text(tokenizer, fmt, calls) -> str:
    """What the template renders for an assistant turn making `calls` (after the prompt
    that asks for it)."""
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call{i}abcd", "type": "function",
         "function": {"name": n, "arguments": json.dumps(a)}} for i, (n, a) in enumerate(calls)]}]
    before = render_chat_prompt(tokenizer, ASK, TOOLS, fmt=fmt)
    after = render_chat_prompt(tokenizer, history, TOOLS, fmt=fmt, add_generation_prompt=False)
    assert after.startswith(before)
    text = after[len(before):]
    for end in ("<|im_end|>\n", "<|eot_id|>"):
        text = text.removesuffix(end)
    return text


def test_history_calls_round_trip_through_the_template(family, family_tokenizer,
                                                       family_ll_tokenizer):
    tokenizer = family_tokenizer(family)
    fmt = tool_format(tokenizer)
    calls = [PARIS] if fmt.is_single_call else [PARIS, NOW]
    text = _assistant_text(tokenizer, fmt, calls)
    mode = "optional" if fmt.reasoning else "off"
    assert calls_of(parse(fmt, text, mode)) == calls
    if family in ("mistral", "gpt-oss"):
        return  # history carries the call id / recipient in other places than generation
    grammar = chat_constraint(fmt, TOOLS, "required", reasoning_mode=mode).grammar
    check = GrammarCheck(family_ll_tokenizer(family), tokenizer, grammar)
    assert check.accepts(text), check.match(text).error


@pytest.mark.parametrize("choice", ["auto", "required", NAMED])
def test_calls_in_the_family_syntax_pass_every_calling_choice(family, family_tokenizer,
                                                               family_ll_tokenizer, choice):
    tokenizer = family_tokenizer(family)
    fmt = tool_format(tokenizer)
    grammar = chat_constraint(fmt, TOOLS, choice, parallel_tool_calls=False).grammar
    check = GrammarCheck(family_ll_tokenizer(family), tokenizer, grammar)
    good = call_text(family, [PARIS])
    assert check.accepts(good), check.match(good).error
    assert calls_of(parse(fmt, good)) == [PARIS]
    bad_args = call_text(family, [("get_weather", {"city": "Paris", "days": 9})])
    assert not check.accepts(bad_args)
    missing = call_text(family, [("get_weather", {"days": 2})])
    assert not check.accepts(missing)
    other = call_text(family, [NOW])
    assert check.accepts(other) == (choice != NAMED)
    assert check.accepts(answer_text(family)) == (choice == "auto")
    if not fmt.is_single_call:
        assert not check.accepts(call_text(family, [PARIS, NOW]))  # parallel_tool_calls false


def test_parallel_calls_where_the_family_makes_them(family, family_tokenizer,
                                                    family_ll_tokenizer):
    tokenizer = family_tokenizer(family)
    fmt = tool_format(tokenizer)
    grammar = chat_constraint(fmt, TOOLS, "required", parallel_tool_calls=True).grammar
    check = GrammarCheck(family_ll_tokenizer(family), tokenizer, grammar)
    two = call_text(family, [PARIS, NOW]) if not fmt.is_single_call else None
    if two is None:
        assert fmt.max_calls(True, 16) == 1
        return
    assert check.accepts(two), check.match(two).error
    assert calls_of(parse(fmt, two)) == [PARIS, NOW]


def test_tool_choice_none_forbids_the_call_markers(family, family_tokenizer,
                                                   family_ll_tokenizer):
    tokenizer = family_tokenizer(family)
    fmt = tool_format(tokenizer)
    grammar = chat_constraint(fmt, TOOLS, "none").grammar
    check = GrammarCheck(family_ll_tokenizer(family), tokenizer, grammar)
    assert not check.accepts(call_text(family, [PARIS]))
    answer = answer_text(family)
    assert check.accepts(answer), check.match(answer).error


def test_a_json_answer_follows_the_reasoning(family_tokenizer, family_ll_tokenizer):
    from corral.grammars.params import StructuredOutputsParams

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    for family, reasoning, answer in [
            ("qwen3", "<think>\nLet me count: {not json}\n</think>\n\n", '{"n":3}'),
            ("gpt-oss", "<|channel|>analysis<|message|>Count {x}.<|end|><|start|>assistant",
             '<|channel|>final<|message|>{"n":3}')]:
        tokenizer = family_tokenizer(family)
        fmt = tool_format(tokenizer)
        mode = fmt.reasoning_mode(render_chat_prompt(tokenizer, ASK, fmt=fmt))
        assert mode == "optional"
        spec = chat_constraint(fmt, None, answer=StructuredOutputsParams(json=schema),
                               reasoning_mode=mode)
        check = GrammarCheck(family_ll_tokenizer(family), tokenizer, spec.grammar)
        assert check.accepts(reasoning + answer), check.match(reasoning + answer).error
        assert not check.accepts(reasoning + answer.replace("3", '"3"'))
        parser = parse(fmt, reasoning + answer, mode)
        assert parser.reasoning and "{" in parser.reasoning
        assert json.loads(parser.content) == {"n": 3}


def test_max_reasoning_tokens_forces_the_end_of_reasoning(family_tokenizer,
                                                          family_ll_tokenizer):
    import llguidance

    tokenizer = family_tokenizer("qwen3")
    fmt = tool_format(tokenizer)
    spec = chat_constraint(fmt, TOOLS, "required", reasoning_mode="optional",
                           max_reasoning_tokens=4)
    matcher = llguidance.LLMatcher(family_ll_tokenizer("qwen3"), spec.grammar)
    ids = tokenizer.encode("<think> one two three four", add_special_tokens=False)
    assert matcher.consume_tokens(ids), matcher.get_error()
    assert tokenizer.decode(matcher.compute_ff_tokens()).startswith("</think>")


def test_enable_thinking_false_turns_reasoning_off(family_tokenizer):
    tokenizer = family_tokenizer("qwen3")
    fmt = tool_format(tokenizer)
    on = render_chat_prompt(tokenizer, ASK, fmt=fmt)
    off = render_chat_prompt(tokenizer, ASK, fmt=fmt,
                             template_kwargs={"enable_thinking": False})
    assert fmt.reasoning_mode(on) == "optional" and fmt.reasoning_mode(off) == "off"
    parser = parse(fmt, "<think>\nnot reasoning\n</think>\n\nHi", "off")
    assert parser.reasoning is None and parser.content.startswith("<think>")


def test_qwen3_coder_refuses_what_raw_values_cannot_hold(family_tokenizer):
    fmt = tool_format(family_tokenizer("qwen3_coder"))
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}}}}
    with pytest.raises(ParamError) as e:
        chat_constraint(fmt, [tool], "required")
    assert e.value.param == "tools[0].function.parameters.properties.code.pattern"
    nested = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}}}
    with pytest.raises(ParamError):
        chat_constraint(fmt, [nested], "required")


def test_qwen3_coder_values_take_their_schema_types(family_tokenizer, family_ll_tokenizer):
    tokenizer = family_tokenizer("qwen3_coder")
    fmt = tool_format(tokenizer)
    grammar = chat_constraint(fmt, TOOLS, "required").grammar
    check = GrammarCheck(family_ll_tokenizer("qwen3_coder"), tokenizer, grammar)
    text = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nNew <b>York</b>\n2\n"
            "</parameter>\n<parameter=metric>\nTrue\n</parameter>\n</function>\n</tool_call>")
    assert check.accepts(text), check.match(text).error
    assert calls_of(parse(fmt, text)) == [("get_weather", {"city": "New <b>York</b>\n2",
                                                            "metric": True})]
    assert not check.accepts(text.replace("True", "yes"))


def test_a_template_error_names_messages_and_quotes_the_template(family_tokenizer):
    tokenizer = family_tokenizer("mistral")
    with pytest.raises(ParamError) as e:
        render_chat_prompt(tokenizer, [*ASK, *ASK])
    assert e.value.param == "messages"
    assert "roles must alternate" in str(e.value)
    with pytest.raises(ParamError) as e:
        render_chat_prompt(tokenizer, ASK, template_kwargs={"tools": []})
    assert e.value.param == "chat_template_kwargs.tools"


def test_llama_renders_one_call_per_message_and_results_as_ipython(family_tokenizer):
    tokenizer = family_tokenizer("llama3.1")
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather",
                                                     "arguments": '{"city": "Paris"}'}},
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "b", "content": "12:00"}]
    prompt = render_chat_prompt(tokenizer, history, TOOLS)
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in prompt
    assert '{"name": "get_time", "parameters": {}}<|eot_id|>' in prompt
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 21}<|eot_id|>' in prompt


def test_harmony_options_and_reasoning_effort(family_tokenizer):
    tokenizer = family_tokenizer("gpt-oss")
    prompt = render_chat_prompt(tokenizer, ASK, template_kwargs={"reasoning_effort": "high"})
    assert "Reasoning: high" in prompt and prompt.endswith("<|start|>assistant")
    with pytest.raises(ParamError) as e:
        render_chat_prompt(tokenizer, ASK, template_kwargs={"reasoning_effort": "max"})
    assert e.value.param == "reasoning_effort"


def test_a_regex_or_choice_follows_the_reasoning_and_a_grammar_is_refused(family_tokenizer,
                                                                          family_ll_tokenizer):
    from corral.grammars.params import StructuredOutputsParams

    tokenizer = family_tokenizer("qwen3")
    fmt = tool_format(tokenizer)
    for answer, good, bad in [(StructuredOutputsParams(regex=r"[0-9]{3}/x"), "123/x", "12"),
                              (StructuredOutputsParams(choice=["yes", "no"]), "no", "maybe")]:
        spec = chat_constraint(fmt, None, answer=answer, answer_field="structured_outputs",
                               reasoning_mode="optional")
        check = GrammarCheck(family_ll_tokenizer("qwen3"), tokenizer, spec.grammar)
        assert check.accepts("<think>\nhm\n</think>\n\n" + good) and check.accepts(good)
        assert not check.accepts("<think>\nhm\n</think>\n\n" + bad)
    with pytest.raises(ParamError) as e:
        chat_constraint(fmt, None, answer=StructuredOutputsParams(grammar="start: A\nA: /a/"),
                        answer_field="structured_outputs", reasoning_mode="optional")
    assert e.value.param == "structured_outputs"


@pytest.mark.parametrize("choice", ["auto", "required", NAMED])
def test_harmony_calls_may_follow_a_preamble(family_tokenizer, family_ll_tokenizer, choice):
    """gpt-oss may tell the user what it is about to do (a commentary message) before its
    call; the preamble comes back as content, the call as a call."""
    tokenizer = family_tokenizer("gpt-oss")
    fmt = tool_format(tokenizer)
    grammar = chat_constraint(fmt, TOOLS, choice, parallel_tool_calls=False).grammar
    check = GrammarCheck(family_ll_tokenizer("gpt-oss"), tokenizer, grammar)
    preamble = ("<|channel|>commentary<|message|>Let me look that up.<|end|>"
                "<|start|>assistant")
    text = preamble + call_text("gpt-oss", [PARIS])
    assert check.accepts(text), check.match(text).error
    parser = parse(fmt, text)
    assert parser.content == "Let me look that up." and calls_of(parser) == [PARIS]
    # A preamble leads to a call only: not to an answer, not to a second preamble.
    assert not check.accepts(preamble + answer_text("gpt-oss"))
    assert not check.accepts(preamble + text)
