"""Constrained generation with the real embedded model: outputs valid by construction.

Small on purpose (a handful of prompts, short outputs); `benchmarks/structured.py` runs
the larger JSONSchemaBench sample and prints coverage and validity per split and backend.
"""

from __future__ import annotations

import json
import re

import jsonschema
import lark
import pytest

from corral.engine import SamplingParams
from corral.engine.sampling_params import StructuredOutputsParams as S

from .test_kinds import DATE, IPV4

# Bounded variants: a 135M model tends to repeat itself inside an unbounded repetition.
EMAIL = r"[a-z0-9._]{1,16}@[a-z0-9-]{1,16}\.(com|org|net)"
ARITHMETIC = r"""
start: expr
expr: term (("+" | "-") term)~0..4
term: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,4}/
"""
SQL_SELECT = r"""
start: "SELECT " columns " FROM " NAME where? ";"
columns: "*" | NAME (", " NAME)~0..3
where: " WHERE " NAME " " OP " " value
OP: "=" | "<" | ">"
value: NUMBER | "'" /[a-z ]{1,12}/ "'"
NAME: /[a-z_]{1,12}/
NUMBER: /[0-9]{1,4}/
"""

GEN_SPLITS = ("Glaiveai2K", "Github_trivial", "Github_easy", "Kubernetes")


def greedy(max_tokens: int, spec: S | None = None, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=spec,
                          **kwargs)


def json_prompt(llm, schema: dict) -> str:
    ask = ("Reply with one JSON value that is valid against this JSON Schema:\n"
           + json.dumps(schema, separators=(",", ":")))
    return llm.render_chat([{"role": "user", "content": ask}])


def bench_schemas(llm, datasets_dir) -> list[tuple[str, dict]]:
    root = datasets_dir / "jsonschemabench"
    if not (root / "manifest.json").is_file():
        pytest.skip(f"JSONSchemaBench sample not found at {root}")
    entries = json.loads((root / "manifest.json").read_text())["entries"]
    chosen = []
    for split in GEN_SPLITS:
        candidates = []
        for entry in entries:
            if entry["split"] == split:
                schema = json.loads((root / entry["file"]).read_text())["schema"]
                candidates.append((len(json.dumps(schema)), entry["file"], schema))
        for _, name, schema in sorted(candidates, key=lambda c: c[:2]):  # smallest first
            try:
                llm.engine.grammar.compile(S(json=schema))
            except ValueError:
                continue
            chosen.append((name, schema))
            break
    return chosen


def test_jsonschemabench_outputs_validate(llm, datasets_dir):
    schemas = bench_schemas(llm, datasets_dir)
    assert len(schemas) == len(GEN_SPLITS)
    prompts = [json_prompt(llm, schema) for _, schema in schemas]
    params = [greedy(96, S(json=schema)) for _, schema in schemas]
    outputs = llm.generate(prompts, params)
    num_stopped = 0
    for (name, schema), out in zip(schemas, outputs, strict=True):
        completion = out.outputs[0]
        if completion.finish_reason != "stop":  # cut by max_tokens: a valid prefix
            assert completion.finish_reason == "length", name
            matcher = llm.engine.grammar.compile(S(json=schema)).matcher()
            assert all(matcher.accept_token(t) for t in completion.token_ids), name
            print(f"{name}: length after {len(completion.token_ids)} tokens")
            continue
        num_stopped += 1
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        errors = [e.message for e in validator.iter_errors(json.loads(completion.text))]
        assert errors == [], (name, completion.text)
        print(f"{name}: valid {completion.text[:80]}")
    assert num_stopped >= len(schemas) // 2


