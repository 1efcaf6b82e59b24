"""CUDA graphs for steps that mix prefill chunks with decodes, cut at each layer's attention.

A mixed step's attention depends on how its tokens split into sequences, which a graph cannot
hold; everything else in a layer (norms, projections, rotary, the KV write, the MLP, the
all-reduces) depends only on the number of tokens. So for each token bucket the forward is
captured in `num_layers + 1` pieces: piece 0 runs from the embedding to layer 0's KV write,
piece `i` from layer `i-1`'s attention output to layer `i`'s KV write, the last piece to the
final norm. A step pads its tokens to the smallest bucket that holds them and replays the
pieces, running each layer's attention eagerly between them over the real rows only: a few
kernel launches per layer instead of a dozen, which is what an eager mixed step spends its
host time on.

Padding tokens have slot -1 (they write no KV) and stale ids and positions (any valid value
will do: their rows are never read back). Attention leaves their output rows as they were;
the buffer starts zeroed and only ever holds finite outputs, so padding rows stay finite.
Buckets are kept to sizes where a step is host-bound; longer steps run eagerly, where the
device is the bound anyway and padding would cost device time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .attention import AttentionMetadata

logger = logging.getLogger(__name__)

# Token counts captured: fine steps where padding would cost most, within 12.5% above 512.
MIXED_BUCKETS = (64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536,
                 1792, 2048)


def mixed_buckets(max_tokens: int) -> list[int]:
    """The buckets up to `max_tokens` (rounded up to a bucket; none if 0)."""
    if max_tokens <= 0:
        return []
    kept = [b for b in MIXED_BUCKETS if b < max_tokens]
    above = [b for b in MIXED_BUCKETS if b >= max_tokens]
    return kept + above[:1] if above else kept


@dataclass
class LayerAttention:
    """One layer's attention as captured: the query the piece before it leaves in the
    graph's memory, that layer's cache and options."""

    query: torch.Tensor  # [bucket, num_heads, head_dim], written by the piece before
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    scale: float
    sinks: torch.Tensor | None
    window: int | None


@dataclass
class MixedForward:
    """The captured pieces of one bucket and the final hidden states they leave."""

    pieces: list[torch.cuda.CUDAGraph]  # num_layers + 1
    layers: list[LayerAttention]  # num_layers
    hidden: torch.Tensor  # [bucket, hidden]


class MixedGraphs:
    """Captured mixed-step forwards, one per token bucket, sharing one memory pool."""

    def __init__(self, model, kv_caches, backend, max_tokens: int, device: torch.device):
        self.model = model
        self.kv_caches = kv_caches
        self.backend = backend  # a TritonAttentionBackend (its `cut` and `attend`)
        self.sizes = mixed_buckets(max_tokens)
        n = self.sizes[-1] if self.sizes else 0
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.out: torch.Tensor | None = None  # [n, num_heads, head_dim], made at first cut
        self.forwards: dict[int, MixedForward] = {}
        self.device = device
        self.num_replays = 0

    def _meta(self, size: int) -> AttentionMetadata:
        """Metadata seen while capturing: only `slot_mapping` is read (by the KV writes);
        the attention itself is cut out."""
        zeros = torch.zeros(1, dtype=torch.int32, device=self.device)
        return AttentionMetadata(
            query_start_loc=torch.tensor([0, size], dtype=torch.int32, device=self.device),
            seq_lens=zeros, block_tables=zeros.view(1, 1),
            slot_mapping=self.slot_mapping[:size], num_decodes=0, num_decode_tokens=0,
            max_query_len=size, max_seq_len=size,
        )

    def _out(self, query: torch.Tensor) -> torch.Tensor:
        if self.out is None:
            self.out = torch.zeros((self.sizes[-1], *query.shape[1:]), dtype=query.dtype,
                                   device=query.device)
        return self.out[: query.shape[0]]

    @torch.inference_mode()
    def capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        for size in reversed(self.sizes):
            args = (self.input_ids[:size], self.positions[:size], self.kv_caches,
                    self._meta(size))
            # Warm-up, attention cut out as in the capture: compiles the kernels first.
            self.backend.cut = lambda query, *_: self._out(query)
            try:
                self.model(*args)
            finally:
                self.backend.cut = None
            torch.cuda.synchronize(self.device)
            with torch.cuda.stream(stream):
                self.forwards[size] = self._capture_pieces(args, pool)
            torch.cuda.synchronize(self.device)
        logger.info("captured mixed-step CUDA graphs (cut at attention) for %s tokens",
                    self.sizes)

    def _capture_pieces(self, args, pool) -> MixedForward:
        pieces: list[torch.cuda.CUDAGraph] = []
        layers: list[LayerAttention] = []
        graph = torch.cuda.CUDAGraph()

        def cut(query, k_cache, v_cache, scale, sinks, window) -> torch.Tensor:
            nonlocal graph
            graph.capture_end()
            pieces.append(graph)
            layers.append(LayerAttention(query, k_cache, v_cache, scale, sinks, window))
            out = self._out(query)
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=pool)
            return out

        self.backend.cut = cut
        graph.capture_begin(pool=pool)
        try:
            hidden = self.model(*args)
        finally:
            graph.capture_end()
            self.backend.cut = None
        pieces.append(graph)
        return MixedForward(pieces, layers, hidden)

    def can_run(self, num_tokens: int) -> bool:
        return bool(self.sizes) and num_tokens <= self.sizes[-1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
            ) -> torch.Tensor:
        """Replay for a step of `num_tokens` real rows; returns hidden [num_tokens, hidden]."""
        n = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        forward = self.forwards[size]
        self.num_replays += 1
        out = self.out[:n]
        attend = self.backend.attend
        forward.pieces[0].replay()
        for layer, piece in zip(forward.layers, forward.pieces[1:], strict=True):
            attend(layer.query[:n], layer.k_cache, layer.v_cache, meta, layer.scale, out=out,
                   sinks=layer.sinks, window=layer.window)
            piece.replay()
        return forward.hidden[:n]
