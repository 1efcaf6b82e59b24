"""Sampling behaviour on the real embedded model."""

from __future__ import annotations

import pytest

from corral.engine import SamplingParams


def chat(tokenizer, text: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def test_seeded_sampling_is_reproducible_across_batches(llm, tokenizer):
    prompt = chat(tokenizer, "Tell me a story about a dragon.")
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=20)
    alone = llm.generate(prompt, seeded)[0].outputs[0].token_ids
    others = [chat(tokenizer, f"Say something about the number {i}.") for i in range(5)]
    mixed = llm.generate(others[:2] + [prompt] + others[2:],
                         [SamplingParams(temperature=1.0, max_tokens=20)] * 2 + [seeded]
                         + [SamplingParams(temperature=0.7, max_tokens=12)] * 3)
    assert mixed[2].outputs[0].token_ids == alone
    other_seed = llm.generate(prompt, seeded.clone(seed=99))[0].outputs[0].token_ids
    assert other_seed != alone


def test_stop_string_is_cut_and_reported(llm, tokenizer):
    prompt = chat(tokenizer, "What is the capital of France?")
    full = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=30))[0].outputs[0]
    assert "Paris" in full.text
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=30, stop=["Paris"]))
    completion = out[0].outputs[0]
    assert completion.text == full.text[: full.text.index("Paris")]
    assert completion.finish_reason == "stop" and completion.stop_reason == "Paris"


def test_stop_string_under_min_tokens_is_not_cut_later(llm, tokenizer):
    """A stop string that appeared while `min_tokens` held it off stays in the text: only
    text added after that may end the output, so nothing already streamed is taken back."""
    prompt = chat(tokenizer, "What is the capital of France?")
    full = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40, min_tokens=40)
                        )[0].outputs[0]
    early = full.text.index("Paris")
    first = next(n for n in range(1, 41)
                 if "Paris" in tokenizer.decode(full.token_ids[:n], skip_special_tokens=True))
    held = first + 3  # "Paris" was written before min_tokens allowed a stop
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=40, min_tokens=held,
                                              stop=["Paris"]))[0].outputs[0]
    emitted_under_min = tokenizer.decode(full.token_ids[:held], skip_special_tokens=True)
    assert out.text.startswith(emitted_under_min)
    assert len(out.text) > early + len("Paris")
    if out.finish_reason == "stop":  # a later "Paris" ended it, cut there
        assert out.stop_reason == "Paris" and out.text == full.text[:full.text.index(
            "Paris", len(emitted_under_min) - len("Paris") + 1)]


def test_max_and_min_tokens(llm, tokenizer):
    prompt = chat(tokenizer, "What is the capital of France?")
    short = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=3))[0].outputs[0]
    assert len(short.token_ids) == 3 and short.finish_reason == "length"
    natural = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=100))[0].outputs[0]
    assert natural.finish_reason == "stop"
    forced = len(natural.token_ids) + 10
    longer = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=200,
                                                 min_tokens=forced))[0].outputs[0]
    assert len(longer.token_ids) >= forced
    assert all(t not in llm.engine.eos_token_ids for t in longer.token_ids[: forced - 1])


def test_utf8_text_matches_full_decode(llm, tokenizer):
    prompt = chat(tokenizer, "Write 'café', 'naïve', '日本語' and three emoji.")
    out = llm.generate(prompt, SamplingParams(temperature=0.8, seed=3, max_tokens=40))[0]
    completion = out.outputs[0]
    expected = tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    assert completion.text == expected
    assert "\ufffd" not in completion.text


def test_incremental_detokenizer_splits_multibyte_characters(tokenizer):
    from corral.engine.detokenizer import IncrementalDetokenizer

    text = "héllo 世界 🎉🎉 ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # some characters span several tokens
    prompt = tokenizer.encode("Say:", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=True)
    pieces = [detok.update(prompt + ids[: i + 1]) for i in range(len(ids))]
    assert "".join(pieces) == text == detok.text
    assert all("\ufffd" not in p for p in pieces)


def test_n_samples_share_the_prompt(llm, tokenizer):
    prompt = chat(tokenizer, "Name a colour.")
    out = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    again = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8))[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]


def test_samples_reuse_first_samples_blocks_without_prefix_cache(tokenizer):
    from corral.engine import LLM

    llm = LLM(max_model_len=1024, enable_prefix_caching=False, dtype="float32")
    prompt = chat(tokenizer, "Describe a sunny day in the park in detail, please.")
    out = llm.generate(prompt, SamplingParams(n=2, temperature=0, max_tokens=4))[0]
    assert out.metrics.num_cached_prompt_tokens >= 16
    assert out.outputs[0].token_ids == out.outputs[1].token_ids


def test_logprobs_and_logit_bias(llm, tokenizer):
    prompt = chat(tokenizer, "Hello!")
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=5, logprobs=3))[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == 5
    for token, lp in zip(completion.token_ids, completion.logprobs, strict=True):
        assert lp.token_id == token and lp.logprob <= 0
        assert len(lp.top_logprobs) == 3 and lp.top_logprobs[0][0] == token
    forced = tokenizer.encode(" banana", add_special_tokens=False)[0]
    biased = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=4,
                                                 logit_bias={forced: 100}))[0].outputs[0]
    assert biased.token_ids == [forced] * 4


def test_penalties_change_repetition(llm, tokenizer):
    prompt = chat(tokenizer, "Repeat the word 'cat' twenty times.")
    plain = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=30))[0].outputs[0]
    penalised = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=30,
                                                    frequency_penalty=2.0,
                                                    repetition_penalty=1.5))[0].outputs[0]
    assert len(set(penalised.token_ids)) > len(set(plain.token_ids))


def test_user_logits_processor(llm, tokenizer):
    banned = tokenizer.encode(" Paris", add_special_tokens=False)[0]
    seen = []

    def ban_paris(output_ids, logits):
        seen.append(len(output_ids))
        logits[banned] = float("-inf")
        return logits

    prompt = chat(tokenizer, "What is the capital of France?")
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12,
                                              logits_processors=[ban_paris]))[0].outputs[0]
    assert banned not in out.token_ids
    assert seen[:3] == [0, 1, 2]


@pytest.mark.parametrize("field,value", [
    ("temperature", -1.0), ("top_p", 0.0), ("top_k", -2), ("n", 0), ("max_tokens", 0),
    ("presence_penalty", 3.0), ("logprobs", 50), ("min_p", 2.0), ("stop", [""]),
])
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_prompt_too_long_is_refused_with_lengths(llm):
    with pytest.raises(ValueError, match=r"5000 tokens .* max_model_len is 4096"):
        llm.generate([1] * 5000, SamplingParams(max_tokens=1))
    assert not llm.engine.has_unfinished_requests()
