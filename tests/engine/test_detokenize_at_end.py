"""Offline `LLM.generate` decodes each output once at the end (no stop strings): the text
equals the one the engine makes token by token (as it must with stop strings)."""

from __future__ import annotations

from corral.engine import SamplingParams
from corral.engine.detokenizer import IncrementalDetokenizer, final_text

PROMPTS = [
    "Write the word 'hello' in Chinese, Japanese and Greek, with emoji:",
    "List three French words with accents:",
    "def fibonacci(n):",
]


def test_texts_decoded_at_the_end_equal_texts_made_token_by_token(llm):
    at_end = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=48))
    # A stop string that never occurs keeps the engine detokenizing on its loop.
    by_token = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=48,
                                                    stop=["\x00never"]))
    for a, b in zip(at_end, by_token, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].text == b.outputs[0].text
        assert a.outputs[0].text


def test_final_text_of_an_output_cut_inside_a_character(tokenizer):
    """An output that ends inside a multi-byte character keeps the text before it, as the
    token-by-token detokenizer does."""
    prompt = tokenizer.encode("Say:", add_special_tokens=False)
    output = tokenizer.encode(" ok 🙂", add_special_tokens=False)
    for cut in range(1, len(output) + 1):
        incremental = IncrementalDetokenizer(tokenizer, prompt, True)
        for end in range(len(prompt) + 1, len(prompt) + cut + 1):
            incremental.update((prompt + output)[:end])
        assert final_text(tokenizer, prompt, output[:cut], True) == incremental.text


def test_detokenize_false_leaves_the_text_empty(llm):
    out = llm.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=8,
                                                   detokenize=False))[0].outputs[0]
    assert out.text == "" and len(out.token_ids) == 8
