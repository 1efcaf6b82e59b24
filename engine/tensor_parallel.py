"""One rank's place in a tensor-parallel group: which slice of each weight it holds, and the
collectives that join the slices.

Megatron-style sharding: QKV and gate-up projections are split by output rows (heads,
intermediate channels), o and down projections by input columns, followed by one
all-reduce each; the embedding and the LM head are split by vocabulary rows. KV heads are
split when there are at least as many as ranks, else each rank keeps the one its query heads
read (replicated). With `size == 1` every collective is the identity, so the single-device
model is the same code.

Collectives run on `group` (NCCL on GPUs, gloo on CPU); step headers travel on `cpu_group`
(gloo) so that a worker's host never waits on its device to learn what to run next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from corral.grammars.param_error import ParamError


@dataclass
class TensorParallel:
    """This rank's index and the group's size, plus the process groups (None when alone)."""

    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed group for tensors on the model's device
    cpu_group: Any = None  # gloo group for host-side step headers
    local_rank: int = 0  # index among this node's ranks (its GPU)

    @property
    def enabled(self) -> bool:
        return self.size > 1

    # ---- how weights are split ----------------------------------------------------------

    def split(self, total: int, what: str) -> int:
        """`total // size`, refusing totals that do not divide."""
        if total % self.size:
            raise ParamError("tensor_parallel_size",
                             f"{self.size} does not divide the model's {what} ({total})")
        return total // self.size

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """(first KV head this rank holds, how many). Replicated when ranks outnumber them:
        rank r keeps head `r * num_kv_heads // size`, the one its query heads read."""
        if num_kv_heads >= self.size:
            local = self.split(num_kv_heads, "key-value heads")
            return self.rank * local, local
        if self.size % num_kv_heads:
            raise ParamError("tensor_parallel_size",
                             f"{self.size} is not a multiple of the model's {num_kv_heads} "
                             "key-value heads")
        return self.rank * num_kv_heads // self.size, 1

    def vocab_rows(self, vocab_size: int) -> tuple[int, int]:
        """(first vocabulary row of this rank's shard, rows per rank). The last shard is
        padded when the vocabulary does not divide; padded rows are never read back."""
        per_rank = -(-vocab_size // self.size)
        return self.rank * per_rank, per_rank

    # ---- collectives ---------------------------------------------------------------------

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over the ranks, in place."""
        if self.size > 1:
            torch.distributed.all_reduce(x, group=self.group)
        return x

    def gather_vocab(self, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """[rows, vocab/size] on every rank -> [rows, vocab_size] on every rank."""
        if self.size == 1:
            return x
        rows, per_rank = x.shape
        out = torch.empty((self.size * rows, per_rank), dtype=x.dtype, device=x.device)
        torch.distributed.all_gather_into_tensor(out, x.contiguous(), group=self.group)
        shards = out.view(self.size, rows, per_rank).permute(1, 0, 2)
        return shards.reshape(rows, self.size * per_rank)[:, :vocab_size]


def check_tensor_parallel(config: Any, size: int) -> None:
    """Fail at start, with the field named, when a model cannot be split `size` ways."""
    if size == 1:
        return
    probe = TensorParallel(0, size)
    probe.split(config.num_attention_heads, "attention heads")
    probe.kv_heads(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    probe.split(config.intermediate_size, "intermediate size")
    if getattr(config, "moe_intermediate_size", None):
        probe.split(config.moe_intermediate_size, "MoE intermediate size")
