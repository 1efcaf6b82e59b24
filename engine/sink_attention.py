"""Paged attention with attention sinks and a sliding window (gpt-oss), in torch.

A *sink* is one learned logit per query head that joins every softmax without a value:
`p_j = exp(s_j) / (sum_k exp(s_k) + exp(sink))`, so a head may attend to nothing. A sliding
window of `w` lets a query at position `t` see keys `t - w < j <= t` only. Each sequence's
query rows attend over its gathered context, one sequence at a time: the torch path (CPU, or
a GPU without the Triton backend). The Triton backend takes `sinks` and `window` itself
(`kernels/triton_attention.py`); the reference lives in `kernels/paged_sink_reference.py`.
"""

from __future__ import annotations

import torch

from corral.kernels.attention_metadata import AttentionMetadata
from corral.kernels.paged_kv_reference import write_kv_cache_torch
from corral.kernels.paged_sink_reference import paged_sink_attention, sink_attention

__all__ = ["SinkAttentionBackend", "paged_sink_attention", "sink_attention"]


class SinkAttentionBackend:
    """Writes this step's K/V, then attends with per-head sinks and an optional window."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                scale: float, sinks: torch.Tensor | None = None,
                window: int | None = None) -> torch.Tensor:
        write_kv_cache_torch(key, value, k_cache, v_cache, meta.slot_mapping)
        return paged_sink_attention(query, k_cache, v_cache, meta, scale, sinks, window)
