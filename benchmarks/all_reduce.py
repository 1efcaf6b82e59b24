"""NCCL all-reduce time at decode sizes, eager and inside a CUDA graph (as a tensor-parallel
decode step runs it: two per layer), on this machine's GPUs; with `--p2p`, beside it the
one-shot all-reduce that reads the peers' buffers over NVLink peer-to-peer memory (torch's
symmetric memory; never NVLink multicast), and the ratio NCCL time / one-shot time.

    python benchmarks/all_reduce.py --world-size 2 --hidden 4096 --layers 32 --p2p

The one-shot op copies a plain input into its symmetric buffer and sums the peers' into a
plain output, as a model's o/down projection would use it. Where torch or the machine
cannot run it, the run says why and prints the NCCL figures alone.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from p2p_all_reduce import OneShotAllReduce, disable_multicast, try_one_shot

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


def timed_one_shot_eager(op: OneShotAllReduce, x: torch.Tensor, out: torch.Tensor) -> float:
    for _ in range(5):
        op(x, out)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(REPS):
        op(x, out)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / REPS


def timed_one_shot_graph(op: OneShotAllReduce, x: torch.Tensor, out: torch.Tensor) -> float:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            op(x, out)
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (5 * REPS)


def one_shot_row(x: torch.Tensor) -> tuple[float, float | str, str | None]:
    """(eager seconds, graph seconds or why not, None) for the one-shot op on `x`'s shape,
    or (nan, "", why not) when it cannot run. Checks its sum against NCCL's first."""
    op, reason = try_one_shot(tuple(x.shape), x.dtype, x.device)
    if op is None:
        return float("nan"), "", reason
    out = torch.empty_like(x)
    op(x, out)
    expected = x.clone()
    dist.all_reduce(expected)
    torch.cuda.synchronize()
    if not torch.allclose(out.float(), expected.float(), rtol=1e-2, atol=1e-2):
        error = (out.float() - expected.float()).abs().max().item()
        return float("nan"), "", f"one-shot sum differs from NCCL's by up to {error:.3g}"
    eager = timed_one_shot_eager(op, x, out)
    try:
        graph: float | str = timed_one_shot_graph(op, x, out)
    except Exception as e:  # noqa: BLE001 - capture refused: reported, eager still stands
        torch.cuda.synchronize()
        graph = f"no graph: {type(e).__name__}"
    return eager, graph, None


def ratio(nccl: float, p2p: float | str) -> str:
    return f"{nccl / p2p:.2f}x" if isinstance(p2p, float) and p2p == p2p else "-"


def us(seconds: float | str) -> str:
    if isinstance(seconds, str):
        return seconds or "-"
    return "-" if seconds != seconds else f"{seconds * 1e6:.1f}"


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=args.world_size, device_id=torch.device("cuda", rank))
    if rank == 0:
        print(f"{args.world_size} x {torch.cuda.get_device_name()}; bf16 rows x {args.hidden}; "
              f"{2 * args.layers} all-reduces per decode step; torch {torch.__version__}")
        if args.p2p:
            print("NCCL vs one-shot peer-to-peer (symmetric memory, no multicast); "
                  "ratio = NCCL time / one-shot time")
            print(f"{'rows':>6} {'NCCL eager':>10} {'1-shot eager':>12} {'ratio':>6} "
                  f"{'NCCL graph':>10} {'1-shot graph':>12} {'ratio':>6} {'NCCL step ms':>12} "
                  f"{'1-shot step ms':>14}")
            print(f"{'':>6} {'us':>10} {'us':>12} {'':>6} {'us':>10} {'us':>12}")
        else:
            print(f"{'rows':>6} {'eager us':>9} {'graph us':>9} {'per step ms':>12}")
    reasons: list[str] = []
    for rows in ROWS:
        x = torch.randn(rows, args.hidden, dtype=torch.bfloat16, device="cuda")
        eager = timed_eager(x)
        graph = timed_graph(x)
        if not args.p2p:
            if rank == 0:
                print(f"{rows:>6} {eager * 1e6:>9.1f} {graph * 1e6:>9.1f} "
                      f"{graph * 2 * args.layers * 1e3:>12.2f}")
            continue
        p2p_eager, p2p_graph, reason = one_shot_row(x)
        if reason is not None and reason not in reasons:
            reasons.append(reason)
        if rank == 0:
            best = min(p2p_eager, p2p_graph) if isinstance(p2p_graph, float) else p2p_eager
            step = "-" if best != best else f"{best * 2 * args.layers * 1e3:.2f}"
            print(f"{rows:>6} {us(eager):>10} {us(p2p_eager):>12} {ratio(eager, p2p_eager):>6} "
                  f"{us(graph):>10} {us(p2p_graph):>12} {ratio(graph, p2p_graph):>6} "
                  f"{graph * 2 * args.layers * 1e3:>12.2f} {step:>14}", flush=True)
    if rank == 0:
        for reason in reasons:
            print(f"one-shot peer-to-peer all-reduce unavailable: {reason}")
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
    ap.add_argument("--p2p", action="store_true",
                    help="also time the one-shot peer-to-peer all-reduce (symmetric memory)")
    args = ap.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast
    disable_multicast()
    from corral.engine.tensor_parallel_group import free_port

    mp.spawn(worker, args=(args, free_port()), nprocs=args.world_size)


if __name__ == "__main__":
    main()
