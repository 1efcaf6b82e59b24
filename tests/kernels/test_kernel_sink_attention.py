"""Triton paged attention with gpt-oss's per-head sinks and sliding windows (decode split +
merge, and prefill) against the torch reference (`paged_sink_reference`, float32 oracle)."""

from __future__ import annotations

import pytest
import torch

from corral.kernels.decode_split_merge import (
    merge_decode_splits_torch,
    merge_decode_splits_triton,
)
from corral.kernels.paged_decode_attention import paged_decode_attention_triton
from corral.kernels.paged_prefill_attention import paged_prefill_attention_triton
from corral.kernels.paged_sink_reference import paged_sink_attention
from corral.kernels.triton_attention import TritonAttentionBackend
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


def _batch(seqs, *, num_kv_heads=2, group=2, head_dim=32, block_size=16,
           dtype=torch.float32, device=None, seed=0):
    batch = make_paged_batch(
        seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim,
        block_size=block_size, dtype=dtype, device=device or cpu_or_cuda(),
        generator=torch.Generator().manual_seed(seed),
    )
    batch.write_new_kv()
    return batch


def _sinks(num_heads: int, magnitude: float, seed: int, device) -> torch.Tensor:
    """Sink logits around `magnitude` (spread over the heads, some negative)."""
    gen = torch.Generator().manual_seed(seed)
    return (magnitude * (1 + torch.randn(num_heads, generator=gen))).to(device)


def _reference(batch, sinks, window):
    return paged_sink_attention(
        batch.query.float(), batch.k_cache.float(), batch.v_cache.float(), batch.meta,
        batch.scale, sinks, window, first_seq=0,
    )


def _check_decode(seq_lens, *, sinks_at, window, num_splits, dtype=torch.float32,
                  block_size=16, group=2, max_seq_len=None, seed=0, head_dim=32,
                  num_kv_heads=2):
    batch = _batch([(n, 1) for n in seq_lens], dtype=dtype, block_size=block_size,
                   group=group, seed=seed, head_dim=head_dim, num_kv_heads=num_kv_heads)
    num_heads = batch.query.shape[1]
    sinks = None if sinks_at is None else _sinks(num_heads, sinks_at, seed, batch.query.device)
    ref = _reference(batch, sinks, window)
    batch.poison_unused()
    meta = batch.meta
    out = torch.full_like(batch.query, float("nan"))
    paged_decode_attention_triton(
        batch.query, batch.k_cache, batch.v_cache, meta.block_tables, meta.seq_lens,
        max_seq_len if max_seq_len is not None else meta.max_seq_len, batch.scale, out=out,
        num_splits=num_splits, sinks=sinks, window=window,
    )
    err = rel_error(out, ref)
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"


# Contexts: one token, inside a block, block-aligned, crossing several blocks, long.
LENS = [1, 7, 16, 45, 130, 300]


@pytest.mark.parametrize("window", [None, 1, 5, 16, 37, 128, 1000])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_windows(window, num_splits) -> None:
    # Windows of one key, inside a block, a block, crossing blocks, beyond every context.
    _check_decode(LENS, sinks_at=None, window=window, num_splits=num_splits,
                  seed=(window or 0) + num_splits)


