"""CPU paged decode attention: the native kernel against the torch path, one layer.

The shape is the CPU throughput workload's decode step on the embedded model (SmolLM2-135M:
9 query heads, 3 KV heads, head_dim 64, block size 16): `--seqs` sequences with context
lengths drawn uniformly from `--min-len`..`--max-len` (fixed seed), their blocks shuffled in
a pool with spare blocks. Prints ms per call for the C++ kernel
(`paged_decode_attention_cpu`) and for the torch path (`paged_attention_torch`: gathers into
a `GatherWorkspace`, then SDPA), the achieved GB/s of K+V bytes read and the speed-up.

`--layers N` rotates the calls over N layers' caches, as a model step does; with enough
layers the caches outgrow the last-level cache and the reads come from DRAM.

    python benchmarks/cpu_attention.py [--dtype float32 bfloat16] [--threads 2] [--layers 30]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from corral.engine.attention import AttentionMetadata, GatherWorkspace, paged_attention_torch
from corral.kernels.paged_decode_attention import paged_decode_attention_torch
from corral.kernels.paged_decode_attention_cpu import (
    cpu_decode_kernel_available,
    paged_decode_attention_cpu,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class DecodeLayer:
    """One layer's decode inputs over a shuffled block pool."""

    query: torch.Tensor  # [num_seqs, num_heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    meta: AttentionMetadata  # decode-only


def make_layers(args, dtype: torch.dtype) -> list[DecodeLayer]:
    """`args.layers` layers sharing one batch (lengths, block tables), each its own data."""
    rng = random.Random(args.seed)
    lens = [rng.randint(args.min_len, args.max_len) for _ in range(args.seqs)]
    blocks_per_seq = [-(-n // args.block_size) for n in lens]
    num_blocks = sum(blocks_per_seq) + args.seqs  # spare blocks, as in a live pool
    order = list(range(num_blocks))
    rng.shuffle(order)
    tables = torch.zeros((args.seqs, max(blocks_per_seq) + 4), dtype=torch.int32)
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = torch.tensor([order.pop() for _ in range(n)], dtype=torch.int32)
    meta = AttentionMetadata(
        query_start_loc=torch.arange(args.seqs + 1, dtype=torch.int32),
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        block_tables=tables,
        slot_mapping=torch.zeros(args.seqs, dtype=torch.int64),
        num_decodes=args.seqs,
        num_decode_tokens=args.seqs,
        max_query_len=1,
        max_seq_len=max(lens),
        query_start_loc_cpu=list(range(args.seqs + 1)),
        seq_lens_cpu=lens,
    )
    gen = torch.Generator().manual_seed(args.seed)
    shape = (num_blocks, args.block_size, args.kv_heads, args.head_dim)
    layers = []
    for _ in range(args.layers):
        layers.append(DecodeLayer(
            query=torch.randn(args.seqs, args.heads, args.head_dim, generator=gen).to(dtype),
            k_cache=torch.randn(shape, generator=gen).to(dtype),
            v_cache=torch.randn(shape, generator=gen).to(dtype),
            meta=meta,
        ))
    return layers


def time_call(fn: Callable[[DecodeLayer], object], layers: list[DecodeLayer], reps: int) -> float:
    """Median seconds per call; each repetition runs once over every layer."""
    for layer in layers[:2]:
        fn(layer)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for layer in layers:
            fn(layer)
        times.append((time.perf_counter() - start) / len(layers))
    return statistics.median(times)


def bench(args, dtype: torch.dtype) -> None:
    layers = make_layers(args, dtype)
    first = layers[0]
    meta = first.meta
    scale = args.head_dim**-0.5
    kv_bytes = 2 * sum(meta.seq_lens_cpu) * args.kv_heads * args.head_dim * dtype.itemsize
    workspace = GatherWorkspace()

    def kernel(layer: DecodeLayer) -> torch.Tensor:
        return paged_decode_attention_cpu(
            layer.query, layer.k_cache, layer.v_cache, meta.block_tables, meta.seq_lens, scale
        )

    def torch_path(layer: DecodeLayer) -> torch.Tensor:
        return paged_attention_torch(
            layer.query, layer.k_cache, layer.v_cache, meta, scale, workspace, cpu_kernel=False
        )

    ref = paged_decode_attention_torch(
        first.query.float(), first.k_cache.float(), first.v_cache.float(), meta.block_tables,
        meta.seq_lens, meta.max_seq_len, scale,
    )
    err = float((kernel(first).double() - ref).norm() / ref.double().norm())
    t_kernel = time_call(kernel, layers, args.reps)
    t_torch = time_call(torch_path, layers, args.reps)
    name = str(dtype).removeprefix("torch.")
    print(f"{name}: {args.seqs} seqs, {sum(meta.seq_lens_cpu)} context tokens, "
          f"K+V {kv_bytes / 1e6:.1f} MB per layer, {args.layers} layer(s), "
          f"{torch.get_num_threads()} threads; kernel rel. error {err:.1e}")
    for label, seconds in (("C++ kernel", t_kernel), ("torch path", t_torch)):
        print(f"  {label:<11} {seconds * 1e3:8.3f} ms  {kv_bytes / seconds / 1e9:6.1f} GB/s")
    print(f"  speed-up    {t_torch / t_kernel:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--min-len", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=768)
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES),
                        default=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--layers", type=int, default=1, help="caches rotated between calls")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not cpu_decode_kernel_available():
        raise SystemExit("the native CPU kernel could not be built (see the warning above)")
    for name in args.dtype:
        bench(args, DTYPES[name])


if __name__ == "__main__":
    main()
