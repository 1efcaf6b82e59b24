"""instructor and LlamaIndex against a running `corral serve`, as in test_frameworks.py.

Their current releases need an older `openai` (instructor pins `jiter<0.15`, LlamaIndex's
OpenAI integration `openai<3`) than Corral's own tests use, so `make test` runs this file
a second time in an environment of its own (`.venv-compat`); in Corral's environment it is
skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("instructor", reason="runs in .venv-compat (make test)")
pytest.importorskip("llama_index.llms.openai_like", reason="runs in .venv-compat (make test)")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module", autouse=True)
def examples_on_path():
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA", "JSON"])
def test_instructor_modes(server, mode):
    from instructor_modes import City, Mention, run

    out = run(mode, base_url=server.v1, api_key=server.api_key)
    # TOOLS and JSON_SCHEMA hold the output to the model's schema; JSON only to JSON.
    assert isinstance(out, Mention if mode == "JSON" else City)
    if mode != "JSON":
        assert out.name and out.country


def test_llama_index_chat_structured_predict_and_agent(server):
    from llama_index_agent import City, run

    out = run(base_url=server.v1, api_key=server.api_key)
    assert isinstance(out["chat"], str) and out["chat"]
    assert isinstance(out["structured_predict"], City)
    assert out["agent_calls"] and out["agent"] == f"Sunny and 24 C in {out['agent_calls'][0]}"