@pytest.mark.parametrize("sinks_at", [-20.0, 0.0, 3.0, 30.0])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_sinks(sinks_at, num_splits) -> None:
    # Sinks far below the scores (no effect), comparable to them, and dominating them.
    _check_decode(LENS, sinks_at=sinks_at, window=None, num_splits=num_splits,
                  seed=int(sinks_at) + num_splits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_sinks_and_window(dtype, block_size) -> None:
    for num_splits in (None, 1, 2):
        _check_decode(LENS, sinks_at=1.0, window=24, num_splits=num_splits, dtype=dtype,
                      block_size=block_size, group=4, seed=block_size)


def test_decode_window_beyond_the_captured_bound() -> None:
    # Graph-style launch: the grid sized for a shorter bound than some contexts in sight.
    _check_decode([40, 300, 500], sinks_at=0.5, window=200, num_splits=None,
                  max_seq_len=100, seed=4)


def test_merge_with_sinks_matches_reference_and_a_direct_softmax() -> None:
    device = cpu_or_cuda()
    gen = torch.Generator().manual_seed(1)
    num_seqs, num_heads, num_splits, head_dim, partition = 4, 3, 4, 16, 64
    part_out = torch.randn(num_seqs, num_heads, num_splits, head_dim, generator=gen)
    part_lse = 3 * torch.randn(num_seqs, num_heads, num_splits, generator=gen)
    seq_lens = torch.tensor([0, 50, 130, 1000], dtype=torch.int32)
    sinks = torch.tensor([-5.0, 0.5, 8.0])
    window = 150  # sequence 3: its 150 tokens in sight span 3 splits
    args = (part_out.to(device), part_lse.to(device), seq_lens.to(device), partition)
    ref = torch.empty(num_seqs, num_heads, head_dim, device=device)
    merge_decode_splits_torch(*args, ref, sinks=sinks.to(device), window=window)
    out = torch.full((num_seqs, num_heads, head_dim), float("nan"), device=device)
    merge_decode_splits_triton(*args, out, sinks=sinks.to(device), window=window)
    assert rel_error(out, ref) < 1e-5
    assert torch.equal(out[0].cpu(), torch.zeros(num_heads, head_dim))
    ln2 = torch.log(torch.tensor(2.0))
    logits = torch.cat([part_lse[3, :, :3] * ln2, sinks[:, None]], dim=-1)
    w = torch.softmax(logits, dim=-1)[:, :3]
    assert torch.allclose(out[3].cpu(), (part_out[3, :, :3] * w[..., None]).sum(1), atol=1e-5)


# (seq_len, query_len): a whole prompt, a chunk after cached context, a prefix-cache hit,
# a one-token chunk, a chunk over a long context.
MIX = [(37, 37), (130, 40), (64, 16), (20, 1), (9, 9), (200, 23), (95, 70)]


def _check_prefill(seqs, *, sinks_at, window, config, dtype=torch.float32, block_size=16,
                   seed=0, group=2):
    batch = _batch(seqs, dtype=dtype, block_size=block_size, seed=seed, group=group)
    num_heads = batch.query.shape[1]
    sinks = None if sinks_at is None else _sinks(num_heads, sinks_at, seed, batch.query.device)
    ref = _reference(batch, sinks, window)
    batch.poison_unused()
    meta = batch.meta
    first = meta.num_decodes
    out = torch.full_like(batch.query, float("nan"))
    paged_prefill_attention_triton(
        batch.query, batch.k_cache, batch.v_cache, meta.query_start_loc, meta.seq_lens,
        meta.block_tables, meta.max_query_len, batch.scale, out=out, first_seq=first,
        config=config, sinks=sinks, window=window,
    )
    err = rel_error(out[first:], ref[first:])
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("window", [1, 3, 16, 20, 45, 128, 1000])
@pytest.mark.parametrize("config", [(32, 16, 4, 1), (16, 32, 4, 1)])
def test_prefill_windows(window, config) -> None:
    # Windows smaller than a key tile, a block, crossing tiles and blocks, beyond contexts;
    # query tiles taller and shorter than the key tiles.
    _check_prefill(MIX, sinks_at=None, window=window, config=config, seed=window)


@pytest.mark.parametrize("sinks_at", [-20.0, 0.0, 3.0, 30.0])
def test_prefill_sinks(sinks_at) -> None:
    _check_prefill(MIX, sinks_at=sinks_at, window=None, config=(32, 16, 4, 1),
                   seed=int(sinks_at) + 100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32])
def test_prefill_sinks_and_window(dtype, block_size) -> None:
    _check_prefill(MIX, sinks_at=1.0, window=24, config=(32, 16, 4, 1), dtype=dtype,
                   block_size=block_size, seed=block_size, group=4)


def test_backend_mixed_batch_with_sinks_and_window() -> None:
    """Decodes and prefill chunks in one forward, K/V written by the backend itself."""
    seqs = [(30, 1), (300, 1), (5, 1)] + MIX
    batch = make_paged_batch(
        seqs, num_kv_heads=2, group=2, head_dim=32, block_size=16, dtype=torch.float32,
        device=cpu_or_cuda(), num_padding_tokens=3,
        generator=torch.Generator().manual_seed(9),
    )
    sinks = _sinks(4, 1.0, 9, batch.query.device)
    out = TritonAttentionBackend().forward(
        batch.query, batch.key, batch.value, batch.k_cache, batch.v_cache, batch.meta,
        batch.scale, sinks=sinks, window=20,
    )
    ref = _reference(batch, sinks, 20)
    rows = batch.meta.query_start_loc_cpu[-1]
    assert rel_error(out[:rows], ref[:rows]) < TOLERANCE[torch.float32]


@gpu
@requires_cuda
@pytest.mark.parametrize("window", [None, 128])
def test_gpu_gpt_oss_20b_heads(window) -> None:
    """gpt-oss-20b's attention: 64 query heads over 8 KV heads of 64, bfloat16."""
    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(1, 3000, (48,), generator=gen).tolist()
    for num_splits in (None, 1):
        _check_decode(lens, sinks_at=1.0, window=window, num_splits=num_splits,
                      dtype=torch.bfloat16, group=8, head_dim=64, num_kv_heads=8, seed=1)
    seqs = [(2048, 2048), (1500, 700), (3000, 512), (333, 333)]
    batch = _batch(seqs, num_kv_heads=8, group=8, head_dim=64, dtype=torch.bfloat16, seed=2)
    sinks = _sinks(64, 1.0, 2, batch.query.device)
    ref = _reference(batch, sinks, window)
    meta = batch.meta
    out = paged_prefill_attention_triton(
        batch.query, batch.k_cache, batch.v_cache, meta.query_start_loc, meta.seq_lens,
        meta.block_tables, meta.max_query_len, batch.scale, sinks=sinks, window=window,
    )
    assert rel_error(out, ref) < TOLERANCE[torch.bfloat16]
