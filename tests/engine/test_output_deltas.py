"""Outputs as deltas: encoded, sent through MessagePack and reassembled, equal to the
cumulative outputs; messages decode with their types checked."""

from __future__ import annotations

import random

import msgspec
import pytest

from corral.engine.core_messages import (
    AddRequest,
    StepOutputs,
    client_decoder,
    core_decoder,
    wire_params,
)
from corral.engine.engine_stats import EngineStats
from corral.engine.output_deltas import DeltaEncoder, RequestAssembler
from corral.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from corral.engine.sampling_params import SamplingParams, StructuredOutputsParams
from corral.grammars.param_error import ParamError


def snapshots(rng: random.Random, n: int, steps: int) -> list[RequestOutput]:
    """Cumulative outputs of one request with `n` completions; now and then one takes
    text and tokens back (deltas must then cut before appending)."""
    texts, ids, lps = [""] * n, [[] for _ in range(n)], [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    metrics = RequestMetrics(arrival_time=1.0)
    outs = []
    for step in range(steps):
        for i in range(n):
            if reasons[i] is not None or rng.random() < 0.2:
                continue  # finished, or unchanged this step
            if ids[i] and rng.random() < 0.15:
                cut = rng.randrange(len(ids[i]))
                ids[i], lps[i] = ids[i][:cut], lps[i][:cut]
                texts[i] = texts[i][: len(texts[i]) // 2]
            for _ in range(rng.randint(1, 3)):
                token = rng.randrange(1000)
                ids[i] = ids[i] + [token]
                lps[i] = lps[i] + [TokenLogprob(token, -rng.random(), [(token, -0.5), (7, -1.5)])]
                texts[i] = texts[i] + rng.choice(["a", " b", "é", "\n", "{}"])
            if step == steps - 1 or rng.random() < 0.05:
                reasons[i] = rng.choice(["stop", "length"])
        if step == 1:
            metrics.first_token_time = 2.0
        finished = all(r is not None for r in reasons) or step == steps - 1
        if finished:
            metrics.finished_time = 3.0
            reasons = [r or "abort" for r in reasons]
        outs.append(RequestOutput("r", None, [1, 2], [
            CompletionOutput(i, texts[i], list(ids[i]), reasons[i],
                             "x" if reasons[i] == "stop" else None, list(lps[i]))
            for i in range(n)], finished=finished, metrics=metrics))
        if finished:
            break
    return outs


@pytest.mark.parametrize("seed", range(20))
def test_reassembled_outputs_equal_the_cumulative_ones(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 3)
    encoder, wire, decoder = DeltaEncoder(), msgspec.msgpack.Encoder(), client_decoder()
    assembler = RequestAssembler("r", None, [1, 2], SamplingParams(n=n, logprobs=2))
    seen = []
    for out in snapshots(rng, n, 40):
        delta = encoder.encode(out)
        if delta is None:
            assert seen and seen[-1].outputs == out.outputs
            continue
        message = decoder.decode(wire.encode(StepOutputs([delta], EngineStats())))
        got = assembler.apply(message.deltas[0])
        assert got.outputs == out.outputs and got.finished == out.finished
        seen.append(got)
    assert seen[-1].finished and seen[-1].metrics.finished_time == 3.0
    assert len(encoder) == 0  # finished requests are forgotten


def test_params_cross_validated_and_what_cannot_cross_is_refused():
    params = SamplingParams(temperature=0, stop="}", logit_bias={5: -2},
                            structured_outputs=StructuredOutputsParams(json={"type": "object"}))
    message = core_decoder().decode(msgspec.msgpack.encode(AddRequest("a", [1], params)))
    assert message.params == params
    bad = msgspec.msgpack.encode(["add", "b", [1], {"n": 0}])
    with pytest.raises(msgspec.ValidationError, match="n: must be"):
        core_decoder().decode(bad)
    with pytest.raises(ParamError, match="logits_processors"):
        wire_params(SamplingParams(logits_processors=[lambda ids, logits: logits]))
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str

    sent = wire_params(SamplingParams(structured_outputs=StructuredOutputsParams(json=Person)))
    assert isinstance(sent.structured_outputs.json, dict)
    assert sent.structured_outputs.json["properties"]["name"]["type"] == "string"
