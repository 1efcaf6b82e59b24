"""Offline throughput: Corral versus transformers `generate()` on one seeded workload.

One process runs the same requests (random prompt tokens, fixed output lengths, EOS
ignored) through Corral's engine and through transformers in padded static batches (the
naive server) and one request at a time, then prints output tokens/s and the ratios.

    python benchmarks/throughput.py                       # CPU, the embedded model
    python benchmarks/throughput.py --device cuda --shape llama3-8b --load-format dummy \\
        --num-requests 256 --prompt-len 128 1024 --output-len 64 512 --hf-requests 128
    python benchmarks/throughput.py --device cuda --shape gpt-oss-20b --load-format dummy \\
        --num-requests 128 --prompt-len 128 512 --output-len 64 256 --hf-requests 32 \\
        --hf-batch-size 32 --single-requests 1
    python benchmarks/throughput.py --shape qwen3-moe-tiny --load-format dummy --dtype float32 \\
        --num-requests 8 --prompt-len 16 64 --output-len 8 32

Static batches generate until their longest request is done; only the tokens each request
asked for count as output. The one-at-a-time baseline runs on the first `--single-requests`
requests (its rate per token does not depend on how many run).

With random weights (`--load-format dummy`) the baseline is transformers' own class for the
shape's `model_type`, and Corral then loads exactly its weights; the run reports how many of
the static batches' requests got the same greedy tokens from both (all or nearly all in
float32; bfloat16 rounding lets long outputs drift apart).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from corral.engine import LLM, SamplingParams  # noqa: E402


def make_workload(args, vocab_size: int) -> list[tuple[list[int], int]]:
    rng = random.Random(args.seed)
    requests = []
    for _ in range(args.num_requests):
        prompt_len = rng.randint(*args.prompt_len)
        output_len = rng.randint(*args.output_len)
        prompt = [rng.randrange(100, vocab_size - 100) for _ in range(prompt_len)]
        requests.append((prompt, output_len))
    return requests


# Several JSON schemas for the structured run (each request takes one, round robin).
SCHEMAS: list[dict] = [
    {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}}},
     "required": ["name", "age", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "qty": {"type": "integer", "minimum": 1}, "price": {"type": "number"}},
            "required": ["sku", "qty", "price"]}},
        "total": {"type": "number"}}, "required": ["items", "total"]},
    {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo", "Kyoto"]},
        "forecast": {"type": "array", "items": {"type": "object", "properties": {
            "day": {"type": "string", "format": "date"},
            "high": {"type": "number"}, "low": {"type": "number"},
            "summary": {"type": "string", "maxLength": 60}},
            "required": ["day", "high", "low", "summary"]}}},
     "required": ["city", "forecast"]},
    {"type": "object", "properties": {
        "function": {"type": "string"}, "arguments": {"type": "object", "properties": {
            "query": {"type": "string"}, "limit": {"type": "integer", "maximum": 100},
            "filters": {"type": "array", "items": {"type": "string"}}},
            "required": ["query"]}}, "required": ["function", "arguments"]},
]


def run_corral_structured(llm: LLM, workload, device: str) -> tuple[float, list[int]]:
    """The same requests, each constrained by one of `SCHEMAS`; they end where the JSON
    ends (or at their output length). Returns the time and each request's output length."""
    from corral.engine import StructuredOutputsParams

    prompts = [p for p, _ in workload]
    params = [
        SamplingParams(temperature=0, max_tokens=n, structured_outputs=StructuredOutputsParams(
            json=SCHEMAS[i % len(SCHEMAS)]))
        for i, (_, n) in enumerate(workload)
    ]
    llm.generate(prompts[:2], params[:2])  # warm-up: grammar compiles, mask kernels
    llm.engine.grammar_step.stats.mask_fill_seconds.clear()
    sync(device)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    sync(device)
    elapsed = time.perf_counter() - start
    return elapsed, [len(o.outputs[0].token_ids) for o in outputs]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_corral(llm: LLM, workload, device: str) -> tuple[float, int, list[list[int]]]:
    """All requests through the engine at once; returns the time, the output tokens and
    each request's tokens."""
    prompts = [p for p, _ in workload]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for _, n in workload]
    llm.generate(prompts[:2], [SamplingParams(max_tokens=4, ignore_eos=True)] * 2)  # warm-up
    sync(device)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    sync(device)
    elapsed = time.perf_counter() - start
    generated = [list(o.outputs[0].token_ids) for o in outputs]
    tokens = sum(len(g) for g in generated)
    assert tokens == sum(n for _, n in workload), "Corral produced fewer tokens than asked"
    return elapsed, tokens, generated


