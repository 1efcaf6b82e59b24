"""Mixed-step CUDA graphs: the buckets, the config field, and the attention cut they rely on
(the KV write stays in the captured piece, the attention runs later through `attend` and
equals the uncut forward). The captured replay itself is checked on a GPU
(`test_gpu_engine.py::test_mixed_steps_in_cut_graphs_equal_eager_steps`)."""

from __future__ import annotations

import pytest
import torch

from corral.engine.config import EngineConfig
from corral.engine.mixed_graphs import mixed_buckets
from corral.grammars.param_error import ParamError
from corral.kernels.attention_metadata import AttentionMetadata
from corral.kernels.triton_attention import TritonAttentionBackend

pytest.importorskip("triton")


def test_buckets_cover_the_limit_and_stop_there():
    assert mixed_buckets(0) == []
    assert mixed_buckets(1024)[-1] == 1024
    assert mixed_buckets(1000)[-1] == 1024  # rounded up to a bucket
    assert mixed_buckets(100) == [64, 128]
    sizes = mixed_buckets(2048)
    gaps = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
    assert sizes == sorted(sizes) and max(gaps) <= 256


def test_config_rejects_a_negative_limit():
    with pytest.raises(ParamError) as err:
        EngineConfig(max_mixed_graph_tokens=-1)
    assert err.value.param == "max_mixed_graph_tokens"


def _mixed_batch(num_heads=4, num_kv_heads=2, head_dim=32, block_size=16):
    """Two decodes (contexts 20 and 33) then a prefill chunk of 7 after 9 cached tokens."""
    torch.manual_seed(0)
    q_lens, seq_lens = [1, 1, 7], [20, 33, 16]
    num_tokens = sum(q_lens)
    blocks = [[0, 1], [2, 3, 4], [5]]
    tables = torch.zeros((3, 3), dtype=torch.int32)
    for i, row in enumerate(blocks):
        tables[i, : len(row)] = torch.tensor(row)
    slots = []
    for i, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True)):
        for pos in range(seq_len - q_len, seq_len):
            slots.append(blocks[i][pos // block_size] * block_size + pos % block_size)
    starts = torch.tensor([0, 1, 2, 9], dtype=torch.int32)
    meta = AttentionMetadata(
        query_start_loc=starts, seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=tables, slot_mapping=torch.tensor(slots), num_decodes=2,
        num_decode_tokens=2, max_query_len=7, max_seq_len=33)
    cache_shape = (8, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.randn(cache_shape), torch.randn(cache_shape)
    q = torch.randn(num_tokens, num_heads, head_dim)
    k = torch.randn(num_tokens, num_kv_heads, head_dim)
    v = torch.randn(num_tokens, num_kv_heads, head_dim)
    return q, k, v, k_cache, v_cache, meta


def test_a_cut_forward_writes_kv_and_attends_later(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v, k_cache, v_cache, meta = _mixed_batch()
    backend = TritonAttentionBackend()
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    expected = backend.forward(q, k, v, expected_k, expected_v, meta, 0.2)

    handed: list = []
    stand_in = torch.zeros_like(q)
    backend.cut = lambda query, kc, vc, scale, sinks, window: (
        handed.append((query, kc, vc, scale)) or stand_in)
    got = backend.forward(q, k, v, k_cache, v_cache, meta, 0.2)
    assert got is stand_in and stand_in.abs().sum() == 0  # nothing attended yet
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    (query, kc, vc, scale), = handed
    backend.cut = None
    out = torch.full_like(q, float("nan"))
    backend.attend(query, kc, vc, meta, scale, out=out)
    torch.testing.assert_close(out, expected)
