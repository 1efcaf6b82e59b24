"""Iteration-level scheduling: which sequences run this step and how many tokens each.

Each step has a token budget (`max_num_batched_tokens`). Running sequences go first, in
arrival order: a decode takes one token, a prompt still being prefilled takes a chunk of
what remains of the budget (chunked prefill). Then waiting sequences start, FIFO, reusing
prefix-cached blocks. When the pool runs out of blocks, the most recently arrived running
sequence is preempted: its blocks are freed and it goes back to the front of the waiting
queue, to be recomputed later (its tokens are kept, so nothing is lost).

The scheduler imports no torch; it is tested on plain ints.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    """One sequence's share of a step: `num_new_tokens` slots computed, of which the last
    `num_draft_tokens` are speculative drafts (`seq.draft_token_ids`) after its last token."""

    seq: Sequence
    num_new_tokens: int
    num_draft_tokens: int = 0

    @property
    def samples(self) -> bool:
        """Whether this step computes the sequence's last token (so a token is sampled)."""
        num_real = self.num_new_tokens - self.num_draft_tokens
        return self.seq.num_computed_tokens + num_real == self.seq.num_tokens

    @property
    def is_decode(self) -> bool:
        """One real token (plus any drafts): the runner computes it as decode rows."""
        return self.num_new_tokens - self.num_draft_tokens == 1


@dataclass
class SchedulerOutput:
    """One step: sequences with one new token first (decodes), then longer chunks."""

    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    """Owns the waiting and running queues."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int,
                 max_num_batched_tokens: int, enable_chunked_prefill: bool = True):
        self.block_manager = block_manager
        self.block_size = block_manager.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled_ids: set[int] = set()
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING or seq.last_token_pending:
                continue  # preempted earlier in this loop, or ends with its pending token
            num_new = min(seq.num_uncomputed_tokens, budget)
            if num_new == 0:
                continue
            num_drafts = 0
            if num_new == 1 and seq.num_uncomputed_tokens == 1 and seq.draft_token_ids:
                num_drafts = min(len(seq.draft_token_ids), budget - 1)
                del seq.draft_token_ids[num_drafts:]
                num_new += num_drafts
            if self._make_room(seq, seq.num_computed_tokens + num_new, scheduled_ids, out):
                out.scheduled.append(ScheduledSeq(seq, num_new, num_drafts))
                scheduled_ids.add(seq.seq_id)
                budget -= num_new
        if not out.preempted:
            budget = self._schedule_waiting(out, budget)
        out.scheduled.sort(key=lambda s: not s.is_decode)
        return out

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> int:
        bm = self.block_manager
        skipped: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            if not seq.request.can_schedule(seq):
                skipped.append(seq)
                continue
            shared, hashes = seq.request.shared_prompt_blocks(seq, self.block_size)
            if not shared:
                shared, hashes = bm.find_cached_prefix(seq.token_ids)
            num_cached = len(shared) * self.block_size
            num_new = min(seq.num_tokens - num_cached, budget)
            if not self.enable_chunked_prefill and num_new < seq.num_tokens - num_cached:
                self.waiting.appendleft(seq)
                break
            num_fresh = bm.blocks_needed(num_cached + num_new) - len(shared)
            reusable_free = sum(1 for b in shared if bm.blocks[b].ref_count == 0)
            if not bm.can_allocate(num_fresh + reusable_free):
                self.waiting.appendleft(seq)
                break
            bm.acquire(shared)
            bm.record_prefix_lookup(seq.num_tokens, num_cached)
            seq.block_table = list(shared) + bm.allocate(num_fresh)
            seq.block_hashes = list(hashes)
            seq.num_computed_tokens = num_cached
            seq.status = SequenceStatus.RUNNING
            seq.request.metrics.num_cached_prompt_tokens = max(
                seq.request.metrics.num_cached_prompt_tokens, num_cached
            )
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
        self.waiting.extendleft(reversed(skipped))
        return budget

    def _make_room(self, seq: Sequence, num_slots: int, scheduled_ids: set[int],
                   out: SchedulerOutput) -> bool:
        """Grow `seq`'s block table to `num_slots`, preempting others if needed.

        Returns False if `seq` itself had to be preempted.
        """
        bm = self.block_manager
        num_needed = bm.blocks_needed(num_slots) - len(seq.block_table)
        while num_needed > 0 and not bm.can_allocate(num_needed):
            candidates = [s for s in self.running if s.seq_id not in scheduled_ids]
            victim = max(candidates, key=lambda s: s.arrival_order)
            self.preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        if num_needed > 0:
            seq.block_table.extend(bm.allocate(num_needed))
        return True

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and send it back to wait (recompute later)."""
        self.running.remove(seq)
        seq.draft_token_ids = []
        self._free_blocks(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def register_computed_blocks(self, seq: Sequence) -> None:
        """Hash the blocks that became full and final, for the prefix cache."""
        bs = self.block_size
        num_full = min(seq.num_computed_tokens, seq.num_tokens) // bs
        for i in range(len(seq.block_hashes), num_full):
            parent = seq.block_hashes[i - 1] if i else None
            block_hash = self.block_manager.register_full_block(
                seq.block_table[i], parent, seq.token_ids[i * bs : (i + 1) * bs]
            )
            seq.block_hashes.append(block_hash)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._free_blocks(seq)
        seq.status = SequenceStatus.FINISHED

    def _free_blocks(self, seq: Sequence) -> None:
        self.block_manager.release(seq.block_table)
        seq.block_table = []
        seq.block_hashes = []
