"""Prometheus metrics of one server, in its own `CollectorRegistry`.

Engine-wide numbers (queues, KV-cache use, prefix-cache hits, token totals, preemptions)
are read from `engine.stats()` at scrape time; per-request latencies (TTFT, inter-token
latency, end-to-end) are observed by the routes as outputs arrive; grammar compile and
mask times are drained from `engine.grammar_stats()` at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
_GRAMMAR_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
                    5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PREFIX = "corral"
TOOL_CALL_OUTCOMES = ("valid", "unknown_tool", "invalid_arguments")


class _EngineCollector(Collector):
    """Reads the engine's counters at scrape time; one series per replica (label
    `replica`) when the engine has several (data parallelism)."""

    def __init__(self, engine: Any, model_name: str) -> None:
        self._engine = engine
        self._model_name = model_name
        self._per_replica = hasattr(engine, "replica_stats")
        self._label_names = ["model_name", "replica"] if self._per_replica else ["model_name"]

    def _series(self) -> list[tuple[list[str], Any]]:
        """(label values, stats) of each series."""
        if self._per_replica:
            return [([self._model_name, label], stats)
                    for label, stats in self._engine.replica_stats()]
        return [([self._model_name], self._engine.stats())]

    def collect(self) -> Iterable[Metric]:
        series = self._series()

        def family(kind, name: str, doc: str, value) -> Metric:
            metric = kind(f"{PREFIX}_{name}", doc, labels=self._label_names)
            for labels, stats in series:
                metric.add_metric(labels, float(value(stats)))
            return metric

        def gauge(name: str, doc: str, value) -> Metric:
            return family(GaugeMetricFamily, name, doc, value)

        def counter(name: str, doc: str, value) -> Metric:
            return family(CounterMetricFamily, name, doc, value)

        yield gauge("num_requests_running", "Requests being computed", lambda s: s.num_running)
        yield gauge("num_requests_waiting", "Requests waiting to be scheduled",
                    lambda s: s.num_waiting)
        yield gauge("kv_cache_usage_perc", "Share of KV-cache blocks in use (0..1)",
                    lambda s: s.kv_cache_usage)
        yield gauge("prefix_cache_hit_rate",
                    "Prompt tokens found in the prefix cache / prompt tokens looked up",
                    lambda s: s.prefix_cache_hit_rate)
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                      lambda s: s.prefix_cache_queries)
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache",
                      lambda s: s.prefix_cache_hits)
        yield counter("prompt_tokens", "Prompt tokens processed", lambda s: s.prompt_tokens_total)
        yield counter("generation_tokens", "Tokens generated",
                      lambda s: s.generation_tokens_total)
        yield counter("num_preemptions", "Sequences preempted (recomputed later)",
                      lambda s: s.num_preemptions)
        yield counter("spec_decode_num_draft_tokens", "Speculative draft tokens verified",
                      lambda s: s.spec_draft_tokens_total)
        yield counter("spec_decode_num_accepted_tokens", "Speculative draft tokens accepted",
                      lambda s: s.spec_accepted_tokens_total)
        yield counter("forced_tokens", "Tokens appended without sampling (grammar "
                      "completions at the token limit)", lambda s: s.forced_tokens_total)
        yield counter("decode_passes", "Sequence-steps that sampled (tokens per pass = "
                      "generation_tokens / this)", lambda s: s.num_decode_passes)


class ServerMetrics:
    """The registry of one app and the histograms the routes feed."""

    def __init__(self, engine: Any, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The API process's own CPU seconds and memory (`process_*`, where /proc exists):
        # CPU seconds per output token show when the API process, not the engine, is the
        # bottleneck (data parallelism relays every replica's tokens through it).
        ProcessCollector(registry=self.registry)
        self._engine = engine
        labels = ["model_name"]
        self._model = model_name
        reg = self.registry
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time to first token",
                              labels, buckets=_LATENCY_BUCKETS, registry=reg)
        self.itl = Histogram(f"{PREFIX}_inter_token_latency_seconds",
                             "Time between consecutive output tokens", labels,
                             buckets=_ITL_BUCKETS, registry=reg)
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds",
                             "Arrival to last token", labels, buckets=_LATENCY_BUCKETS,
                             registry=reg)
        self.grammar_compile = Histogram(f"{PREFIX}_grammar_compile_seconds",
                                         "Grammar compile time", labels,
                                         buckets=_GRAMMAR_BUCKETS, registry=reg)
        self.grammar_mask = Histogram(f"{PREFIX}_grammar_mask_seconds",
                                      "Time to fill one sequence's token mask", labels,
                                      buckets=_GRAMMAR_BUCKETS, registry=reg)
        self.requests = Counter(f"{PREFIX}_request_success", "Finished requests",
                                labels + ["finish_reason"], registry=reg)
        self.http_errors = Counter(f"{PREFIX}_request_errors", "Requests refused or failed",
                                   labels + ["status"], registry=reg)
        self.tool_calls = Counter(f"{PREFIX}_tool_calls", "Tool calls parsed from outputs, by "
                                  "outcome: valid, unknown_tool, invalid_arguments",
                                  labels + ["outcome"], registry=reg)
        for outcome in TOOL_CALL_OUTCOMES:
            self.tool_calls.labels(model_name, outcome)
        for hist in (self.ttft, self.itl, self.e2e, self.grammar_compile, self.grammar_mask):
            hist.labels(model_name)  # exported with zero counts from the start
        reg.register(_EngineCollector(engine, model_name))

    def tracker(self) -> RequestTracker:
        return RequestTracker(self)

    def tool_call(self, outcome: str) -> None:
        self.tool_calls.labels(self._model, outcome).inc()

    def error(self, status: int) -> None:
        self.http_errors.labels(self._model, str(status)).inc()

    def render(self) -> bytes:
        """The exposition text; drains the engine's grammar samples first."""
        self._drain_grammar_stats()
        return generate_latest(self.registry)

    def _drain_grammar_stats(self) -> None:
        getter = getattr(self._engine, "grammar_stats", None)
        if getter is None:
            return
        stats = getter() or {}
        for key, hist in (("compile_seconds", self.grammar_compile),
                          ("mask_seconds", self.grammar_mask)):
            for value in _samples(stats, key):
                hist.labels(self._model).observe(value)


