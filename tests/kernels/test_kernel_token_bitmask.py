"""Triton token-bitmask application against the torch reference: identical logits."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.token_bitmask import (
    apply_token_bitmask_,
    apply_token_bitmask_numpy,
    apply_token_bitmask_torch,
    apply_token_bitmask_triton,
)
from tests.kernels.kernel_batches import cpu_or_cuda, gpu, requires_cuda, requires_triton

pytestmark = requires_triton


def _random_bitmask(num_rows: int, num_words: int, gen: torch.Generator) -> torch.Tensor:
    words = torch.randint(-(2**31), 2**31, (num_rows, num_words), generator=gen, dtype=torch.int64)
    bitmask = words.to(torch.int32)
    bitmask[0] = 0  # a row allowing nothing
    if num_rows > 2:
        bitmask[1] = -1  # a row allowing everything the mask covers
        bitmask[2] = -1
        bitmask[2, ::7] = 0x7FFFFFFF  # mostly allowed, a few tokens disallowed
    return bitmask


def _check(vocab, num_words, num_logit_rows, rows, dtype, device, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_logit_rows, vocab, generator=gen).to(dtype).to(device)
    num_rows = num_logit_rows if rows is None else len(rows)
    bitmask = _random_bitmask(num_rows, num_words, gen).to(device)
    row_ids = None if rows is None else torch.tensor(rows, dtype=torch.int64, device=device)
    ref = logits.clone()
    apply_token_bitmask_torch(ref, bitmask, row_ids)
    out = logits.clone()
    apply_token_bitmask_triton(out, bitmask, row_ids)
    assert torch.equal(out, ref)
    assert bool(torch.isinf(out).any()) and bool(torch.isfinite(out).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "vocab,num_words,rows",
    [
        (1000, 32, None),  # vocab not a multiple of 32, mask exactly covers it
        (5000, 157, None),  # several vocab tiles
        (1000, 20, None),  # mask narrower than the vocab: the tail is disallowed
        (1000, 32, [3, 0, 5]),  # only some logits rows are constrained
    ],
)
def test_bitmask_matches_torch(dtype, vocab, num_words, rows) -> None:
    _check(vocab, num_words, 6, rows, dtype, cpu_or_cuda(), seed=vocab + num_words)


@pytest.mark.parametrize(
    "vocab,num_words,rows",
    [(1000, 32, None), (5000, 157, None), (1000, 20, None), (1000, 32, [3, 0, 5]),
     (49152, 1536, [7, 1, 2, 6])],
)
def test_numpy_cpu_version_matches_torch(vocab, num_words, rows) -> None:
    gen = torch.Generator().manual_seed(vocab + num_words)
    logits = torch.randn(8, vocab, generator=gen)
    bitmask = _random_bitmask(8 if rows is None else len(rows), num_words, gen)
    row_ids = None if rows is None else torch.tensor(rows, dtype=torch.int64)
    ref = logits.clone()
    apply_token_bitmask_torch(ref, bitmask, row_ids)
    out = logits.clone()
    apply_token_bitmask_numpy(out, bitmask, row_ids)
    assert torch.equal(out, ref)


def test_dispatcher_on_cpu_keeps_reference_semantics() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 64, generator=gen)
    bitmask = torch.tensor([[1, 0], [0, -(2**31)]], dtype=torch.int32)
    apply_token_bitmask_(logits, bitmask)
    assert torch.isfinite(logits[0, 0]) and torch.isinf(logits[0, 1:]).all()
    assert torch.isfinite(logits[1, 63]) and torch.isinf(logits[1, :63]).all()


@gpu
@requires_cuda
def test_bitmask_gpu_real_size() -> None:
    _check(128256, 4008, 256, None, torch.float32, torch.device("cuda"), seed=1)
    _check(49152, 1536, 256, list(range(0, 256, 3)), torch.bfloat16, torch.device("cuda"), 2)
    logits = torch.randn(8, 49152, device="cuda")
    bitmask = _random_bitmask(8, 1536, torch.Generator().manual_seed(3)).cuda()
    ref = logits.clone()
    apply_token_bitmask_torch(ref, bitmask)
    apply_token_bitmask_(logits, bitmask)
    assert torch.equal(logits, ref)
