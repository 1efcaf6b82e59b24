"""Native CPU paged decode attention against the torch reference (float32 oracle)."""

from __future__ import annotations

import pytest
import torch

from corral.engine import attention
from corral.engine.attention import TorchAttentionBackend
from corral.kernels import cpu_extension
from corral.kernels.paged_decode_attention import paged_decode_attention_torch
from corral.kernels.paged_decode_attention_cpu import (
    cpu_decode_kernel_available,
    paged_decode_attention_cpu,
)
from tests.kernels.kernel_batches import TOLERANCE, PagedBatch, make_paged_batch, rel_error

pytestmark = pytest.mark.skipif(
    not cpu_decode_kernel_available(),
    reason="the native CPU kernel could not be built (no C++ compiler, or the build failed)",
)

CPU = torch.device("cpu")


def _decode_batch(
    seq_lens: list[int], *, num_kv_heads: int = 2, group: int, head_dim: int, block_size: int,
    dtype: torch.dtype, seed: int = 0,
) -> PagedBatch:
    batch = make_paged_batch(
        [(n, 1) for n in seq_lens], num_kv_heads=num_kv_heads, group=group, head_dim=head_dim,
        block_size=block_size, dtype=dtype, device=CPU,
        generator=torch.Generator().manual_seed(seed),
    )
    batch.write_new_kv()
    return batch


def _reference(batch: PagedBatch) -> torch.Tensor:  # float32 [num_seqs, num_heads, head_dim]
    meta = batch.meta
    return paged_decode_attention_torch(
        batch.query.float(), batch.k_cache.float(), batch.v_cache.float(), meta.block_tables,
        meta.seq_lens, meta.max_seq_len, batch.scale,
    )


def _kernel(batch: PagedBatch, query: torch.Tensor | None = None, **kw) -> torch.Tensor:
    meta = batch.meta
    return paged_decode_attention_cpu(
        batch.query if query is None else query, batch.k_cache, batch.v_cache,
        meta.block_tables, meta.seq_lens, batch.scale, **kw,
    )


def _check(batch: PagedBatch, out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == batch.query.dtype and out.shape == ref.shape
    err = rel_error(out, ref)
    assert err < TOLERANCE[out.dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128, 80])
@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_matches_reference(dtype, head_dim, group, block_size) -> None:
    # A single token, around one block, several hundred tokens; block tables are shuffled
    # and one column wider than needed; every slot outside the contexts holds NaN.
    lens = [1, block_size - 1, block_size, block_size + 1, 333, 40]
    batch = _decode_batch(lens, group=group, head_dim=head_dim, block_size=block_size,
                          dtype=dtype, seed=head_dim + 10 * group + block_size)
    ref = _reference(batch)
    batch.poison_unused()
    _check(batch, _kernel(batch), ref)


@pytest.mark.parametrize("head_dim", [7, 16, 96])
def test_odd_head_dims(head_dim) -> None:
    batch = _decode_batch([5, 19, 70], group=2, head_dim=head_dim, block_size=5,
                          dtype=torch.float32)
    ref = _reference(batch)
    batch.poison_unused()
    _check(batch, _kernel(batch), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_large_groups(dtype, head_dim) -> None:
    # More query rows per KV head than one register tile of accumulators holds.
    batch = _decode_batch([1, 50, 129], num_kv_heads=1, group=8, head_dim=head_dim,
                          block_size=16, dtype=dtype)
    ref = _reference(batch)
    batch.poison_unused()
    _check(batch, _kernel(batch), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_query_and_out(dtype) -> None:
    # The query as a view of a fused QKV projection, the output into a strided view.
    batch = _decode_batch([3, 16, 100], group=3, head_dim=64, block_size=16, dtype=dtype)
    num_seqs, num_heads, head_dim = batch.query.shape
    qkv = torch.randn(num_seqs, num_heads + 4, head_dim).to(dtype)
    qkv[:, :num_heads] = batch.query
    query = qkv[:, :num_heads]
    assert not query.is_contiguous()
    ref = _reference(batch)
    batch.poison_unused()
    big_out = torch.full((num_seqs, num_heads + 1, head_dim), float("nan"), dtype=dtype)
    out = big_out[:, :num_heads]
    result = _kernel(batch, query=query, out=out)
    assert result.data_ptr() == out.data_ptr()
    _check(batch, out, ref)
    assert torch.isnan(big_out[:, num_heads]).all()


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_work_split_across_threads(threads) -> None:
    # Long contexts are cut between threads and merged; lengths vary so that the cuts land
    # mid-sequence in different places.
    batch = _decode_batch([2500, 7, 1800, 3100, 640], num_kv_heads=1, group=4, head_dim=64,
                          block_size=16, dtype=torch.float32, seed=threads)
    ref = _reference(batch)
    batch.poison_unused()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = _kernel(batch)
    finally:
        torch.set_num_threads(before)
    _check(batch, out, ref)


def test_empty_context_gives_zeros() -> None:
    batch = _decode_batch([4, 20], group=2, head_dim=64, block_size=16, dtype=torch.float32)
    seq_lens = batch.meta.seq_lens.clone()
    seq_lens[0] = 0
    out = paged_decode_attention_cpu(
        batch.query, batch.k_cache, batch.v_cache, batch.meta.block_tables, seq_lens,
        batch.scale,
    )
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    _check(batch, out[1:], _reference(batch)[1:])


def test_rejects_bad_inputs() -> None:
    batch = _decode_batch([4, 20], group=2, head_dim=64, block_size=16, dtype=torch.float32)
    meta = batch.meta
    with pytest.raises(RuntimeError, match="dtype"):
        paged_decode_attention_cpu(
            batch.query.bfloat16(), batch.k_cache, batch.v_cache, meta.block_tables,
            meta.seq_lens, batch.scale,
        )
    tables = meta.block_tables.clone()
    tables[1, 0] = batch.k_cache.shape[0]
    with pytest.raises(RuntimeError, match="out of range"):
        paged_decode_attention_cpu(
            batch.query, batch.k_cache, batch.v_cache, tables, meta.seq_lens, batch.scale
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_kernel_on_and_off(dtype, monkeypatch) -> None:
    seqs = [(17, 1), (64, 1), (3, 1), (300, 1), (40, 40), (90, 25)]
    batch = make_paged_batch(
        seqs, num_kv_heads=3, group=3, head_dim=64, block_size=16, dtype=dtype, device=CPU,
        num_padding_tokens=2, generator=torch.Generator().manual_seed(1),
    )
    results = []
    for available in (True, False):
        monkeypatch.setattr(attention, "_CPU_DECODE_KERNEL", available)
        k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
        results.append(TorchAttentionBackend().forward(
            batch.query, batch.key, batch.value, k_cache, v_cache, batch.meta, batch.scale
        ))
    on, off = results
    num_decodes, num_real = batch.meta.num_decodes, batch.meta.query_start_loc_cpu[-1]
    err = rel_error(on[:num_decodes], off[:num_decodes].float())
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"
    assert torch.equal(on[num_decodes:num_real], off[num_decodes:num_real])


def test_turned_off_by_environment(monkeypatch) -> None:
    monkeypatch.setenv("CORRAL_CPU_KERNELS", "0")
    assert cpu_extension._load() is False
