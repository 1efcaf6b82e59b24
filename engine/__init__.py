"""Corral's engine: requests to tokens over a paged KV cache with continuous batching."""

from .async_engine import AsyncLLMEngine
from .config import EngineConfig
from .core_client import EngineCoreClient
from .engine_errors import EngineDeadError
from .engine_stats import EngineStats
from .llm import LLM
from .llm_engine import LLMEngine
from .outputs import CompletionOutput, RequestOutput, TokenLogprob
from .sampling_params import SamplingParams, StructuredOutputsParams

__all__ = [
    "AsyncLLMEngine",
    "CompletionOutput",
    "EngineConfig",
    "EngineCoreClient",
    "EngineDeadError",
    "EngineStats",
    "LLM",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputsParams",
    "TokenLogprob",
]
