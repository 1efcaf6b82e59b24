"""A request's output stream: deltas that pile up while the consumer is busy come out as
one cumulative output equal to the last one, and an error comes after them."""

from __future__ import annotations

import asyncio
import random

import pytest

from corral.engine.engine_errors import EngineDeadError
from corral.engine.output_deltas import DeltaEncoder, RequestAssembler
from corral.engine.output_stream import OutputStream
from corral.engine.sampling_params import SamplingParams

from .test_output_deltas import snapshots


def _pairs(seed: int):
    """(cumulative output, its delta) for each step that changed something."""
    outs = snapshots(random.Random(seed), n=2, steps=30)
    encoder = DeltaEncoder()
    return [(o, d) for o, d in ((o, encoder.encode(o)) for o in outs) if d is not None]


def _stream(loop) -> OutputStream:
    params = SamplingParams(n=2, logprobs=2)
    return OutputStream(loop, RequestAssembler("r", None, [1, 2], params))


@pytest.mark.parametrize("seed", range(5))
def test_deltas_that_piled_up_make_one_output_equal_to_the_last(seed):
    pairs = _pairs(seed)

    async def run():
        stream = _stream(asyncio.get_running_loop())
        got, expected = [], []
        for i, (out, delta) in enumerate(pairs):
            stream.push(delta)
            if i % 3 == 2 or i == len(pairs) - 1:  # the consumer wakes every third step
                got.append(await stream.next())
                expected.append(out)
        return got, expected

    got, expected = asyncio.run(run())
    assert len(got) == (len(pairs) + 2) // 3
    assert got == expected and got[-1].finished


def test_a_waiting_consumer_gets_every_step():
    pairs = _pairs(7)

    async def run():
        stream = _stream(asyncio.get_running_loop())
        got: list = []

        async def consume():
            for _ in pairs:
                got.append(await stream.next())

        task = asyncio.create_task(consume())
        for i, (_, delta) in enumerate(pairs):
            await asyncio.sleep(0)  # the consumer is waiting now
            stream.push(delta)
            while len(got) <= i:
                await asyncio.sleep(0)
        await task
        return got

    assert asyncio.run(run()) == [out for out, _ in pairs]


def test_an_error_comes_after_the_outputs_already_pushed():
    pairs = _pairs(3)

    async def run():
        stream = _stream(asyncio.get_running_loop())
        stream.push(pairs[0][1])
        stream.push(pairs[1][1])
        stream.fail(EngineDeadError("engine core died"))
        first = await stream.next()
        with pytest.raises(EngineDeadError, match="died"):
            await stream.next()
        return first

    assert asyncio.run(run()) == pairs[1][0]  # both deltas applied before the error
