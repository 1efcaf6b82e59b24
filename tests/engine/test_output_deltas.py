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


@pytest.fixture(scope="module")
def tokenizer():
    from corral.engine.model_files import default_model_dir
    from corral.engine.tokenizer import load_tokenizer

    return load_tokenizer(default_model_dir())


@pytest.mark.parametrize("seed", range(4))
def test_the_client_detokenizes_token_only_deltas_as_the_core_would(tokenizer, seed):
    """A request sent with `detokenize=False`: the core's deltas carry token ids only and
    the assembler's text equals the text the core's own detokenizer makes token by token,
    multi-byte characters split across tokens and a take-back included."""
    from corral.engine.detokenizer import IncrementalDetokenizer

    prompt = tokenizer.encode("Say it:", add_special_tokens=False)
    output = tokenizer.encode(" héllo wörld, 世界 🙂🙂 {\"a\": [1, 2]}\n done",
                              add_special_tokens=False)
    params = SamplingParams(max_tokens=64)
    encoder = DeltaEncoder()
    assembler = RequestAssembler("r", None, prompt, params, tokenizer)
    core = IncrementalDetokenizer(tokenizer, prompt, True)
    shown: list[int] = []
    rng = random.Random(seed)
    texts = []
    while len(shown) < len(output):
        if len(shown) > 6 and rng.random() < 0.3:  # the structure closer takes some back
            del shown[-3:]
            core.reset_to(prompt + shown, len(prompt))
        for token in output[len(shown): len(shown) + rng.randint(1, 3)]:
            shown.append(token)
            core.update(prompt + shown)
        finished = len(shown) == len(output)
        delta = encoder.encode(RequestOutput("r", None, prompt, [
            CompletionOutput(0, "", list(shown), "stop" if finished else None)],
            finished=finished))
        result = assembler.apply(delta) if delta is not None else assembler.output()
        assert result.outputs[0].text == core.text
        texts.append(result.outputs[0].text)
    assert texts[-1] == tokenizer.decode(output)
    assert any("\ufffd" not in t and "🙂" in t for t in texts)


def test_the_client_cuts_at_stop_strings_only_in_new_text(tokenizer):
    """Stop strings looked for in the client: only text the newest token added may end one
    (text shown under `min_tokens` is never cut), the tokens after the one that completed
    it are dropped, and later deltas change nothing."""
    prompt = tokenizer.encode("Say it:", add_special_tokens=False)
    output = tokenizer.encode(" one. two. three. four", add_special_tokens=False)
    stop_at = len(tokenizer.encode(" one. two.", add_special_tokens=False))
    params = SamplingParams(max_tokens=64, stop=["."], min_tokens=3)
    encoder = DeltaEncoder()
    assembler = RequestAssembler("r", None, prompt, params, tokenizer, check_stops=True)
    for end in range(1, len(output) + 1):
        delta = encoder.encode(RequestOutput("r", None, prompt, [
            CompletionOutput(0, "", output[:end], "length" if end == len(output) else None)],
            finished=end == len(output)))
        result = assembler.apply(delta)
    done = result.outputs[0]
    assert result.finished and assembler.ended_here
    assert done.text == " one. two" and done.token_ids == output[:stop_at]
    assert (done.finish_reason, done.stop_reason) == ("stop", ".")
    with pytest.raises(ValueError):
        RequestAssembler("r", None, prompt, params.clone(n=2), tokenizer, check_stops=True)


def test_stop_strings_need_detokenize():
    with pytest.raises(ParamError) as info:
        SamplingParams(stop=["\n"], detokenize=False)
    assert info.value.param == "stop"
    with pytest.raises(ParamError) as info:
        SamplingParams(detokenize="no")
    assert info.value.param == "detokenize"
