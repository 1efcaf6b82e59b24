"""Counters and gauges the engine exposes (the server turns them into Prometheus metrics)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks in use
    num_preemptions: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which were found cached
    prompt_tokens_total: int = 0  # prompt tokens computed (cache hits excluded)
    generation_tokens_total: int = 0
    forced_tokens_total: int = 0  # tokens appended without sampling (grammar completions)
    spec_draft_tokens_total: int = 0  # speculative drafts verified
    spec_accepted_tokens_total: int = 0  # ... of which the model agreed with
    num_decode_passes: int = 0  # sequence-steps that sampled (tokens per pass = gen / this)

    @property
    def prefix_cache_hit_rate(self) -> float:
        return (
            self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
        )
