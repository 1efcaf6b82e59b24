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


@pytest.fixture(scope="session")
def family_tokenizer(model_families_dir, tmp_path_factory):
    """A function: a family's name (see `families.FAMILIES`) -> its real tokenizer."""
    from .families import load_tokenizer, unpack_tokenizer

    cache = {}

    def get(family: str):
        if family not in cache:
            path = tmp_path_factory.mktemp(family.replace(".", "_"))
            cache[family] = load_tokenizer(unpack_tokenizer(model_families_dir, family, path))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def family_ll_tokenizer(family_tokenizer):
    """A function: a family's name -> llguidance's view of its tokenizer (built once)."""
    import llguidance.hf

    cache = {}

    def get(family: str):
        tokenizer = family_tokenizer(family)
        key = len(tokenizer)  # the two Qwen3 templates share one vocabulary
        if key not in cache:
            cache[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))
        return cache[key]

    return get
