"""Starting a tensor-parallel group: one process per rank, joined through torch.distributed.

Rank 0 is the engine's own process: it schedules, samples and fills grammar masks, and
drives the other ranks by broadcasting each step's inputs (`ModelRunner.execute`). Ranks
1..N-1 are worker processes (`worker_main`) that build the same model runner over their
shard and follow those broadcasts until told to stop. On several nodes, node 0 starts its
local ranks with the engine and every other node starts its own with `corral serve
--node-rank K` (`start_node_workers`); all meet at torch.distributed's TCP rendezvous.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import socket
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from corral.grammars.param_error import ParamError

from .config import EngineConfig
from .tensor_parallel import TensorParallel

logger = logging.getLogger(__name__)

# A worker waits this long for the next step: an idle server sends none for hours.
_IDLE_TIMEOUT = timedelta(days=365)


def ranks_per_node(config: EngineConfig) -> int:
    return config.tensor_parallel_size // config.nnodes


def check_devices(config: EngineConfig, device: torch.device) -> None:
    """More local ranks than GPUs is refused before any process starts."""
    if device.type != "cuda":
        return
    per_node = ranks_per_node(config)
    first = device.index or 0
    available = torch.cuda.device_count()
    if first + per_node > available:
        raise ParamError("tensor_parallel_size",
                         f"{per_node} ranks per node from GPU {first} need GPUs {first}.."
                         f"{first + per_node - 1}; this machine has {available}")


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """Each rank's own GPU, counted from the engine's (`cuda:K`: ranks on K, K+1, ...);
    CPU ranks share the host."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + local_rank)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, config: EngineConfig, device: torch.device) -> TensorParallel:
    """Join the group as `rank` (blocks until every rank has joined)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off
    init = f"tcp://{config.master_addr}:{config.master_port}"
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(backend, init_method=init, rank=rank,
                            world_size=config.tensor_parallel_size, timeout=_IDLE_TIMEOUT,
                            **kwargs)
    cpu_group = dist.new_group(backend="gloo", timeout=_IDLE_TIMEOUT) \
        if backend != "gloo" else dist.group.WORLD
    local_rank = rank % ranks_per_node(config)
    return TensorParallel(rank, config.tensor_parallel_size, dist.group.WORLD, cpu_group,
                          local_rank)


def start_local_workers(config: EngineConfig, runner_args: tuple, first_rank: int
                        ) -> list[mp.Process]:
    """Start this node's worker ranks (from `first_rank` to the node's last)."""
    if mp.current_process().daemon:
        raise ParamError("tensor_parallel_size",
                         "a daemonic process cannot start tensor-parallel workers")
    context = mp.get_context("spawn")
    last = (config.node_rank + 1) * ranks_per_node(config)
    workers = []
    for rank in range(first_rank, last):
        proc = context.Process(target=worker_main, args=(rank, config, runner_args),
                               name=f"corral-tp-rank{rank}", daemon=True)
        proc.start()
        workers.append(proc)
    return workers


def launch(config: EngineConfig, runner_args: tuple, device: torch.device
           ) -> tuple[EngineConfig, TensorParallel, list[mp.Process]]:
    """On node 0, from the engine: pick the rendezvous port, start the local workers and
    join as rank 0. Returns the config with its port fixed, the group and the workers."""
    check_devices(config, device)
    if config.master_port is None:
        config = replace(config, master_port=free_port())
    workers = start_local_workers(config, runner_args, first_rank=1)
    try:
        tp = join_group(0, config, rank_device(device, 0))
    except Exception:
        for proc in workers:
            proc.kill()
        raise
    return config, tp, workers


def start_node_workers(config: EngineConfig, model_dir: Path, vocab_size_hint: int | None
                       ) -> list[mp.Process]:
    """On a node other than 0 (`corral serve --node-rank K`): start all its ranks.
    `vocab_size_hint` must be what node 0 passes (the tokenizer's length)."""
    from .model_runner import pick_device

    check_devices(config, pick_device(config.device))
    first = config.node_rank * ranks_per_node(config)
    speculates = config.speculative is not None or config.fast_forward
    rows_per_seq = 1 + config.num_speculative_tokens if speculates else 1
    args = (model_dir, vocab_size_hint, config.max_model_len, rows_per_seq)
    return start_local_workers(config, args, first_rank=first)


def worker_main(rank: int, config: EngineConfig, runner_args: tuple) -> None:
    """A worker rank: build this rank's runner, then run every step rank 0 broadcasts."""
    from .model_runner import ModelRunner

    logging.basicConfig(level=os.environ.get("CORRAL_LOG_LEVEL", "WARNING"))
    torch.set_num_threads(max(1, torch.get_num_threads() // ranks_per_node(config)))
    runner = ModelRunner(config, *runner_args, tp_rank=rank)
    runner.allocate_kv_cache()
    runner.follow()
    runner.shutdown()
