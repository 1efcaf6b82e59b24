"""Data parallelism: the router's choices, and two engine cores behind one engine
interface giving the in-process engine's outputs, with grammars on both and metrics per
replica."""

from __future__ import annotations

import asyncio
import os

import pytest

from corral.engine import AsyncLLMEngine, EngineConfig, SamplingParams, StructuredOutputsParams
from corral.engine.data_parallel import DataParallelClient, PrefixRouter, replica_configs
from corral.grammars.param_error import ParamError

CONFIG = dict(max_model_len=1024, kv_cache_memory=64 * 1024**2, dtype="float32")


def test_router_keeps_a_prefix_on_its_replica_while_the_load_allows():
    router = PrefixRouter(2, block_size=4, slack=2)
    system = list(range(16))  # four whole blocks: the affinity key
    first = router.choose(system + [100])
    assert router.choose(system + [200]) == first  # same prefix, load 1 vs 0: within slack
    other = router.choose(list(range(50, 70)))
    assert other != first  # a new prefix goes to the least loaded
    router.choose(system + [300])
    router.choose(system + [400])
    assert router.loads[first] == 4 and router.loads[other] == 1
    assert router.choose(system + [500]) == other  # the owner is busier than slack allows
    for _ in range(4):
        router.finished(first)
    assert router.choose(system + [600]) == other  # the prefix followed it there


def test_router_balances_prompts_with_nothing_to_share():
    router = PrefixRouter(3, block_size=16)
    picks = [router.choose([i, i + 1]) for i in range(9)]  # shorter than one block
    assert sorted(picks) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert router.prefix_key([1] * 15) is None
    assert router.prefix_key([1] * 64) == router.prefix_key([1] * 64 + [2])


def test_more_replicas_than_gpus_is_refused():
    config = EngineConfig(**CONFIG, device="cpu")
    assert len(replica_configs(config, 3)) == 3
    with pytest.raises(ParamError) as err:
        replica_configs(config, 0)
    assert err.value.param == "data_parallel_size"


@pytest.fixture(scope="module")
def replicas():
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # two cores' worth of threads on two cores
    try:
        engine = DataParallelClient(EngineConfig(**CONFIG), 2)
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    yield engine
    engine.shutdown()


def test_two_cores_answer_as_one_engine(replicas):
    local = AsyncLLMEngine(**CONFIG)
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(6)]
    params = SamplingParams(temperature=0, max_tokens=12)

    async def run(engine):
        async def one(prompt):
            return [out async for out in engine.generate(prompt, params)][-1]
        return await asyncio.gather(*(one(p) for p in prompts))

    try:
        expected = asyncio.run(run(local))
    finally:
        local.shutdown()
    got = asyncio.run(run(replicas))
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    served = [s.generation_tokens_total for _, s in replicas.replica_stats()]
    assert all(n > 0 for n in served), served  # both replicas took requests
    assert replicas.stats().generation_tokens_total == sum(served)
    assert replicas.router.loads == [0, 0]


def test_grammars_reach_every_replica(replicas):
    replicas.register_grammar("yes_no", 'start: "yes" | "no"')
    try:
        params = SamplingParams(temperature=0, max_tokens=8,
                                structured_outputs=StructuredOutputsParams(grammar_name="yes_no"))
        for replica in replicas.replicas:  # each answers from its own registry
            async def one(engine=replica):
                return [o async for o in engine.generate("Is water wet?", params)][-1]
            assert asyncio.run(one()).outputs[0].text in ("yes", "no")
    finally:
        replicas.unregister_grammar("yes_no")
    assert all("yes_no" not in [g["name"] for g in r.grammars()] for r in replicas.replicas)


def test_metrics_carry_a_replica_label(replicas):
    from fastapi.testclient import TestClient

    from corral.api.app import create_app
    from corral.api.state import ServerSettings

    with TestClient(create_app(replicas, ServerSettings())) as http:
        text = http.get("/metrics").text
        assert http.get("/health").status_code == 200
    assert 'replica="0"' in text and 'replica="1"' in text
    assert "corral_generation_tokens_total" in text
