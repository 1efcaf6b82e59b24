"""Completion-search workers leave with the process that started them, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

_OWNER = textwrap.dedent("""
    import time

    from corral.engine.model_files import default_model_dir
    from corral.engine.tokenizer import load_tokenizer
    from corral.grammars.completion_pool import CompletionSearchPool

    tokenizer = load_tokenizer(default_model_dir())
    pool = CompletionSearchPool(tokenizer, len(tokenizer), [tokenizer.eos_token_id], 1)
    print(pool._warm[0].result(timeout=120), flush=True)  # the worker's pid, once it is up
    time.sleep(300)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_exit_when_their_engine_process_is_killed():
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        worker = int(owner.stdout.readline())
        assert _alive(worker)
        owner.send_signal(signal.SIGKILL)  # no shutdown of the pool: the process is gone
        owner.wait(10)
        deadline = time.monotonic() + 20
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker)
    finally:
        owner.kill()
        owner.wait()


_SPAWNED_OWNER = textwrap.dedent("""
    import multiprocessing as mp


    def build_and_shut_down():
        from corral.engine.model_files import default_model_dir
        from corral.engine.tokenizer import load_tokenizer
        from corral.grammars.completion_pool import CompletionSearchPool

        tokenizer = load_tokenizer(default_model_dir())
        pool = CompletionSearchPool(tokenizer, len(tokenizer), [tokenizer.eos_token_id], 2)
        pool._warm[0].result(timeout=120)
        pool.shutdown()


    if __name__ == "__main__":
        child = mp.get_context("spawn").Process(target=build_and_shut_down)
        child.start()
        child.join(90)
        print("exited" if child.exitcode is not None else "hung", flush=True)
        if child.exitcode is None:
            child.kill()
""")


def test_a_spawned_process_with_a_pool_exits_after_shutting_it_down(tmp_path):
    # A benchmark runs each engine in a spawned process; its exit used to join the workers
    # before they were told to stop, and hung.
    script = tmp_path / "owner.py"
    script.write_text(_SPAWNED_OWNER)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.stdout.strip() == "exited", done.stderr[-2000:]


def test_a_worker_searches_upgraded_lark_grammars_and_survives_refusals(hf_tokenizer):
    # A Lark grammar served by an outlines index replays there in the worker too. A spec the
    # worker refuses comes back as the request-field error it is; it used to break the pool
    # (the error could not be unpickled) and every later search ran on the engine thread.
    import pickle

    import pytest

    from corral.grammars import GrammarCompiler
    from corral.grammars.completion_pool import CompletionSearchPool
    from corral.grammars.param_error import ParamError
    from corral.grammars.spec import GrammarSpec

    from .conftest import EOS_IDS, VOCAB_SIZE
    from .test_lark_regex import CONFIG

    error = pickle.loads(pickle.dumps(ParamError("structured_outputs.grammar", "bad")))
    assert (error.param, error.detail) == ("structured_outputs.grammar", "bad")
    prefix = hf_tokenizer.encode("port=80\nname", add_special_tokens=False)
    pool = CompletionSearchPool(hf_tokenizer, VOCAB_SIZE, EOS_IDS, 1)
    try:
        refused = pool.submit("grammar", 'start: "(" start ")" | "x"\n', "outlines", [], 16, 200)
        with pytest.raises(ParamError, match="regular Lark"):
            refused.result(timeout=180)
        found = pool.submit("grammar", CONFIG, "outlines", prefix, 16, 200).result(timeout=180)
    finally:
        pool.shutdown()
    assert found
    compiler = GrammarCompiler(hf_tokenizer, VOCAB_SIZE, EOS_IDS)
    try:
        matcher = compiler.matcher_factory(GrammarSpec("grammar", CONFIG, "outlines"))()
    finally:
        compiler.shutdown()
    assert all(matcher.accept_token(t) for t in prefix + found)
    assert matcher.can_end()
