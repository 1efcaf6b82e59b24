"""JSONSchemaBench sample: compile coverage per split and backend, and matcher soundness.

Every schema either compiles or is refused naming a keyword. The provided valid instances
of compiled schemas are fed token by token (re-serialised compactly in schema property
order); the invalid ones must never be accepted.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import GrammarCompiler
from corral.grammars.errors import keyword_in_message

from .conftest import EOS_IDS, VOCAB_SIZE
from .suite_stats import Agreement, is_slow_for_outlines

OUTLINES_PER_SPLIT = 3
XGRAMMAR_PER_SPLIT = 3
XGRAMMAR_MAX_SCHEMA_CHARS = 4000  # xgrammar takes seconds on larger schemas (2 CPU cores)


def load_bench(datasets_dir):
    root = datasets_dir / "jsonschemabench"
    manifest = root / "manifest.json"
    if not manifest.is_file():
        pytest.skip(f"JSONSchemaBench sample not found at {root}")
    for entry in json.loads(manifest.read_text())["entries"]:
        yield entry["split"], entry["file"], json.loads((root / entry["file"]).read_text())


def is_slow_for_xgrammar(compiler, spec) -> bool:
    return len(json.dumps(spec.json)) > XGRAMMAR_MAX_SCHEMA_CHARS


def run_bench(compiler, tokenizer, datasets_dir, backend: str, per_split: int | None = None,
              is_slow=is_slow_for_outlines):
    by_split: dict[str, Agreement] = defaultdict(Agreement)
    unnamed = []
    for split, name, item in load_bench(datasets_dir):
        stats = by_split[split]
        spec = S(json=item["schema"], backend=backend)
        if per_split is not None and (stats.counts["schemas"] >= per_split
                                      or is_slow(compiler, spec)):
            continue
        stats.counts["schemas"] += 1
        try:
            compiled = compiler.compile(spec)
        except ValueError as e:
            if "timed out" in str(e):
                stats.counts["timed_out"] += 1
                continue
            stats.counts["refused"] += 1
            keyword = keyword_in_message(str(e))
            stats.refusals[keyword] += 1
            if keyword is None and "Unsatisfiable" not in str(e):
                unnamed.append((name, str(e)))
            continue
        stats.counts["compiled"] += 1
        stats.feed_tests(compiled, item["schema"], item["tests"], tokenizer, EOS_IDS[0], name)
    for split, stats in sorted(by_split.items()):
        print(f"{backend:10s} {split:16s} {stats.summary()}")
    return by_split, unnamed


def test_llguidance_coverage_and_soundness(compiler, hf_tokenizer, datasets_dir):
    print()
    by_split, unnamed = run_bench(compiler, hf_tokenizer, datasets_dir, "llguidance")
    assert unnamed == []
    total = sum((s.counts for s in by_split.values()), start=Counter())
    assert total["schemas"] == 300
    assert total["compiled"] >= 240
    assert [u for s in by_split.values() for u in s.unsound] == []
    assert total["valid_accepted"] >= 0.95 * (total["valid_accepted"] + total["valid_rejected"])


def test_outlines_sample_coverage_and_soundness(hf_tokenizer, datasets_dir):
    compiler = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS, default_backend="outlines",
                               timeout=5.0, max_workers=1)
    print()
    try:
        by_split, unnamed = run_bench(compiler, hf_tokenizer, datasets_dir, "outlines",
                                      per_split=OUTLINES_PER_SPLIT)
    finally:
        compiler.shutdown()
    assert unnamed == []
    assert sum(s.counts["compiled"] for s in by_split.values()) >= 5
    assert [u for s in by_split.values() for u in s.unsound] == []


def test_xgrammar_sample_coverage_and_soundness(compiler, hf_tokenizer, datasets_dir):
    print()
    by_split, unnamed = run_bench(compiler, hf_tokenizer, datasets_dir, "xgrammar",
                                  per_split=XGRAMMAR_PER_SPLIT, is_slow=is_slow_for_xgrammar)
    assert unnamed == []
    total = sum((s.counts for s in by_split.values()), start=Counter())
    assert total["compiled"] >= 15
    assert [u for s in by_split.values() for u in s.unsound] == []
    assert total["valid_accepted"] >= 0.9 * (total["valid_accepted"] + total["valid_rejected"])
