"""Text made by joining token bytes (byte-level BPE tokenizers) equals the tokenizer's own
decode, for each model family's real tokenizer; the others keep the window decoder."""

from __future__ import annotations

import random

import pytest

from corral.engine.detokenizer import IncrementalDetokenizer
from corral.engine.token_bytes import byte_level_alphabet, token_bytes

TEXT = ("Grüße aus Köln! 世界你好 🙂🚀 <tool_call>{\"a\": [1, 2.5e-3]}</tool_call>\n\t"
        "naïve café — ∑ x² … done")


def test_the_alphabet_covers_every_byte_once():
    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["!"] == ord("!") and alphabet["Ġ"] == ord(" ")


@pytest.mark.parametrize("family", ["qwen3", "llama3.1", "mistral", "gpt-oss"])
def test_streamed_text_equals_the_tokenizers_decode(family, family_tokenizer):
    tokenizer = family_tokenizer(family)
    for skip in (True, False):
        table = token_bytes(tokenizer, skip)
        byte_level = type(tokenizer._tokenizer.decoder).__name__ == "ByteLevel"
        assert (table is not None) == byte_level, family
        rng = random.Random(0)
        prompt = tokenizer.encode("Say:", add_special_tokens=False)
        special = sorted(tokenizer.all_special_ids)
        for _ in range(20):
            output = tokenizer.encode(TEXT, add_special_tokens=False)
            output = output[: rng.randint(1, len(output))]
            if special and rng.random() < 0.5:
                output.insert(rng.randrange(len(output) + 1), rng.choice(special))
            detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip)
            texts = []
            for end in range(1, len(output) + 1):
                detokenizer.update(prompt + output[:end])
                texts.append(detokenizer.text)
            # The output's text in the context of the prompt (a SentencePiece decode drops
            # the leading space of a text's first word; after the prompt it is kept).
            expected = tokenizer.decode(prompt + output, skip_special_tokens=skip)[
                len(tokenizer.decode(prompt, skip_special_tokens=skip)):]
            # An output cut inside a character holds its last bytes back.
            assert expected.rstrip("\ufffd") == texts[-1], (family, output)
            assert all(expected.startswith(t) for t in texts)
