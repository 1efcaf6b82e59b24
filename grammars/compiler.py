"""`GrammarCompiler`: constraints -> `CompiledGrammar`s, cached, off-thread, under a deadline."""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor

from corral.grammars.lark_regex import lark_regex
from corral.grammars.llguidance_backend import LLGuidanceBackend
from corral.grammars.matcher import CompiledGrammar
from corral.grammars.outlines_backend import OutlinesBackend
from corral.grammars.param_error import ParamError
from corral.grammars.params import StructuredOutputsParams
from corral.grammars.regex_size import regex_cost
from corral.grammars.registry import GrammarRegistry
from corral.grammars.spec import BACKENDS, GrammarSpec, normalize_spec
from corral.grammars.xgrammar_backend import XGrammarBackend

CacheKey = tuple[str, str, str, str]  # (kind, canonical text, backend, tokenizer fingerprint)
START_COMPLETION_MAX_TOKENS = 1024
START_COMPLETION_NODE_BUDGET = 2000
# Regexes compiled by default go to llguidance first (a compile of a few ms), then, in the
# background, to an outlines-core index, whose per-state masks are one copy after a state's
# first visit (llguidance walks the vocabulary's trie at every step: ~1 ms for a state in a
# broad character class). An index's memory grows with its regex's `regex_cost` (~1.5 MiB a
# unit on a 128K vocabulary): one regex may cost this many units, all held indexes together
# the budget's (regexes past either stay on llguidance).
UPGRADE_MAX_REGEX_COST = 48.0
UPGRADE_BUDGET = 256.0
UPGRADED_BACKEND = "llguidance>outlines"  # the cache key's backend of upgradable regexes
Backend = LLGuidanceBackend | OutlinesBackend | XGrammarBackend


