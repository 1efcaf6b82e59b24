"""One real `corral serve` process for the server tests (started once, on a free port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key"
MAX_BODY_BYTES = 256 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    base_url: str  # http://127.0.0.1:PORT
    api_key: str
    log_path: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def client(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.v1, api_key=self.api_key, max_retries=0,
                             timeout=120, **kwargs)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    """`corral serve` on the embedded models with a small context and KV pool."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "CORRAL_API_KEY": API_KEY}
    # The frameworks that need their own environment run their tests there, against a
    # server started with Corral's own Python.
    python = os.environ.get("CORRAL_SERVER_PYTHON", sys.executable)
    cmd = [python, "-m", "corral.api.cli", "serve", "--port", str(port),
           "--max-model-len", "1024", "--kv-cache-memory", "96MiB", "--max-num-seqs", "16",
           "--max-body-size", str(MAX_BODY_BYTES), "--log-level", "warning",
           "--responses-db", str(tmp_path_factory.mktemp("responses") / "responses.sqlite3"),
           # float32: tests compare outputs of repeated requests exactly, and in bfloat16 a
           # prefix-cache hit (a shorter prefill) may round differently and flip a greedy
           # choice.
           "--dtype", "float32"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO_ROOT)
    srv = Server(f"http://127.0.0.1:{port}", API_KEY, log_path)
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"corral serve exited with {proc.returncode}:\n{srv.log_tail()}")
            try:
                if httpx.get(srv.base_url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"corral serve did not start in time:\n{srv.log_tail()}")
            time.sleep(0.5)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def client(server):
    return server.client()


@pytest.fixture(scope="session")
def scripted_engine():
    """An engine stand-in answering with scripted texts (see `scripted_engine.py`)."""
    from corral.engine.model_files import default_model_dir
    from corral.engine.tokenizer import load_tokenizer

    from .scripted_engine import ScriptedEngine

    return ScriptedEngine(load_tokenizer(default_model_dir()))


@pytest.fixture(scope="session")
def qwen3_scripted_engine(model_families_dir, tmp_path_factory):
    """A scripted engine with Qwen3's tokenizer and template (it reasons in <think>)."""
    from ..tools.families import load_tokenizer, unpack_tokenizer
    from .scripted_engine import ScriptedEngine

    path = unpack_tokenizer(model_families_dir, "qwen3", tmp_path_factory.mktemp("qwen3"))
    engine = ScriptedEngine(load_tokenizer(path))
    engine.model_name = "qwen3-tiny"
    return engine


@pytest.fixture
def scripted_app(scripted_engine, tmp_path):
    """A TestClient factory over the scripted engine; apps share one responses database
    unless given another path."""
    from fastapi.testclient import TestClient

    from corral.api import ServerSettings, create_app

    scripted_engine.replies.clear()
    clients = []

    def make(db: str | None = None, **settings) -> TestClient:
        path = db or str(tmp_path / "responses.sqlite3")
        app = create_app(scripted_engine, ServerSettings(responses_db=path, **settings))
        clients.append(TestClient(app, raise_server_exceptions=False))
        return clients[-1]

    yield make
    for c in clients:
        c.app.state.corral.responses.close()


@pytest.fixture
def live_scripted(scripted_app):
    """A live uvicorn server (on a thread) over the scripted engine: its base URL."""
    import threading

    import uvicorn

    app = scripted_app().app
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
