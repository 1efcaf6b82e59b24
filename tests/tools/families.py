"""The model families' real tokenizers and tiny random-weight checkpoints built on them.

Files are read in place from `../shared/model-families/<family>/` (the `model_families_dir`
fixture skips, saying why, where they are absent); the gzipped tokenizer is unpacked into a
temporary folder beside a copy of the tokenizer config.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

# Corral's name of each family -> (folder, chat template file or None for the config's).
FAMILIES = {
    "qwen3": ("qwen3", None),
    "qwen3_coder": ("qwen3", "chat_template.qwen3-coder.jinja"),
    "llama3.1": ("llama3.1", None),
    "mistral": ("mistral-7b-v0.3", None),
    "gpt-oss": ("gpt-oss", None),
}
# The format each family's files must be detected as.
EXPECTED_FORMATS = {"qwen3": "hermes", "qwen3_coder": "qwen3_coder",
                    "llama3.1": "llama3_json", "mistral": "mistral", "gpt-oss": "harmony"}
# transformers classes of the architectures Corral runs.
ARCHITECTURES = {"qwen3": "qwen3", "qwen3_coder": "qwen3", "llama3.1": "llama",
                 "mistral": "mistral", "gpt-oss": "gpt_oss"}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6)


def unpack_tokenizer(families_dir: Path, family: str, dest: Path) -> Path:
    """Write `family`'s tokenizer files (and template) into `dest`; returns `dest`."""
    folder, template = FAMILIES[family]
    src = families_dir / folder
    dest.mkdir(parents=True, exist_ok=True)
    with gzip.open(src / "tokenizer.json.gz") as fin, open(dest / "tokenizer.json", "wb") as out:
        shutil.copyfileobj(fin, out)
    shutil.copy(src / "tokenizer_config.json", dest / "tokenizer_config.json")
    if template is not None:
        shutil.copy(src / template, dest / "chat_template.jinja")
    return dest


def load_tokenizer(path: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(path)


def build_tiny_checkpoint(path: Path, tokenizer, family: str) -> None:
    """Random weights of `family`'s architecture (tiny) beside its tokenizer in `path`."""
    import torch
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "gpt_oss": (transformers.GptOssConfig, transformers.GptOssForCausalLM),
    }[ARCHITECTURES[family]]
    extra = {"head_dim": 16} if ARCHITECTURES[family] in ("qwen3", "gpt_oss") else {}
    if ARCHITECTURES[family] == "gpt_oss":  # 4 experts, 2 per token, a window of 8
        extra |= dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                      layer_types=["sliding_attention", "full_attention"])
    config = config_cls(vocab_size=len(tokenizer), tie_word_embeddings=True,
                        eos_token_id=tokenizer.eos_token_id, **TINY, **extra)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(path)
