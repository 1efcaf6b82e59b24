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
