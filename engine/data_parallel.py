"""Data parallelism: N engine cores (each possibly tensor-parallel) behind one API server.

`DataParallelClient` has the interface of one engine (`AsyncLLMEngine`, `EngineCoreClient`)
and spreads requests over its replicas with a `PrefixRouter`. Replica i runs on GPUs
`i * tp .. (i + 1) * tp - 1`. Grammar registrations go to every replica; `stats()` sums
them and `replica_stats()` gives each (the server labels its metrics by replica).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from corral.grammars.param_error import ParamError

from .config import EngineConfig
from .engine_stats import EngineStats
from .outputs import RequestOutput
from .sampling_params import SamplingParams, StructuredOutputsParams
from .tokenizer import encode_prompt

AFFINITY_BLOCKS = 4  # a prompt's first blocks name its prefix (a system prompt, say)
AFFINITY_ENTRIES = 65536  # prefixes remembered (least recently used forgotten)


class PrefixRouter:
    """Picks a replica for each request: the one that last served the same prompt prefix
    (its blocks are likely still in that replica's prefix cache) unless it is busier than
    the least loaded by more than `slack`, else the least loaded.

    Load is the number of requests a replica is running or holding; the caller reports
    starts and ends."""

    def __init__(self, num_replicas: int, block_size: int, slack: int = 4) -> None:
        self.loads = [0] * num_replicas
        self.block_size = block_size
        self.slack = slack
        self._owners: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def prefix_key(self, prompt_ids: list[int]) -> bytes | None:
        """A hash of the prompt's first whole blocks (up to `AFFINITY_BLOCKS`); None for a
        prompt shorter than one block (nothing to share)."""
        blocks = min(len(prompt_ids) // self.block_size, AFFINITY_BLOCKS)
        if blocks == 0:
            return None
        head = prompt_ids[: blocks * self.block_size]
        return hashlib.blake2b(repr(head).encode(), digest_size=16).digest()

    def choose(self, prompt_ids: list[int]) -> int:
        """The replica for a new request (its load is counted from now)."""
        key = self.prefix_key(prompt_ids)
        with self._lock:
            least = min(range(len(self.loads)), key=self.loads.__getitem__)
            chosen = least
            owner = self._owners.get(key) if key is not None else None
            if owner is not None and self.loads[owner] <= self.loads[least] + self.slack:
                chosen = owner
            if key is not None:
                self._owners[key] = chosen
                self._owners.move_to_end(key)
                if len(self._owners) > AFFINITY_ENTRIES:
                    self._owners.popitem(last=False)
            self.loads[chosen] += 1
            return chosen

    def finished(self, replica: int) -> None:
        with self._lock:
            self.loads[replica] -= 1


def replica_configs(config: EngineConfig, size: int) -> list[EngineConfig]:
    """One config per replica, each on its own GPUs; refuses more GPUs than there are."""
    if size < 1:
        raise ParamError("data_parallel_size", f"must be at least 1 (got {size})")
    import torch

    from .model_runner import pick_device

    device = pick_device(config.device)
    if device.type != "cuda":
        return [config] * size
    per_replica = config.tensor_parallel_size // config.nnodes
    first = device.index or 0
    needed = first + size * per_replica
    if needed > torch.cuda.device_count():
        raise ParamError("data_parallel_size",
                         f"{size} replicas of {per_replica} GPU(s) from GPU {first} need "
                         f"{needed} GPUs; this machine has {torch.cuda.device_count()}")
    return [dataclasses.replace(config, device=f"cuda:{first + i * per_replica}")
            for i in range(size)]


class DataParallelClient:
    """`size` engine-core processes behind one engine interface."""

    def __init__(self, config: EngineConfig, size: int, **client_args: Any) -> None:
        from transformers import AutoTokenizer  # noqa: F401 - lazy imports race in threads

        from .core_client import EngineCoreClient

        configs = replica_configs(config, size)
        self.replicas: list[Any] = []
        try:  # the cores load their models at the same time
            with ThreadPoolExecutor(size) as pool:
                futures = [pool.submit(EngineCoreClient, c, **client_args) for c in configs]
                for future in futures:
                    self.replicas.append(future.result())
        except BaseException:
            for replica in self.replicas:
                replica.shutdown()
            raise
        first = self.replicas[0]
        self.config = config
        self.tokenizer = first.tokenizer
        self.model_name = first.model_name
        self.max_model_len = min(r.max_model_len for r in self.replicas)
        self.num_kv_blocks = sum(r.num_kv_blocks for r in self.replicas)
        self.router = PrefixRouter(size, config.block_size)

    async def generate(self, prompt: str | list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """As `EngineCoreClient.generate`, on the replica the router picks."""
        if isinstance(prompt, str):
            prompt = await asyncio.to_thread(encode_prompt, self.tokenizer, prompt)
        replica = self.router.choose(prompt)
        try:
            async for output in self.replicas[replica].generate(prompt, params, request_id):
                yield output
        finally:
            self.router.finished(replica)

    async def abort(self, request_id: str) -> None:
        for replica in self.replicas:
            await replica.abort(request_id)

    def validate_structured(self, spec: StructuredOutputsParams) -> None:
        self.replicas[0].validate_structured(spec)

    def register_grammar(self, name: str, definition: Any, syntax: str = "lark") -> None:
        """Registered on every replica (refused as a whole if the first refuses it)."""
        for replica in self.replicas:
            replica.register_grammar(name, definition, syntax)

    def unregister_grammar(self, name: str) -> None:
        for replica in self.replicas:
            replica.unregister_grammar(name)

    def grammars(self) -> list[dict]:
        return self.replicas[0].grammars()

    def replica_stats(self) -> list[tuple[str, EngineStats]]:
        """(replica label, its stats) for each replica."""
        return [(str(i), r.stats()) for i, r in enumerate(self.replicas)]

    def stats(self) -> EngineStats:
        """The replicas' stats summed (KV-cache use averaged)."""
        total = EngineStats()
        parts = [s for _, s in self.replica_stats()]
        for field in dataclasses.fields(EngineStats):
            setattr(total, field.name, sum(getattr(s, field.name) for s in parts))
        total.kv_cache_usage = total.kv_cache_usage / len(parts)
        return total

    def grammar_stats(self) -> dict[str, list[float]]:
        merged: dict[str, list[float]] = {"compile_seconds": [], "mask_seconds": []}
        for replica in self.replicas:
            for key, values in replica.grammar_stats().items():
                merged.setdefault(key, []).extend(values)
        return merged

    def is_healthy(self) -> bool:
        return all(r.is_healthy() for r in self.replicas)

    def shutdown(self) -> None:
        for replica in self.replicas:
            replica.shutdown()
