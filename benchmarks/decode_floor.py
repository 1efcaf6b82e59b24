"""Decode step time against the memory floor, on the GPU.

For each batch size, the engine holds that many sequences with a context of `--context`
tokens and runs plain decode steps (one token per sequence, CUDA graphs, sampling included).
The floor is the bytes one step must read, weights plus the K/V of every context token,
over the copy bandwidth measured on the same card in the same run. With
`--tensor-parallel-size N` each GPU reads its shard: the floor is one rank's bytes (the
ranks read theirs at the same time), and the step includes the all-reduces.

Mixture-of-experts shapes (`qwen3-30b-a3b`, `gpt-oss-20b`): a step reads only the experts
its tokens are routed to. The floor counts the dense weights plus, of each layer's experts,
the share a batch of `B` tokens touches when each picks `k` of `E` experts at random:
`1 - (1 - k/E)^B` (random weights route close to uniformly).

    python benchmarks/decode_floor.py --shape llama3-8b --load-format dummy \\
        --model TOKENIZER_DIR --batch-sizes 1 32 128 256 --context 1024
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from corral.engine import LLM, SamplingParams  # noqa: E402


def copy_bandwidth(num_bytes: int = 2 * 1024**3) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written."""
    src = torch.empty(num_bytes // 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    reps = 10
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    return num_bytes * reps / (time.perf_counter() - start)


def weight_bytes_read(model, hf_config, batch: int) -> tuple[int, int]:
    """(bytes of the dense weights, expected bytes of the experts a decode step of `batch`
    tokens reads)."""
    dense = experts = 0
    for name, param in model.named_parameters():
        size = param.numel() * param.element_size()
        if ".experts." in name:
            experts += size
        else:
            dense += size
    if experts:
        num_experts = getattr(hf_config, "num_local_experts", None) or hf_config.num_experts
        share = 1 - (1 - hf_config.num_experts_per_tok / num_experts) ** batch
        experts = int(experts * share)
    return dense, experts


def set_mode(llm: LLM, mode: str) -> None:
    """`async`: step N+1 launched before step N's tokens are read back; `sync`: the
    synchronous loop."""
    llm.engine.async_scheduling = mode == "async"


def time_decode_steps(llm: LLM, batch: int, context: int, steps: int) -> float:
    engine = llm.engine
    rng = random.Random(batch)
    params = SamplingParams(temperature=0, max_tokens=steps + 8, ignore_eos=True)
    for i in range(batch):
        prompt = [rng.randrange(100, engine.vocab_size - 100) for _ in range(context - 1)]
        engine.add_request(f"b{batch}-{i}", prompt, params)
    # Prefill everything, then one more step so that every sequence is decoding.
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.waiting) \
            or any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running):
        engine.step()
    for _ in range(3):
        engine.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step(emit_unfinished=False)
    torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) / steps
    for request_id in list(engine.requests):
        engine.abort(request_id)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--shape", default="llama3-8b")
    ap.add_argument("--load-format", default="dummy")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 128, 256])
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--modes", nargs="+", choices=["async", "sync"], default=["async", "sync"],
                    help="engine loops to time (async scheduling on or off)")
    args = ap.parse_args()

    max_batch = max(args.batch_sizes)
    llm = LLM(args.model, shape=args.shape, load_format=args.load_format,
              max_num_seqs=max_batch, max_model_len=args.context + args.steps + 64,
              max_num_batched_tokens=8192, enable_prefix_caching=False,
              tensor_parallel_size=args.tensor_parallel_size)
    runner = llm.engine.runner
    weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    dense_bytes = weight_bytes_read(runner.model, runner.hf_config, 1)[0]
    kv_bytes_per_token = runner.kv_bytes_per_block // runner.block_size
    bandwidth = copy_bandwidth()
    print(f"\n{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e9:.0f} GB/s; "
          f"weights {weight_bytes / 1e9:.2f} GB ({dense_bytes / 1e9:.2f} GB outside experts); "
          f"KV {kv_bytes_per_token / 1024:.0f} KiB/token; "
          f"context {args.context}; tensor parallel {args.tensor_parallel_size} (per rank)")
    print(f"{'mode':>6} {'batch':>6} {'step ms':>9} {'floor ms':>9} {'ratio':>7} {'tok/s':>9}")
    for batch in args.batch_sizes:
        for mode in args.modes:
            set_mode(llm, mode)
            step = time_decode_steps(llm, batch, args.context, args.steps)
            dense, experts = weight_bytes_read(runner.model, runner.hf_config, batch)
            floor = (dense + experts + batch * args.context * kv_bytes_per_token) / bandwidth
            print(f"{mode:>6} {batch:>6} {step * 1e3:>9.2f} {floor * 1e3:>9.2f} "
                  f"{step / floor:>7.2f} {batch / step:>9.0f}")
    llm.shutdown()


if __name__ == "__main__":
    main()
