"""Fixtures for the grammar-layer tests: the real tokenizer, one compiler, the datasets."""

from __future__ import annotations

import pytest

VOCAB_SIZE = 49152  # SmolLM2's logits width
EOS_IDS = [2]  # <|im_end|>


@pytest.fixture(scope="session")
def hf_tokenizer(model_dir):
    """The embedded SmolLM2 tokenizer, without loading weights."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def compiler(hf_tokenizer):
    """One compiler (llguidance default) shared by the session."""
    from corral.grammars import GrammarCompiler

    compiler = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS)
    yield compiler
    compiler.shutdown()
