"""Outputs as deltas: the core sends what changed, the client rebuilds cumulative outputs.

`DeltaEncoder` (core side) remembers, per live request and completion, what it has sent;
`RequestAssembler` (client side) holds the same state and turns each `RequestDelta` back
into the cumulative `RequestOutput` that `AsyncLLMEngine` would have yielded.

Invariant: after applying the deltas of steps 1..k, the assembler's completions equal the
core's step-k output (text, token ids, logprobs, finish and stop reasons). The engine never
takes back text a stream has seen, so a delta's starts are the lengths already sent; where
they are not, the delta says where to cut first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .core_messages import RequestDelta, SeqDelta, WireLogprob
from .detokenizer import IncrementalDetokenizer
from .outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from .sampling_params import SamplingParams


@dataclass
class _SentSeq:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class _SentRequest:
    seqs: dict[int, _SentSeq] = field(default_factory=dict)
    metrics_key: tuple | None = None
    error: str | None = None


class DeltaEncoder:
    """Core side: each step's cumulative outputs as deltas against what was sent."""

    def __init__(self) -> None:
        self._sent: dict[str, _SentRequest] = {}

    def encode(self, output: RequestOutput) -> RequestDelta | None:
        """The delta of `output` (None if nothing changed); forgets finished requests."""
        if output.finished:
            sent = self._sent.pop(output.request_id, None) or _SentRequest()
        else:
            sent = self._sent.setdefault(output.request_id, _SentRequest())
        seqs = []
        for completion in output.outputs:
            prev = sent.seqs.setdefault(completion.index, _SentSeq())
            delta = _seq_delta(prev, completion)
            if delta is not None:
                seqs.append(delta)
        metrics = None
        if output.metrics is not None:
            key = _metrics_key(output.metrics)
            if key != sent.metrics_key or output.finished:
                sent.metrics_key = key
                metrics = output.metrics
        changed_error = output.error != sent.error
        sent.error = output.error
        if not seqs and metrics is None and not changed_error and not output.finished:
            return None
        return RequestDelta(output.request_id, seqs, output.finished, output.error, metrics)

    def forget(self, request_id: str) -> None:
        self._sent.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._sent)


def _seq_delta(prev: _SentSeq, out: CompletionOutput) -> SeqDelta | None:
    text_start = len(prev.text) if out.text.startswith(prev.text) else \
        _common_prefix(prev.text, out.text)
    token_start = _list_start(prev.token_ids, out.token_ids)
    new_logprobs = out.logprobs or []
    logprob_start = _list_start(prev.logprobs, new_logprobs)
    if (text_start == len(prev.text) == len(out.text)
            and token_start == len(prev.token_ids) == len(out.token_ids)
            and logprob_start == len(prev.logprobs) == len(new_logprobs)
            and out.finish_reason == prev.finish_reason
            and out.stop_reason == prev.stop_reason):
        return None
    logprobs: list[WireLogprob] | None = None
    if out.logprobs is not None:
        logprobs = [(lp.token_id, lp.logprob, list(lp.top_logprobs))
                    for lp in new_logprobs[logprob_start:]]
    prev.text, prev.token_ids, prev.logprobs = out.text, out.token_ids, new_logprobs
    prev.finish_reason, prev.stop_reason = out.finish_reason, out.stop_reason
    return SeqDelta(out.index, text_start, out.text[text_start:], token_start,
                    out.token_ids[token_start:], logprob_start, logprobs,
                    out.finish_reason, out.stop_reason)


def _list_start(prev: list[Any], new: list[Any]) -> int:
    """Where `new` departs from `prev`: `len(prev)` when it extends it. O(1) in the usual
    case (the last item sent is still in place; items never change behind it)."""
    n = len(prev)
    if n == 0 or (len(new) >= n and (new[n - 1] is prev[n - 1] or new[n - 1] == prev[n - 1])):
        return n
    return _common_prefix(prev, new)


def _common_prefix(a: Any, b: Any) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _metrics_key(m: RequestMetrics) -> tuple:
    return (m.first_scheduled_time, m.first_token_time, m.finished_time,
            m.num_cached_prompt_tokens)


