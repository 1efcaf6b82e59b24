"""The `LLM` Python API: no server, the engine in this process.

    python examples/llm_python_api.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from corral.engine import LLM, SamplingParams, StructuredOutputsParams  # noqa: E402


def main() -> None:
    llm = LLM()  # the embedded SmolLM2-135M-Instruct
    outputs = llm.chat(
        [[{"role": "user", "content": "Name a famous bridge."}],
         [{"role": "user", "content": "Name a famous painter."}]],
        SamplingParams(temperature=0, max_tokens=24),
    )
    for out in outputs:
        print("chat:", out.outputs[0].text.strip())

    yes_no = SamplingParams(temperature=0, max_tokens=4,
                            structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    out = llm.chat([{"role": "user", "content": "Is water wet? Answer yes or no."}], yes_no)
    print("choice:", out[0].outputs[0].text)

    date = SamplingParams(temperature=0, max_tokens=16, structured_outputs=StructuredOutputsParams(
        regex=r"\d{4}-\d{2}-\d{2}"))
    out = llm.generate(["The Apollo 11 landing happened on (YYYY-MM-DD): "], date)
    print("regex:", out[0].outputs[0].text)


if __name__ == "__main__":
    main()
