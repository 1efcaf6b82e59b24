"""The async engine: streaming outputs, concurrency, refusals and aborts."""

from __future__ import annotations

import asyncio

import pytest

from corral.engine import AsyncLLMEngine, SamplingParams


@pytest.fixture(scope="module")
def engine():
    engine = AsyncLLMEngine(max_model_len=1024, kv_cache_memory=64 * 1024**2)
    yield engine
    engine.shutdown()


def run(coro):
    return asyncio.run(coro)


def test_streams_growing_outputs_and_runs_requests_concurrently(engine):
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Count from one to ten."}], tokenize=False,
        add_generation_prompt=True)

    async def one(i: int) -> list[str]:
        texts = []
        params = SamplingParams(temperature=0, max_tokens=12, min_tokens=12)
        async for out in engine.generate(prompt, params, request_id=f"stream-{i}"):
            texts.append(out.outputs[0].text)
        assert out.finished and out.outputs[0].finish_reason == "length"
        return texts

    async def main():
        return await asyncio.gather(*(one(i) for i in range(3)))

    results = run(main())
    for texts in results:
        assert len(texts) >= 2
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert results[0][-1] == results[1][-1] == results[2][-1]


def test_refused_request_raises_and_engine_keeps_serving(engine):
    async def main():
        with pytest.raises(ValueError, match="max_model_len"):
            async for _ in engine.generate([5] * 2000, SamplingParams(max_tokens=2)):
                pass
        outs = [o async for o in engine.generate("Hello", SamplingParams(max_tokens=2))]
        return outs[-1]

    assert run(main()).finished


def test_closing_the_stream_aborts_and_frees_blocks(engine):
    free_before = engine.engine.block_manager.num_free_blocks

    async def main():
        stream = engine.generate("Tell me a long story.",
                                 SamplingParams(max_tokens=500, ignore_eos=True),
                                 request_id="to-abort")
        async for out in stream:
            if len(out.outputs[0].token_ids) >= 3:
                break
        await stream.aclose()
        for _ in range(200):
            if not engine.engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.02)

    run(main())
    assert not engine.engine.has_unfinished_requests()
    assert engine.engine.block_manager.num_free_blocks == free_before


def test_grammar_work_never_waits_for_the_engine_lock(engine):
    """Validation and registration run on API threads without the lock that the engine
    thread holds through each step: a request's validation could otherwise starve."""
    import threading

    from corral.engine import StructuredOutputsParams

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = StructuredOutputsParams(json=schema)
    done = threading.Event()

    def work():
        engine.validate_structured(spec)
        engine.register_grammar("lock-free-check", 'start: "yes" | "no"')
        engine.unregister_grammar("lock-free-check")
        done.set()

    with engine._lock:  # as during a long engine step
        worker = threading.Thread(target=work)
        worker.start()
        assert done.wait(30), "grammar work waited for the engine lock"
    worker.join()
