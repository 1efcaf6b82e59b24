"""The engine: requests in, tokens out, one `step()` at a time.

Each step the scheduler picks what runs, the model runner computes it in one flattened
batch, the sampler picks the next tokens (grammar masks applied through the logits-processor
hook), and the engine appends them, detokenizes, checks stop conditions and frees the blocks
of finished sequences. Not thread-safe: `AsyncLLMEngine` drives it from one thread.

One loop serves every device. Where the device runs behind the host (a GPU), a step
overlaps: step N+1 is launched before step N's tokens are read back, so everything the host
does per step overlaps the device: the grammars accept step N's tokens and fill step N+1's
masks while N+1's forward runs; only N+1's sampling waits for its masks. Where the forward
pass returns only when done (the CPU), and for steps that verify drafts, a step resolves
its own tokens before the next is scheduled, and the masks fill while the forward runs.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import time
from typing import Any

import torch

from corral.grammars.param_error import ParamError

from .block_manager import BlockManager
from .config import EngineConfig
from .draft_proposer import DraftProposer
from .engine_stats import EngineStats
from .grammar_step import GrammarStepper, MaskJobs
from .model_files import DEFAULT_MODEL_NAME, resolve_model_dir
from .model_runner import ModelRunner, PendingTokens
from .outputs import RequestOutput, TokenLogprob
from .request import Request
from .sampler import LaunchedSample, SampleBatch, Sampler, SamplerOutput
from .sampling_params import SamplingParams
from .scheduler import ScheduledSeq, Scheduler, SchedulerOutput
from .sequence import PENDING_TOKEN, Sequence
from .step_profile import NullProfiler, StepProfiler
from .stop_checker import StopChecker
from .structure_closer import StructureCloser
from .token_bytes import token_bytes
from .tokenizer import eos_token_ids, load_tokenizer

logger = logging.getLogger(__name__)

TokenEntry = tuple[Sequence, list[int], list[TokenLogprob | None]]


HOST_TORCH_THREADS_ON_GPU = 4  # CPU threads for torch's host-side work beside a GPU


class SamplingPlan:
    """The sampling rows of one step: one per sampling sequence, plus one per draft."""

    def __init__(self, batch: SchedulerOutput):
        self.items: list[tuple[ScheduledSeq, int]] = []  # (item, first row)
        seqs: list[Sequence] = []
        draft_ids: list[int] = []  # per row (filled only once a sequence has drafts)
        offsets: list[int] = []
        masked_rows: list[int] = []
        self.jobs = jobs = MaskJobs()
        self.lengths: list[int] = []  # each sampling sequence's length when planned
        for item in batch.scheduled:
            if not item.samples:
                continue
            seq = item.seq
            first = len(seqs)
            self.items.append((item, first))
            self.lengths.append(seq.num_tokens)
            num_drafts = item.num_draft_tokens
            drafts = seq.draft_token_ids[:num_drafts] if num_drafts else []
            if drafts and len(draft_ids) < first:  # the rows before had no drafts
                draft_ids.extend([-1] * (first - len(draft_ids)))
                offsets.extend([0] * (first - len(offsets)))
            seqs.extend([seq] * (len(drafts) + 1))
            if draft_ids or drafts:
                draft_ids.extend(drafts)
                draft_ids.append(-1)
                offsets.extend(range(len(drafts) + 1))
            if seq.matcher is not None:
                jobs.add(seq.matcher, drafts)
                if drafts:
                    masked_rows.extend(range(first, first + len(drafts) + 1))
                else:
                    masked_rows.append(first)
        has_drafts = len(seqs) > len(self.items)
        self.batch = SampleBatch(seqs, masked_rows, None,
                                 draft_ids if has_drafts else None,
                                 offsets if has_drafts else None)


class LLMEngine:
    """Owns the model runner, scheduler, sampler and the live requests."""

    def __init__(self, config: EngineConfig):
        self.config = config
        model_dir = resolve_model_dir(config.model, need_config=config.shape is None)
        self.model_name = DEFAULT_MODEL_NAME if config.model is None else str(config.model)
        self.tokenizer = load_tokenizer(config.tokenizer or model_dir)
        token_bytes(self.tokenizer, True)  # the detokenizers' table, built once, not mid-step
        speculates = config.speculative is not None or config.fast_forward
        draft_rows = 1 + config.num_speculative_tokens if speculates else 1
        self.runner = ModelRunner(config, model_dir, len(self.tokenizer), config.max_model_len,
                                  max_rows_per_seq=draft_rows)
        num_blocks = self.runner.allocate_kv_cache()
        self.num_kv_blocks = num_blocks
        self.max_model_len = min(self.runner.max_model_len, num_blocks * config.block_size)
        self.vocab_size = self.runner.vocab_size
        self.eos_token_ids = eos_token_ids(self.tokenizer, self.runner.hf_config)
        self.block_manager = BlockManager(num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens, config.enable_chunked_prefill)
        self.sampler = Sampler(self.vocab_size, self.eos_token_ids, self.runner.device,
                               config.seed)
        on_gpu = self.runner.device.type == "cuda"
        if on_gpu and "OMP_NUM_THREADS" not in os.environ:
            # The host's tensor work beside a GPU is small (inputs, masks): a few threads do
            # it, and a full team of OpenMP threads would spin against the grammar threads
            # and the completion workers for the cores.
            torch.set_num_threads(min(torch.get_num_threads(), HOST_TORCH_THREADS_ON_GPU))
        overlap = config.overlap_grammar if config.overlap_grammar is not None else on_gpu
        self.grammar_step = GrammarStepper(self.vocab_size, config.max_num_seqs * draft_rows,
                                           pin_memory=on_gpu, overlap=overlap)
        self.stats = EngineStats()
        self.stop_checker = StopChecker(self.eos_token_ids, self.max_model_len,
                                        self.scheduler, self.stats)
        self.closer = StructureCloser(lambda: self.grammar.completion_vocab(),
                                      self.max_model_len, self._completion_pool(on_gpu))
        self.proposer = DraftProposer(config.num_speculative_tokens, self.eos_token_ids)
        self.requests: dict[str, Request] = {}
        self._compiling: dict[str, Request] = {}  # requests whose grammar is not yet in
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()
        self._grammar: Any = None
        self._grammar_lock = threading.Lock()
        # Async scheduling: step N+1 is scheduled and launched before step N's tokens are
        # read back. N-gram drafts need step N's tokens to draft step N+1, so they run the
        # synchronous loop; grammar-forced drafts (fast_forward) take a synchronous step
        # only where the forced runs make it pay (see _drafts_pay).
        self.async_scheduling = (config.async_scheduling if config.async_scheduling is not None
                                 else on_gpu and config.speculative is None)
        self._in_flight: tuple[LaunchedSample, SamplingPlan] | None = None
        self._forced_ahead = False  # some sequence's grammar forces 2+ tokens next
        self.last_step_idle = False  # the last step neither computed nor resolved anything
        self.profile: StepProfiler | NullProfiler = NullProfiler()
        if on_gpu:
            self._warm_up()
        _freeze_start_up()
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
        self.stats = self.stop_checker.stats = EngineStats()
        self.grammar_step.stats.mask_fill_seconds.clear()
        self.grammar_step.stats.accept_seconds.clear()
        self.block_manager.prefix_cache_queries = self.block_manager.prefix_cache_hits = 0
        logger.info("warm-up took %.1f s", time.perf_counter() - start)

    # ---- grammars ---------------------------------------------------------------------

    @property
    def grammar(self):
        """The grammar compiler (created on first use)."""
        with self._grammar_lock:  # first use may come from the API's threads too
            if self._grammar is None:
                self._grammar = self._make_grammar_compiler()
        return self._grammar

    def prepare_grammars(self) -> None:
        """Build the grammar compiler and its completion vocabulary now rather than on the
        first constrained request or registration: for a 128K vocabulary that is ~7 s of
        tokenizer tables, built in native calls that hold the GIL up to 1.6 s at a time, and
        a server's step loop must not wait on them while streams run."""
        self.grammar.completion_vocab()

    def _completion_pool(self, on_gpu: bool):
        """Worker processes for the structure closer's searches (None: on this thread)."""
        from corral.grammars.completion_pool import CompletionSearchPool, default_num_workers

        workers = self.config.completion_workers
        workers = default_num_workers(on_gpu) if workers is None else workers
        if not workers:
            return None
        return CompletionSearchPool(self.tokenizer, self.vocab_size, self.eos_token_ids,
                                    workers)

    def _make_grammar_compiler(self):
        from corral.grammars import GrammarCompiler

        compiler = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_token_ids,
                                   default_backend=self.config.grammar_backend,
                                   timeout=self.config.grammar_compile_timeout,
                                   max_workers=self.config.grammar_compile_threads)
        compiler.search_pool = self.closer.pool  # start completions off the GIL too
        return compiler

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
            raise ParamError("request_id", f"{request_id!r} is already running")
        text = prompt if isinstance(prompt, str) else None
        prompt_ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        self._check_prompt(prompt_ids)
        request = Request(request_id, text, prompt_ids, params, next(self._arrivals))
        if params.structured_outputs is not None:
            request.grammar_future = self.grammar.validate_and_submit(params.structured_outputs)
            self._compiling.pop(request_id, None)  # a later request of the same id
            self._compiling[request_id] = request
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
            raise ParamError("prompt", "must not be empty")
        if len(prompt_ids) >= self.max_model_len:
            raise ParamError(
                "prompt", f"{len(prompt_ids)} tokens do not fit the context: max_model_len is "
                f"{self.max_model_len}, which must leave room for at least one new token"
            )
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            bad = [t for t in prompt_ids if not 0 <= t < self.vocab_size]
            raise ParamError("prompt", f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")

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
        that finished when `emit_unfinished` is False, as offline generation needs).

        One loop for every device; a step either overlaps or not:
        - overlapping (a GPU without drafts to verify): schedule and launch step N+1 (a
          sequence whose step-N token is still on the device takes it from there), then
          read step N's tokens back; the grammars accept them and fill N+1's masks on a
          worker thread while this thread appends, detokenizes and checks stop conditions,
          all during N+1's forward pass; then N+1's sampling is launched and its tokens left
          pending. A sequence that step N finishes wastes its row of N+1 (its KV write lands
          past its end, in blocks it no longer holds, and is ordered before any later use
          of them).
        - not overlapping (the CPU, whose forward pass returns only when done, and steps
          that verify drafts, which need the last tokens first): the last tokens are
          resolved and drafts proposed before scheduling; the masks fill while the forward
          pass runs, and the step's own tokens are read back and resolved at its end.
        """
        self.profile.begin_step()
        touched: dict[str, Request] = {}
        overlap = self.async_scheduling and not self._drafts_pay()
        resolved = None
        if not overlap:
            resolved = self._resolve_in_flight(touched)  # left by an overlapping step
            self._settle(resolved)
            self._propose_drafts()
            self.profile.mark("draft")
        self._poll_grammars(touched)
        batch = self.scheduler.schedule()
        self.stats.num_preemptions = self.scheduler.num_preemptions
        self.profile.mark("schedule")
        if batch.is_empty:
            if overlap:
                resolved = self._resolve_in_flight(touched)
                self._settle(resolved)
            self.last_step_idle = resolved is None and not touched
        else:
            self._compute(batch, overlap, touched)
            self.last_step_idle = False
        outputs = self._collect_outputs(touched, emit_unfinished)
        self.profile.mark("outputs")
        return outputs

    def _compute(self, batch: SchedulerOutput, overlap: bool,
                 touched: dict[str, Request]) -> None:
        """Run a scheduled batch: forward pass, masks, sampling; resolve the tokens of the
        step before it (overlapping) or its own (not overlapping). See `step`."""
        prof = self.profile
        _mark_first_scheduled(batch)
        plan = SamplingPlan(batch)
        prof.note_batch(len(batch.scheduled), batch.num_batched_tokens)
        prof.note_masked(plan.jobs.num_rows)
        if not overlap:
            self.grammar_step.start_fill(plan.jobs)  # fills while the forward pass runs
        prof.device_point("forward_start")
        start = time.perf_counter()
        logits = self.runner.execute(batch, self._pending_tokens() if overlap else None)
        prof.note_cpu_forward(time.perf_counter() - start)
        prof.device_point("forward_end")
        prof.mark("forward")
        if overlap:
            resolved = self._resolve_in_flight(touched, plan.jobs)
        else:
            self._fail_unfilled(self.grammar_step.wait_fill(), touched)
            prof.mark("masks")
        self._advance(batch, touched)
        self._launch_sampling(plan, logits)
        prof.mark("sample")
        if not overlap:
            resolved = self._resolve_in_flight(touched)
            for item in batch.scheduled:
                item.seq.draft_token_ids = []
        # Overlapping, this is off the critical path: N+1's sampling is queued behind its
        # forward pass.
        self._settle(resolved)

    def _pending_tokens(self) -> PendingTokens | None:
        if self._in_flight is None:
            return None
        launched = self._in_flight[0]
        rows = {seq.seq_id: row for row, seq in enumerate(launched.seqs)
                if seq.num_pending_tokens}
        return PendingTokens(launched.token_ids, rows)

    def _resolve_in_flight(self, touched: dict[str, Request],
                           next_jobs: MaskJobs | None = None) -> list[TokenEntry] | None:
        """Read back the last launched sample and resolve its tokens; start filling the
        next step's masks (`next_jobs`) as soon as the grammars have accepted them. Returns
        the resolved entries (None if nothing was in flight), for `_settle`."""
        prof = self.profile
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            if next_jobs is not None:
                # Nothing to resolve meanwhile (the first step, or after an idle one): the
                # sampler is launched next and must find the masks done and finished.
                self.grammar_step.start_fill(next_jobs)
                self._fail_unfilled(self.grammar_step.wait_fill(), touched)
                prof.mark("masks")
            return None
        launched, plan = in_flight
        sampled = self.sampler.read(launched)
        prof.mark("wait_device")
        entries = self._verified_tokens(plan, sampled)
        self._accept_grammar(entries)
        prof.mark("accept")
        if next_jobs is not None:
            self.grammar_step.start_fill(next_jobs)
        self._append(entries, touched)
        prof.mark("resolve")
        if next_jobs is not None:
            # The matchers are the worker's until the fill is done.
            self._fail_unfilled(self.grammar_step.wait_fill(), touched)
            prof.mark("masks")
        return entries

    def _settle(self, entries: list[TokenEntry] | None) -> None:
        """After resolving step N's tokens: steer constrained sequences near their limit
        to a valid end, and count the tokens their grammars force next.

        With async scheduling this runs once step N+1's sampling is queued, so a sequence
        may hold N+1's pending token: it is set aside meanwhile (the matchers are at step N's
        state), and dropped for good if the sequence ends here (its row of N+1 is wasted).
        """
        if not entries:
            return
        closer = self.closer
        closer.begin_step()
        for seq, _, _ in entries:
            if seq.matcher is None or seq.is_finished:
                continue
            pending = seq.num_pending_tokens
            if closer.is_idle(seq, pending):  # far from its limit: nothing to check
                continue
            if pending:
                del seq.token_ids[-pending:]
                seq.num_pending_tokens = 0
            closer.check(seq, self.stop_checker)
            if pending and not seq.is_finished:
                seq.token_ids.extend([PENDING_TOKEN] * pending)
                seq.num_pending_tokens = pending
            elif pending:
                seq.last_token_pending = False
        self.profile.mark("close")
        if self.async_scheduling:
            self._look_ahead(entries)
            self.profile.mark("look_ahead")

    def _launch_sampling(self, plan: SamplingPlan, logits: torch.Tensor) -> None:
        """Queue the sampling of step N+1; its tokens stay pending on the device."""
        live = [item.seq for (item, _), length in zip(plan.items, plan.lengths, strict=True)
                if not item.seq.is_finished and item.seq.num_tokens == length]
        if not live:
            return
        self.profile.device_point("sample_start")
        plan.batch.bitmask = self.grammar_step.bitmask
        launched = self.sampler.launch(logits, plan.batch)
        self.profile.device_point("sample_end")
        self._in_flight = (launched, plan)
        for seq in live:
            seq.token_ids.append(PENDING_TOKEN)
            seq.num_pending_tokens = 1
            params = seq.params
            # A token that must be the last one needs no further step.
            seq.last_token_pending = (
                (params.max_tokens is not None and seq.num_output_tokens + 1 >= params.max_tokens)
                or seq.num_tokens >= self.max_model_len)

    def _advance(self, batch: SchedulerOutput, touched: dict[str, Request]) -> None:
        """Count this step's computed tokens (a sequence with drafts counts only its last
        token here; `_verified_tokens` adds the drafts it keeps) and register full blocks."""
        for item in batch.scheduled:
            seq = item.seq
            touched[seq.request.request_id] = seq.request
            if seq.is_finished:
                continue
            seq.num_computed_tokens += item.num_new_tokens - item.num_draft_tokens
            self.scheduler.register_computed_blocks(seq)
            if seq.num_computed_tokens <= seq.num_prompt_tokens:
                self.stats.prompt_tokens_total += item.num_new_tokens

    def _verified_tokens(self, plan: SamplingPlan, sampled: SamplerOutput) -> list[TokenEntry]:
        """Per sampling sequence, the tokens it keeps: the drafts the model agrees with (in
        order, up to the first it does not) and one sampled token after them."""
        entries: list[TokenEntry] = []
        drafts = plan.batch.draft_ids
        for item, first in plan.items:
            seq = item.seq
            # Not pending: its row was not launched, or it ended (an abort, or the step
            # before finished it) and dropped its placeholder.
            if not _drop_pending(seq) or seq.is_finished:
                continue
            row = first
            if drafts is not None:
                last = first + item.num_draft_tokens
                while row < last and sampled.accepted[row]:
                    row += 1
                num_kept = row - first
                if item.num_draft_tokens:
                    seq.num_draft_tokens_total += item.num_draft_tokens
                    seq.num_accepted_draft_tokens_total += num_kept
                    self.stats.spec_draft_tokens_total += item.num_draft_tokens
                    self.stats.spec_accepted_tokens_total += num_kept
                    seq.num_computed_tokens += num_kept
                    self.scheduler.register_computed_blocks(seq)
                tokens = drafts[first:row] + [sampled.token_ids[row]]
            else:
                tokens = [sampled.token_ids[row]]
            self.stats.num_decode_passes += 1
            entries.append((seq, tokens, sampled.logprobs[first : first + len(tokens)]))
        return entries

    def _accept_grammar(self, entries: list[TokenEntry]) -> None:
        """The grammars accept each sequence's new tokens, in one batched call."""
        constrained = [(seq, tokens) for seq, tokens, _ in entries if seq.matcher is not None]
        if not constrained:
            return
        ok = self.grammar_step.accept([seq.matcher for seq, _ in constrained],
                                      [tokens for _, tokens in constrained])
        for (seq, tokens), accepted in zip(constrained, ok, strict=True):
            if not accepted and not seq.is_finished:
                self._fail(seq.request, f"structured_outputs: grammar rejected token "
                                        f"{tokens} ({seq.matcher.error_message})")
            # Read now: from here to the fill's end the matchers are the fill worker's.
            seq.is_grammar_terminated = seq.matcher.is_terminated()

    def _append(self, entries: list[TokenEntry], touched: dict[str, Request]) -> None:
        now = time.monotonic()
        for seq, tokens, logprobs in entries:
            if seq.is_finished:
                continue
            touched[seq.request.request_id] = seq.request
            metrics = seq.request.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            self.stop_checker.append(seq, tokens, logprobs)

    def _drafts_pay(self) -> bool:
        """With async scheduling, whether this step should run synchronously to verify the
        tokens grammars force: worth one step without overlap when the forced runs known
        from the last resolved tokens add a quarter of a step's output or more."""
        if not self._forced_ahead:
            return False
        extra = sum(max(seq.num_forced_ahead - 1, 0) for seq in self.scheduler.running)
        return 4 * extra >= len(self.scheduler.running)

    def _look_ahead(self, entries: list[TokenEntry]) -> None:
        """Count the tokens each fast-forwarding sequence's grammar forces next."""
        self._forced_ahead = False
        for seq, _, _ in entries:
            if seq.is_finished or not self._uses_forced(seq):
                continue
            seq.num_forced_ahead = len(seq.matcher.forced_tokens())
            self._forced_ahead |= seq.num_forced_ahead > 1

    def _uses_forced(self, seq: Sequence) -> bool:
        if seq.matcher is None:
            return False
        forced = seq.params.fast_forward
        if forced is None:
            forced = self.config.fast_forward or self.config.speculative is not None
        return forced and seq.logprobs is None and not _has_penalties(seq.params)

    def _propose_drafts(self) -> None:
        """Drafts for the running decodes (synchronous loop only): the tokens grammars
        force (`fast_forward`), then n-gram matches (`speculative`)."""
        config = self.config
        for seq in self.scheduler.running:
            if seq.num_uncomputed_tokens != 1 or seq.num_pending_tokens:
                continue
            params = seq.params
            if seq.logprobs is not None or _has_penalties(params):
                continue
            use_forced = self._uses_forced(seq)
            use_ngram = config.speculative == "ngram" and params.speculative is not False
            if use_forced or use_ngram:
                seq.draft_token_ids = self.proposer.propose(seq, use_forced, use_ngram)

    def _fail_unfilled(self, failed: list, touched: dict[str, Request]) -> None:
        """Fail the requests whose matchers could not fill their masks."""
        if not failed:
            return
        matchers = {id(m) for m in failed}
        for request in list(self.requests.values()):
            for seq in request.seqs:
                if seq.matcher is not None and id(seq.matcher) in matchers:
                    self._fail(request, "structured_outputs: the grammar failed to fill a mask")
                    touched[request.request_id] = request

    def _poll_grammars(self, touched: dict[str, Request]) -> None:
        """Start the sequences of requests whose grammar compiled (or fail them); only the
        requests still waiting for one are looked at."""
        if not self._compiling:
            return
        for request_id, request in list(self._compiling.items()):
            if self.requests.get(request_id) is not request:  # aborted or finished
                del self._compiling[request_id]
                continue
            future = request.grammar_future
            if request.compiled_grammar is not None:
                del self._compiling[request_id]
                continue
            if not future.done():
                continue
            del self._compiling[request_id]
            try:
                request.compiled_grammar = future.result()
            except Exception as e:  # noqa: BLE001 - a grammar failure fails its request only
                self._fail(request, f"structured_outputs: {e}")
                touched[request.request_id] = request
                continue
            for seq in request.seqs:
                seq.matcher = request.compiled_grammar.matcher()
                self.closer.start(seq, self.stop_checker)
                if seq.is_finished:
                    touched[request.request_id] = request

    def _fail(self, request: Request, message: str) -> None:
        request.error = message
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                _drop_pending(seq)
                self.scheduler.finish(seq)

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
        self.grammar_step.shutdown()
        if self.closer.pool is not None:
            self.closer.pool.shutdown()
        if self._grammar is not None:
            self._grammar.shutdown()
        self.runner.shutdown()


_frozen = False


def _freeze_start_up() -> None:
    """Move what start-up built (the tokenizer's tables, the model's Python objects:
    hundreds of thousands) out of the garbage collector's sight, once per process: the
    full collections that stall a step now and then traverse far less. Later engines of
    the same process are left alone (a frozen engine's reference cycles are never freed,
    so only the first, normally the process's only one, is frozen)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def _has_penalties(params: SamplingParams) -> bool:
    return bool(params.presence_penalty or params.frequency_penalty
                or params.repetition_penalty != 1.0 or params.logits_processors)


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
