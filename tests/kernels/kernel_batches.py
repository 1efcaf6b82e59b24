"""Random paged batches and error measures for the kernel parity tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from corral.engine.attention import AttentionMetadata, write_kv_cache_torch
from corral.kernels._triton import HAS_TRITON

requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
gpu = pytest.mark.gpu
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cpu_or_cuda() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class PagedBatch:
    """A random varlen batch over a paged cache; the context before this step is cached."""

    query: torch.Tensor  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor  # [num_tokens, num_kv_heads, head_dim], this step's new K
    value: torch.Tensor
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    meta: AttentionMetadata
    used_slots: torch.Tensor  # bool [num_blocks, block_size], slots holding context
    scale: float

    def write_new_kv(self) -> None:
        """Store this step's K/V with the torch reference (for attention-only tests)."""
        write_kv_cache_torch(
            self.key, self.value, self.k_cache, self.v_cache, self.meta.slot_mapping
        )

    def poison_unused(self) -> None:
        """Fill every slot outside the batch's contexts with NaN: a kernel must not read it."""
        self.k_cache[~self.used_slots] = float("nan")
        self.v_cache[~self.used_slots] = float("nan")


def make_paged_batch(
    seqs: list[tuple[int, int]],
    *,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    num_padding_tokens: int = 0,
    generator: torch.Generator | None = None,
) -> PagedBatch:
    """Build a batch from `(seq_len, query_len)` pairs, decodes (query_len 1) first.

    Blocks are assigned in a random order from a pool with spare blocks; the cache holds
    random data everywhere, and the first `seq_len - query_len` tokens of each sequence.
    """
    num_decodes = 0
    while num_decodes < len(seqs) and seqs[num_decodes][1] == 1:
        num_decodes += 1
    for seq_len, query_len in seqs:
        assert 1 <= query_len <= seq_len
    g = generator

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype).to(device)

    num_heads = num_kv_heads * group
    blocks_per_seq = [-(-seq_len // block_size) for seq_len, _ in seqs]
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=g).tolist()
    width = max(blocks_per_seq) + 1
    block_tables = torch.zeros((len(seqs), width), dtype=torch.int32)
    used = torch.zeros((num_blocks, block_size), dtype=torch.bool)
    k_cache = randn(num_blocks, block_size, num_kv_heads, head_dim)
    v_cache = randn(num_blocks, block_size, num_kv_heads, head_dim)
    slots, starts, queries, keys, values = [], [0], [], [], []
    for i, (seq_len, query_len) in enumerate(seqs):
        table = [order.pop() for _ in range(blocks_per_seq[i])]
        block_tables[i, : len(table)] = torch.tensor(table, dtype=torch.int32)
        seq_slots = [table[t // block_size] * block_size + t % block_size for t in range(seq_len)]
        for s in seq_slots:
            used[s // block_size, s % block_size] = True
        slots += seq_slots[seq_len - query_len :]
        starts.append(starts[-1] + query_len)
        queries.append(randn(query_len, num_heads, head_dim))
        keys.append(randn(query_len, num_kv_heads, head_dim))
        values.append(randn(query_len, num_kv_heads, head_dim))
    num_tokens = starts[-1] + num_padding_tokens
    slots += [-1] * num_padding_tokens
    queries.append(randn(num_padding_tokens, num_heads, head_dim))
    keys.append(randn(num_padding_tokens, num_kv_heads, head_dim))
    values.append(randn(num_padding_tokens, num_kv_heads, head_dim))
    seq_lens = [seq_len for seq_len, _ in seqs]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        num_decodes=num_decodes,
        num_decode_tokens=num_decodes,
        max_query_len=max(q for _, q in seqs),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts,
        seq_lens_cpu=seq_lens,
    )
    assert num_tokens == len(slots)
    return PagedBatch(
        query=torch.cat(queries),
        key=torch.cat(keys),
        value=torch.cat(values),
        k_cache=k_cache,
        v_cache=v_cache,
        meta=meta,
        used_slots=used.to(device),
        scale=head_dim**-0.5,
    )


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """`||out - ref|| / ||ref||` in float64; NaN anywhere gives inf."""
    out64, ref64 = out.double(), ref.double()
    if not bool(torch.isfinite(out64).all()):
        return float("inf")
    return float((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30))


def assert_same_rounding(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal on the GPU; within one unit of the last place under the CPU interpreter.

    The interpreter rounds float32 to bf16 toward zero where the GPU rounds to nearest even.
    """
    if out.is_cuda or out.dtype == torch.float32:
        assert torch.equal(out, ref)
    else:
        ulp = 2.0**-7 if out.dtype == torch.bfloat16 else 2.0**-10
        assert torch.allclose(out.float(), ref.float(), rtol=ulp, atol=0.0)


TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 3e-3}
