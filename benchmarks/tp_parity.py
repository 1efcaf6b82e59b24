"""Tensor-parallel agreement: greedy tokens at `--tensor-parallel-size N` against one rank.

Runs the engine-test chat prompts (8, one over 1,000 tokens) greedy with EOS ignored, once
on one rank and once split N ways, each run in its own process so that the device is free
for the next, and prints per prompt the number of leading new tokens that agree. With
random weights (`--load-format dummy`) both runs hold the same model: every tensor is drawn
whole from the seed and its name, and each rank keeps its slice. In float32 every token
should agree (CPU ranks over gloo sum in a fixed order); in bfloat16 the split sums round
differently and long outputs may drift apart.

    python benchmarks/tp_parity.py --tensor-parallel-size 2 --dtype bfloat16 --device cuda \\
        --model <tokenizer folder> --shape llama3-8b --load-format dummy
    python benchmarks/tp_parity.py --device cpu --shape llama-tiny --load-format dummy
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from child_run import run_in_child  # noqa: E402


def greedy(args: argparse.Namespace, dtype: str, tp_size: int
           ) -> tuple[list[int], list[list[int]], str]:
    """(prompt lengths, each prompt's new tokens, device name) from one engine."""
    import torch

    from corral.engine import LLM, SamplingParams
    from tests.engine.prompts import CHATS

    with LLM(args.model, shape=args.shape, load_format=args.load_format, dtype=dtype,
             device=args.device, tensor_parallel_size=tp_size, seed=args.seed,
             max_model_len=4096, max_num_batched_tokens=args.max_num_batched_tokens,
             enforce_eager=args.enforce_eager) as llm:
        tok = llm.tokenizer
        prompts = [tok.encode(tok.apply_chat_template(c, tokenize=False,
                                                      add_generation_prompt=True))
                   for c in CHATS]
        params = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
        outputs = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    return [len(p) for p in prompts], outputs, card


def leading_agreement(a: list[int], b: list[int]) -> int:
    """How many leading tokens of `a` and `b` are equal."""
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def compare(args: argparse.Namespace, dtype: str) -> tuple[int, int]:
    """Run both, print the table; returns (tokens that agree, tokens)."""
    start = time.perf_counter()
    lengths, single, card = run_in_child(greedy, args, dtype, 1)
    print(f"{dtype}: one rank ran in {time.perf_counter() - start:.0f} s (start-up included)",
          flush=True)
    start = time.perf_counter()
    _, split, _ = run_in_child(greedy, args, dtype, args.tensor_parallel_size)
    print(f"{dtype}: {args.tensor_parallel_size} ranks ran in {time.perf_counter() - start:.0f} s",
          flush=True)
    weights = f"{args.shape or 'checkpoint'} ({args.load_format} weights, seed {args.seed})"
    print(f"\ntensor-parallel {args.tensor_parallel_size} vs 1: {weights}, {dtype}, "
          f"{args.device} ({card}); greedy, EOS ignored")
    agree_total, full = 0, 0
    for n, a, b in zip(lengths, single, split, strict=True):
        agree = leading_agreement(a, b)
        agree_total += agree
        full += agree == len(a) == len(b)
        print(f"prompt of {n:>5} tokens: {agree:>4}/{len(a)} tokens agree")
    total = sum(len(a) for a in single)
    print(f"all prompts ({dtype}): {agree_total}/{total} tokens agree, {full}/{len(single)} "
          f"prompts agree in full", flush=True)
    return agree_total, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint, or tokenizer folder with --shape")
    ap.add_argument("--shape", default=None, help="named shape for dummy weights, e.g. llama3-8b")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--tensor-parallel-size", type=int, default=2)
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--enforce-eager", action="store_true")
    args = ap.parse_args(argv)
    if args.shape is not None and args.load_format != "dummy":
        ap.error("--shape needs --load-format dummy")
    if args.tensor_parallel_size < 2:
        ap.error("--tensor-parallel-size: compare at 2 or more ranks")
    results = [compare(args, dtype) for dtype in args.dtype]
    print()
    for dtype, (agree, total) in zip(args.dtype, results, strict=True):
        print(f"{dtype}: {agree}/{total} tokens agree ({agree / total:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
