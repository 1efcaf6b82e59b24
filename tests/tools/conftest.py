"""Fixtures for the function-calling tests: the real tokenizer and llguidance matchers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hf_tokenizer(model_dir):
    """The embedded SmolLM2 tokenizer (with its chat template), without loading weights."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def ll_tokenizer(hf_tokenizer):
    """llguidance's view of the same tokenizer (about half a second to build)."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(hf_tokenizer)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """`<repo>/../shared/datasets`, or `$CORRAL_DATASETS`; skips when absent."""
    default = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
    path = Path(os.environ.get("CORRAL_DATASETS", default))
    if not path.is_dir():
        pytest.skip(f"test datasets not found at {path} (set CORRAL_DATASETS)")
    return path
