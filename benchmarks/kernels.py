"""Kernel micro-benchmarks on the GPU, each beside its baseline in the same run.

- Paged decode attention: achieved bandwidth (K/V bytes read per step over time) against
  the card's device-to-device copy bandwidth, measured here; the torch reference's time too.
- Prefill attention: TFLOP/s of the paged Triton kernel against
  `torch.nn.functional.scaled_dot_product_attention` on contiguous tensors of the same sizes.
- The KV-cache write, token-bitmask application, RMSNorm(+residual) and rotary embedding
  against their torch references.

Shapes are Llama-3-8B's attention (32 query heads, 8 KV heads, head_dim 128, bf16), block
size 16. `--sweep` also times alternative tile settings. Usage:
    python benchmarks/kernels.py [--sweep] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from corral.kernels import paged_decode_attention as decode_mod
from corral.kernels import paged_prefill_attention as prefill_mod
from corral.kernels.rms_norm import rms_norm_torch, rms_norm_triton
from corral.kernels.rotary_embedding import rotary_embedding_torch, rotary_embedding_triton
from corral.kernels.token_bitmask import apply_token_bitmask_torch, apply_token_bitmask_triton
from corral.kernels.write_kv_cache import write_kv_cache_torch, write_kv_cache_triton

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16
L2_FLUSH_BYTES = 256e6  # input sets rotate until they span this, so reruns miss in L2


def time_events(fn: Callable[[], object], reps: int = 30, warmup: int = 5) -> float:
    """Median seconds of one call, device events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_graph(fns: list[Callable[[], object]], loops: int = 10, reps: int = 20) -> float:
    """Median seconds of one call, calls replayed from a CUDA graph (no launch gaps).

    The graph runs the `fns` (one per input set) in turn, `loops` times over.
    """
    for fn in fns:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(loops):
            for fn in fns:
                fn()
    graph.replay()
    torch.cuda.synchronize()
    return time_events(graph.replay, reps=reps, warmup=2) / (loops * len(fns))