def test_regex_choice_and_lark_outputs(llm):
    ask = [("Today's date?", S(regex=DATE), lambda t: re.fullmatch(DATE, t)),
           ("An IP address of a local router?", S(regex=IPV4), lambda t: re.fullmatch(IPV4, t)),
           ("Bob's email address at example.com? Just the address.", S(regex=EMAIL),
            lambda t: re.fullmatch(EMAIL, t)),
           ("Is the sky blue?", S(choice=["yes", "no", "maybe"]),
            lambda t: t in ("yes", "no", "maybe")),
           ("Compute something: write an arithmetic expression.", S(grammar=ARITHMETIC),
            lambda t: lark.Lark(ARITHMETIC).parse(t)),
           ("Is the sky blue? (outlines)", S(choice=["yes", "no"], backend="outlines"),
            lambda t: t in ("yes", "no")),
           ("Today's date? (outlines)", S(regex=DATE, backend="outlines"),
            lambda t: re.fullmatch(DATE, t))]
    prompts = [llm.render_chat([{"role": "user", "content": q}]) for q, _, _ in ask]
    outputs = llm.generate(prompts, [greedy(24, spec) for _, spec, _ in ask])
    num_stopped = 0
    for (question, spec, check), out in zip(ask, outputs, strict=True):
        completion = out.outputs[0]
        if completion.finish_reason == "stop":
            num_stopped += 1
            assert check(completion.text), (question, completion.text)
        else:  # cut by max_tokens: a valid prefix that may not end yet
            assert completion.finish_reason == "length"
            matcher = llm.engine.grammar.compile(spec).matcher()
            assert all(matcher.accept_token(t) for t in completion.token_ids)
            assert not matcher.is_terminated()
    assert num_stopped >= len(ask) - 1


def test_registered_grammar_by_name_from_concurrent_requests(llm):
    llm.register_grammar("sql_select", SQL_SELECT, syntax="lark")
    try:
        assert "sql_select" in [g["name"] for g in llm.grammars()]
        questions = ["All users.", "Names of users older than 30.", "Emails from the table t."]
        prompts = [llm.render_chat([{"role": "user", "content": f"SQL query: {q}"}])
                   for q in questions]
        outputs = llm.generate(prompts, greedy(48, S(grammar_name="sql_select")))
        parser = lark.Lark(SQL_SELECT)
        for out in outputs:
            completion = out.outputs[0]
            assert completion.finish_reason == "stop", completion.text
            parser.parse(completion.text)
        with pytest.raises(ValueError, match="line 1, column"):
            llm.register_grammar("broken", 'start: "a" b\n', syntax="lark")
    finally:
        llm.unregister_grammar("sql_select")
    assert "sql_select" not in [g["name"] for g in llm.grammars()]


def test_mixed_batch_equals_each_alone(llm):
    person = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    items = [("Tell me a fun fact.", None),
             ("Give a person as JSON.", S(json=person)),
             ("Give a person as JSON (outlines).", S(json=person, backend="outlines")),
             ("Today's date?", S(regex=DATE)),
             ("Write an arithmetic expression.", S(grammar=ARITHMETIC))]
    prompts = [llm.render_chat([{"role": "user", "content": q}]) for q, _ in items]
    params = [greedy(12, spec) for _, spec in items]
    together = llm.generate(prompts, params)
    for prompt, p, out in zip(prompts, params, together, strict=True):
        alone = llm.generate([prompt], [p])[0]
        assert alone.outputs[0].token_ids == out.outputs[0].token_ids


def test_fast_forward_outputs_stay_valid(llm):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    prompt = json_prompt(llm, schema)
    stats = llm.engine.stats
    before = (stats.spec_accepted_tokens_total, stats.num_decode_passes)
    on = llm.generate([prompt], greedy(40, S(json=schema), fast_forward=True))[0].outputs[0]
    forced = stats.spec_accepted_tokens_total - before[0]
    passes = stats.num_decode_passes - before[1]
    off = llm.generate([prompt], greedy(40, S(json=schema), fast_forward=False))[0].outputs[0]
    assert forced > 0 and passes + forced == len(on.token_ids)
    for completion in (on, off):
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), schema)
    assert on.token_ids == off.token_ids  # forced drafts are verified: greedy is unchanged


def test_refused_schema_fails_the_request_naming_the_keyword(llm):
    prompt = llm.render_chat([{"role": "user", "content": "Numbers?"}])
    with pytest.raises(ValueError, match="uniqueItems"):
        llm.generate([prompt], greedy(8, S(json={"type": "array", "uniqueItems": True})))
    with pytest.raises(ValueError, match="minimum"):
        llm.generate([prompt], greedy(8, S(json={"type": "integer", "minimum": 1},
                                             backend="outlines")))
