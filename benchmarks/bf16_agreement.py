"""bfloat16 agreement measured against a float32 truth: Corral and transformers side by side.

Comparing two bfloat16 systems with each other cannot say which one rounds worse. This
script builds transformers' own class for a shape with seeded random weights in float32,
takes each prompt's next-token logits from it (one prompt at a time, no padding: the
truth), then casts that same model to bfloat16 and runs the prompts again, and finally
loads exactly those bfloat16 weights into Corral and asks it for the first greedy token.
For each bfloat16 system it prints how many first tokens equal the float32 argmax, the
error of its logits against float32, and how close the disagreements were in float32
(the gap between the float32 top token and the one the system picked).

    python benchmarks/bf16_agreement.py --device cuda --shape gpt-oss-20b --num-prompts 16
    python benchmarks/bf16_agreement.py --shape gpt-oss-tiny --num-prompts 16   # CPU
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from corral.engine import LLM, SamplingParams  # noqa: E402


def prompts_for(args, vocab_size: int) -> list[list[int]]:
    rng = random.Random(args.seed)
    return [[rng.randrange(100, vocab_size - 100) for _ in range(rng.randint(*args.prompt_len))]
            for _ in range(args.num_prompts)]


def last_logits(model, prompts: list[list[int]], device: str) -> list[torch.Tensor]:
    """Each prompt's next-token logits, one prompt per forward (float32 on the CPU)."""
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            out.append(model(ids).logits[0, -1].float().cpu())
    return out


def corral_first_tokens(llm: LLM, prompts: list[list[int]]) -> list[int]:
    """Corral's first greedy token per prompt."""
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    return [o.outputs[0].token_ids[0] for o in llm.generate(prompts, [params] * len(prompts))]


def report(name: str, truth: list[torch.Tensor], picks: list[int],
           logits: list[torch.Tensor] | None) -> None:
    same = sum(int(t.argmax()) == p for t, p in zip(truth, picks, strict=True))
    gaps = [float(t.max() - t[p]) for t, p in zip(truth, picks, strict=True)
            if int(t.argmax()) != p]
    line = f"{name:<28} first token = float32 argmax: {same}/{len(truth)}"
    if gaps:
        line += (f"; float32 gap of the ones picked instead: median {statistics.median(gaps):.4f},"
                 f" max {max(gaps):.4f}")
    print(line)
    if logits is not None:
        errors = [float((a - t).abs().max()) for a, t in zip(logits, truth, strict=True)]
        print(f"{'':<28} max |logit - float32| per prompt: median "
              f"{statistics.median(errors):.4f}, max {max(errors):.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="tokenizer folder (default: embedded model)")
    ap.add_argument("--shape", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=[128, 512])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corral.engine.model_files import resolve_model_dir
    from corral.engine.model_loader import load_config, load_named_tensors

    model_dir = resolve_model_dir(args.model, need_config=False)
    vocab = len(AutoTokenizer.from_pretrained(model_dir))
    config = load_config(model_dir, args.shape, vocab)
    prompts = prompts_for(args, config.vocab_size)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    truth = last_logits(hf, prompts, args.device)
    margins = []
    for t in truth:
        top2 = t.topk(2).values
        margins.append(float(top2[0] - top2[1]))
    print(f"shape {args.shape}, {len(prompts)} prompts of {args.prompt_len[0]}-"
          f"{args.prompt_len[1]} tokens; float32 top-1 minus top-2 logit: median "
          f"{statistics.median(margins):.4f}, min {min(margins):.4f}")
    hf = hf.to(torch.bfloat16)
    hf_bf16 = last_logits(hf, prompts, args.device)
    report("transformers bfloat16", truth, [int(t.argmax()) for t in hf_bf16], hf_bf16)
    state = {k: v.to("cpu") for k, v in hf.state_dict().items()}
    del hf
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    llm = LLM(args.model, device=args.device, dtype="bfloat16", shape=args.shape,
              load_format="dummy", max_model_len=args.prompt_len[1] + 16,
              enable_prefix_caching=False)
    load_named_tensors(llm.engine.runner.model, state.items())
    del state
    picks = corral_first_tokens(llm, prompts)
    report("corral bfloat16", truth, picks, None)
    both = sum(int(h.argmax()) == p for h, p in zip(hf_bf16, picks, strict=True))
    print(f"corral bfloat16 = transformers bfloat16 (first token): {both}/{len(prompts)}")


if __name__ == "__main__":
    main()