class GrammarCompiler:
    """Compiles structured-output constraints for one tokenizer.

    `vocab_size` is the model's logits width (it may exceed `len(tokenizer)`); masks are
    `[rows, ceil(vocab_size/32)]`. `default_backend` is used unless a spec names its own.
    `timeout` is the compile deadline in seconds (queueing included); a compile past it
    fails its future but runs on in its pool (each backend has its own `max_workers`
    threads) and its result is cached for later requests. `json_whitespace` is
    a regex for the whitespace allowed at each JSON whitespace position (matched at most
    once); None keeps JSON compact. Results (refusals too) are cached by
    (kind, canonical spec, backend, tokenizer).

    With `upgrade_regexes`, a regex that names no backend while the default is llguidance is
    served by llguidance at once and moved to an outlines-core index once that is built in
    the background (within `UPGRADE_MAX_REGEX_COST` and `UPGRADE_BUDGET`): both enforce the
    same language exactly, and the index's masks are cached per state. A Lark grammar moves
    the same way when `lark_regex` proves a regex with exactly its language.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int],
                 default_backend: str = "llguidance", timeout: float = 10.0,
                 max_workers: int = 2, cache_size: int = 1024,
                 json_whitespace: str | None = None, upgrade_regexes: bool = True) -> None:
        if default_backend not in BACKENDS:
            raise ParamError(
                "default_backend", f"must be one of {BACKENDS} (got {default_backend!r})")
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ParamError("vocab_size", f"must be a positive integer (got {vocab_size!r})")
        if not eos_token_ids or not all(isinstance(t, int) and 0 <= t < vocab_size
                                        for t in eos_token_ids):
            raise ParamError(
                "eos_token_ids", f"must be token ids below vocab_size (got {eos_token_ids!r})")
        if not timeout > 0:
            raise ParamError("timeout", f"must be positive (got {timeout!r})")
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ParamError("max_workers", f"must be a positive integer (got {max_workers!r})")
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self._tokenizer = tokenizer
        self._completion_vocab = None
        self._vocab_lock = threading.Lock()
        self.default_backend = default_backend
        self.timeout = float(timeout)
        self._llguidance = LLGuidanceBackend(tokenizer, vocab_size, self.eos_token_ids,
                                             json_whitespace)
        self._outlines = OutlinesBackend(self._llguidance.lltok, vocab_size, self.eos_token_ids,
                                         json_whitespace)
        self._xgrammar: XGrammarBackend | None = None  # built on first use (~0.2 s)
        self._xgrammar_args = (tokenizer, vocab_size, self.eos_token_ids, json_whitespace)
        self._xgrammar_lock = threading.Lock()
        # Worker processes for completion searches (a `CompletionSearchPool`), set by the
        # engine when it has them: a grammar's start completion is then searched there, off
        # the GIL the engine's loop needs (a huge grammar's search holds it for ~1 s).
        self.search_pool = None
        self.tokenizer_fingerprint = _fingerprint(tokenizer, vocab_size, self.eos_token_ids)
        self._cache: OrderedDict[CacheKey, CompiledGrammar | ValueError] = OrderedDict()
        self._cache_size = cache_size
        self._inflight: dict[CacheKey, Future] = {}
        self._lock = threading.Lock()
        # One pool per backend: a slow outlines compile never delays an llguidance one.
        self._pools = {b: ThreadPoolExecutor(max_workers, thread_name_prefix=f"corral-{b}")
                       for b in BACKENDS}
        self.upgrade_regexes = upgrade_regexes and default_backend == "llguidance"
        # One thread for index builds: a slow one never delays a compile a request waits on.
        self._upgrade_pool = ThreadPoolExecutor(1, thread_name_prefix="corral-upgrade")
        self._upgrade_lock = threading.Lock()
        self._upgrade_cost = 0.0  # regex_cost of the indexes built, released ones not drained
        # Costs of indexes freed since: their finalizers only append (they may run inside
        # any lock, wherever the last reference drops), the holders of the lock drain.
        self._upgrade_released: deque[float] = deque()
        self.compile_times: dict[str, deque[float]] = {b: deque(maxlen=4096) for b in BACKENDS}
        self.registry = GrammarRegistry(self)

    def resolve(self, spec: StructuredOutputsParams | GrammarSpec) -> GrammarSpec:
        """The canonical spec with its backend chosen and any grammar name looked up."""
        return self._resolve(spec)[0]

    def _resolve(self, spec: StructuredOutputsParams | GrammarSpec) -> tuple[GrammarSpec, bool]:
        """`resolve`, and whether the backend is the default (no spec named one)."""
        resolved = normalize_spec(spec)
        if resolved.kind == "grammar_name":
            entry = self.registry.get(resolved.text)
            named = resolved.backend or entry.spec.backend
            return entry.spec.with_backend(named or self.default_backend), named is None
        return (resolved.with_backend(resolved.backend or self.default_backend),
                resolved.backend is None)

    def validate(self, spec: StructuredOutputsParams | GrammarSpec) -> None:
        """Fast checks (no token automaton is built); ValueError naming the problem."""
        self._validate(*self._prepare(spec))

    def validate_and_submit(self, spec: StructuredOutputsParams | GrammarSpec) -> Future:
        """`validate` (raising its ValueError), then `submit`: the spec is resolved once."""
        prepared = self._prepare(spec)
        self._validate(*prepared)
        return self._submit(*prepared)

    def _prepare(self, spec: StructuredOutputsParams | GrammarSpec
                 ) -> tuple[GrammarSpec, CacheKey, bool]:
        """(resolved spec, cache key, whether it moves to an outlines index)."""
        resolved, defaulted = self._resolve(spec)
        upgradable = defaulted and self._upgradable(resolved)
        return resolved, self._key(resolved, upgradable), upgradable

    def _validate(self, resolved: GrammarSpec, key: CacheKey, upgradable: bool) -> None:
        with self._lock:
            found = self._cached(key)
        if isinstance(found, ValueError):
            raise found
        if found is not None:
            return
        self._backend(resolved.backend).validate(resolved)

    def compile(self, spec: StructuredOutputsParams | GrammarSpec) -> CompiledGrammar:
        """Compile now (cached, under the deadline); ValueError on refusal or timeout."""
        return self.submit(spec).result()

    def submit(self, spec: StructuredOutputsParams | GrammarSpec) -> Future:
        """Compile in the pool; the future fails with ValueError on refusal or after `timeout`."""
        try:
            prepared = self._prepare(spec)
        except ValueError as e:
            outer: Future = Future()
            outer.set_exception(e)
            return outer
        return self._submit(*prepared)

    def _submit(self, resolved: GrammarSpec, key: CacheKey, upgradable: bool) -> Future:
        outer: Future = Future()
        with self._lock:
            found = self._cached(key)
            if found is None and key in self._inflight:
                return self._inflight[key]
            if found is None:
                self._inflight[key] = outer
        if found is not None:
            _settle(outer, found)
            return outer
        timer = threading.Timer(self.timeout, self._expire, (key, outer))
        timer.daemon = True
        timer.start()

        def done(inner: Future) -> None:
            timer.cancel()
            if inner.cancelled():
                with self._lock:
                    self._inflight.pop(key, None)
                _settle(outer, ParamError("structured_outputs", "the grammar compiler shut down"))
            else:
                _settle(outer, inner.exception() or inner.result())

        pool = self._pools[resolved.backend]
        pool.submit(self._compile_now, resolved, key, upgradable).add_done_callback(done)
        return outer

    def _upgradable(self, spec: GrammarSpec) -> bool:
        """Whether `spec` (resolved, its backend the default) moves to an outlines index."""
        if not self.upgrade_regexes or spec.backend != "llguidance":
            return False
        pattern = _upgrade_pattern(spec)
        if pattern is None:
            return False
        try:
            return regex_cost(pattern) <= UPGRADE_MAX_REGEX_COST
        except ValueError:  # a construct the size estimate does not read: stay on llguidance
            return False

    def _upgrade(self, spec: GrammarSpec, compiled: CompiledGrammar) -> None:
        """Build `spec`'s outlines-core index and move `compiled` to it (upgrade thread)."""
        pattern = _upgrade_pattern(spec)
        cost = regex_cost(pattern)
        if self.upgrade_cost_held + cost > UPGRADE_BUDGET:  # only this thread adds
            return
        with self._upgrade_lock:
            self._upgrade_cost += cost
        try:  # no compile-time sample: no request waits on this build
            factory = self._outlines.compile(GrammarSpec("regex", pattern, "outlines"))
        except Exception:  # noqa: BLE001 - an index it cannot build: llguidance stays
            self._upgrade_released.append(cost)
            return
        # The index lives as long as its table (held by the grammar and by its matchers).
        weakref.finalize(factory.table, self._upgrade_released.append, cost)
        compiled.switch_to("outlines", factory)

    @property
    def upgrade_cost_held(self) -> float:
        """The `regex_cost` of the outlines indexes regexes were moved to, still alive."""
        with self._upgrade_lock:
            while self._upgrade_released:
                self._upgrade_cost -= self._upgrade_released.popleft()
            return self._upgrade_cost

    def matcher_factory(self, spec: GrammarSpec):
        """Compile `spec` (resolved, with its backend) now, on this thread, without the
        cache, the deadline or the start completion: a factory of fresh matchers. For
        processes that replay an engine's matchers (completion searches)."""
        if spec.kind == "grammar" and spec.backend == "outlines":  # an upgraded Lark grammar
            pattern = lark_regex(spec.text)
            if pattern is None:
                raise ParamError("structured_outputs.grammar",
                                 "the outlines backend compiles only regular Lark grammars")
            spec = GrammarSpec("regex", pattern, "outlines")
        return self._backend(spec.backend).compile(spec)

    def drain_compile_times(self) -> list[float]:
        """The compile seconds of every backend since the last drain; the samples are cleared.

        Thread-safe: compile threads append without the lock (deque appends are atomic), each
        sample is popped once, and the lock keeps concurrent drains from racing on a deque.
        """
        samples: list[float] = []
        with self._lock:
            for times in self.compile_times.values():
                while times:
                    samples.append(times.popleft())
        return samples

    def shutdown(self) -> None:
        """Stop the compile pools (pending compiles are cancelled)."""
        for pool in [*self._pools.values(), self._upgrade_pool]:
            pool.shutdown(wait=False, cancel_futures=True)

    def _compile_now(self, spec: GrammarSpec, key: CacheKey,
                     upgradable: bool = False) -> CompiledGrammar | ValueError:
        start = time.perf_counter()
        try:
            factory = self._backend(spec.backend).compile(spec)
            result: CompiledGrammar | ValueError = CompiledGrammar(
                spec.kind, spec.text, spec.backend, time.perf_counter() - start, factory)
            self.compile_times[spec.backend].append(result.compile_time_s)
            if upgradable:
                self._upgrade_pool.submit(self._upgrade, spec, result)
            result.start_completion = self._start_completion(spec, factory)
        except ValueError as e:
            result = e
        except Exception as e:  # noqa: BLE001 - a backend crash refuses this spec only
            result = ParamError("structured_outputs", f"{spec.backend} failed to compile ({e})")
        with self._lock:
            self._cache[key] = result
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            self._inflight.pop(key, None)
        return result

    def completion_vocab(self):
        """The candidate tokens of completion searches for this tokenizer (built once)."""
        from corral.grammars.completion import CompletionVocab

        with self._vocab_lock:
            if self._completion_vocab is None:
                self._completion_vocab = CompletionVocab.from_tokenizer(
                    self._tokenizer, self.vocab_size, self.eos_token_ids)
            return self._completion_vocab

    def _start_completion(self, spec: GrammarSpec, factory) -> list[int] | None:
        """A short way to end the grammar from its start (for outputs that must close
        before their token limit), searched once per grammar: in a search worker process
        when the engine has them (this thread waits without the GIL), else here."""
        from corral.grammars.completion import shortest_completion

        pool = self.search_pool
        if pool is not None and pool.ready:
            try:
                future = pool.submit(spec.kind, spec.text, spec.backend, [],
                                     START_COMPLETION_MAX_TOKENS, START_COMPLETION_NODE_BUDGET)
                return future.result(timeout=self.timeout)
            except Exception:  # noqa: BLE001 - a broken or slow pool: search here instead
                pass
        try:
            return shortest_completion(factory(), START_COMPLETION_MAX_TOKENS,
                                       vocab=self.completion_vocab(),
                                       node_budget=START_COMPLETION_NODE_BUDGET)
        except Exception:  # noqa: BLE001 - unknown: the request then runs unsteered
            return None

    def _expire(self, key: CacheKey, outer: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is outer:
                del self._inflight[key]
        _settle(outer, ParamError(
            "structured_outputs", f"grammar compile timed out after {self.timeout:g}s"))

    def _cached(self, key: CacheKey) -> CompiledGrammar | ValueError | None:
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
        return found

    def _key(self, spec: GrammarSpec, upgradable: bool = False) -> CacheKey:
        backend = UPGRADED_BACKEND if upgradable else spec.backend
        return (spec.kind, spec.text, backend, self.tokenizer_fingerprint)

    def _backend(self, name: str | None) -> Backend:
        if name == "xgrammar":
            with self._xgrammar_lock:
                if self._xgrammar is None:
                    self._xgrammar = XGrammarBackend(*self._xgrammar_args)
                return self._xgrammar
        return self._outlines if name == "outlines" else self._llguidance


def _upgrade_pattern(spec: GrammarSpec) -> str | None:
    """The regex an outlines index of `spec` is built from: a regex's own pattern, a Lark
    grammar's exact regex (None where it has none)."""
    if spec.kind == "regex":
        return spec.text
    if spec.kind == "grammar":
        return lark_regex(spec.text)
    return None


def _settle(future: Future, result: CompiledGrammar | BaseException) -> None:
    """Complete `future` once; later attempts (deadline vs. finish) are ignored."""
    try:
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _fingerprint(tokenizer, vocab_size: int, eos_token_ids: list[int]) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(text.encode("utf-8"))
    digest.update(repr((vocab_size, eos_token_ids)).encode())
    return digest.hexdigest()[:16]
