"""Paged decode attention with the native CPU kernel (`csrc/paged_decode_attention_cpu.cpp`).

The kernel reads each sequence's K/V rows in place from the paged cache, once, for the
whole GQA group of a KV head, with an exact (two-pass) softmax in float32, on torch's
intra-op threads. float32 and bfloat16. The torch reference is
`paged_decode_attention.paged_decode_attention_torch`.
"""

from __future__ import annotations

import torch

from corral.kernels.cpu_extension import load_cpu_ops

__all__ = ["SUPPORTED_DTYPES", "cpu_decode_kernel_available", "paged_decode_attention_cpu"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def cpu_decode_kernel_available() -> bool:
    """Whether the native kernel is built and loaded (builds it on the first call)."""
    return load_cpu_ops()


def paged_decode_attention_cpu(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # int32 [num_seqs, max_blocks]
    seq_lens: torch.Tensor,  # int32 [num_seqs], context incl. the current token
    scale: float,
    out: torch.Tensor | None = None,  # [num_seqs, num_heads, head_dim]
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim], the query's dtype
    """One query token per sequence over its paged context; seq_len 0 gives zeros.

    Raises RuntimeError when the kernel cannot be built; `cpu_decode_kernel_available()`
    tells beforehand.
    """
    if not load_cpu_ops():
        raise RuntimeError("the native CPU decode attention kernel is unavailable")
    if query.stride(-1) != 1:
        query = query.contiguous()
    if block_tables.dtype != torch.int32 or block_tables.stride(-1) != 1:
        block_tables = block_tables.to(torch.int32).contiguous()
    seq_lens = seq_lens.to(torch.int32).contiguous()
    target = out
    if out is None or out.stride(-1) != 1:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    error = torch.ops.corral_cpu.paged_decode_attention(
        query, k_cache, v_cache, block_tables, seq_lens, float(scale), out
    )
    if error:
        raise RuntimeError(error)
    if target is not None and target is not out:
        target.copy_(out)
        return target
    return out