class RequestAssembler:
    """Client side: one request's cumulative state, grown by its deltas.

    With a `tokenizer`, the core sends token ids only (the request went with
    `detokenize=False`) and the text is detokenized here, incrementally, as the core would
    have: off the engine's loop, in the process that streams it.

    With `check_stops` too, the core was sent no stop strings: they are looked for here,
    token by token in the new text only (past `min_tokens`), as the core's `StopChecker`
    would. A completion that meets one ends here (`ended_here`): its text is cut before the
    stop string, its tokens after the one that completed it are dropped, and later deltas
    for it are ignored; the caller aborts the request in the core. Only for requests of one
    completion, whose stop-token and end-of-sequence tokens add no text (special tokens
    skipped), so the precedence is the core's.
    """

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, tokenizer: Any = None,
                 check_stops: bool = False) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        has_logprobs = params.logprobs is not None
        self.completions = [CompletionOutput(index=i, logprobs=[] if has_logprobs else None)
                            for i in range(params.n)]
        self.metrics: RequestMetrics | None = None
        self.finished = False
        self.error: str | None = None
        # Per completion: its detokenizer and its prompt + output token ids.
        self._detokenizers: list[IncrementalDetokenizer] = []
        self._all_token_ids: list[list[int]] = []
        if check_stops and (tokenizer is None or params.n != 1 or not params.stop
                            or not params.skip_special_tokens):
            raise ValueError("check_stops needs a tokenizer, n == 1, stop strings and "
                             "skip_special_tokens")
        self._stops: list[str] = list(params.stop or []) if check_stops else []
        self._min_tokens = params.min_tokens
        self._stop_token_ids = frozenset(params.stop_token_ids)
        self.ended_here = False  # a stop string ended the completion here, not in the core
        if tokenizer is not None:
            for _ in range(params.n):
                self._detokenizers.append(IncrementalDetokenizer(
                    tokenizer, prompt_token_ids, params.skip_special_tokens))
                self._all_token_ids.append(list(prompt_token_ids))

    def apply(self, delta: RequestDelta) -> RequestOutput | Exception:
        """The request's output after `delta`, or the exception it failed with."""
        error = self.update(delta)
        return error if error is not None else self.output()

    def update(self, delta: RequestDelta) -> Exception | None:
        """Grow the state by `delta`; the exception the request failed with, if it did."""
        if delta.exception is not None:
            self.finished = True
            return delta.exception.to_exception()
        if self.ended_here:
            return None  # what the core did after the stop string is not the output
        for seq in delta.seqs:
            c = self.completions[seq.index]
            c.text = c.text + seq.text if seq.text_start == len(c.text) \
                else c.text[: seq.text_start] + seq.text
            taken_back = seq.token_start < len(c.token_ids)
            del c.token_ids[seq.token_start:]
            c.token_ids.extend(seq.token_ids)
            if c.logprobs is not None and seq.logprobs is not None:
                del c.logprobs[seq.logprob_start:]
                c.logprobs.extend(TokenLogprob(t, lp, list(top)) for t, lp, top in seq.logprobs)
            c.finish_reason, c.stop_reason = seq.finish_reason, seq.stop_reason
            if self._detokenizers:
                self._detokenize(seq.index, seq.token_start, seq.token_ids, taken_back)
        if delta.metrics is not None:
            self.metrics = delta.metrics
        self.finished = delta.finished or self.ended_here
        self.error = delta.error
        return None

    def _detokenize(self, index: int, token_start: int, token_ids: list[int],
                    taken_back: bool) -> None:
        """Grow completion `index`'s text by its new tokens (recomputed after a take-back)."""
        detokenizer, all_ids = self._detokenizers[index], self._all_token_ids[index]
        num_prompt = len(self.prompt_token_ids)
        del all_ids[num_prompt + token_start:]
        if taken_back:
            detokenizer.reset_to(all_ids, num_prompt)
        completion = self.completions[index]
        last = len(token_ids) - 1
        for i, token_id in enumerate(token_ids):  # one at a time, as the core appends them
            searched_up_to = len(detokenizer.text)
            all_ids.append(token_id)
            detokenizer.update(all_ids)
            num_output = len(all_ids) - num_prompt
            # The core's precedence: a stop token id that ended the output outranks strings.
            core_stop_token = (i == last and completion.finish_reason == "stop"
                               and token_id in self._stop_token_ids)
            if (self._stops and num_output > self._min_tokens and not core_stop_token
                    and self._cut_at_stop(completion, detokenizer, searched_up_to)):
                del completion.token_ids[num_output:]
                if completion.logprobs is not None:
                    del completion.logprobs[num_output:]
                return
        completion.text = detokenizer.text

    def _cut_at_stop(self, completion: CompletionOutput, detokenizer: IncrementalDetokenizer,
                     old_length: int) -> bool:
        """End `completion` at the first stop string the newest token completed (only text
        past `old_length` may hold its end: text shown before is never taken back)."""
        text = detokenizer.text
        found: tuple[int, str] | None = None
        for stop in self._stops:
            index = text.find(stop, max(0, old_length - len(stop) + 1))
            if index != -1 and (found is None or index < found[0]):
                found = (index, stop)
        if found is None:
            return False
        completion.text = text[: found[0]]
        completion.finish_reason, completion.stop_reason = "stop", found[1]
        self.ended_here = True
        return True

    def output(self) -> RequestOutput:
        """A snapshot: later deltas do not change it."""
        outputs = [CompletionOutput(c.index, c.text, list(c.token_ids), c.finish_reason,
                                    c.stop_reason,
                                    list(c.logprobs) if c.logprobs is not None else None)
                   for c in self.completions]
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, outputs,
                             self.finished, self.metrics, self.error)
