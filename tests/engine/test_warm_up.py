"""The GPU start-up warm-up leaves no trace: no requests, free blocks, zeroed counters."""

from __future__ import annotations


def test_warm_up_leaves_a_clean_engine(llm):
    engine = llm.engine
    engine._warm_up(lengths=(1, 7, 40))
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks
    stats = engine.get_stats()
    assert stats.generation_tokens_total == 0 and stats.prompt_tokens_total == 0
    assert stats.prefix_cache_queries == 0
    out = llm.generate(["Hello"], None)[0]
    assert out.finished and out.outputs[0].token_ids