def copy_bandwidth() -> float:
    """Bytes read plus written per second by a 1 GiB device-to-device copy."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    seconds = time_events(lambda: dst.copy_(src), reps=20)
    return 2 * src.numel() / seconds


def make_decode_inputs(batch: int, context: int, gen: torch.Generator) -> dict:
    blocks_per_seq = math.ceil(context / BLOCK_SIZE)
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, device="cuda", dtype=DTYPE)
    v_cache = torch.randn(shape, device="cuda", dtype=DTYPE)
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32).cuda()
    return {
        "query": torch.randn(batch, NUM_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE),
        "k_cache": k_cache,
        "v_cache": v_cache,
        "block_tables": perm.view(batch, blocks_per_seq),
        "seq_lens": torch.full((batch,), context, dtype=torch.int32, device="cuda"),
        "max_seq_len": context,
        "scale": HEAD_DIM**-0.5,
    }


def bench_decode(copy_bw: float, sweep: bool, rows: list[dict]) -> None:
    gen = torch.Generator().manual_seed(0)
    default = dict(decode_mod.DECODE_CONFIG)
    configs = [default]
    if sweep:
        for min_partition, per_sm in [(64, 1), (64, 3), (64, 4), (64, 8), (256, 2)]:
            configs.append({**default, "min_partition": min_partition,
                            "programs_per_sm": per_sm})
        for block_n, warps, stages in [(32, 4, 3), (128, 4, 3), (64, 8, 3), (64, 4, 4),
                                       (64, 2, 3), (128, 8, 2)]:
            configs.append({**default, "block_n": block_n, "num_warps": warps,
                            "num_stages": stages})
    print("\n== paged decode attention (bf16, 32 q / 8 kv heads, d=128, block 16) ==")
    print(f"{'batch x ctx':>12} {'config':>24} {'KV MB':>8} {'us':>8} {'GB/s':>8} "
          f"{'of copy':>8} {'torch us':>9} {'rel err':>8}")
    for batch, context in [(1, 1024), (32, 1024), (128, 1024), (256, 1024), (32, 4096)]:
        _decode_case(batch, context, configs, copy_bw, gen, rows)
        torch.cuda.empty_cache()
    decode_mod.DECODE_CONFIG.update(default)


def _decode_case(
    batch: int, context: int, configs: list[dict], copy_bw: float, gen: torch.Generator,
    rows: list[dict],
) -> None:
    kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize
    io_bytes = kv_bytes + 2 * batch * NUM_HEADS * HEAD_DIM * DTYPE.itemsize
    num_sets = min(64, max(2, math.ceil(L2_FLUSH_BYTES / kv_bytes)))
    sets = [make_decode_inputs(batch, context, gen) for _ in range(num_sets)]
    ref = decode_mod.paged_decode_attention_torch(**sets[0])
    torch_s = time_events(lambda: decode_mod.paged_decode_attention_torch(**sets[0]), reps=10)
    for config in configs:
        decode_mod.DECODE_CONFIG.update(config)
        outs = [torch.empty_like(s["query"]) for s in sets]
        fns = [lambda s=s, o=o: decode_mod.paged_decode_attention_triton(**s, out=o)
               for s, o in zip(sets, outs, strict=True)]
        seconds = time_graph(fns)
        err = float((outs[0].float() - ref.float()).norm() / ref.float().norm())
        bw = io_bytes / seconds
        tag = (f"{config['block_n']}/{config['num_warps']}w/{config['num_stages']}s"
               f" p{config['min_partition']}x{config['programs_per_sm']}")
        print(f"{batch:>5} x {context:<5} {tag:>24} {kv_bytes / 1e6:8.1f} "
              f"{seconds * 1e6:8.1f} {bw / 1e9:8.0f} {bw / copy_bw:8.2f} "
              f"{torch_s * 1e6:9.1f} {err:8.1e}")
        rows.append({"op": "decode", "batch": batch, "context": context, "config": tag,
                     "seconds": seconds, "bytes": io_bytes, "bandwidth": bw,
                     "copy_fraction": bw / copy_bw, "torch_seconds": torch_s,
                     "rel_error": err})


def make_prefill_inputs(
    num_seqs: int, context: int, chunk: int, head_dim: int, gen: torch.Generator
) -> dict:
    """`num_seqs` sequences of `context` tokens whose last `chunk` are this step's queries."""
    blocks_per_seq = math.ceil(context / BLOCK_SIZE)
    num_blocks = num_seqs * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, head_dim)
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32).cuda()
    return {
        "query": torch.randn(num_seqs * chunk, NUM_HEADS, head_dim, device="cuda", dtype=DTYPE),
        "k_cache": torch.randn(shape, device="cuda", dtype=DTYPE),
        "v_cache": torch.randn(shape, device="cuda", dtype=DTYPE),
        "query_start_loc": torch.arange(0, num_seqs + 1, dtype=torch.int32, device="cuda")
        * chunk,
        "seq_lens": torch.full((num_seqs,), context, dtype=torch.int32, device="cuda"),
        "block_tables": perm.view(num_seqs, blocks_per_seq),
        "max_query_len": chunk,
        "scale": head_dim**-0.5,
    }


def causal_flops(num_seqs: int, context: int, chunk: int, head_dim: int) -> float:
    """Matmul FLOPs of causal attention for `chunk` queries at the end of `context` keys."""
    visible = chunk * (context - chunk) + chunk * (chunk + 1) / 2  # (query, key) pairs
    return 4.0 * num_seqs * NUM_HEADS * head_dim * visible


def bench_prefill(sweep: bool, rows: list[dict]) -> None:
    gen = torch.Generator().manual_seed(1)
    print("\n== prefill attention (bf16, 32 q / 8 kv heads, causal) ==")
    print(f"{'seqs x ctx (chunk), d':>24} {'kernel':>26} {'ms':>8} {'TFLOP/s':>8} "
          f"{'rel err':>8}")
    cases = [(4, 2048, 2048, 128), (1, 8192, 8192, 128), (4, 4096, 512, 128)]
    if sweep:
        cases.append((4, 2048, 2048, 64))
    for num_seqs, context, chunk, head_dim in cases:
        configs = [prefill_mod.prefill_config(DTYPE, head_dim)]
        if sweep:
            configs += [c for c in [(128, 64, 8, 3), (128, 128, 4, 3), (256, 64, 8, 2),
                                    (256, 64, 16, 2), (256, 128, 16, 2), (256, 32, 8, 3)]
                        if c not in configs]
        _prefill_case(num_seqs, context, chunk, head_dim, configs, gen, rows)
        torch.cuda.empty_cache()


