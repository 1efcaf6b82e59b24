"""The per-step timeline: one row per step that ran a batch, and the summary's counts."""

from __future__ import annotations

import torch

from corral.engine import SamplingParams
from corral.engine.step_profile import NullProfiler, StepProfiler


def test_step_rows_match_the_steps_run(llm):
    engine = llm.engine
    profiler = StepProfiler(torch.device("cpu"))
    engine.profile = profiler
    try:
        prompts = ["The capital of France is", "List three colours:"]
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    finally:
        engine.profile = NullProfiler()
    rows = profiler.step_rows()
    assert rows, "no step recorded"
    # Two prompts, five tokens each: the first step prefills (more tokens than sequences),
    # later steps decode one token per sequence.
    assert rows[0]["tokens"] > rows[0]["seqs"]
    assert all(r["tokens"] == r["seqs"] for r in rows[1:])
    assert sum(r["tokens"] for r in rows) == sum(
        len(engine.tokenize(p)) for p in prompts) + 2 * 4
    for row in rows:
        assert row["device_forward"] > 0  # on a CPU: the forward pass's wall time
        assert row["host_forward"] >= row["device_forward"] * 0.5
    summary = profiler.summary()
    assert summary["steps"] == len(rows)
    assert summary["steps_with_prefill"] == sum(1 for r in rows if r["tokens"] > r["seqs"])
