"""NCCL all-reduce time at decode sizes, eager and inside a CUDA graph (as a tensor-parallel
decode step runs it: two per layer), on this machine's GPUs.

    python benchmarks/all_reduce.py --world-size 2 --hidden 4096 --layers 32
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROWS = (1, 8, 32, 128, 256)
REPS = 50


def timed_eager(x: torch.Tensor) -> float:
    for _ in range(5):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(REPS):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / REPS


def timed_graph(x: torch.Tensor) -> float:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            dist.all_reduce(x)
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (5 * REPS)


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.world_size, device_id=torch.device("cuda", rank))
    if rank == 0:
        print(f"{args.world_size} x {torch.cuda.get_device_name()}; bf16 rows x {args.hidden}; "
              f"{2 * args.layers} all-reduces per decode step")
        print(f"{'rows':>6} {'eager us':>9} {'graph us':>9} {'per step ms':>12}")
    for rows in ROWS:
        x = torch.randn(rows, args.hidden, dtype=torch.bfloat16, device="cuda")
        eager = timed_eager(x)
        graph = timed_graph(x)
        if rank == 0:
            print(f"{rows:>6} {eager * 1e6:>9.1f} {graph * 1e6:>9.1f} "
                  f"{graph * 2 * args.layers * 1e3:>12.2f}")
    big = torch.empty(128 * 1024**2, dtype=torch.bfloat16, device="cuda")  # 256 MB
    seconds = timed_eager(big)
    if rank == 0:
        n = args.world_size
        bus = big.numel() * 2 * 2 * (n - 1) / n / seconds
        print(f"256 MB: {seconds * 1e3:.2f} ms, bus bandwidth {bus / 1e9:.0f} GB/s")
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world-size", type=int, default=torch.cuda.device_count())
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast
    from corral.engine.tensor_parallel_group import free_port

    mp.spawn(worker, args=(args, free_port()), nprocs=args.world_size)


if __name__ == "__main__":
    main()
