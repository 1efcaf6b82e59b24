"""The sampler: logits of the sampling rows in, one token per row out.

Order of operations per row: logit bias, min-tokens (no EOS / stop ids yet), penalties,
logits processors (grammar bitmasks in one batched op, then user callables), then greedy
argmax or temperature / top-k / top-p / min-p sampling. Each feature is only computed when
some row of the batch uses it. Log-probabilities are those of the model's raw logits.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch

from corral.kernels.token_bitmask import apply_token_bitmask_

from .outputs import TokenLogprob
from .sequence import Sequence


@dataclass
class SampleBatch:
    """What to sample: one logits row per entry of `seqs`.

    A sequence verifying speculative drafts has several consecutive rows; row r of it
    carries in `draft_ids[r]` the draft token its sample is checked against (-1 for the
    last row, which samples the bonus token), and in `output_offsets[r]` how many drafts
    precede its position (min_tokens counts them). `bitmask` holds the grammar masks, filled
    by the caller: its row j applies to logits row `masked_rows[j]`.
    """

    seqs: list[Sequence]
    masked_rows: list[int] = field(default_factory=list)
    bitmask: torch.Tensor | None = None  # int32 [len(masked_rows), ceil(vocab/32)], CPU
    draft_ids: list[int] | None = None
    output_offsets: list[int] | None = None

    @property
    def num_rows(self) -> int:
        return len(self.seqs)


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]
    # With drafts: per row, whether its draft token is accepted (speculative rejection
    # sampling); `token_ids[r]` is then the token to take where it is not.
    accepted: list[bool] | None = None


@dataclass
class LaunchedSample:
    """Tokens sampled on the device whose values the host has not read yet."""

    token_ids: torch.Tensor  # int64 [rows], on the device
    # Host copies, valid once `ready` has passed: token ids [rows]; with drafts the accepted
    # flags [rows]; with logprobs the chosen token's logprob [rows], then the top values and
    # ids [rows, k] when k > 0.
    host: list[torch.Tensor]
    ready: torch.cuda.Event | None  # recorded after the device-to-host copies (GPU only)
    seqs: list[Sequence]
    has_drafts: bool = False


class Sampler:
    """Samples one token per row; rows follow the order of `seqs`."""

    def __init__(self, vocab_size: int, eos_token_ids: Seq[int], device: torch.device,
                 seed: int = 0):
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, batch: SampleBatch) -> SamplerOutput:
        """logits: float32 [batch.num_rows, vocab] (modified in place)."""
        return self.read(self.launch(logits, batch))

    @torch.inference_mode()
    def launch(self, logits: torch.Tensor, batch: SampleBatch) -> LaunchedSample:
        """Queue the sampling of one token per row; `read` returns them. On a GPU nothing
        here waits for the device (user logits processors excepted): small host inputs go
        up through pinned memory and results come back the same way."""
        seqs = batch.seqs
        raw_logprobs = None
        if any(seq.params.logprobs is not None for seq in seqs):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        self._apply_logit_bias(logits, seqs)
        self._apply_min_tokens(logits, seqs, batch.output_offsets)
        self._apply_penalties(logits, seqs)
        self._apply_processors(logits, batch)
        if batch.draft_ids is not None:
            token_ids, accepted = self._sample_verify(logits, seqs, batch.draft_ids)
            results = [token_ids, accepted]
        else:
            token_ids = self._sample(logits, seqs)
            results = [token_ids]
        if raw_logprobs is not None:
            results.append(raw_logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1))
            top_k = max(seq.params.logprobs or 0 for seq in seqs)
            if top_k > 0:
                results.extend(raw_logprobs.topk(top_k, dim=-1))
        has_drafts = batch.draft_ids is not None
        if token_ids.device.type != "cuda":
            return LaunchedSample(token_ids, results, None, seqs, has_drafts)
        host = []
        for result in results:
            copy = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
            copy.copy_(result, non_blocking=True)
            host.append(copy)
        ready = torch.cuda.Event()
        ready.record()
        return LaunchedSample(token_ids, host, ready, seqs, has_drafts)

    def read(self, launched: LaunchedSample) -> SamplerOutput:
        """Wait for a launched sample's results (the only device sync of sampling)."""
        if launched.ready is not None:
            launched.ready.synchronize()
        host = list(launched.host)
        token_list = host.pop(0).tolist()
        accepted = host.pop(0).tolist() if launched.has_drafts else None
        logprobs: list[TokenLogprob | None] = [None] * len(token_list)
        if host:
            chosen = host[0].tolist()
            top_values = host[1].tolist() if len(host) > 1 else None
            top_ids = host[2].tolist() if len(host) > 1 else None
            for row, seq in enumerate(launched.seqs):
                k = seq.params.logprobs
                if k is None:
                    continue
                top = (list(zip(top_ids[row][:k], top_values[row][:k], strict=True))
                       if k > 0 else [])
                logprobs[row] = TokenLogprob(token_list[row], chosen[row], top)
        return SamplerOutput(token_list, logprobs, accepted)

    def device_tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """A small host list on the sampling device without waiting for the device."""
        tensor = torch.tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    # ---- logits processing -----------------------------------------------------------------

    def _apply_logit_bias(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        for row, seq in enumerate(seqs):
            bias = seq.params.logit_bias
            if bias:
                ids = self.device_tensor([t for t in bias if t < self.vocab_size], torch.long)
                vals = self.device_tensor([bias[t] for t in bias if t < self.vocab_size],
                                           logits.dtype)
                logits[row].index_add_(0, ids, vals)

    def _apply_min_tokens(self, logits: torch.Tensor, seqs: list[Sequence],
                          offsets: list[int] | None) -> None:
        for row, seq in enumerate(seqs):
            offset = offsets[row] if offsets is not None else 0
            if seq.num_output_tokens + offset < seq.params.min_tokens:
                banned = self.eos_token_ids + seq.params.stop_token_ids
                ids = self.device_tensor([t for t in banned if t < self.vocab_size], torch.long)
                logits[row].index_fill_(0, ids, float("-inf"))

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
            out_ids = self.device_tensor(seq.output_token_ids, torch.long)
            counts = torch.zeros(self.vocab_size, device=logits.device)
            counts.index_add_(0, out_ids, torch.ones_like(out_ids, dtype=counts.dtype))
            row_logits = logits[row]
            if p.repetition_penalty != 1.0:
                seen = counts > 0
                seen[self.device_tensor(seq.token_ids[: seq.num_prompt_tokens],
                                         torch.long)] = True
                penalised = torch.where(row_logits > 0, row_logits / p.repetition_penalty,
                                        row_logits * p.repetition_penalty)
                row_logits = torch.where(seen, penalised, row_logits)
            row_logits = row_logits - p.frequency_penalty * counts
            row_logits = row_logits - p.presence_penalty * (counts > 0).float()
            logits[row] = row_logits

    def _apply_processors(self, logits: torch.Tensor, batch: SampleBatch) -> None:
        if batch.masked_rows:
            bitmask = batch.bitmask[: len(batch.masked_rows)]
            rows = (None if len(batch.masked_rows) == batch.num_rows
                    else self.device_tensor(batch.masked_rows, torch.long))
            apply_token_bitmask_(logits, bitmask.to(logits.device, non_blocking=True), rows)
        for row, seq in enumerate(batch.seqs):
            for fn in seq.params.logits_processors:
                logits[row] = fn(seq.output_token_ids, logits[row])

    # ---- sampling ---------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        greedy = logits.argmax(dim=-1)
        random_rows = [r for r, s in enumerate(seqs) if not s.params.is_greedy]
        if not random_rows:
            return greedy
        index = self.device_tensor(random_rows, torch.long)
        probs = self._target_probs(logits[index], [seqs[r] for r in random_rows])
        greedy[index] = (probs / self._noise(probs, seqs, random_rows)).argmax(dim=-1)
        return greedy

    def _sample_verify(self, logits: torch.Tensor, seqs: list[Sequence], draft_ids: list[int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speculative verification of one draft token per row (-1: no draft).

        Returns (token_ids, accepted), both [rows]. Greedy rows: the argmax, and accepted
        where it equals the draft. Sampled rows (drafts are deterministic proposals, q =
        one-hot): the draft is accepted with probability p(draft), and the token is drawn
        from p with the draft removed (renormalised), which is what a rejected row takes;
        rows without a draft draw from p itself. The kept tokens are then distributed as
        plain sampling from p would give them.
        """
        drafts = self.device_tensor(draft_ids, torch.long)
        tokens = logits.argmax(dim=-1)
        accepted = tokens == drafts
        random_rows = [r for r, s in enumerate(seqs) if not s.params.is_greedy]
        if not random_rows:
            return tokens, accepted
        index = self.device_tensor(random_rows, torch.long)
        probs = self._target_probs(logits[index], [seqs[r] for r in random_rows])
        sub_drafts = drafts[index]
        has_draft = sub_drafts >= 0
        safe = sub_drafts.clamp(min=0).unsqueeze(1)
        p_draft = probs.gather(1, safe).squeeze(1) * has_draft
        uniform = torch.empty_like(p_draft)
        for i, r in enumerate(random_rows):
            uniform[i : i + 1].uniform_(generator=seqs[r].generator or self.generator)
        residual = probs.scatter(1, safe, torch.where(has_draft.unsqueeze(1), 0.0,
                                                      probs.gather(1, safe)))
        drawn = (residual / self._noise(residual, seqs, random_rows)).argmax(dim=-1)
        tokens[index] = drawn
        accepted[index] = (uniform < p_draft) & has_draft
        return tokens, accepted

    def _target_probs(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """The distribution sampled rows draw from: temperature, top-k/top-p, min-p."""
        params = [seq.params for seq in seqs]
        temps = self.device_tensor([p.temperature for p in params], logits.dtype)
        logits = logits / temps.unsqueeze(1)
        logits = _filter_top_k_top_p(logits, params, self.device_tensor)
        probs = torch.softmax(logits, dim=-1)
        min_ps = [p.min_p for p in params]
        if any(min_ps):
            min_p = self.device_tensor(min_ps, logits.dtype).unsqueeze(1)
            probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0)
        return probs

    def _noise(self, probs: torch.Tensor, seqs: list[Sequence], rows: list[int]
               ) -> torch.Tensor:
        """Exponential noise per row from its sequence's generator (argmax(p / noise) is a
        sample of p), so a seeded request draws the same whatever shares its batch."""
        noise = torch.empty_like(probs)
        for i, r in enumerate(rows):
            noise[i].exponential_(generator=seqs[r].generator or self.generator)
        return noise



def _filter_top_k_top_p(logits: torch.Tensor, params: list, to_device) -> torch.Tensor:
    """Mask tokens outside each row's top-k and top-p nucleus. logits: [R, V]."""
    vocab = logits.shape[-1]
    top_ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    top_ps = [p.top_p for p in params]
    if all(k == vocab for k in top_ks) and all(p >= 1.0 for p in top_ps):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = to_device(top_ks, torch.long).unsqueeze(1)
    drop = ranks >= k
    p = to_device(top_ps, logits.dtype).unsqueeze(1)
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    cum_before = probs.cumsum(dim=-1) - probs  # mass of better tokens
    drop |= cum_before >= p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)

