"""One-shot all-reduce over NVLink peer-to-peer memory, through torch's symmetric memory.

Each rank copies its input into a buffer that every peer has mapped, then one kernel on
each rank reads all the peers' buffers directly and sums them into its output: one launch,
no ring, no protocol, which is what decode-sized all-reduces (a few KB to 2 MB) want.

Only the one-shot peer-to-peer op is used. NVLink multicast (the `multimem_*` ops, the
multicast objects behind them, the two-shot variants) stays off: `disable_multicast()`
sets `TORCH_SYMM_MEM_DISABLE_MULTICAST=1` before any symmetric memory is made.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.distributed as dist

_OP = "one_shot_all_reduce_copy_out"


def disable_multicast() -> None:
    """No multicast object at rendezvous (call before the first symmetric allocation)."""
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"


def unavailable_reason() -> str | None:
    """Why this torch or machine cannot run the op here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import torch.distributed._symmetric_memory as symm_mem
    except ImportError as e:
        return f"torch {torch.__version__} has no symmetric memory ({e})"
    if not hasattr(symm_mem, "empty") or not hasattr(symm_mem, "rendezvous"):
        return f"torch {torch.__version__}: symmetric memory lacks empty()/rendezvous()"
    if not hasattr(torch.ops.symm_mem, _OP):
        return f"torch {torch.__version__} has no torch.ops.symm_mem.{_OP}"
    return None


class OneShotAllReduce:
    """Sum of `[rows, hidden]` inputs over the group's ranks into `out`, one kernel per rank.
    The symmetric buffer is this rank's window that every peer reads."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 group: Any = None) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        group = group or dist.group.WORLD
        self.group_name: str = group.group_name
        set_backend = getattr(symm_mem, "set_backend", None)
        if set_backend is not None:
            try:
                set_backend("CUDA")  # peer-to-peer mappings, not NVSHMEM
            except Exception:  # noqa: BLE001 - fixed once the first buffer exists
                pass
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None:  # needed by older torch, a deprecated no-op in newer
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                enable(self.group_name)
        self.buffer = symm_mem.empty(shape, dtype=dtype, device=device)  # [rows, hidden]
        symm_mem.rendezvous(self.buffer, group)
        self._op = getattr(torch.ops.symm_mem, _OP)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` = sum over ranks of `x` (same shape as the buffer); `x` stays as it is."""
        return self._op(self.buffer, x, "sum", self.group_name, out)


def try_one_shot(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
                 ) -> tuple[OneShotAllReduce | None, str | None]:
    """The op for `shape` if every rank could set it up, else (None, this rank's reason or
    "another rank failed"). Collective: every rank must call it, and all agree."""
    reason = unavailable_reason()
    op = None
    if reason is None:
        try:
            op = OneShotAllReduce(shape, dtype, device)
        except Exception as e:  # noqa: BLE001 - reported, and NCCL still runs
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    ok = torch.tensor([1 if op is not None else 0], dtype=torch.int32, device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if int(ok.item()) == 0:
        return None, reason or "another rank failed"
    return op, None
