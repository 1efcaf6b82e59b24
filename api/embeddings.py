"""Sentence embeddings from a BERT-style encoder (default: the embedded all-MiniLM-L6-v2).

Mean pooling over the attention mask, then L2 normalisation, as sentence-transformers
configures that model. Inputs are sorted by length and run in batches; all model work runs
in a worker thread, one batch at a time, so the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from pathlib import Path

import numpy as np
import torch

from corral.grammars.param_error import ParamError

logger = logging.getLogger(__name__)


class Embedder:
    """Embeds texts or token-id lists into unit vectors of `dimensions` floats."""

    def __init__(self, model: str | Path | None = None, *, batch_size: int = 32,
                 device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        from corral.engine.model_files import (
            DEFAULT_EMBEDDING_MODEL_NAME,
            embedded_embedding_model_dir,
        )

        if model is None or str(model) in ("", DEFAULT_EMBEDDING_MODEL_NAME,
                                           f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL_NAME}"):
            path: str | Path = embedded_embedding_model_dir()
            self.model_name = DEFAULT_EMBEDDING_MODEL_NAME
        else:
            path = Path(model).expanduser() if Path(model).expanduser().exists() else str(model)
            self.model_name = Path(str(model)).name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.dimensions: int = int(self.model.config.hidden_size)
        self.max_tokens: int = int(min(
            getattr(self.model.config, "max_position_embeddings", 512),
            self.tokenizer.model_max_length if self.tokenizer.model_max_length < 1e9 else 512,
        ))
        self._lock = threading.Lock()

    def token_ids(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Each input as the model's token ids, with its special tokens."""
        result = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                ids = self.tokenizer(item, add_special_tokens=True)["input_ids"]
            else:
                vocab = len(self.tokenizer)
                bad = [t for t in item if not 0 <= t < vocab]
                if bad:
                    raise ParamError(f"input.{i}", f"token id {bad[0]} is outside the embedding "
                                     f"model's vocabulary (0..{vocab - 1})")
                ids = self._with_specials(list(item))
            if len(ids) > self.max_tokens:
                raise ParamError(
                    f"input.{i}", f"{len(ids)} tokens, more than the embedding model's limit of "
                    f"{self.max_tokens}")
            result.append(ids)
        return result

    def _with_specials(self, ids: list[int]) -> list[int]:
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return ([cls] if cls is not None else []) + ids + ([sep] if sep is not None else [])

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """`[len(ids), dimensions]` float32 unit vectors, in input order."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dimensions), dtype=np.float32)
        pad = self.tokenizer.pad_token_id or 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                width = max(len(ids[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = 1
                hidden = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=mask.to(self.device)).last_hidden_state
                # hidden: [batch, width, dimensions]; mean over real tokens only
                m = mask.to(hidden.device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[chunk] = pooled.float().cpu().numpy()
        return out

    def embed(self, inputs: list[str] | list[list[int]]) -> tuple[np.ndarray, int]:
        """Vectors for the inputs and the number of tokens they held."""
        ids = self.token_ids(inputs)
        return self.embed_ids(ids), sum(len(x) for x in ids)

    async def embed_async(self, inputs: list[str] | list[list[int]]) -> tuple[np.ndarray, int]:
        return await asyncio.to_thread(self.embed, inputs)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A vector as floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()
