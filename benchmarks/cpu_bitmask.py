"""CPU token-bitmask application: the native kernel against numpy and the torch reference.

Masks are those a grammar gives: per row, either everything allowed (free text inside a
string), a scattered few hundred tokens (a value's start) or a handful (a key, a bracket),
in equal shares; logits rows are picked through a row index, as the sampler does when only
some rows of a batch are constrained. Prints ms per call for each version and the native
kernel's speed-up; every version's output is checked against the reference first.

    python benchmarks/cpu_bitmask.py [--rows 16 64 256] [--vocab 49152 128256] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from corral.kernels.cpu_extension import load_cpu_ops
from corral.kernels.token_bitmask import (
    apply_token_bitmask_cpu,
    apply_token_bitmask_numpy,
    apply_token_bitmask_torch,
)


def grammar_like_masks(num_rows: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """int32 [num_rows, ceil(vocab/32)]: all allowed, ~300 allowed, ~4 allowed, in turn."""
    words = (vocab + 31) // 32
    bitmask = torch.zeros((num_rows, words), dtype=torch.int32)
    for row in range(num_rows):
        kind = row % 3
        if kind == 0:
            bitmask[row] = -1
        else:
            count = 300 if kind == 1 else 4
            tokens = torch.randint(0, vocab, (count,), generator=gen)
            bits = torch.zeros(words * 32, dtype=torch.bool)
            bits[tokens] = True
            packed = (bits.view(words, 32).long() << torch.arange(32)).sum(-1)
            bitmask[row] = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return bitmask


def median_ms(fn: Callable[[torch.Tensor], None], logits: torch.Tensor, reps: int) -> float:
    times = []
    for _ in range(reps):
        target = logits.clone()
        start = time.perf_counter()
        fn(target)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not load_cpu_ops():
        raise SystemExit("the native CPU kernels could not be built (no C++ compiler?)")
    gen = torch.Generator().manual_seed(0)
    print(f"{torch.get_num_threads()} threads; ms per call (median of {args.reps})")
    print(f"{'rows':>5} {'vocab':>7} {'torch':>8} {'numpy':>8} {'native':>8} {'vs numpy':>9}")
    for vocab in args.vocab:
        for num_rows in args.rows:
            batch = num_rows + num_rows // 4  # some rows of the batch unconstrained
            logits = torch.randn((batch, vocab), generator=gen)
            bitmask = grammar_like_masks(num_rows, vocab, gen)
            rows = torch.randperm(batch, generator=gen)[:num_rows]
            versions = {
                name: functools.partial(fn, bitmask=bitmask, rows=rows)
                for name, fn in (("torch", apply_token_bitmask_torch),
                                 ("numpy", apply_token_bitmask_numpy),
                                 ("native", apply_token_bitmask_cpu))
            }
            reference = logits.clone()
            versions["torch"](reference)
            for name, fn in versions.items():
                out = logits.clone()
                fn(out)
                if not torch.equal(out, reference):
                    raise SystemExit(f"{name} differs from the reference at {num_rows} x {vocab}")
            ms = {name: median_ms(fn, logits, args.reps) for name, fn in versions.items()}
            print(f"{num_rows:>5} {vocab:>7} {ms['torch']:>8.2f} {ms['numpy']:>8.2f} "
                  f"{ms['native']:>8.2f} {ms['numpy'] / ms['native']:>8.1f}x")


if __name__ == "__main__":
    main()
