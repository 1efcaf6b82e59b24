"""JSON-Schema-Test-Suite (draft 2020-12) instances fed token by token to matchers.

Each valid instance must be accepted completely (then EOS); each invalid one must be refused
somewhere or not be allowed to end. The default backend must never accept an invalid
instance of a schema it compiled, nor may xgrammar. Unsupported schemas are refused (counted
apart).
"""

from __future__ import annotations

import json

import pytest

from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import GrammarCompiler

from .conftest import EOS_IDS, VOCAB_SIZE
from .suite_stats import Agreement, is_slow_for_outlines

OUTLINES_MAX_GROUPS = 120
XGRAMMAR_MIN_COMPILED = 100


def load_groups(datasets_dir, optional: bool):
    root = datasets_dir / "json-schema-test-suite" / "tests" / "draft2020-12"
    if not root.is_dir():
        pytest.skip(f"JSON-Schema-Test-Suite not found at {root}")
    files = sorted((root / "optional").rglob("*.json")) if optional else sorted(root.glob("*.json"))
    for path in files:
        for group in json.loads(path.read_text()):
            yield f"{path.relative_to(root)}: {group['description']}", group


def run_suite(compiler, tokenizer, groups, backend: str, max_groups: int | None = None):
    stats = Agreement()
    for where, group in groups:
        spec = S(json=json.dumps(group["schema"]), backend=backend)
        if backend == "outlines" and is_slow_for_outlines(compiler, spec):
            continue
        if max_groups is not None and stats.counts["schemas"] >= max_groups:
            break
        stats.counts["schemas"] += 1
        try:
            compiled = compiler.compile(spec)
        except ValueError as e:
            stats.counts["timed_out" if "timed out" in str(e) else "refused"] += 1
            continue
        stats.counts["compiled"] += 1
        stats.feed_tests(compiled, group["schema"], group["tests"], tokenizer, EOS_IDS[0], where)
    return stats


@pytest.mark.parametrize("optional", [False, True], ids=["required", "optional"])
def test_default_backend_never_accepts_an_invalid_instance(compiler, hf_tokenizer,
                                                           datasets_dir, optional):
    stats = run_suite(compiler, hf_tokenizer, load_groups(datasets_dir, optional), "llguidance")
    print(f"\nllguidance, draft2020-12 {'optional' if optional else 'required'}: "
          f"{stats.summary()}")
    assert stats.counts["compiled"] >= (150 if not optional else 40)
    assert stats.unsound == []
    assert stats.counts["valid_accepted"] >= 0.85 * (stats.counts["valid_accepted"]
                                                    + stats.counts["valid_rejected"])


def test_outlines_backend_is_sound_on_a_sample(hf_tokenizer, datasets_dir):
    compiler = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS, default_backend="outlines",
                               timeout=5.0, max_workers=1)
    try:
        stats = run_suite(compiler, hf_tokenizer, load_groups(datasets_dir, False), "outlines",
                          max_groups=OUTLINES_MAX_GROUPS)
    finally:
        compiler.shutdown()
    print(f"\noutlines, draft2020-12 required (sample): {stats.summary()}")
    assert stats.counts["compiled"] >= 30
    assert stats.unsound == []


@pytest.mark.parametrize("optional", [False, True], ids=["required", "optional"])
def test_xgrammar_backend_never_accepts_an_invalid_instance(compiler, hf_tokenizer,
                                                            datasets_dir, optional):
    stats = run_suite(compiler, hf_tokenizer, load_groups(datasets_dir, optional), "xgrammar")
    print(f"\nxgrammar, draft2020-12 {'optional' if optional else 'required'}: "
          f"{stats.summary()}")
    assert stats.counts["compiled"] >= (XGRAMMAR_MIN_COMPILED if not optional else 10)
    assert stats.unsound == []
    # Valid instances refused are layout (const key order, 1.0 for 1), a type xgrammar
    # requires (`properties` without `type`) or characters JSON escapes in a pattern.
    assert stats.counts["valid_accepted"] >= 0.75 * (stats.counts["valid_accepted"]
                                                    + stats.counts["valid_rejected"])
