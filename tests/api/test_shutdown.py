"""SIGTERM drains: requests in flight get `--shutdown-timeout` seconds to finish, new ones
are turned away, the rest are cut, and the server exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from .conftest import REPO_ROOT, _free_port

GRACE_S = 15  # a few tokens finish well within it; 1,800 cannot on 2 CPU cores


def _stream(url: str, body: dict, result: dict) -> None:
    """POST a streamed chat request; record its events and whether it ended with [DONE]."""
    result["events"], result["done"] = [], False
    try:
        with httpx.stream("POST", url, json=body, timeout=120) as r:
            result["status"] = r.status_code
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    result["done"] = True
                elif line.startswith("data: "):
                    result["events"].append(json.loads(line[6:]))
    except httpx.HTTPError as e:
        result["error"] = repr(e)


def test_sigterm_drains_then_cuts_and_exits(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.api.cli", "serve", "--port", str(port),
         "--max-model-len", "2048", "--kv-cache-memory", "64MiB", "--embedding-model", "none",
         "--log-level", "warning", "--responses-db", ":memory:",
         "--shutdown-timeout", str(GRACE_S)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        url = base + "/v1/chat/completions"
        chat = {"messages": [{"role": "user", "content": "Tell me about rivers."}],
                "stream": True, "temperature": 0, "ignore_eos": True}
        short, long = {}, {}
        threads = [threading.Thread(target=_stream, args=(url, {**chat, "max_tokens": 8},
                                                          short)),
                   threading.Thread(target=_stream, args=(url, {**chat, "max_tokens": 1800},
                                                          long))]
        for t in threads:
            t.start()
        while len(long.get("events", [])) < 3:  # both are generating
            assert time.monotonic() < deadline and threads[1].is_alive(), long
            time.sleep(0.05)
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            late = httpx.post(url, json={**chat, "stream": False, "max_tokens": 4}, timeout=10)
            assert late.status_code >= 500 or late.status_code == 503, late.text
        except httpx.HTTPError:
            pass  # refused: the listening socket is closed
        for t in threads:
            t.join(timeout=60)
        # uvicorn re-raises the signal once drained: a SIGTERM exit, or 0.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        exited_after = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    # The short request finished within the grace period, whole.
    assert short["status"] == 200 and short["done"], short
    assert short["events"][-1]["choices"][0]["finish_reason"] == "length"
    # The long one could not: it was cut when the grace period ran out.
    assert not long.get("done"), "the long stream should have been cut"
    finishes = [c.get("finish_reason") for e in long["events"] for c in e.get("choices", [])]
    assert "length" not in finishes
    assert GRACE_S - 1 <= exited_after < GRACE_S + 30, exited_after
    text = (tmp_path / "server.log").read_text(errors="replace")
    assert "Traceback" not in text, text
