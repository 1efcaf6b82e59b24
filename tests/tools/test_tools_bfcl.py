"""Real-world function schemas (BFCL): every tool grammar compiles, BFCL's own answers pass it,
and broken answers do not."""

from __future__ import annotations

import jsonschema
import pytest

from corral.tools import format_call, tool_call_constraint

from .bfcl import CATEGORIES, first_acceptable, in_schema_order, load_category
from .grammar_check import GrammarCheck

# Every 5th entry (every 10th of the 1,053 live_multiple ones) keeps this under ~10 s.
_STRIDE = {"live_multiple": 10}


@pytest.mark.parametrize("category", CATEGORIES)
def test_bfcl_tool_grammars_compile_and_accept_the_answers(
        datasets_dir, ll_tokenizer, hf_tokenizer, category):
    entries = load_category(datasets_dir, category)[:: _STRIDE.get(category, 5)]
    num_checked = 0
    for entry in entries:
        parallel = "parallel" in category
        grammar = tool_call_constraint(entry["tools"], "required", parallel).grammar
        check = GrammarCheck(ll_tokenizer, hf_tokenizer, grammar)
        if "ground_truth" not in entry:
            continue
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in entry["tools"]}
        calls = [(name, in_schema_order(first_acceptable(args), schemas[name]))
                 for call in entry["ground_truth"] for name, args in call.items()]
        if not all(jsonschema.Draft202012Validator(schemas[n]).is_valid(a) for n, a in calls):
            continue  # a few BFCL answers do not fit their own declared types
        text = "\n".join(format_call(name, args) for name, args in calls)
        assert check.accepts(text), entry["id"]
        name, args = calls[0]
        wrong_name = format_call(name + "_x", args)
        assert not check.accepts(wrong_name), entry["id"]
        required = [r for r in schemas[name].get("required", []) if r in args]
        if required:
            missing = format_call(name, {k: v for k, v in args.items() if k != required[0]})
            assert not check.accepts(missing), entry["id"]
        num_checked += 1
    assert num_checked >= len(entries) * 0.8
