"""`TritonAttentionBackend`: the `AttentionBackend` protocol on the Triton kernels.

One forward is: store this step's K/V through `slot_mapping`, then the decode kernel for the
`num_decodes` leading sequences and the prefill kernel for the rest (both write straight into
one output tensor). Launch grids come from python ints in the metadata (`num_decodes`,
`max_query_len`, `max_seq_len`) and tensor shapes, never from device values, so `forward`
never syncs the host.

CUDA graphs: a pure-decode batch (`num_decodes == num_seqs`) is capture-safe. Capture it with
`max_seq_len` set to the largest context the graph will serve (e.g. `max_model_len`): the
split grid is sized from it once, and a longer context at replay is still computed correctly
(its last split runs to the end), just with less parallelism. Output rows of padding tokens
past `query_start_loc[-1]` are left unwritten. A mixed batch is captured in pieces cut at
`forward`'s attention (`cut`), which then runs eagerly through `attend`.

gpt-oss's attention sinks and sliding windows ride along as `sinks` and `window`
(`supports_sinks`); without them the kernels are the plain ones, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from corral.kernels.attention_metadata import AttentionMetadata
from corral.kernels.paged_decode_attention import paged_decode_attention_triton
from corral.kernels.paged_prefill_attention import paged_prefill_attention_triton
from corral.kernels.write_kv_cache import write_kv_cache_triton

__all__ = ["AttentionCut", "TritonAttentionBackend"]

# Called as cut(query, k_cache, v_cache, scale, sinks, window); returns the tensor that
# stands for the attention output in the rest of the forward.
AttentionCut = Callable[..., torch.Tensor]


class TritonAttentionBackend:
    """Paged attention with Triton kernels (CUDA; the CPU interpreter in tests)."""

    supports_sinks = True  # `forward` takes `sinks` and `window`

    def __init__(self) -> None:
        # While set, `forward` stores K/V and hands the query to `cut` instead of attending:
        # how a forward captured in CUDA graphs is cut at each layer's attention.
        self.cut: AttentionCut | None = None

    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sinks: torch.Tensor | None = None,  # [num_heads] sink logits
        window: int | None = None,  # keys each query sees, itself included
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        write_kv_cache_triton(key, value, k_cache, v_cache, meta.slot_mapping)
        query = query if query.stride(-1) == 1 else query.contiguous()
        if self.cut is not None:
            return self.cut(query, k_cache, v_cache, scale, sinks, window)
        return self.attend(query, k_cache, v_cache, meta, scale, sinks=sinks, window=window)

    def attend(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim], unit stride on head_dim
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim]
        sinks: torch.Tensor | None = None,
        window: int | None = None,
    ) -> torch.Tensor:
        """Attention of the step's rows over the cache, which already holds their K/V: the
        decode kernel for the `num_decodes` leading rows, the prefill kernel for the rest."""
        if out is None:
            out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        num_decodes = meta.num_decodes
        if num_decodes:
            paged_decode_attention_triton(
                query[:num_decodes],
                k_cache,
                v_cache,
                meta.block_tables[:num_decodes],
                meta.seq_lens[:num_decodes],
                meta.max_seq_len,
                scale,
                out=out[:num_decodes],
                sinks=sinks,
                window=window,
            )
        if meta.num_seqs > num_decodes:
            paged_prefill_attention_triton(
                query,
                k_cache,
                v_cache,
                meta.query_start_loc,
                meta.seq_lens,
                meta.block_tables,
                meta.max_query_len,
                scale,
                out=out,
                first_seq=num_decodes,
                sinks=sinks,
                window=window,
            )
        return out
