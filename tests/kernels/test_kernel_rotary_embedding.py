"""Triton rotary embedding against the torch reference, on views of a fused QKV output."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.rotary_embedding import rotary_embedding_torch, rotary_embedding_triton
from tests.kernels.kernel_batches import (
    TOLERANCE,
    cpu_or_cuda,
    gpu,
    rel_error,
    requires_cuda,
    requires_triton,
)

pytestmark = requires_triton


def _tables(head_dim: int, max_position: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(max_position).float(), inv_freq)
    return freqs.cos().to(device), freqs.sin().to(device)


def _check(num_tokens, num_heads, num_kv_heads, head_dim, dtype, device, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    qkv = torch.randn(num_tokens, q_size + 2 * kv_size, generator=gen).to(dtype).to(device)
    cos, sin = _tables(head_dim, 4096, device)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen).to(device)

    def views(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, _ = t.split([q_size, kv_size, kv_size], dim=-1)
        return q.view(-1, num_heads, head_dim), k.view(-1, num_kv_heads, head_dim)

    ref_qkv, out_qkv = qkv.clone(), qkv.clone()
    q_ref, k_ref = rotary_embedding_torch(positions, *views(ref_qkv), cos, sin)
    q_out, k_out = rotary_embedding_triton(positions, *views(out_qkv), cos, sin)
    assert rel_error(q_out, q_ref) < TOLERANCE[dtype] / 2
    assert rel_error(k_out, k_ref) < TOLERANCE[dtype] / 2
    v_slice = slice(q_size + kv_size, None)
    assert torch.equal(out_qkv[:, v_slice], qkv[:, v_slice]), "V must be left untouched"
    assert not torch.equal(out_qkv, qkv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 4, 32), (9, 3, 64), (6, 2, 48)])
def test_rotary_matches_torch(dtype, num_heads, num_kv_heads, head_dim) -> None:
    _check(11, num_heads, num_kv_heads, head_dim, dtype, cpu_or_cuda(), seed=head_dim)


@gpu
@requires_cuda
def test_rotary_gpu_real_size() -> None:
    _check(8192, 32, 8, 128, torch.bfloat16, torch.device("cuda"), seed=0)
