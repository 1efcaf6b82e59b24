"""Shared test set-up: offline hub, the real embedded model, GPU marker handling."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

try:
    import torch
except ImportError:  # the frameworks' own environment: client libraries only
    torch = None

HAS_CUDA = torch is not None and torch.cuda.is_available()

# Without a GPU, Triton kernels run through its CPU interpreter in the kernel tests. The
# variable must be set before anything imports triton (jit helpers are bound at import).
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def model_dir():
    """The embedded SmolLM2-135M-Instruct as a safetensors folder."""
    from corral.engine.model_files import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def llm(model_dir):
    """One shared engine on the real embedded model (default settings)."""
    from corral.engine import LLM

    return LLM(max_model_len=4096, dtype="float32")  # exact parity and batch invariance


@pytest.fixture(scope="session")
def tokenizer(llm):
    return llm.tokenizer


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """`<repo>/../shared/datasets`, or `$CORRAL_DATASETS`; skips when absent."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
    path = Path(os.environ.get("CORRAL_DATASETS", default))
    if not path.is_dir():
        pytest.skip(f"test datasets not found at {path} (set CORRAL_DATASETS)")
    return path


@pytest.fixture(scope="session")
def model_families_dir() -> Path:
    """`<repo>/../shared/model-families`, or `$CORRAL_MODEL_FAMILIES`; skips when absent."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "model-families"
    path = Path(os.environ.get("CORRAL_MODEL_FAMILIES", default))
    if not path.is_dir():
        pytest.skip(f"model family files not found at {path} (set CORRAL_MODEL_FAMILIES)")
    return path
