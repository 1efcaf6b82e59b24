"""Triton KV-cache write against the torch reference: identical caches, padding skipped."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.write_kv_cache import write_kv_cache_torch, write_kv_cache_triton
from tests.kernels.kernel_batches import (
    cpu_or_cuda,
    gpu,
    make_paged_batch,
    requires_cuda,
    requires_triton,
)

pytestmark = requires_triton


def _check_write(seqs, num_kv_heads, head_dim, block_size, dtype, device, padding) -> None:
    gen = torch.Generator().manual_seed(hash((tuple(seqs), num_kv_heads, block_size)) % 2**31)
    batch = make_paged_batch(
        seqs,
        num_kv_heads=num_kv_heads,
        group=1,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        device=device,
        num_padding_tokens=padding,
        generator=gen,
    )
    k_ref, v_ref = batch.k_cache.clone(), batch.v_cache.clone()
    write_kv_cache_torch(batch.key, batch.value, k_ref, v_ref, batch.meta.slot_mapping)
    k_out, v_out = batch.k_cache.clone(), batch.v_cache.clone()
    write_kv_cache_triton(batch.key, batch.value, k_out, v_out, batch.meta.slot_mapping)
    assert torch.equal(k_out, k_ref)
    assert torch.equal(v_out, v_ref)
    # Every non-padding token really landed in the cache (not a no-op on both sides).
    slots = batch.meta.slot_mapping
    valid = slots >= 0
    flat = k_out.view(-1, num_kv_heads, head_dim)
    assert torch.equal(flat[slots[valid]], batch.key[valid])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_kv_heads,head_dim", [(2, 32), (3, 48)])
def test_write_kv_cache_matches_torch(dtype, block_size, num_kv_heads, head_dim) -> None:
    seqs = [(9, 1), (40, 1), (33, 33), (70, 21)]
    _check_write(seqs, num_kv_heads, head_dim, block_size, dtype, cpu_or_cuda(), padding=3)


def test_write_kv_cache_strided_key_view() -> None:
    # K and V as column slices of one fused projection output, as a model produces them.
    device = cpu_or_cuda()
    num_tokens, heads, dim = 5, 2, 16
    fused = torch.randn(num_tokens, 3 * heads * dim, device=device)
    key = fused[:, heads * dim : 2 * heads * dim].view(num_tokens, heads, dim)
    value = fused[:, 2 * heads * dim :].view(num_tokens, heads, dim)
    k_cache = torch.randn(4, 16, heads, dim, device=device)
    v_cache = torch.randn(4, 16, heads, dim, device=device)
    slots = torch.tensor([3, 17, -1, 40, 63], device=device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    write_kv_cache_torch(key, value, k_ref, v_ref, slots)
    write_kv_cache_triton(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@gpu
@requires_cuda
def test_write_kv_cache_gpu_real_size() -> None:
    seqs = [(1000, 1)] * 64 + [(2048, 2048), (3000, 512)]
    _check_write(seqs, 8, 128, 16, torch.bfloat16, torch.device("cuda"), padding=16)
