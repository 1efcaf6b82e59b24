"""Triton paged decode attention against the torch reference (float32 oracle)."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.paged_decode_attention import (
    DECODE_CONFIG,
    decode_partition,
    paged_decode_attention_torch,
    paged_decode_attention_triton,
)
from tests.kernels.kernel_batches import (
    TOLERANCE,
    cpu_or_cuda,
    gpu,
    make_paged_batch,
    rel_error,
    requires_cuda,
    requires_triton,
)

pytestmark = requires_triton


def _check_decode(
    seq_lens: list[int],
    *,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    num_splits: int | None,
    max_seq_len: int | None = None,
    seed: int = 0,
) -> None:
    batch = make_paged_batch(
        [(n, 1) for n in seq_lens],
        num_kv_heads=num_kv_heads,
        group=group,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        device=device,
        generator=torch.Generator().manual_seed(seed),
    )
    batch.write_new_kv()
    meta = batch.meta
    ref = paged_decode_attention_torch(
        batch.query.float(), batch.k_cache.float(), batch.v_cache.float(),
        meta.block_tables, meta.seq_lens, meta.max_seq_len, batch.scale,
    )
    batch.poison_unused()
    out = torch.full_like(batch.query, float("nan"))
    paged_decode_attention_triton(
        batch.query, batch.k_cache, batch.v_cache, meta.block_tables, meta.seq_lens,
        max_seq_len if max_seq_len is not None else meta.max_seq_len, batch.scale,
        out=out, num_splits=num_splits,
    )
    err = rel_error(out, ref)
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 3, 4])
def test_decode_matches_torch(dtype, block_size, group) -> None:
    # Lengths: a single token, within one block, block-aligned, several blocks, long.
    _check_decode(
        [1, 7, 32, 45, 300], num_kv_heads=2, group=group, head_dim=32, block_size=block_size,
        dtype=dtype, device=cpu_or_cuda(), num_splits=None, seed=block_size * 10 + group,
    )


@pytest.mark.parametrize("num_splits", [1, 2, 5])
def test_decode_split_counts(num_splits) -> None:
    _check_decode(
        [3, 129, 260, 511], num_kv_heads=2, group=4, head_dim=32, block_size=16,
        dtype=torch.float32, device=cpu_or_cuda(), num_splits=num_splits, seed=num_splits,
    )


def test_decode_head_dim_not_power_of_two() -> None:
    _check_decode(
        [5, 90], num_kv_heads=1, group=2, head_dim=48, block_size=16,
        dtype=torch.bfloat16, device=cpu_or_cuda(), num_splits=2, seed=7,
    )


def test_decode_contexts_longer_than_captured_bound() -> None:
    # A CUDA graph captured at a smaller max_seq_len: the last split runs to the end.
    _check_decode(
        [40, 300], num_kv_heads=2, group=2, head_dim=32, block_size=16,
        dtype=torch.float32, device=cpu_or_cuda(), num_splits=2, max_seq_len=100, seed=3,
    )


def test_decode_partition_fills_the_grid_and_covers_the_context() -> None:
    device = torch.device("cpu")
    for num_seqs, max_seq_len in [(1, 1), (1, 4096), (32, 1024), (256, 1024), (3, 777)]:
        partition, splits = decode_partition(num_seqs, 8, max_seq_len, device)
        assert partition * splits >= max_seq_len > partition * (splits - 1)
        assert splits == 1 or partition >= DECODE_CONFIG["min_partition"]


@gpu
@requires_cuda
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_gpu_real_size(block_size) -> None:
    gen = torch.Generator().manual_seed(block_size)
    lens = torch.randint(1, 4096, (64,), generator=gen).tolist()
    for dtype in (torch.bfloat16, torch.float32):
        _check_decode(
            lens, num_kv_heads=8, group=4, head_dim=128, block_size=block_size,
            dtype=dtype, device=torch.device("cuda"), num_splits=None, seed=block_size,
        )