def _prefill_case(
    num_seqs: int, context: int, chunk: int, head_dim: int,
    configs: list[tuple[int, int, int, int]], gen: torch.Generator, rows: list[dict],
) -> None:
    inputs = make_prefill_inputs(num_seqs, context, chunk, head_dim, gen)
    flops = causal_flops(num_seqs, context, chunk, head_dim)
    ref = prefill_mod.paged_prefill_attention_torch(**inputs)
    label = f"{num_seqs} x {context} ({chunk}), {head_dim}"

    def report(name: str, seconds: float, err: float | None) -> None:
        err_text = f"{err:8.1e}" if err is not None else ""
        print(f"{label:>24} {name:>26} {seconds * 1e3:8.3f} {flops / seconds / 1e12:8.1f} "
              f"{err_text}")
        rows.append({"op": "prefill", "shape": label, "kernel": name, "seconds": seconds,
                     "tflops": flops / seconds / 1e12, "rel_error": err})

    for config in configs:
        out = torch.empty_like(inputs["query"])
        seconds = time_events(
            lambda c=config, o=out: prefill_mod.paged_prefill_attention_triton(
                **inputs, out=o, config=c
            )
        )
        err = float((out.float() - ref.float()).norm() / ref.float().norm())
        report("triton paged " + "/".join(map(str, config)), seconds, err)
    if chunk != context:
        return
    # Baseline: SDPA on contiguous [B, H, S, D] tensors of the same sizes.
    q = inputs["query"].view(num_seqs, chunk, NUM_HEADS, head_dim).transpose(1, 2).contiguous()
    k = torch.randn(num_seqs, NUM_KV_HEADS, context, head_dim, device="cuda", dtype=DTYPE)
    v = torch.randn_like(k)
    group = NUM_HEADS // NUM_KV_HEADS
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

    def sdpa(backend: SDPBackend | None, gqa: bool) -> Callable[[], object]:
        def run() -> object:
            keys, values = (k, v) if gqa else (k_rep, v_rep)
            if backend is None:
                return F.scaled_dot_product_attention(
                    q, keys, values, is_causal=True, enable_gqa=gqa)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(
                    q, keys, values, is_causal=True, enable_gqa=gqa)
        return run

    baselines = {
        "sdpa default, gqa": sdpa(None, True),
        "sdpa default, kv repeated": sdpa(None, False),
        "sdpa flash, kv repeated": sdpa(SDPBackend.FLASH_ATTENTION, False),
        "sdpa cudnn, kv repeated": sdpa(SDPBackend.CUDNN_ATTENTION, False),
    }
    for name, fn in baselines.items():
        try:
            report(name, time_events(fn), None)
        except RuntimeError as exc:  # a backend refusing the shape
            print(f"{label:>24} {name:>26} failed: {exc}")


def bench_small_ops(copy_bw: float, rows: list[dict]) -> None:
    print("\n== KV-cache write and token bitmask ==")
    print(f"{'op':>36} {'triton us':>10} {'torch us':>10} {'GB/s':>8} {'of copy':>8}")
    num_tokens = 8192
    key = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    value = torch.randn_like(key)
    num_blocks = 2 * num_tokens // BLOCK_SIZE
    k_cache = torch.empty(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device="cuda",
                          dtype=DTYPE)
    v_cache = torch.empty_like(k_cache)
    slots = torch.randperm(num_blocks * BLOCK_SIZE, device="cuda")[:num_tokens]
    args = (key, value, k_cache, v_cache, slots)
    tri = time_graph([lambda: write_kv_cache_triton(*args)])
    ref = time_events(lambda: write_kv_cache_torch(*args))
    moved = 4 * key.numel() * key.element_size()
    print(f"{'write_kv_cache 8192 tok x 8 x 128':>36} {tri * 1e6:10.1f} {ref * 1e6:10.1f} "
          f"{moved / tri / 1e9:8.0f} {moved / tri / copy_bw:8.2f}")
    rows.append({"op": "write_kv_cache", "seconds": tri, "torch_seconds": ref})
    _fused_layer_ops(copy_bw, rows)
    print(f"{'op':>36} {'triton us':>10} {'torch us':>10} {'floor us':>9}")
    for vocab in (49152, 128256):
        for allowed_fraction in (0.01, 0.5, 0.99):
            _bitmask_case(vocab, allowed_fraction, copy_bw, rows)


