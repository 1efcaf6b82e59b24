"""A request: a prompt, its sampling parameters and its `n` sequences."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

from .outputs import CompletionOutput, RequestMetrics, RequestOutput
from .sampling_params import SamplingParams
from .sequence import Sequence, SequenceStatus


class Request:
    """Groups the sequences of one request and turns their state into a `RequestOutput`."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                 params: SamplingParams, arrival_index: int):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.arrival_index = arrival_index
        self.metrics = RequestMetrics(arrival_time=time.monotonic())
        self.seqs: list[Sequence] = []
        self.grammar_future: Future | None = None
        self.compiled_grammar: Any = None
        self.error: str | None = None

    @property
    def is_finished(self) -> bool:
        return self.error is not None or all(seq.is_finished for seq in self.seqs)

    @property
    def is_grammar_ready(self) -> bool:
        return self.grammar_future is None or self.compiled_grammar is not None

    def can_schedule(self, seq: Sequence) -> bool:
        """Whether a waiting sequence may start: its grammar is compiled, and samples after
        the first wait until the first has computed the prompt they share."""
        if not self.is_grammar_ready:
            return False
        if seq.index == 0 or seq.num_computed_tokens > 0 or seq.num_preemptions > 0:
            return True
        first = self.seqs[0]
        return (first.status is not SequenceStatus.RUNNING
                or first.num_computed_tokens >= first.num_prompt_tokens)

    def shared_prompt_blocks(self, seq: Sequence, block_size: int) -> tuple[list[int], list[int]]:
        """Full prompt blocks of the first sample that a later sample can share."""
        first = self.seqs[0]
        if (seq is first or first.status is not SequenceStatus.RUNNING
                or first.num_computed_tokens < first.num_prompt_tokens):
            return [], []
        num_blocks = min((seq.num_prompt_tokens - 1) // block_size, len(first.block_hashes))
        return first.block_table[:num_blocks], first.block_hashes[:num_blocks]

    def make_output(self) -> RequestOutput:
        outputs = []
        for seq in self.seqs:
            text = seq.detokenizer.text
            token_ids = seq.output_token_ids
            logprobs = seq.logprobs
            if not seq.is_finished:
                if seq.shown_tokens is not None:  # what the closer may still take back
                    shown = seq.shown_tokens - seq.num_prompt_tokens
                    text, token_ids = text[: seq.shown_text_length], token_ids[:shown]
                    logprobs = logprobs[:shown] if logprobs is not None else None
                text = text[: len(text) - _stop_holdback(text, self.params.stop)]
            outputs.append(CompletionOutput(
                index=seq.index,
                text=text,
                token_ids=list(token_ids),
                finish_reason=seq.finish_reason,
                stop_reason=seq.stop_reason,
                logprobs=list(logprobs) if logprobs is not None else None,
            ))
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outputs,
            finished=self.is_finished,
            metrics=self.metrics,
            error=self.error,
        )


def _stop_holdback(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest
