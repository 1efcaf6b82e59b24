"""CUDA graphs of the model's forward for pure-decode batches.

A decode step at batch size `n` replays the graph captured for the smallest captured size
`>= n`. The graph reads static input buffers (token ids, positions, slot_mapping, seq_lens,
block tables) that each step overwrites in place; padding rows have seq_len 0 and slot -1,
so they write nothing and read nothing. Attention grids are sized for `max_model_len` at
capture, so one graph serves every context length.
"""

from __future__ import annotations

import logging

import torch

from .attention import AttentionMetadata

logger = logging.getLogger(__name__)


def capture_sizes(max_batch: int) -> list[int]:
    """Batch sizes to capture: fine steps where decode batches are small, coarser above."""
    sizes = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512]
    kept = [s for s in sizes if s < max_batch]
    return kept + [max_batch]


class DecodeGraphs:
    """Captured decode forwards, one per batch size, sharing one memory pool."""

    def __init__(self, model, kv_caches, max_batch: int, max_blocks_per_seq: int,
                 max_model_len: int, device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.max_model_len = max_model_len
        self.sizes = capture_sizes(max_batch)
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((n, max_blocks_per_seq), dtype=torch.int32,
                                        device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            slot_mapping=self.slot_mapping[:size],
            num_decodes=size, num_decode_tokens=size, max_query_len=1,
            max_seq_len=self.max_model_len,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            meta = self._meta(size)
            args = (self.input_ids[:size], self.positions[:size], self.kv_caches, meta)
            self.model(*args)  # warm-up: compiles kernels outside capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = self.model(*args)
            self.graphs[size] = (graph, hidden)
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def can_run(self, num_seqs: int, max_blocks: int) -> bool:
        return num_seqs <= self.sizes[-1] and max_blocks <= self.block_tables.shape[1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
            ) -> torch.Tensor:
        """Replay for a decode batch built by the runner; returns hidden [num_seqs, hidden]."""
        n = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= n)
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.seq_lens[n:size].zero_()
        self.block_tables[:n, :width].copy_(meta.block_tables)
        graph, hidden = self.graphs[size]
        graph.replay()
        return hidden[:n]
