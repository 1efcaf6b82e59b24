"""Compiler: cache keys, off-thread compiles under a deadline, and the grammar registry."""

from __future__ import annotations

import threading

import pytest

from corral.engine.sampling_params import StructuredOutputsParams as S
from corral.grammars import GrammarCompiler

from .conftest import EOS_IDS, VOCAB_SIZE
from .instances import accepts_text

ARITHMETIC = 'start: expr\nexpr: NUMBER (("+" | "*") NUMBER)*\nNUMBER: /[0-9]+/\n'


def test_cache_key_is_kind_spec_backend(compiler):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    first = compiler.compile(S(json=schema))
    assert compiler.compile(S(json=dict(schema))) is first
    text = '{"type": "object", "properties": {"a": {"type": "integer"}}}'
    assert compiler.compile(S(json=text)) \
        is first
    other_backend = compiler.compile(S(json=schema, backend="outlines"))
    assert other_backend is not first and other_backend.backend == "outlines"
    reordered = {"properties": {"a": {"type": "integer"}}, "type": "object"}
    assert compiler.compile(S(json=reordered)) is not first  # key order fixes output order


def test_refusals_are_cached_and_fail_the_future(compiler):
    future = compiler.submit(S(json={"type": "array", "uniqueItems": True}))
    with pytest.raises(ValueError, match="uniqueItems"):
        future.result(timeout=10)
    again = compiler.submit(S(json={"type": "array", "uniqueItems": True}))
    assert again.done()
    bad_name = compiler.submit(S(grammar_name="missing"))
    assert isinstance(bad_name.exception(timeout=1), ValueError)


def test_concurrent_submits_share_one_compile(compiler):
    spec = S(regex=r"[a-f0-9]{8}-[a-f0-9]{4}")
    results, threads = [], []
    for _ in range(8):
        thread = threading.Thread(target=lambda: results.append(compiler.compile(spec)))
        threads.append(thread)
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_deadline_fails_the_future_with_timeout(hf_tokenizer):
    compiler = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS, timeout=0.001, max_workers=1)
    try:
        properties = {f"field_{i}": {"type": "string", "pattern": f"^[a-z]{{{i % 7 + 1}}}x$"}
                      for i in range(300)}
        future = compiler.submit(S(json={"type": "object", "properties": properties,
                                         "required": list(properties)}))
        with pytest.raises(ValueError, match=r"timed out after 0.001s"):
            future.result(timeout=30)
    finally:
        compiler.shutdown()


def test_constructor_validates_arguments(hf_tokenizer):
    with pytest.raises(ValueError, match="default_backend"):
        GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS, default_backend="guidance")
    with pytest.raises(ValueError, match="eos_token_ids"):
        GrammarCompiler(hf_tokenizer, VOCAB_SIZE, [VOCAB_SIZE])
    with pytest.raises(ValueError, match="timeout"):
        GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS, timeout=0)


def test_registry_register_list_use_unregister(compiler, hf_tokenizer):
    registry = compiler.registry
    entry = registry.register("arith", ARITHMETIC, syntax="lark")
    registry.register("hex", r"[0-9a-f]+", syntax="regex")
    registry.register("point", {"type": "object", "properties": {"x": {"type": "integer"}},
                                "required": ["x"]}, syntax="json_schema")
    names = [g["name"] for g in registry.list()]
    assert {"arith", "hex", "point"} <= set(names) and names == sorted(names)
    assert {"name": "hex", "syntax": "regex", "definition": r"[0-9a-f]+"} in registry.list()

    compiled = compiler.compile(S(grammar_name="arith"))
    assert compiled is entry.compiled  # compiled once, at registration
    assert accepts_text(compiled, hf_tokenizer, "1+2*3")
    assert not accepts_text(compiled, hf_tokenizer, "1+")
    assert accepts_text(compiler.compile(S(grammar_name="point")), hf_tokenizer, '{"x":1}')
    outlines_point = compiler.compile(S(grammar_name="point", backend="outlines"))
    assert outlines_point.backend == "outlines"
    with pytest.raises(ValueError, match="outlines backend compiles only"):
        compiler.compile(S(grammar_name="arith", backend="outlines"))

    assert registry.register("hex", r"[0-9a-f]+", syntax="regex").name == "hex"  # idempotent
    with pytest.raises(ValueError, match="already registered"):
        registry.register("hex", r"[0-9]+", syntax="regex")
    registry.unregister("hex")
    assert "hex" not in registry
    with pytest.raises(ValueError, match="unknown grammar 'hex'"):
        compiler.compile(S(grammar_name="hex"))
    with pytest.raises(ValueError, match="no grammar named"):
        registry.unregister("hex")
    registry.unregister("arith")
    registry.unregister("point")


def test_registry_refuses_bad_definitions_at_registration(compiler):
    registry = compiler.registry
    with pytest.raises(ValueError, match=r"^definition: .*line 3, column 3"):
        registry.register("broken", 'start: a\na: "x" | \n  )\n', syntax="lark")
    with pytest.raises(ValueError, match="syntax"):
        registry.register("x", "a", syntax="ebnf")
    with pytest.raises(ValueError, match="name"):
        registry.register("bad name!", "a", syntax="regex")
    with pytest.raises(ValueError, match="keyword 'uniqueItems'"):
        registry.register("u", {"type": "array", "uniqueItems": True}, syntax="json_schema")
    assert "broken" not in registry and "u" not in registry


def test_registered_grammar_shared_by_concurrent_matchers(compiler, hf_tokenizer):
    compiler.registry.register("yesno", "(yes|no)", syntax="regex")
    try:
        compiled = compiler.compile(S(grammar_name="yesno"))
        matchers = [compiled.matcher() for _ in range(4)]
        texts = ["yes", "no", "yes", "no"]
        for matcher, text in zip(matchers, texts, strict=True):
            for token_id in hf_tokenizer.encode(text, add_special_tokens=False):
                assert matcher.accept_token(token_id)
        assert all(m.is_terminated() for m in matchers)
    finally:
        compiler.registry.unregister("yesno")


def test_drain_compile_times_returns_and_clears_every_backend(compiler):
    compiler.drain_compile_times()  # samples of earlier tests
    compiler.compile(S(regex=r"drain-[0-9]{3}"))
    compiler.compile(S(regex=r"drain-[0-9]{3}", backend="outlines"))
    compiler.compile(S(regex=r"drain-[0-9]{3}"))  # a cache hit adds no sample
    samples = compiler.drain_compile_times()
    assert len(samples) == 2 and all(isinstance(s, float) and s >= 0 for s in samples)
    assert compiler.drain_compile_times() == []


def test_drain_compile_times_is_thread_safe(compiler):
    compiler.drain_compile_times()
    drained: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            got = compiler.drain_compile_times()
            with lock:
                drained.extend(got)

    drainers = [threading.Thread(target=drain) for _ in range(3)]
    for thread in drainers:
        thread.start()
    futures = [compiler.submit(S(regex=f"thread-safe-{i}-[a-z]+")) for i in range(20)]
    for future in futures:
        future.result(timeout=30)
    stop.set()
    for thread in drainers:
        thread.join()
    drained.extend(compiler.drain_compile_times())
    assert len(drained) == 20  # each sample is returned exactly once
