"""Greedy parity with transformers on any device and dtype: how many tokens match.

Runs the engine-test chat prompts (one over 1,000 tokens) through transformers'
`generate()` and through Corral, greedy, EOS suppressed, and prints per prompt the number
of leading new tokens that agree. In float32 every token should agree; in bfloat16 the two
implementations round differently and drift apart after a while.

    python benchmarks/parity.py --device cuda --dtype bfloat16 --attention-backend triton
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.engine import LLM, SamplingParams  # noqa: E402
from corral.engine.model_files import resolve_model_dir  # noqa: E402
from tests.engine.prompts import CHATS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--attention-backend", default="torch", choices=["torch", "triton"])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--enforce-eager", action="store_true")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    llm = LLM(args.model, device=args.device, dtype=args.dtype, max_model_len=4096,
              max_num_batched_tokens=512, attention_backend=args.attention_backend,
              enforce_eager=args.enforce_eager)
    tok = llm.tokenizer
    prompts = [tok.encode(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True))
               for c in CHATS]
    params = SamplingParams(temperature=0, max_tokens=args.new_tokens,
                            min_tokens=args.new_tokens)
    ours = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    hf = AutoModelForCausalLM.from_pretrained(resolve_model_dir(args.model), dtype=dtype)
    hf = hf.to(args.device).eval()
    total = 0
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\ndevice {args.device} ({card}), {args.dtype}, attention {args.attention_backend}")
    for prompt, mine in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt], device=args.device)
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                              pad_token_id=tok.eos_token_id)
        theirs = out[0, len(prompt):].tolist()
        pairs = enumerate(zip(mine, theirs, strict=True))
        agree = next((i for i, (a, b) in pairs if a != b), len(mine))
        total += agree
        print(f"prompt of {len(prompt):>5} tokens: {agree:>3}/{args.new_tokens} tokens agree")
    print(f"all prompts: {total}/{args.new_tokens * len(prompts)} tokens agree")


if __name__ == "__main__":
    main()
