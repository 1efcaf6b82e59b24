"""`corral serve` flags and their CORRAL_* environment variables."""

from __future__ import annotations

import argparse

import pytest

from corral.api.cli import build_parser, engine_config_kwargs, env_name, parse_size
from corral.engine import EngineConfig


def test_flags_parse_and_map_onto_engine_config():
    args = build_parser({}).parse_args([
        "serve", "--port", "9001", "--max-model-len", "1024", "--max-num-seqs", "8",
        "--kv-cache-memory", "256MiB", "--grammar-backend", "outlines", "--fast-forward",
        "--api-key", "k", "--served-model-name", "smol", "--embedding-model", "none"])
    assert (args.port, args.api_key, args.served_model_name) == (9001, "k", "smol")
    assert args.embedding_model is None
    kwargs = engine_config_kwargs(args)
    config = EngineConfig(**kwargs)
    assert (config.max_model_len, config.max_num_seqs) == (1024, 8)
    assert config.kv_cache_memory == 256 * 1024**2
    assert (config.grammar_backend, config.fast_forward) == ("outlines", True)
    assert config.model is None and "port" not in kwargs


def test_environment_variables_are_defaults_and_flags_win():
    env = {"CORRAL_PORT": "8100", "CORRAL_API_KEY": "from-env", "CORRAL_FAST_FORWARD": "true",
           "CORRAL_GPU_MEMORY_UTILIZATION": "0.5", "CORRAL_MODEL": "/models/x"}
    args = build_parser(env).parse_args(["serve", "--port", "8200"])
    assert args.port == 8200 and args.api_key == "from-env" and args.fast_forward is True
    assert args.gpu_memory_utilization == 0.5 and args.model == "/models/x"
    assert env_name("--max-model-len") == "CORRAL_MAX_MODEL_LEN"


def test_bad_values_are_refused():
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["serve", "--port", "eighty"])
    with pytest.raises(SystemExit):
        build_parser({"CORRAL_MAX_NUM_SEQS": "many"})
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")


def test_sizes():
    assert parse_size("1024") == 1024
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1.5g") == int(1.5 * 1024**3)
    assert parse_size("512MiB") == 512 * 1024**2


def test_data_parallel_needs_engine_core_processes():
    from corral.api.cli import build_engine
    from corral.engine import EngineConfig
    from corral.grammars.param_error import ParamError

    args = build_parser({}).parse_args(["serve", "--data-parallel-size", "2"])
    assert args.data_parallel_size == 2
    with pytest.raises(ParamError) as err:
        build_engine(EngineConfig(), 2, in_process=True)
    assert err.value.param == "data_parallel_size"
