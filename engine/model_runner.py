"""The model runner: owns the model and the KV cache, builds each step's batch tensors.

Per step it flattens the scheduled sequences' new tokens into one batch (no padding), builds
positions, slot_mapping, query_start_loc, seq_lens and block tables on the host, copies
them to the device in one transfer, runs the model and returns the logits of the rows
that sample (the last new token of each sequence whose chunk reaches its end).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from corral.grammars.param_error import ParamError

from .attention import AttentionMetadata, TorchAttentionBackend
from .config import EngineConfig
from .cuda_graphs import DecodeGraphs
from .dummy_weights import init_dummy_weights
from .mixed_graphs import MixedGraphs
from .model_loader import build_model, load_config, load_weights
from .scheduler import SchedulerOutput
from .tensor_parallel import TensorParallel, check_tensor_parallel

logger = logging.getLogger(__name__)


@dataclass
class PendingTokens:
    """Last step's sampled tokens, still on the device (async scheduling).

    `token_ids[rows[seq_id]]` is the value of that sequence's PENDING_TOKEN."""

    token_ids: torch.Tensor  # int64 [num_sampled], on the model's device
    rows: dict[int, int]


class StepShape(NamedTuple):
    """The sizes a step's flat host array is cut by, and the host-side attention scalars.
    Rank 0 broadcasts it (as `HEADER` ints) ahead of the array itself."""

    num_tokens: int
    num_rows: int  # query rows (a sequence verifying drafts has one per token)
    num_logits: int
    num_fill: int  # input tokens still pending on rank 0's device
    max_blocks: int
    num_decodes: int
    max_query_len: int
    max_seq_len: int


_OP_STOP, _OP_STEP = 0, 1
_HEADER = 2 + len(StepShape._fields)  # op, payload length, StepShape


