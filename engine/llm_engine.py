"""The engine: requests in, tokens out, one `step()` at a time.

Each step the scheduler picks what runs, the model runner computes it in one flattened
batch, the sampler picks the next tokens (grammar masks applied through the logits-processor
hook), and the engine appends them, detokenizes, checks stop conditions and frees the blocks
of finished sequences. Not thread-safe: `AsyncLLMEngine` drives it from one thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import torch

from .block_manager import BlockManager
from .config import EngineConfig
from .engine_stats import EngineStats
from .model_files import DEFAULT_MODEL_NAME, resolve_model_dir
from .model_runner import ModelRunner, PendingTokens
from .outputs import RequestOutput, TokenLogprob
from .request import Request
from .sampler import LaunchedSample, Sampler
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerOutput
from .sequence import PENDING_TOKEN, Sequence
from .tokenizer import eos_token_ids, load_tokenizer

logger = logging.getLogger(__name__)


class LLMEngine:
    """Owns the model runner, scheduler, sampler and the live requests."""

    def __init__(self, config: EngineConfig):
        self.config = config
        model_dir = resolve_model_dir(config.model, need_config=config.shape is None)
        self.model_name = DEFAULT_MODEL_NAME if config.model is None else str(config.model)
        self.tokenizer = load_tokenizer(config.tokenizer or model_dir)
        self.runner = ModelRunner(config, model_dir, len(self.tokenizer), config.max_model_len)
        num_blocks = self.runner.allocate_kv_cache()
        self.num_kv_blocks = num_blocks
        self.max_model_len = min(self.runner.max_model_len, num_blocks * config.block_size)
        self.vocab_size = self.runner.vocab_size
        self.eos_token_ids = eos_token_ids(self.tokenizer, self.runner.hf_config)
        self.block_manager = BlockManager(num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens, config.enable_chunked_prefill)
        self.sampler = Sampler(self.vocab_size, self.eos_token_ids, config.max_num_seqs,
                               self.runner.device, config.seed)
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()
        self._grammar: Any = None
        on_gpu = self.runner.device.type == "cuda"
        # Async scheduling: step N+1 is scheduled and launched before step N's tokens are
        # read back; they are then resolved while the device runs N+1 (grammars and texts
        # see each token before the next sample is drawn, as in the synchronous loop).
        self.async_scheduling = (config.async_scheduling if config.async_scheduling is not None
                                 else on_gpu)
        # Synchronous loop on a GPU: grammars accept each sampled token during the next
        # step's forward pass (a sequence whose grammar then completes wastes that one
        # step's row), and likewise detokenization and stop strings (text then lags the
        # tokens by one step).
        self.defer_grammar_accept = on_gpu and not self.async_scheduling
        self._pending_grammar: list[tuple[Sequence, int]] = []
        self.defer_detokenize = on_gpu and not self.async_scheduling
        self._pending_texts: list[Sequence] = []
        self._in_flight: LaunchedSample | None = None
        self.last_step_idle = False  # the last step neither computed nor resolved anything
        self.stats = EngineStats()
        if self.runner.device.type == "cuda":
            self._warm_up()
        logger.info("model %s on %s (%s): %d KV blocks of %d tokens, max_model_len %d",
                    self.model_name, self.runner.device, self.runner.dtype, num_blocks,
                    config.block_size, self.max_model_len)

    def _warm_up(self, lengths: tuple[int, ...] = (1, 7, 16, 33, 200, 600, 1500)) -> None:
        """Run a few throwaway requests so that the GPU kernels' usual specialisations
        (prefill, decode with and without context splits, mixed batches) are compiled
        before the first real request instead of during it."""
        start = time.perf_counter()
        limit = self.max_model_len - 4
        lengths = tuple(n for n in lengths if n <= limit)
        params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)

        def prompt(i: int, n: int) -> list[int]:
            return [(1000 + 7919 * (i + 1) + j) % self.vocab_size for j in range(n)]

        for i, n in enumerate(lengths):
            self.add_request(f"corral-warm-up-{i}", prompt(i, n), params)
        self.step()  # prefills only
        self.add_request("corral-warm-up-mixed", prompt(len(lengths), min(300, limit)), params)
        while self.has_unfinished_requests():
            self.step()  # a prefill beside decodes, then decodes
        self.stats = EngineStats()
        self.sampler.stats.mask_fill_seconds.clear()
        self.block_manager.prefix_cache_queries = self.block_manager.prefix_cache_hits = 0
        logger.info("warm-up took %.1f s", time.perf_counter() - start)

    # ---- grammars ---------------------------------------------------------------------

    @property
    def grammar(self):
        """The grammar compiler (created on first use)."""
        if self._grammar is None:
            from corral.grammars import GrammarCompiler

            self._grammar = GrammarCompiler(
                self.tokenizer, self.vocab_size, self.eos_token_ids,
                default_backend=self.config.grammar_backend,
                timeout=self.config.grammar_compile_timeout,
                max_workers=self.config.grammar_compile_threads,
            )
        return self._grammar

    # ---- requests ---------------------------------------------------------------------

    def tokenize(self, prompt: str) -> list[int]:
        bos = self.tokenizer.bos_token
        add_special = not (bos and prompt.startswith(bos))
        return self.tokenizer.encode(prompt, add_special_tokens=add_special)

    def add_request(self, request_id: str, prompt: str | list[int],
                    params: SamplingParams | None = None) -> None:
        """Queue a request. Raises ValueError for a prompt that does not fit or bad params."""
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request_id: {request_id!r} is already running")
        text = prompt if isinstance(prompt, str) else None
        prompt_ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self._check_prompt(prompt_ids)
        request = Request(request_id, text, prompt_ids, params, next(self._arrivals))
        if params.structured_outputs is not None:
            self.grammar.validate(params.structured_outputs)
            request.grammar_future = self.grammar.submit(params.structured_outputs)
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=self.runner.device)
                generator.manual_seed(params.seed + index)
            seq = Sequence(next(self._seq_ids), request, index, self.tokenizer, generator)
            request.seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = request

    def _check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise ValueError("prompt: must not be empty")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(prompt_ids)} tokens do not fit the context: max_model_len is "
                f"{self.max_model_len}, which must leave room for at least one new token"
            )
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt: token ids out of range [0, {self.vocab_size}): {bad[:5]}")

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks; returns its final output, if it was live."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                _drop_pending(seq)
                self.scheduler.finish(seq)
        return request.make_output()

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- the step ---------------------------------------------------------------------

    def step(self, emit_unfinished: bool = True) -> list[RequestOutput]:
        """Run one iteration; returns outputs of the requests that changed (only of those
        that finished when `emit_unfinished` is False, as offline generation needs)."""
        if self.async_scheduling:
            return self._step_async(emit_unfinished)
        touched: dict[str, Request] = {}
        self._resolve_in_flight(touched)  # left by async scheduling, if just switched off
        self._poll_grammars(touched)
        batch = self.scheduler.schedule()
        self.stats.num_preemptions = self.scheduler.num_preemptions
        if not batch.is_empty:
            _mark_first_scheduled(batch)
            logits = self.runner.execute(batch)
            sampling = [item.seq for item in batch.scheduled if item.samples]
            lengths = [seq.num_tokens for seq in sampling]
            # While the device computes, advance grammars and texts past last step's tokens.
            self._settle_grammars(touched)
            self._settle_texts(touched)
            sampled = self.sampler(logits, sampling)
            for item in batch.scheduled:
                touched[item.seq.request.request_id] = item.seq.request
                if item.seq.is_finished:
                    continue
                item.seq.num_computed_tokens += item.num_new_tokens
                self.scheduler.register_computed_blocks(item.seq)
                if item.seq.num_computed_tokens <= item.seq.num_prompt_tokens:
                    self.stats.prompt_tokens_total += item.num_new_tokens
            now = time.monotonic()
            for seq, length, token, logprob in zip(sampling, lengths, sampled.token_ids,
                                                   sampled.logprobs, strict=True):
                # A sequence the grammar settle finished or extended drops this sample.
                if not seq.is_finished and seq.num_tokens == length:
                    self._append_sampled(seq, token, logprob, now)
        else:
            self._settle_grammars(touched)
            self._settle_texts(touched)
        self.last_step_idle = batch.is_empty and not touched
        return self._collect_outputs(touched, emit_unfinished)

    def _collect_outputs(self, touched: dict[str, Request], emit_unfinished: bool
                         ) -> list[RequestOutput]:
        outputs = []
        for request_id, request in touched.items():
            if emit_unfinished or request.is_finished:
                outputs.append(request.make_output())
            if request.is_finished:
                request.metrics.finished_time = time.monotonic()
                self.requests.pop(request_id, None)
        return outputs

    def _step_async(self, emit_unfinished: bool) -> list[RequestOutput]:
        """One iteration with async scheduling.

        Order: schedule and launch step N+1 (a sequence whose step-N token is still on the
        device takes it from there), then read step N's tokens back and resolve them (append,
        grammar accept, detokenize, stop checks) while the device computes N+1, then launch
        N+1's sampling and leave its tokens pending. A sequence that step N finishes wastes
        its row of N+1 (its KV write lands past its end, in blocks it no longer holds, and
        is ordered before any later use of them)."""
        touched: dict[str, Request] = {}
        self._poll_grammars(touched)
        self._settle_grammars(touched)  # leftovers from a synchronous step, if any
        self._settle_texts(touched)
        batch = self.scheduler.schedule()
        self.stats.num_preemptions = self.scheduler.num_preemptions
        logits = None
        sampling: list[tuple[Sequence, int]] = []
        if not batch.is_empty:
            _mark_first_scheduled(batch)
            sampling = [(item.seq, item.seq.num_tokens) for item in batch.scheduled
                        if item.samples]
            logits = self.runner.execute(batch, self._pending_tokens())
        resolved = self._resolve_in_flight(touched)
        if logits is not None:
            self._launch_sampling(batch, sampling, logits, touched)
        self.last_step_idle = batch.is_empty and not resolved and not touched
        return self._collect_outputs(touched, emit_unfinished)

    def _pending_tokens(self) -> PendingTokens | None:
        launched = self._in_flight
        if launched is None:
            return None
        rows = {seq.seq_id: row for row, seq in enumerate(launched.seqs)}
        return PendingTokens(launched.token_ids, rows)

    def _resolve_in_flight(self, touched: dict[str, Request]) -> bool:
        """Read back the last launched sample and append its tokens."""
        launched, self._in_flight = self._in_flight, None
        if launched is None:
            return False
        sampled = self.sampler.read(launched)
        now = time.monotonic()
        for seq, token, logprob in zip(launched.seqs, sampled.token_ids, sampled.logprobs,
                                       strict=True):
            if _drop_pending(seq) and not seq.is_finished:
                touched[seq.request.request_id] = seq.request
                self._append_sampled(seq, token, logprob, now)
        return True

    def _launch_sampling(self, batch: SchedulerOutput, sampling: list[tuple[Sequence, int]],
                         logits, touched: dict[str, Request]) -> None:
        for item in batch.scheduled:
            seq = item.seq
            touched[seq.request.request_id] = seq.request
            if seq.is_finished:
                continue
            seq.num_computed_tokens += item.num_new_tokens
            self.scheduler.register_computed_blocks(seq)
            if seq.num_computed_tokens <= seq.num_prompt_tokens:
                self.stats.prompt_tokens_total += item.num_new_tokens
        # Rows whose sequence the resolution finished or extended (fast-forward) drop out.
        keep = [row for row, (seq, length) in enumerate(sampling)
                if not seq.is_finished and seq.num_tokens == length]
        if not keep:
            return
        if len(keep) < len(sampling):
            logits = logits[self.sampler.device_tensor(keep, torch.long)]
        seqs = [sampling[row][0] for row in keep]
        self._in_flight = self.sampler.launch(logits, seqs)
        for seq in seqs:
            seq.token_ids.append(PENDING_TOKEN)
            seq.num_pending_tokens = 1
            params = seq.params
            # A token that must be the last one needs no further step.
            seq.last_token_pending = (
                (params.max_tokens is not None and seq.num_output_tokens + 1 >= params.max_tokens)
                or seq.num_tokens >= self.max_model_len)

    def _poll_grammars(self, touched: dict[str, Request]) -> None:
        for request in list(self.requests.values()):
            future = request.grammar_future
            if future is None or request.compiled_grammar is not None or not future.done():
                continue
            try:
                request.compiled_grammar = future.result()
            except Exception as e:  # noqa: BLE001 - a grammar failure fails its request only
                self._fail(request, f"structured_outputs: {e}")
                touched[request.request_id] = request
                continue
            for seq in request.seqs:
                seq.matcher = request.compiled_grammar.matcher()

    def _fail(self, request: Request, message: str) -> None:
        request.error = message
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                _drop_pending(seq)
                self.scheduler.finish(seq)

    def _append_sampled(self, seq: Sequence, token: int, logprob: TokenLogprob | None,
                        now: float) -> None:
        metrics = seq.request.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = now
        metrics.last_token_time = now
        seq.num_sampled_tokens += 1
        if seq.logprobs is not None and logprob is not None:
            seq.logprobs.append(logprob)
        if seq.matcher is not None and self.defer_grammar_accept and not self.async_scheduling:
            self._append_token(seq, token, accept=False)
            if not seq.is_finished:
                self._pending_grammar.append((seq, token))
            return
        self._append_token(seq, token)
        self._fast_forward_tokens(seq)

    def _settle_grammars(self, touched: dict[str, Request]) -> None:
        """Feed last step's sampled tokens to their grammars (deferred accept)."""
        pending, self._pending_grammar = self._pending_grammar, []
        for seq, token in pending:
            if seq.is_finished:
                continue
            touched[seq.request.request_id] = seq.request
            if not seq.matcher.accept_token(token):
                self._fail(seq.request, f"structured_outputs: grammar rejected token {token} "
                                        f"({getattr(seq.matcher, 'error_message', None)})")
            elif seq.matcher.is_terminated():
                seq.finish_reason = "stop"
                self.scheduler.finish(seq)
            else:
                self._fast_forward_tokens(seq)

    def _fast_forward_tokens(self, seq: Sequence) -> None:
        """Append the tokens the grammar forces next, if fast-forward is on."""
        if seq.is_finished or seq.matcher is None or not self._fast_forward(seq):
            return
        for forced in seq.matcher.forced_tokens():
            if seq.is_finished:
                break
            seq.num_forced_tokens += 1
            self.stats.forced_tokens_total += 1
            self._append_token(seq, forced)

    def _fast_forward(self, seq: Sequence) -> bool:
        enabled = seq.params.fast_forward
        if enabled is None:
            enabled = self.config.fast_forward
        return enabled and seq.logprobs is None

    def _append_token(self, seq: Sequence, token: int, accept: bool = True) -> None:
        """Append one token (sampled or forced) and settle the sequence's fate.

        With `accept=False` the grammar sees the token later (`_settle_grammars`). With
        deferred detokenization, a sequence that goes on gets its text (and stop-string
        check) in the next step's overlap window (`_settle_texts`)."""
        seq.token_ids.append(token)
        self.stats.generation_tokens_total += 1
        params = seq.params
        if accept and seq.matcher is not None and not seq.matcher.accept_token(token):
            self._fail(seq.request, f"structured_outputs: grammar rejected token {token} "
                                    f"({getattr(seq.matcher, 'error_message', None)})")
            return
        past_min = seq.num_output_tokens > params.min_tokens
        reason: str | None = None
        check_stops = True  # stop strings outrank everything but EOS and stop token ids
        if token in self.eos_token_ids and not params.ignore_eos and past_min:
            reason, check_stops = "stop", False
        elif token in params.stop_token_ids and past_min:
            reason, seq.stop_reason, check_stops = "stop", token, False
        elif accept and seq.matcher is not None and seq.matcher.is_terminated():
            reason = "stop"
        elif params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            reason = "length"
        elif seq.num_tokens >= self.max_model_len:
            reason = "length"
        if reason is None and self.defer_detokenize and not self.async_scheduling:
            self._pending_texts.append(seq)
            return
        if self._update_text(seq, check_stops):
            reason = "stop"
        if reason is not None:
            seq.finish_reason = reason
            self.scheduler.finish(seq)

    def _update_text(self, seq: Sequence, check_stops: bool) -> bool:
        """Detokenize new tokens; True if a stop string ended the text."""
        seq.detokenizer.update(seq.token_ids)
        params = seq.params
        return (check_stops and bool(params.stop)
                and seq.num_output_tokens > params.min_tokens and self._check_stop_strings(seq))

    def _settle_texts(self, touched: dict[str, Request]) -> None:
        """Detokenize the tokens appended last step and apply stop strings."""
        pending, self._pending_texts = self._pending_texts, []
        for seq in pending:
            if seq.finish_reason == "abort":
                continue
            touched[seq.request.request_id] = seq.request
            if self._update_text(seq, check_stops=True) and not seq.is_finished:
                seq.finish_reason = "stop"
                self.scheduler.finish(seq)

    def _check_stop_strings(self, seq: Sequence) -> bool:
        text = seq.detokenizer.text
        for stop in seq.params.stop:
            index = text.find(stop)
            if index != -1:
                seq.detokenizer.text = text[:index]
                seq.stop_reason = stop
                return True
        return False

    # ---- stats ------------------------------------------------------------------------

    def get_stats(self) -> EngineStats:
        s = self.stats
        s.num_running = len(self.scheduler.running)
        s.num_waiting = len(self.scheduler.waiting)
        s.kv_cache_usage = self.block_manager.usage
        s.prefix_cache_queries = self.block_manager.prefix_cache_queries
        s.prefix_cache_hits = self.block_manager.prefix_cache_hits
        s.num_preemptions = self.scheduler.num_preemptions
        return s

    def shutdown(self) -> None:
        if self._grammar is not None:
            self._grammar.shutdown()


def _drop_pending(seq: Sequence) -> bool:
    """Remove a sequence's pending placeholder token; True if it had one."""
    if not seq.num_pending_tokens:
        return False
    del seq.token_ids[-seq.num_pending_tokens:]
    seq.num_pending_tokens = 0
    seq.last_token_pending = False
    return True


def _mark_first_scheduled(batch: SchedulerOutput) -> None:
    now = time.monotonic()
    for item in batch.scheduled:
        metrics = item.seq.request.metrics
        if metrics.first_scheduled_time is None:
            metrics.first_scheduled_time = now
