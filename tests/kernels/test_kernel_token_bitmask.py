"""Token-bitmask application (Triton, native CPU, numpy) against the torch reference:
identical logits."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.cpu_extension import load_cpu_ops
from corral.kernels.token_bitmask import (
    apply_token_bitmask_,
    apply_token_bitmask_cpu,
    apply_token_bitmask_numpy,
    apply_token_bitmask_torch,
    apply_token_bitmask_triton,
)
from tests.kernels.kernel_batches import cpu_or_cuda, gpu, requires_cuda, requires_triton

requires_cpu_ops = pytest.mark.skipif(not load_cpu_ops(), reason="native CPU kernels not built "
                                      "(no C++ compiler, or CORRAL_CPU_KERNELS=0)")


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


@requires_triton
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


@requires_cpu_ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "vocab,num_words,rows",
    [(1000, 32, None), (5000, 157, None), (1000, 20, None), (1000, 40, None),
     (1000, 32, [3, 0, 5]), (49152, 1536, [7, 1, 2, 6])],
)
def test_native_cpu_kernel_matches_torch(dtype, vocab, num_words, rows) -> None:
    # (1000, 40): a mask wider than the vocabulary.
    gen = torch.Generator().manual_seed(vocab + num_words)
    logits = torch.randn(8, vocab, generator=gen).to(dtype)
    bitmask = _random_bitmask(8 if rows is None else len(rows), num_words, gen)
    row_ids = None if rows is None else torch.tensor(rows, dtype=torch.int64)
    ref = logits.clone()
    apply_token_bitmask_torch(ref, bitmask, row_ids)
    out = logits.clone()
    apply_token_bitmask_cpu(out, bitmask, row_ids)
    assert torch.equal(out, ref)


@requires_cpu_ops
def test_native_cpu_kernel_on_a_strided_batch_and_bad_rows() -> None:
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(4, 300, generator=gen)
    logits = wide[:, :200]  # rows 300 apart: a view, as a sampler's slice may be
    bitmask = _random_bitmask(4, 7, gen)
    ref = logits.clone()
    apply_token_bitmask_torch(ref, bitmask)
    apply_token_bitmask_cpu(logits, bitmask)
    assert torch.equal(logits, ref)
    assert torch.isfinite(wide[:, 200:]).all()  # nothing written past the view
    before = logits.clone()
    apply_token_bitmask_cpu(logits, bitmask[:0], torch.tensor([], dtype=torch.int64))
    assert torch.equal(logits, before)  # no constrained row: nothing changes
    with pytest.raises(ValueError, match="out of range"):
        apply_token_bitmask_cpu(logits, bitmask[:1], torch.tensor([4]))
    with pytest.raises(ValueError, match="one entry per bitmask row"):
        apply_token_bitmask_cpu(logits, bitmask[:2], torch.tensor([0]))


def test_dispatcher_on_cpu_keeps_reference_semantics() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 64, generator=gen)
    bitmask = torch.tensor([[1, 0], [0, -(2**31)]], dtype=torch.int32)
    apply_token_bitmask_(logits, bitmask)
    assert torch.isfinite(logits[0, 0]) and torch.isinf(logits[0, 1:]).all()
    assert torch.isfinite(logits[1, 63]) and torch.isinf(logits[1, :63]).all()


@gpu
@requires_cuda
@requires_triton
def test_bitmask_gpu_real_size() -> None:
    _check(128256, 4008, 256, None, torch.float32, torch.device("cuda"), seed=1)
    _check(49152, 1536, 256, list(range(0, 256, 3)), torch.bfloat16, torch.device("cuda"), 2)
    logits = torch.randn(8, 49152, device="cuda")
    bitmask = _random_bitmask(8, 1536, torch.Generator().manual_seed(3)).cuda()
    ref = logits.clone()
    apply_token_bitmask_torch(ref, bitmask)
    apply_token_bitmask_(logits, bitmask)
    assert torch.equal(logits, ref)