def run_transformers(model, workload, batch_size: int, pad_id: int,
                     device: str) -> tuple[float, int, list[list[int]]]:
    """Padded static batches: left-pad prompts, generate to the batch's longest output.
    Returns the time, the output tokens asked for and each request's tokens (as many as it
    asked for)."""
    elapsed, tokens = 0.0, 0
    generated: list[list[int]] = []
    for i in range(0, len(workload), batch_size):
        batch = workload[i : i + batch_size]
        width = max(len(p) for p, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (prompt, _) in enumerate(batch):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        new = max(n for _, n in batch)
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids.to(device), attention_mask=mask.to(device),
                                 do_sample=False, max_new_tokens=new, min_new_tokens=new,
                                 pad_token_id=pad_id)
        sync(device)
        elapsed += time.perf_counter() - start
        tokens += sum(n for _, n in batch)
        generated += [row[width : width + n] for row, (_, n) in zip(out.tolist(), batch,
                                                                      strict=True)]
    return elapsed, tokens, generated


def build_transformers_model(args, dtype: torch.dtype):
    """transformers' model: the checkpoint, or random weights of the named shape in
    transformers' own class for its `model_type` (Llama, Qwen3's q/k norms, Qwen3-MoE's and
    gpt-oss's experts), built straight in `dtype` on the device (at 30B parameters a
    float32 copy first would not fit beside the bfloat16 one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corral.engine.model_files import resolve_model_dir
    from corral.engine.model_loader import load_config

    model_dir = resolve_model_dir(args.model, need_config=args.shape is None)
    if args.shape is None and args.load_format == "auto":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        return model.to(args.device).eval()
    vocab = len(AutoTokenizer.from_pretrained(model_dir))
    config = load_config(model_dir, args.shape, vocab)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def greedy_agreement(theirs: list[list[int]], ours: list[list[int]]) -> str:
    """How many requests got the same tokens from both systems, first token and all."""
    first = sum(a[:1] == b[:1] for a, b in zip(theirs, ours, strict=True))
    whole = sum(a == b for a, b in zip(theirs, ours, strict=True))
    return (f"same greedy tokens as transformers' static batches: first token {first}/"
            f"{len(theirs)} requests, all tokens {whole}/{len(theirs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default=None, help="named shape for dummy weights, e.g. llama3-8b")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=[32, 512])
    ap.add_argument("--output-len", type=int, nargs=2, default=[16, 256])
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--hf-requests", type=int, default=None,
                    help="run transformers' static batches on the first N requests only")
    ap.add_argument("--single-requests", type=int, default=4)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="both systems' dtype (auto: Corral's default for the device: bfloat16 on "
                         "GPUs and on CPUs with native bfloat16, else float32)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--tensor-parallel-size", type=int, default=1,
                    help="split Corral's model over this many GPUs")
    ap.add_argument("--structured", action="store_true",
                    help="also run every request constrained by a JSON schema")
    args = ap.parse_args()

    if args.dtype == "auto":  # Corral's own choice for the device, for both systems
        from corral.engine.model_runner import pick_device, pick_dtype

        picked = pick_dtype("auto", pick_device(args.device))
        args.dtype = str(picked).removeprefix("torch.")
    dtype = getattr(torch, args.dtype)
    from transformers import AutoTokenizer

    from corral.engine.model_files import resolve_model_dir

    model_dir = resolve_model_dir(args.model, need_config=args.shape is None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    workload = make_workload(args, len(tokenizer))
    rows = []
    dummy_state = None
    hf_tokens: list[list[int]] = []
    if not args.skip_transformers:
        # transformers runs first and alone on the device; with dummy weights, Corral then
        # loads exactly the weights transformers used.
        hf = build_transformers_model(args, dtype)
        hf_work = workload[: args.hf_requests] if args.hf_requests else workload
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        t, n, hf_tokens = run_transformers(hf, hf_work, args.hf_batch_size, pad, args.device)
        rows.append((f"transformers, static batches of {args.hf_batch_size}", len(hf_work), n, t))
        single = workload[: args.single_requests]
        t, n, _ = run_transformers(hf, single, 1, pad, args.device)
        rows.append(("transformers, one request at a time", len(single), n, t))
        if args.load_format == "dummy":  # in transformers' names and in-memory layout
            dummy_state = {k: v.to("cpu") for k, v in hf.state_dict().items()}
        del hf
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    llm = LLM(args.model, device=args.device, dtype=args.dtype, shape=args.shape,
              load_format=args.load_format,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
              max_model_len=args.prompt_len[1] + args.output_len[1] + 16,
              enable_prefix_caching=False, tensor_parallel_size=args.tensor_parallel_size)
    if dummy_state is not None:
        from corral.engine.model_loader import load_named_tensors

        load_named_tensors(llm.engine.runner.model, dummy_state.items())
        del dummy_state
    t, n, corral_tokens = run_corral(llm, workload, args.device)
    rows.append(("corral", len(workload), n, t))
    structured = None
    if args.structured:
        ts, lengths = run_corral_structured(llm, workload, args.device)
        masks = sorted(llm.engine.grammar_step.stats.mask_fill_seconds)
        # Constrained outputs stop where their JSON ends; the fair baseline is the same
        # requests unconstrained with exactly those output lengths.
        matched = [(p, n) for (p, _), n in zip(workload, lengths, strict=True)]
        tm, nm, _ = run_corral(llm, matched, args.device)
        structured = (sum(lengths), ts, masks, nm, tm)

    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else f"CPU ({torch.get_num_threads()} threads)")
    print(f"\nworkload: {args.num_requests} requests, prompt {args.prompt_len[0]}-"
          f"{args.prompt_len[1]} tokens, output {args.output_len[0]}-{args.output_len[1]} tokens,"
          f" EOS ignored; model {llm.engine.model_name if args.shape is None else args.shape}, "
          f"{args.dtype}; {device_name}")
    print(f"{'system':<40} {'requests':>8} {'out tokens':>10} {'seconds':>9} {'tok/s':>9}")
    for name, reqs, n, t in rows:
        print(f"{name:<40} {reqs:>8} {n:>10} {t:>9.2f} {n / t:>9.1f}")
    corral_rate = rows[-1][2] / rows[-1][3]
    for name, _, n, t in rows[:-1]:
        print(f"corral / {name}: {corral_rate / (n / t):.2f}x")
    if not args.skip_transformers:
        print(greedy_agreement(hf_tokens, corral_tokens[: len(hf_tokens)]))
    if structured is not None:
        ns, ts, masks, nm, tm = structured
        print(f"{'corral, JSON-schema constrained':<40} {len(workload):>8} {ns:>10} "
              f"{ts:>9.2f} {ns / ts:>9.1f}")
        print(f"{'corral, same output lengths, free':<40} {len(workload):>8} {nm:>10} "
              f"{tm:>9.2f} {nm / tm:>9.1f}")
        print(f"structured / unconstrained tokens/s (same lengths): {(ns / ts) / (nm / tm):.2f}x")
        if masks:
            p50, p99 = masks[len(masks) // 2], masks[int(len(masks) * 0.99)]
            print(f"mask fill per sequence per step: median {p50 * 1e6:.1f} us, "
                  f"p99 {p99 * 1e6:.1f} us")


if __name__ == "__main__":
    main()
