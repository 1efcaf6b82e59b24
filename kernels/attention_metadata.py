"""`AttentionMetadata`: the per-step attention inputs the model runner hands every backend.

KV cache layout, per layer: `k_cache`, `v_cache` of shape
`[num_blocks, block_size, num_kv_heads, head_dim]`. Token `t` of a sequence lives in slot
`block_table[t // block_size] * block_size + t % block_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Per-step attention inputs, built by the model runner alone.

    Tensors live on the model's device. Sequences are ordered decodes first (query length
    1), then prefills (chunks), so `num_decodes` leading sequences form a pure-decode batch.
    """

    query_start_loc: torch.Tensor  # int32 [num_seqs + 1], cumulative new-token counts
    seq_lens: torch.Tensor  # int32 [num_seqs], context length incl. this step's tokens
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks_per_seq], padded with 0
    slot_mapping: torch.Tensor  # int64 [num_tokens], -1 for padding tokens
    num_decodes: int  # leading sequences with exactly one new token
    num_decode_tokens: int  # == num_decodes
    max_query_len: int
    max_seq_len: int
    # Host copies for the torch backend's per-sequence loop (no device sync needed).
    query_start_loc_cpu: list[int] | None = None
    seq_lens_cpu: list[int] | None = None

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]