def _samples(stats: dict[str, Any], key: str) -> list[float]:
    """Samples under `key` (or any key holding its stem, e.g. `compile` or `mask`)."""
    stem = key.split("_")[0]
    for name, values in stats.items():
        if name == key or stem in name:
            if isinstance(values, (list, tuple)):
                return [float(v) for v in values]
    return []


class RequestTracker:
    """Feeds one request's latencies as its outputs arrive (any number of completions)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._m = metrics
        # Children looked up once per request, not per token.
        self._ttft = metrics.ttft.labels(metrics._model)
        self._itl = metrics.itl.labels(metrics._model)
        self._start = time.monotonic()
        self._last: float | None = None
        self._num_tokens = 0

    def update(self, num_tokens: int) -> None:
        """Called after each engine output with the total tokens generated so far."""
        new = num_tokens - self._num_tokens
        if new <= 0:
            return
        now = time.monotonic()
        if self._last is None:
            self._ttft.observe(now - self._start)
            new -= 1
        elif new > 0:
            gap = (now - self._last) / new
            for _ in range(new):
                self._itl.observe(gap)
        self._last = now
        self._num_tokens = num_tokens

    def finish(self, finish_reasons: Iterable[str | None]) -> None:
        model = self._m._model
        self._m.e2e.labels(model).observe(time.monotonic() - self._start)
        for reason in finish_reasons:
            self._m.requests.labels(model, reason or "unknown").inc()
