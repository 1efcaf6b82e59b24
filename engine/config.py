"""The engine's configuration: one frozen dataclass, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass

from corral.grammars.param_error import ParamError

_GRAMMAR_BACKENDS = ("llguidance", "outlines", "xgrammar")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_LOAD_FORMATS = ("auto", "dummy")


@dataclass(frozen=True)
class EngineConfig:
    """Settings fixed for an engine's life.

    The KV pool is `num_blocks` blocks of `block_size` tokens when given; otherwise it is
    sized from `kv_cache_memory` bytes (CPU) or `gpu_memory_utilization` (GPU).
    `max_model_len` None means the model's own context length.
    `load_format="dummy"` gives random weights of the model's shape (benchmarks); `shape`
    names a built-in shape (e.g. "llama3-8b") to use with the model's tokenizer.
    `async_scheduling` (None: on for CUDA unless `speculative`) schedules and launches step
    N+1 before reading back step N's sampled tokens, so the host work of a step overlaps
    the device's. `speculative="ngram"` drafts up to `num_speculative_tokens` tokens per
    sequence and step (what the grammar forces, then n-gram matches in the prompt and
    output) and verifies them in one forward pass; `fast_forward` alone drafts only the
    tokens grammars force. `overlap_grammar` (None: on for CUDA) fills grammar masks on a
    worker thread while the engine thread goes on. `completion_workers` (None: a quarter
    of the host's cores, 1 to 4, for CUDA; 0 for the CPU) is the number of worker processes
    that search the ways out of constrained outputs near their token limit.
    `tensor_parallel_size` splits the model over that many ranks (one process per GPU),
    `nnodes` machines with as many ranks each; node 0 runs the engine, the others only
    workers (`node_rank` > 0). They meet at `master_addr:master_port` (None: a free port,
    one node only). On CUDA, pure-decode steps replay whole-forward CUDA graphs and steps
    that mix in prefill chunks, up to `max_mixed_graph_tokens` tokens (0: none), replay
    graphs cut at each layer's attention, which runs eagerly (`enforce_eager`: no graphs).
    """

    model: str | None = None
    tokenizer: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_memory: int = 2 * 1024**3
    gpu_memory_utilization: float = 0.90
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    grammar_backend: str = "llguidance"
    grammar_compile_timeout: float = 10.0
    grammar_compile_threads: int = 2
    fast_forward: bool = False
    load_format: str = "auto"
    shape: str | None = None
    enforce_eager: bool = False
    max_mixed_graph_tokens: int = 1024
    attention_backend: str = "auto"
    async_scheduling: bool | None = None
    speculative: str | None = None
    num_speculative_tokens: int = 4
    overlap_grammar: bool | None = None
    completion_workers: int | None = None
    tensor_parallel_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ParamError(name, f"{what} (got {getattr(self, name)!r})")

        check(self.block_size in (8, 16, 32, 64, 128), "block_size", "must be 8, 16, 32, 64 or 128")
        check(self.num_blocks is None or self.num_blocks >= 2, "num_blocks", "must be at least 2")
        check(self.kv_cache_memory > 0, "kv_cache_memory", "must be positive")
        check(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
              "must be in (0, 1]")
        check(self.max_num_seqs >= 1, "max_num_seqs", "must be at least 1")
        check(self.max_num_batched_tokens >= 1, "max_num_batched_tokens", "must be at least 1")
        check(isinstance(self.max_mixed_graph_tokens, int) and self.max_mixed_graph_tokens >= 0,
              "max_mixed_graph_tokens", "must be a non-negative integer")
        check(self.max_model_len is None or self.max_model_len >= 1, "max_model_len",
              "must be positive")
        check(self.grammar_backend in _GRAMMAR_BACKENDS, "grammar_backend",
              f"must be one of {_GRAMMAR_BACKENDS}")
        check(self.grammar_compile_timeout > 0, "grammar_compile_timeout", "must be positive")
        check(self.dtype in _DTYPES, "dtype", f"must be one of {_DTYPES}")
        check(self.load_format in _LOAD_FORMATS, "load_format", f"must be one of {_LOAD_FORMATS}")
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "device",
              "must be auto, cpu or cuda[:N]")
        check(self.attention_backend in ("auto", "torch", "triton"), "attention_backend",
              "must be auto, torch or triton")
        check(self.completion_workers is None or (isinstance(self.completion_workers, int)
              and 0 <= self.completion_workers <= 64), "completion_workers",
              "must be None or an integer in 0..64")
        check(self.speculative in (None, "ngram"), "speculative", "must be None or 'ngram'")
        check(isinstance(self.num_speculative_tokens, int)
              and 1 <= self.num_speculative_tokens <= 16, "num_speculative_tokens",
              "must be an integer in 1..16")
        check(isinstance(self.tensor_parallel_size, int) and self.tensor_parallel_size >= 1,
              "tensor_parallel_size", "must be a positive integer")
        check(isinstance(self.nnodes, int) and self.nnodes >= 1
              and self.tensor_parallel_size % self.nnodes == 0, "nnodes",
              f"must be a positive divisor of tensor_parallel_size "
              f"({self.tensor_parallel_size})")
        check(0 <= self.node_rank < self.nnodes, "node_rank", f"must be in 0..{self.nnodes - 1}")
        check(self.master_port is not None or self.nnodes == 1, "master_port",
              "is needed when the group spans several nodes")
        if not self.enable_chunked_prefill and self.max_model_len is not None:
            check(self.max_num_batched_tokens >= self.max_model_len, "max_num_batched_tokens",
                  "must cover max_model_len when chunked prefill is off")