def _fused_layer_ops(copy_bw: float, rows: list[dict]) -> None:
    """RMSNorm + residual (Llama-3-8B hidden 4096) and rotary on q/k views of a fused QKV."""
    print(f"{'op':>36} {'triton us':>10} {'torch us':>10} {'floor us':>9}")
    q_size, kv_size = NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM
    cos = torch.randn(8192, HEAD_DIM // 2, device="cuda")
    sin = torch.randn_like(cos)
    weight = torch.randn(4096, device="cuda", dtype=DTYPE)
    for num_tokens in (256, 8192):
        x = torch.randn(num_tokens, 4096, device="cuda", dtype=DTYPE)
        residual = torch.randn_like(x)
        tri = time_graph([lambda x=x, r=residual: rms_norm_triton(x, weight, 1e-5, r)])
        ref = time_graph([lambda x=x, r=residual: rms_norm_torch(x, weight, 1e-5, r)])
        floor = 4 * x.numel() * x.element_size() / copy_bw  # read x, r; write out, sum
        name = f"rms_norm+residual {num_tokens} x 4096"
        print(f"{name:>36} {tri * 1e6:10.1f} {ref * 1e6:10.1f} {floor * 1e6:9.1f}")
        rows.append({"op": "rms_norm", "tokens": num_tokens, "seconds": tri,
                     "torch_seconds": ref, "floor_seconds": floor})
        qkv = torch.randn(num_tokens, q_size + 2 * kv_size, device="cuda", dtype=DTYPE)
        q = qkv[:, :q_size].view(num_tokens, NUM_HEADS, HEAD_DIM)
        k = qkv[:, q_size : q_size + kv_size].view(num_tokens, NUM_KV_HEADS, HEAD_DIM)
        positions = torch.randint(0, 8192, (num_tokens,), device="cuda")
        tri = time_graph([lambda p=positions, q=q, k=k: rotary_embedding_triton(p, q, k, cos, sin)])
        ref = time_graph([lambda p=positions, q=q, k=k: rotary_embedding_torch(p, q, k, cos, sin)])
        floor = 2 * (q_size + kv_size) * num_tokens * DTYPE.itemsize / copy_bw
        name = f"rotary q+k {num_tokens} tok, 32+8 heads"
        print(f"{name:>36} {tri * 1e6:10.1f} {ref * 1e6:10.1f} {floor * 1e6:9.1f}")
        rows.append({"op": "rotary", "tokens": num_tokens, "seconds": tri,
                     "torch_seconds": ref, "floor_seconds": floor})


def _bitmask_case(vocab: int, allowed_fraction: float, copy_bw: float, rows: list[dict]) -> None:
    """256 constrained rows; the floor writes the disallowed logits and reads the mask."""
    logits = torch.randn(256, vocab, device="cuda")
    words = (vocab + 31) // 32
    allowed = torch.rand(256, words, 32, device="cuda") < allowed_fraction
    shifts = torch.arange(32, device="cuda", dtype=torch.int64)
    bitmask = ((allowed.long() << shifts).sum(-1) & 0xFFFFFFFF).to(torch.int64)
    bitmask = torch.where(bitmask >= 2**31, bitmask - 2**32, bitmask).to(torch.int32)
    tri = time_graph([lambda: apply_token_bitmask_triton(logits, bitmask)])
    ref = time_events(lambda: apply_token_bitmask_torch(logits, bitmask))
    floor = ((1 - allowed_fraction) * logits.numel() * 4 + bitmask.numel() * 4) / copy_bw
    name = f"bitmask 256 x {vocab} fp32, {allowed_fraction:.0%} ok"
    print(f"{name:>36} {tri * 1e6:10.1f} {ref * 1e6:10.1f} {floor * 1e6:9.1f}")
    rows.append({"op": "token_bitmask", "vocab": vocab, "allowed": allowed_fraction,
                 "seconds": tri, "torch_seconds": ref, "floor_seconds": floor})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time other tile settings")
    parser.add_argument("--json", help="write all measurements to this file")
    parser.add_argument("--only", choices=["decode", "prefill", "small"], action="append")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU")
    import triton

    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, "
          f"triton {triton.__version__}")
    copy_bw = copy_bandwidth()
    print(f"device-to-device copy bandwidth (read + write): {copy_bw / 1e9:.0f} GB/s")
    rows: list[dict] = [{"op": "copy", "bandwidth": copy_bw, "device": props.name}]
    only = set(args.only or ["decode", "prefill", "small"])
    if "decode" in only:
        bench_decode(copy_bw, args.sweep, rows)
    if "prefill" in only:
        bench_prefill(args.sweep, rows)
    if "small" in only:
        bench_small_ops(copy_bw, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
