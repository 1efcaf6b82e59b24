"""The `corral` command line: `corral serve [flags]`.

Every flag can also be set by an environment variable: `--max-model-len` is
`CORRAL_MAX_MODEL_LEN`, and so on (`CORRAL_` + the flag in upper case, dashes as
underscores). A flag on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .state import DEFAULT_MAX_BODY_BYTES

logger = logging.getLogger("corral.api")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from `123`, `512MiB`, `2G`, `1.5GB` (binary units)."""
    match = _SIZE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 536870912, 512MiB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _optional_str(text: str) -> str | None:
    return None if text.strip().lower() in ("", "none") else text


# (flag, type, default, help); the environment variable is derived from the flag.
_SERVE_FLAGS: list[tuple[str, Callable[[str], Any], Any, str]] = [
    ("--model", _optional_str, None, "model folder, GGUF file or hub id (default: embedded "
                                     "SmolLM2-135M-Instruct)"),
    ("--host", str, "127.0.0.1", "address to listen on"),
    ("--port", int, 8000, "port to listen on"),
    ("--api-key", _optional_str, None, "require 'Authorization: Bearer KEY' on /v1 routes"),
    ("--served-model-name", _optional_str, None, "model name clients use (default: the "
                                                 "model's name)"),
    ("--embedding-model", _optional_str, "all-MiniLM-L6-v2",
     "embedding model folder or 'none' to turn /v1/embeddings off (default: embedded "
     "all-MiniLM-L6-v2)"),
    ("--max-model-len", int, None, "context length (default: the model's)"),
    ("--max-num-seqs", int, None, "most sequences computed at once"),
    ("--max-num-batched-tokens", int, None, "token budget of one engine step"),
    ("--kv-cache-memory", parse_size, None, "KV-cache bytes on CPU (e.g. 512MiB)"),
    ("--gpu-memory-utilization", float, None, "share of GPU memory for weights + KV cache"),
    ("--num-blocks", int, None, "exact number of KV blocks (overrides the memory budgets)"),
    ("--block-size", int, None, "tokens per KV block"),
    ("--grammar-backend", str, None, "llguidance, xgrammar or outlines"),
    ("--tool-call-format", str, "auto", "the model's tool-call format: hermes, qwen3_coder, "
                                        "llama3_json, mistral, harmony or auto (detected from "
                                        "the chat template and special tokens)"),
    ("--fast-forward", parse_bool, None, "draft the tokens grammars force and verify them "
                                         "in the same forward pass"),
    ("--speculative", _optional_str, None, "speculative decoding: 'ngram' drafts n-gram "
                                           "matches from the prompt and output (and "
                                           "grammar-forced tokens)"),
    ("--num-speculative-tokens", int, None, "most drafts per sequence and step (default 4)"),
    ("--completion-workers", int, None, "worker processes searching the ways out of "
                                        "constrained outputs near max_tokens (default: "
                                        "1-4 on CUDA, 0 on the CPU)"),
    ("--device", str, None, "auto, cpu or cuda[:N]"),
    ("--dtype", str, None, "auto, float32, bfloat16 or float16"),
    ("--load-format", str, None, "auto, or dummy (random weights, for benchmarks)"),
    ("--shape", _optional_str, None, "a built-in model shape for dummy weights (e.g. "
                                     "llama3-8b)"),
    ("--enforce-eager", parse_bool, None, "no CUDA graphs"),
    ("--max-mixed-graph-tokens", int, None, "steps mixing prefill and decodes up to this "
                                            "many tokens replay CUDA graphs cut at attention "
                                            "(default 1024; 0: eager)"),
    ("--async-scheduling", parse_bool, None, "launch each step before reading back the "
                                             "last one's tokens (default: on for CUDA)"),
    ("--seed", int, None, "engine seed"),
    ("--tensor-parallel-size", int, None, "split the model over this many GPUs (one process "
                                          "each)"),
    ("--data-parallel-size", int, 1, "engine cores (each on its own GPUs) behind this server, "
                                     "requests routed by load and prompt prefix"),
    ("--nnodes", int, None, "machines the tensor-parallel ranks span (default 1)"),
    ("--node-rank", int, None, "this machine's index; nodes other than 0 run only workers"),
    ("--master-addr", str, None, "address of node 0 for the ranks' rendezvous"),
    ("--master-port", int, None, "port of that rendezvous (default: a free one, one node)"),
    ("--engine-in-process", parse_bool, False, "step the engine on a thread of the server's "
                                               "process instead of an engine-core process"),
    ("--responses-db", str, None, "SQLite file of the Responses API's stored responses "
                                  "(default: responses.sqlite3 in the cache folder; "
                                  "':memory:' keeps them until the server stops)"),
    ("--max-body-size", parse_size, DEFAULT_MAX_BODY_BYTES, "largest request body accepted "
                                                            "(413 above)"),
    ("--max-waiting", int, None, "most requests waiting for the engine (not yet given their "
                                 "first output); more get HTTP 429 with Retry-After "
                                 "(default: no bound)"),
    ("--request-timeout", float, None, "seconds a request may take before it is aborted "
                                       "with HTTP 504 (default: no limit)"),
    ("--shutdown-timeout", float, 30.0, "seconds a stopping server (SIGTERM, Ctrl-C) gives "
                                        "requests in flight before aborting them"),
    ("--log-level", str, "info", "debug, info, warning or error"),
]


