"""Triton paged prefill attention against the torch reference (float32 oracle)."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.paged_prefill_attention import (
    paged_prefill_attention_torch,
    paged_prefill_attention_triton,
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

# (seq_len, query_len): decodes to skip, a whole prompt, a chunk after cached context, a
# prefix-cache hit (block-aligned context), a one-token chunk, a chunk over a long context.
MIX = [(30, 1), (8, 1), (37, 37), (130, 40), (64, 16), (20, 1), (9, 9), (200, 23)]


def _check_prefill(
    seqs: list[tuple[int, int]],
    *,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    config: tuple[int, int, int, int] | None,
    seed: int,
) -> None:
    batch = make_paged_batch(
        seqs,
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
    first = meta.num_decodes
    args = (meta.query_start_loc, meta.seq_lens, meta.block_tables, meta.max_query_len)
    ref = paged_prefill_attention_torch(
        batch.query.float(), batch.k_cache.float(), batch.v_cache.float(), *args, batch.scale,
        first_seq=first,
    )
    batch.poison_unused()
    out = torch.full_like(batch.query, float("nan"))
    paged_prefill_attention_triton(
        batch.query, batch.k_cache, batch.v_cache, *args, batch.scale,
        out=out, first_seq=first, config=config,
    )
    err = rel_error(out[first:], ref[first:])
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"
    assert bool(torch.isnan(out[:first]).all()), "decode rows must be left to the decode kernel"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 3, 4])
def test_prefill_matches_torch(dtype, block_size, group) -> None:
    # Two KV heads without GQA; one with it (the backend test covers GQA over two).
    _check_prefill(
        MIX, num_kv_heads=2 if group == 1 else 1, group=group, head_dim=32,
        block_size=block_size, dtype=dtype, device=cpu_or_cuda(), config=(32, 16, 4, 1),
        seed=block_size * 10 + group,
    )


@pytest.mark.parametrize("config", [None, (16, 32, 4, 1), (64, 64, 4, 2)])
def test_prefill_tile_shapes(config) -> None:
    # Tiles smaller and larger than the cache blocks; the default configuration.
    _check_prefill(
        MIX[2:], num_kv_heads=1, group=4, head_dim=32, block_size=16, dtype=torch.bfloat16,
        device=cpu_or_cuda(), config=config, seed=5,
    )


def test_prefill_head_dim_not_power_of_two() -> None:
    _check_prefill(
        [(50, 50), (70, 33)], num_kv_heads=2, group=2, head_dim=48, block_size=16,
        dtype=torch.float32, device=cpu_or_cuda(), config=(32, 16, 4, 1), seed=11,
    )


@gpu
@requires_cuda
@pytest.mark.parametrize("block_size", [16, 32])
def test_prefill_gpu_real_size(block_size) -> None:
    seqs = [(2048, 2048), (1500, 700), (4000, 512), (333, 333), (1025, 1)]
    for dtype in (torch.bfloat16, torch.float32):
        _check_prefill(
            seqs, num_kv_heads=8, group=4, head_dim=128, block_size=block_size, dtype=dtype,
            device=torch.device("cuda"), config=None, seed=block_size,
        )