@dataclass
class StepInputs:
    """Device tensors of one step."""

    input_ids: torch.Tensor  # int64 [num_tokens]
    positions: torch.Tensor  # int64 [num_tokens]
    logits_indices: torch.Tensor  # int64 [num_sampling_seqs]
    meta: AttentionMetadata


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU and on CPUs with native bfloat16 matmuls (AMX or
    AVX512-BF16), float32 on other CPUs."""
    if name == "auto":
        if device.type == "cuda" or cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for probe in probes:
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            continue
    return False


def make_attention_backend(name: str, device: torch.device):
    if name == "triton" and device.type != "cuda":
        raise ParamError("attention_backend", "triton needs a CUDA device")
    if name == "triton" or (name == "auto" and device.type == "cuda"):
        try:
            from corral.kernels.triton_attention import TritonAttentionBackend
        except ImportError:
            if name == "triton":
                raise
            logger.warning("Triton attention unavailable; using the torch backend")
        else:
            return TritonAttentionBackend()
    return TorchAttentionBackend()


class ModelRunner:
    """Runs the model over flattened batches against the paged KV cache."""

    def __init__(self, config: EngineConfig, model_dir: Path, vocab_size_hint: int | None,
                 max_model_len: int | None, max_rows_per_seq: int = 1, tp_rank: int = 0):
        """`tp_rank` 0 is the engine's runner (it starts the other ranks when
        `config.tensor_parallel_size` > 1); a worker process passes its own rank."""
        # A sequence verifying drafts is computed as one decode row per token.
        self.max_rows_per_seq = max_rows_per_seq
        device = pick_device(config.device)
        self.hf_config = load_config(model_dir, config.shape, vocab_size_hint)
        check_tensor_parallel(self.hf_config, config.tensor_parallel_size)
        self.workers: list = []
        self.tp = TensorParallel()
        if config.tensor_parallel_size > 1:
            from . import tensor_parallel_group as group

            if tp_rank == 0:
                args = (model_dir, vocab_size_hint, max_model_len, max_rows_per_seq)
                config, self.tp, self.workers = group.launch(config, args, device)
            else:
                self.tp = group.join_group(tp_rank, config, group.rank_device(
                    device, tp_rank % group.ranks_per_node(config)))
            device = group.rank_device(device, self.tp.local_rank)
        self.config = config
        self.device = device
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # CUDA graphs and Triton launch on the current one
        self.dtype = pick_dtype(config.dtype, self.device)
        context = int(getattr(self.hf_config, "max_position_embeddings", 4096) or 4096)
        self.max_model_len = min(max_model_len or context, context)
        self.backend = make_attention_backend(config.attention_backend, self.device)
        self.model = build_model(self.hf_config, self.backend, self.max_model_len,
                                 self.dtype, self.device, self.tp)
        if config.load_format == "dummy":
            init_dummy_weights(self.model, config.seed)
        else:
            load_weights(self.model, model_dir)
        self.vocab_size = self.hf_config.vocab_size
        self.block_size = config.block_size
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.num_blocks = 0
        self.graphs: DecodeGraphs | None = None
        self.mixed_graphs: MixedGraphs | None = None
        # Two pinned staging buffers used in turn, each with the event of its last copy: with
        # async scheduling the host fills one while the device may still read the other.
        self._staging = [torch.empty(0, dtype=torch.int64) for _ in range(2)]
        self._staging_events: list = [None, None]
        self._staging_turn = 0

    # ---- KV cache -------------------------------------------------------------------------

    @property
    def kv_bytes_per_block(self) -> int:
        attn = self.model.layers[0].self_attn
        per_token = 2 * attn.num_kv_heads * attn.head_dim * self.dtype.itemsize
        return per_token * self.block_size * len(self.model.layers)

    def allocate_kv_cache(self) -> int:
        """Size the pool (explicit, memory budget, or GPU utilisation) and allocate it."""
        if self.config.num_blocks is not None:
            num_blocks = self.config.num_blocks
        elif self.device.type == "cuda":
            num_blocks = self._profile_gpu_blocks()
        else:
            num_blocks = self.config.kv_cache_memory // self.kv_bytes_per_block
        if self.tp.enabled:  # every rank holds the same blocks: the smallest pool wins
            count = torch.tensor([num_blocks], dtype=torch.int64)
            torch.distributed.all_reduce(count, torch.distributed.ReduceOp.MIN,
                                         group=self.tp.cpu_group)
            num_blocks = int(count.item())
        if num_blocks < 2:
            raise ParamError("kv_cache_memory", "too small for two KV blocks")
        attn = self.model.layers[0].self_attn
        shape = (num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=self.dtype, device=self.device),
             torch.zeros(shape, dtype=self.dtype, device=self.device))
            for _ in self.model.layers
        ]
        self.num_blocks = num_blocks
        if self._use_cuda_graphs:
            max_blocks = (self.max_model_len + self.block_size - 1) // self.block_size
            max_rows = self.config.max_num_seqs * self.max_rows_per_seq
            self.graphs = DecodeGraphs(self.model, self.kv_caches, max_rows,
                                       max_blocks, self.max_model_len, self.device)
            self.graphs.capture()
            if self.config.max_mixed_graph_tokens > 0:
                self.mixed_graphs = MixedGraphs(self.model, self.kv_caches, self.backend,
                                                self.config.max_mixed_graph_tokens,
                                                self.device)
                self.mixed_graphs.capture()
        return num_blocks

    @property
    def _use_cuda_graphs(self) -> bool:
        from corral.kernels.triton_attention import TritonAttentionBackend

        return (self.device.type == "cuda" and not self.config.enforce_eager
                and isinstance(self.backend, TritonAttentionBackend))

    def _profile_gpu_blocks(self) -> int:
        """Blocks that fit in `gpu_memory_utilization` after a worst-case forward."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        num_tokens = min(self.config.max_num_batched_tokens, self.max_model_len)
        probe_blocks = (num_tokens + self.block_size - 1) // self.block_size
        attn = self.model.layers[0].self_attn
        shape = (probe_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
        caches = [(torch.zeros(shape, dtype=self.dtype, device=self.device),
                   torch.zeros(shape, dtype=self.dtype, device=self.device))
                  for _ in self.model.layers]
        ids = torch.zeros(num_tokens, dtype=torch.long, device=self.device)
        positions = torch.arange(num_tokens, device=self.device)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=self.device),
            block_tables=torch.arange(probe_blocks, dtype=torch.int32,
                                      device=self.device).unsqueeze(0),
            slot_mapping=torch.arange(num_tokens, dtype=torch.int64, device=self.device),
            num_decodes=0, num_decode_tokens=0, max_query_len=num_tokens,
            max_seq_len=num_tokens, query_start_loc_cpu=[0, num_tokens],
            seq_lens_cpu=[num_tokens],
        )
        with torch.inference_mode():
            hidden = self.model(ids, positions, caches, meta)
            self.model.compute_logits(hidden[-self.config.max_num_seqs:])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        probe_bytes = probe_blocks * self.kv_bytes_per_block
        del caches, hidden
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.device).total_memory
        free_now, _ = torch.cuda.mem_get_info(self.device)
        used_by_others = total - free_now - torch.cuda.memory_reserved(self.device)
        budget = total * self.config.gpu_memory_utilization - used_by_others - (peak - probe_bytes)
        return max(int(budget // self.kv_bytes_per_block), 0)

    # ---- one step ----------------------------------------------------------------------

    def prepare(self, batch: SchedulerOutput, pending: PendingTokens | None = None
                ) -> StepInputs:
        """Host-side batch building, then one host-to-device copy (broadcast first to the
        other tensor-parallel ranks).

        Input tokens still pending on the device are filled in there from `pending`."""
        host, shape = self._host_batch(batch, pending)
        if self.tp.enabled:
            self._send_step(host, shape)
        return self._upload(host, shape, pending)

    def _host_batch(self, batch: SchedulerOutput, pending: PendingTokens | None
                    ) -> tuple[np.ndarray, StepShape]:
        """The step as one flat int64 array: input ids, positions, slots, query starts,
        sequence lengths, logits rows, pending fills (destination, source), block tables."""
        bs = self.block_size
        num_seqs = len(batch.scheduled)
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens: list[int] = []
        logits_indices: list[int] = []
        max_blocks = max(len(s.seq.block_table) for s in batch.scheduled)
        block_tables = np.zeros((num_seqs, max_blocks), dtype=np.int64)
        num_decodes = 0
        fill_dst: list[int] = []  # input positions whose token is pending on the device
        fill_src: list[int] = []  # ... and its row in `pending.token_ids`
        table_rows: list[int] = []  # per row of the batch, the sequence it reads blocks of
        for i, item in enumerate(batch.scheduled):
            seq, n = item.seq, item.num_new_tokens
            start = seq.num_computed_tokens
            table = seq.block_table
            block_tables[i, : len(table)] = table
            if seq.num_pending_tokens:
                # Only a sequence's last token is ever pending, and it is computed alone.
                assert n == 1 and pending is not None and start == seq.num_tokens - 1, seq
                fill_dst.append(len(input_ids))
                fill_src.append(pending.rows[seq.seq_id])
            if n == 1:
                input_ids.append(max(seq.token_ids[start], 0))
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
                starts.append(starts[-1] + 1)
                seq_lens.append(start + 1)
                table_rows.append(i)
                if item.samples:
                    logits_indices.append(starts[-1] - 1)
                if num_decodes == len(table_rows) - 1:
                    num_decodes += 1
                continue
            if item.is_decode:
                # The last token and its drafts, each a decode row of its own: row r sits
                # at position start + r and attends over the context up to itself (the
                # drafts' keys and values are written before any row attends).
                tokens = [max(seq.token_ids[start], 0), *seq.draft_token_ids[: n - 1]]
                for r, token in enumerate(tokens):
                    pos = start + r
                    input_ids.append(token)
                    positions.append(pos)
                    slots.append(table[pos // bs] * bs + pos % bs)
                    starts.append(starts[-1] + 1)
                    seq_lens.append(pos + 1)
                    table_rows.append(i)
                    if item.samples:
                        logits_indices.append(starts[-1] - 1)
                if num_decodes == len(table_rows) - n:
                    num_decodes += n
                continue
            input_ids.extend(seq.token_ids[start : start + n])
            positions.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            starts.append(starts[-1] + n)
            seq_lens.append(start + n)
            table_rows.append(i)
            if item.samples:
                logits_indices.append(starts[-1] - 1)
        if len(table_rows) != num_seqs:
            block_tables = block_tables[table_rows]
        host = np.concatenate([
            np.asarray(input_ids + positions + slots + starts + seq_lens + logits_indices
                       + fill_dst + fill_src, dtype=np.int64),
            block_tables.reshape(-1),
        ])
        max_query_len = max((s.num_new_tokens for s in batch.scheduled if not s.is_decode),
                            default=1)
        shape = StepShape(starts[-1], len(table_rows), len(logits_indices), len(fill_dst),
                          max_blocks, num_decodes, max_query_len, max(seq_lens))
        return host, shape

    def _upload(self, host: np.ndarray, shape: StepShape, pending: PendingTokens | None
                ) -> StepInputs:
        """One host-to-device copy of the flat array, cut into the step's tensors."""
        dev = torch.from_numpy(host)
        if self.device.type == "cuda":
            dev = self._to_device(dev)
        t, r = shape.num_tokens, shape.num_rows
        sizes = [t, t, t, r + 1, r, shape.num_logits, shape.num_fill, shape.num_fill,
                 r * shape.max_blocks]
        (ids_t, pos_t, slots_t, starts_t, lens_t, logits_t, dst_t, src_t,
         tables_t) = dev.split(sizes)
        if shape.num_fill:
            if pending is not None:
                ids_t.index_copy_(0, dst_t, pending.token_ids.index_select(0, src_t))
            if self.tp.enabled:  # the pending tokens live on rank 0's device only
                torch.distributed.broadcast(ids_t, src=0, group=self.tp.group)
        meta = AttentionMetadata(
            query_start_loc=starts_t.to(torch.int32),
            seq_lens=lens_t.to(torch.int32),
            block_tables=tables_t.view(r, shape.max_blocks).to(torch.int32),
            slot_mapping=slots_t,
            num_decodes=shape.num_decodes,
            num_decode_tokens=shape.num_decodes,
            max_query_len=shape.max_query_len,
            max_seq_len=shape.max_seq_len,
            query_start_loc_cpu=host[3 * t : 3 * t + r + 1].tolist(),
            seq_lens_cpu=host[3 * t + r + 1 : 3 * t + 2 * r + 1].tolist(),
        )
        return StepInputs(ids_t, pos_t, logits_t, meta)

    # ---- tensor parallelism: rank 0 leads, the others follow --------------------------------

    def _send_step(self, host: np.ndarray, shape: StepShape) -> None:
        header = torch.tensor([_OP_STEP, host.size, *shape], dtype=torch.int64)
        torch.distributed.broadcast(header, src=0, group=self.tp.cpu_group)
        torch.distributed.broadcast(torch.from_numpy(host), src=0, group=self.tp.cpu_group)

    @torch.inference_mode()
    def follow(self) -> None:
        """A worker rank's loop: run each step rank 0 broadcasts, until it says stop."""
        header = torch.empty(_HEADER, dtype=torch.int64)
        while True:
            torch.distributed.broadcast(header, src=0, group=self.tp.cpu_group)
            op, size, *fields = header.tolist()
            if op == _OP_STOP:
                return
            host = torch.empty(size, dtype=torch.int64)
            torch.distributed.broadcast(host, src=0, group=self.tp.cpu_group)
            self._run(self._upload(host.numpy(), StepShape(*fields), None))

    def shutdown(self) -> None:
        """Rank 0: stop the workers and leave the group. Workers: leave the group."""
        if not self.tp.enabled:
            return
        if self.tp.rank == 0:
            stop = torch.zeros(_HEADER, dtype=torch.int64)
            torch.distributed.broadcast(stop, src=0, group=self.tp.cpu_group)
            for proc in self.workers:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
        torch.distributed.destroy_process_group()
        self.tp = TensorParallel()

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """One host-to-device copy through a reused pinned buffer."""
        turn = self._staging_turn
        self._staging_turn ^= 1
        if self._staging_events[turn] is not None:
            self._staging_events[turn].synchronize()  # its previous copy has been read
        if self._staging[turn].numel() < host.numel():
            self._staging[turn] = torch.empty(
                max(host.numel(), 2 * self._staging[turn].numel()), dtype=torch.int64,
                pin_memory=True)
        staging = self._staging[turn][: host.numel()]
        staging.copy_(host)
        dev = staging.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._staging_events[turn] = event
        return dev

    @torch.inference_mode()
    def execute(self, batch: SchedulerOutput, pending: PendingTokens | None = None
                ) -> torch.Tensor:
        """Run one step; returns float32 logits [num_sampling_seqs, vocab] (on a GPU, the
        work is queued: nothing here waits for the device)."""
        return self._run(self.prepare(batch, pending))

    def _run(self, inputs: StepInputs) -> torch.Tensor:
        meta = inputs.meta
        if (self.graphs is not None and meta.num_decodes == meta.num_seqs
                and self.graphs.can_run(meta.num_seqs, meta.block_tables.shape[1])):
            hidden = self.graphs.run(inputs.input_ids, inputs.positions, meta)
        elif (self.mixed_graphs is not None
              and self.mixed_graphs.can_run(inputs.input_ids.shape[0])):
            hidden = self.mixed_graphs.run(inputs.input_ids, inputs.positions, meta)
        else:
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, meta)
        return self.model.compute_logits(hidden[inputs.logits_indices])
