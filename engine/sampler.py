"""The sampler: logits of the sampling rows in, one token per row out.

Order of operations per row: logit bias, min-tokens (no EOS / stop ids yet), penalties,
logits processors (grammar bitmasks in one batched op, then user callables), then greedy
argmax or temperature / top-k / top-p / min-p sampling. Each feature is only computed when
some row of the batch uses it. Log-probabilities are those of the model's raw logits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch

from corral.kernels.token_bitmask import apply_token_bitmask_

from .logits_process import allocate_bitmask
from .outputs import TokenLogprob
from .sequence import Sequence


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


@dataclass
class LaunchedSample:
    """Tokens sampled on the device whose values the host has not read yet."""

    token_ids: torch.Tensor  # int64 [rows], on the device
    host_token_ids: torch.Tensor  # int64 [rows], pinned on a GPU; valid after `ready`
    ready: torch.cuda.Event | None  # recorded after the device-to-host copy (GPU only)
    raw_logprobs: torch.Tensor | None  # [rows, vocab] when some row asked for logprobs
    seqs: list[Sequence]


@dataclass
class SamplerStats:
    """Time spent filling grammar masks (seconds per filled row), drained by the engine."""

    mask_fill_seconds: list[float] = field(default_factory=list)


class Sampler:
    """Samples one token per row; rows follow the order of `seqs`."""

    def __init__(self, vocab_size: int, eos_token_ids: Seq[int], max_rows: int,
                 device: torch.device, seed: int = 0):
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.device = device
        self.bitmask = allocate_bitmask(max_rows, vocab_size)  # [max_rows, ceil(vocab/32)]
        if device.type == "cuda":
            self.bitmask = self.bitmask.pin_memory()
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.stats = SamplerStats()

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits: float32 [len(seqs), vocab] (modified in place)."""
        return self.read(self.launch(logits, seqs))

    @torch.inference_mode()
    def launch(self, logits: torch.Tensor, seqs: list[Sequence]) -> LaunchedSample:
        """Queue the sampling of one token per row; `read` returns them. On a GPU nothing
        here waits for the device (user logits processors excepted)."""
        # Grammar masks first: pure CPU work that overlaps the GPU's forward pass.
        masked_rows = self._fill_masks(seqs)
        raw_logprobs = None
        if any(seq.params.logprobs is not None for seq in seqs):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        self._apply_logit_bias(logits, seqs)
        self._apply_min_tokens(logits, seqs)
        self._apply_penalties(logits, seqs)
        self._apply_processors(logits, seqs, masked_rows)
        token_ids = self._sample(logits, seqs)
        ready = None
        if token_ids.device.type == "cuda":
            host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            host.copy_(token_ids, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host = token_ids
        return LaunchedSample(token_ids, host, ready, raw_logprobs, seqs)

    def read(self, launched: LaunchedSample) -> SamplerOutput:
        """Wait for a launched sample's tokens (the only device sync of sampling)."""
        if launched.ready is not None:
            launched.ready.synchronize()
        token_list = launched.host_token_ids.tolist()
        logprobs = self._gather_logprobs(launched.raw_logprobs, launched.token_ids,
                                         launched.seqs)
        return SamplerOutput(token_list, logprobs)

    # ---- logits processing -----------------------------------------------------------------

    def _apply_logit_bias(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        for row, seq in enumerate(seqs):
            bias = seq.params.logit_bias
            if bias:
                ids = torch.tensor([t for t in bias if t < self.vocab_size], device=logits.device)
                vals = torch.tensor([bias[t] for t in bias if t < self.vocab_size],
                                    device=logits.device, dtype=logits.dtype)
                logits[row].index_add_(0, ids, vals)

    def _apply_min_tokens(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        for row, seq in enumerate(seqs):
            if seq.num_output_tokens < seq.params.min_tokens:
                banned = self.eos_token_ids + seq.params.stop_token_ids
                logits[row, [t for t in banned if t < self.vocab_size]] = float("-inf")

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        rows = [
            r for r, s in enumerate(seqs)
            if s.params.presence_penalty or s.params.frequency_penalty
            or s.params.repetition_penalty != 1.0
        ]
        if not rows:
            return
        for row in rows:
            p = seqs[row].params
            seq = seqs[row]
            out_ids = torch.tensor(seq.output_token_ids, dtype=torch.long, device=logits.device)
            counts = torch.zeros(self.vocab_size, device=logits.device)
            counts.index_add_(0, out_ids, torch.ones_like(out_ids, dtype=counts.dtype))
            row_logits = logits[row]
            if p.repetition_penalty != 1.0:
                seen = counts > 0
                seen[torch.tensor(seq.token_ids[: seq.num_prompt_tokens], dtype=torch.long,
                                  device=logits.device)] = True
                penalised = torch.where(row_logits > 0, row_logits / p.repetition_penalty,
                                        row_logits * p.repetition_penalty)
                row_logits = torch.where(seen, penalised, row_logits)
            row_logits = row_logits - p.frequency_penalty * counts
            row_logits = row_logits - p.presence_penalty * (counts > 0).float()
            logits[row] = row_logits

    def _fill_masks(self, seqs: list[Sequence]) -> list[int]:
        """Fill the bitmask rows of grammar-constrained sequences; returns their rows."""
        masked = [(r, s.matcher) for r, s in enumerate(seqs) if s.matcher is not None]
        if masked:
            start = time.perf_counter()
            _fill_bitmasks([m for _, m in masked], self.bitmask[: len(masked)])
            elapsed = time.perf_counter() - start
            self.stats.mask_fill_seconds.append(elapsed / len(masked))
        return [r for r, _ in masked]

    def _apply_processors(self, logits: torch.Tensor, seqs: list[Sequence],
                          masked_rows: list[int]) -> None:
        if masked_rows:
            bitmask = self.bitmask[: len(masked_rows)]
            rows = torch.tensor(masked_rows, dtype=torch.long)
            apply_token_bitmask_(logits, bitmask.to(logits.device, non_blocking=True),
                                 rows.to(logits.device))
        for row, seq in enumerate(seqs):
            for fn in seq.params.logits_processors:
                logits[row] = fn(seq.output_token_ids, logits[row])

    # ---- sampling ---------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        greedy = logits.argmax(dim=-1)
        random_rows = [r for r, s in enumerate(seqs) if not s.params.is_greedy]
        if not random_rows:
            return greedy
        index = torch.tensor(random_rows, device=logits.device)
        sub = logits[index]
        params = [seqs[r].params for r in random_rows]
        temps = torch.tensor([p.temperature for p in params], device=logits.device)
        sub = sub / temps.unsqueeze(1)
        sub = _filter_top_k_top_p(sub, params)
        probs = torch.softmax(sub, dim=-1)
        min_ps = [p.min_p for p in params]
        if any(min_ps):
            min_p = torch.tensor(min_ps, device=logits.device).unsqueeze(1)
            probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0)
        noise = torch.empty_like(probs)
        for i, r in enumerate(random_rows):
            noise[i].exponential_(generator=seqs[r].generator or self.generator)
        sampled = (probs / noise).argmax(dim=-1)
        greedy[index] = sampled
        return greedy

    def _gather_logprobs(self, raw: torch.Tensor | None, token_ids: torch.Tensor,
                         seqs: list[Sequence]) -> list[TokenLogprob | None]:
        out: list[TokenLogprob | None] = [None] * len(seqs)
        if raw is None:
            return out
        for row, seq in enumerate(seqs):
            k = seq.params.logprobs
            if k is None:
                continue
            token = int(token_ids[row])
            top: list[tuple[int, float]] = []
            if k > 0:
                values, ids = raw[row].topk(k)
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
            out[row] = TokenLogprob(token, float(raw[row, token]), top)
        return out


def _filter_top_k_top_p(logits: torch.Tensor, params: list) -> torch.Tensor:
    """Mask tokens outside each row's top-k and top-p nucleus. logits: [R, V]."""
    vocab = logits.shape[-1]
    top_ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    top_ps = [p.top_p for p in params]
    if all(k == vocab for k in top_ks) and all(p >= 1.0 for p in top_ps):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = torch.tensor(top_ks, device=logits.device).unsqueeze(1)
    drop = ranks >= k
    p = torch.tensor(top_ps, device=logits.device).unsqueeze(1)
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    cum_before = probs.cumsum(dim=-1) - probs  # mass of better tokens
    drop |= cum_before >= p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _fill_bitmasks(matchers: list, bitmask: torch.Tensor) -> None:
    """Fill one bitmask row per matcher (the grammar layer fills its rows in parallel)."""
    from corral.grammars import fill_bitmasks

    fill_bitmasks(matchers, bitmask, list(range(len(matchers))))
