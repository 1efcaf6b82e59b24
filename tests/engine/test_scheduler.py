"""Scheduling on plain ints: budgets, chunked prefill, preemption, prefix hits."""

from __future__ import annotations

from corral.engine.block_manager import BlockManager
from corral.engine.request import Request
from corral.engine.sampling_params import SamplingParams
from corral.engine.scheduler import Scheduler
from corral.engine.sequence import Sequence, SequenceStatus

_arrivals = iter(range(10**6))


def make_seq(prompt_len: int, first_token: int = 0, n: int = 1) -> list[Sequence]:
    prompt = list(range(first_token, first_token + prompt_len))
    request = Request(f"r{first_token}-{prompt_len}", None, prompt, SamplingParams(n=n),
                      next(_arrivals))
    request.seqs = [Sequence(i, request, i, None, None) for i in range(n)]
    return request.seqs


def advance(scheduler: Scheduler, out, new_token: int = 7) -> None:
    """What the engine does after a step: advance counters, append sampled tokens."""
    for item in out.scheduled:
        samples = item.samples
        item.seq.num_computed_tokens += item.num_new_tokens
        scheduler.register_computed_blocks(item.seq)
        if samples:
            item.seq.token_ids.append(new_token)


def test_chunked_prefill_mixes_with_decodes():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    (short,) = make_seq(3)
    sched.add(short)
    advance(sched, sched.schedule())
    (long,) = make_seq(25, first_token=100)
    sched.add(long)
    out = sched.schedule()
    assert [(s.seq, s.num_new_tokens) for s in out.scheduled] == [(short, 1), (long, 9)]
    assert not out.scheduled[1].samples
    advance(sched, out)
    out = sched.schedule()
    assert [(s.seq, s.num_new_tokens) for s in out.scheduled] == [(short, 1), (long, 9)]
    advance(sched, out)
    out = sched.schedule()
    assert out.scheduled[1].num_new_tokens == 7 and out.scheduled[1].samples


def test_preemption_frees_the_newest_and_keeps_its_tokens():
    sched = Scheduler(BlockManager(4, 4), max_num_seqs=8, max_num_batched_tokens=64)
    (old,) = make_seq(8)
    (new,) = make_seq(8, first_token=50)
    sched.add(old)
    sched.add(new)
    out = sched.schedule()
    assert len(out.scheduled) == 2
    advance(sched, out)  # each fills 2 blocks: the pool is full
    out = sched.schedule()  # both need a third block
    assert out.preempted == [new]
    assert new.status is SequenceStatus.WAITING and new.num_computed_tokens == 0
    assert new.num_tokens == 9 and new.block_table == []
    assert [s.seq for s in out.scheduled] == [old]
    assert sched.num_preemptions == 1


def test_prefix_cache_hit_skips_computed_tokens():
    sched = Scheduler(BlockManager(32, 4), max_num_seqs=8, max_num_batched_tokens=64)
    (first,) = make_seq(10)
    sched.add(first)
    advance(sched, sched.schedule())
    (second,) = make_seq(10)
    sched.add(second)
    out = sched.schedule()
    item = [s for s in out.scheduled if s.seq is second][0]
    assert second.num_computed_tokens == 8 and item.num_new_tokens == 2
    assert second.block_table[:2] == first.block_table[:2]


def test_samples_wait_for_the_shared_prompt():
    sched = Scheduler(BlockManager(32, 4), max_num_seqs=8, max_num_batched_tokens=64)
    seqs = make_seq(10, n=3)
    for seq in seqs:
        sched.add(seq)
    out = sched.schedule()
    assert [s.seq for s in out.scheduled] == [seqs[0]]
    advance(sched, out)
    out = sched.schedule()
    later = {s.seq.index: s.num_new_tokens for s in out.scheduled}
    assert later == {0: 1, 1: 2, 2: 2}
    assert seqs[1].block_table[:2] == seqs[0].block_table[:2]


def test_max_num_seqs_and_finish():
    sched = Scheduler(BlockManager(32, 4), max_num_seqs=2, max_num_batched_tokens=64)
    seqs = [make_seq(3, first_token=10 * i)[0] for i in range(3)]
    for seq in seqs:
        sched.add(seq)
    out = sched.schedule()
    assert len(out.scheduled) == 2
    sched.finish(seqs[0])
    assert sched.block_manager.num_free_blocks == 31
    advance(sched, out)
    out = sched.schedule()
    assert {s.seq.seq_id for s in out.scheduled} == {seqs[1].seq_id, seqs[2].seq_id}