def env_name(flag: str) -> str:
    return "CORRAL_" + flag.lstrip("-").replace("-", "_").upper()


def build_parser(environ: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser; defaults come from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="corral", description="Corral LLM serving engine")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the OpenAI-compatible server",
                                description="Start the OpenAI-compatible HTTP server.")
    for flag, kind, default, text in _SERVE_FLAGS:
        name = env_name(flag)
        if name in env:
            try:
                default = kind(env[name])
            except (ValueError, argparse.ArgumentTypeError) as e:
                parser.error(f"{name}: {e}")
        nargs = "?" if kind is parse_bool else None
        const = True if kind is parse_bool else None
        extra: dict[str, Any] = {"nargs": nargs, "const": const} if nargs else {}
        serve.add_argument(flag, type=kind, default=default, help=f"{text} [env {name}]",
                           **extra)
    return parser


def engine_config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The `EngineConfig` fields the flags set (unset flags keep the config's defaults)."""
    from dataclasses import fields

    from corral.engine import EngineConfig

    names = {f.name for f in fields(EngineConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values["model"] = args.model
    return values


def serve(args: argparse.Namespace) -> None:
    """Build the engine, the embedder and the app, then run uvicorn until stopped."""
    import uvicorn

    from corral.engine import EngineConfig

    from .app import create_app
    from .embeddings import Embedder
    from .state import ServerSettings

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ServerSettings(api_key=args.api_key, served_model_name=args.served_model_name,
                                  max_body_bytes=args.max_body_size,
                                  tool_call_format=args.tool_call_format,
                                  responses_db=args.responses_db,
                                  max_waiting=args.max_waiting,
                                  request_timeout=args.request_timeout,
                                  shutdown_timeout=args.shutdown_timeout)
        config = EngineConfig(**engine_config_kwargs(args))
    except ValueError as e:
        raise SystemExit(f"corral serve: {e}") from None
    if config.node_rank > 0:
        serve_worker_node(config)
        return
    try:
        engine = build_engine(config, args.data_parallel_size, args.engine_in_process)
    except ValueError as e:
        raise SystemExit(f"corral serve: {e}") from None
    try:
        embedder = Embedder(args.embedding_model) if args.embedding_model else None
        app = create_app(engine, settings, embedder)
        # After the drain (uvicorn then re-raises the signal that stopped it, so code after
        # `run` may never execute): the engine stops with the app.
        app.router.add_event_handler("shutdown", engine.shutdown)
        state = app.state.corral
        kv_tokens = engine.num_kv_blocks * engine.config.block_size
        logger.info("model %s (served as '%s'), max_model_len %d%s", engine.model_name,
                    state.model_name, engine.max_model_len,
                    " (engine in process)" if args.engine_in_process else "")
        logger.info("KV cache: %d blocks of %d tokens (%d tokens)", engine.num_kv_blocks,
                    engine.config.block_size, kv_tokens)
        if embedder is not None:
            logger.info("embeddings: %s (%d dimensions)", embedder.model_name,
                        embedder.dimensions)
        logger.info("serving the OpenAI API at http://%s:%d/v1%s", args.host, args.port,
                    " (API key required)" if settings.api_key else "")
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                    timeout_graceful_shutdown=settings.shutdown_timeout)
    finally:
        engine.shutdown()


def build_engine(config: Any, data_parallel_size: int, in_process: bool) -> Any:
    """The engine the server drives: a thread, one engine-core process, or several."""
    from corral.engine import AsyncLLMEngine, EngineCoreClient
    from corral.engine.data_parallel import DataParallelClient
    from corral.grammars.param_error import ParamError

    if data_parallel_size != 1:
        if in_process:
            raise ParamError("data_parallel_size", "needs engine-core processes (drop "
                             "--engine-in-process)")
        return DataParallelClient(config, data_parallel_size)
    if not in_process:
        return EngineCoreClient(config)
    engine = AsyncLLMEngine(config)
    engine.engine.prepare_grammars()  # as the engine core does: no stall of a stream later
    return engine


def serve_worker_node(config: Any) -> None:
    """A node other than 0: run its tensor-parallel ranks until node 0's engine stops."""
    from corral.engine.model_files import resolve_model_dir
    from corral.engine.tensor_parallel_group import start_node_workers
    from corral.engine.tokenizer import load_tokenizer

    model_dir = resolve_model_dir(config.model, need_config=config.shape is None)
    vocab_size = len(load_tokenizer(config.tokenizer or model_dir))  # as node 0 reads it
    workers = start_node_workers(config, model_dir, vocab_size)
    logger.info("node %d: ranks %s waiting for node 0 at %s:%s", config.node_rank,
                [w.name for w in workers], config.master_addr, config.master_port)
    for proc in workers:
        proc.join()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `corral` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serve(args)
    else:  # pragma: no cover - argparse refuses unknown commands
        sys.exit(2)


if __name__ == "__main__":
    main()
