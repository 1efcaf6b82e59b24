"""`LLM`: the offline Python API (batch generation and chat on one engine)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence as Seq
from typing import Any

from corral.grammars.param_error import ParamError

from .config import EngineConfig
from .detokenizer import final_text
from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams

Prompt = str | list[int]
Message = dict[str, Any]


class LLM:
    """Generate from a model in-process.

    >>> llm = LLM()  # the embedded SmolLM2-135M-Instruct
    >>> out = llm.chat([{"role": "user", "content": "Hi!"}], SamplingParams(max_tokens=20))
    >>> out[0].outputs[0].text

    `engine_args` are `EngineConfig` fields (max_model_len, num_blocks, kv_cache_memory,
    max_num_seqs, enable_prefix_caching, grammar_backend, fast_forward, dtype, device...).
    """

    def __init__(self, model: str | None = None, **engine_args: Any):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: Prompt | Seq[Prompt],
                 params: SamplingParams | Seq[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Complete each prompt (a string or a list of token ids); outputs in prompt order."""
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        prompts = list(prompts)
        if params is None or isinstance(params, SamplingParams):
            params_list = [params or SamplingParams()] * len(prompts)
        else:
            params_list = list(params)
            if len(params_list) != len(prompts):
                raise ParamError(
                    "params", f"got {len(params_list)} SamplingParams for {len(prompts)} prompts"
                )
        request_ids = []
        detokenize_at_end: dict[str, bool] = {}  # request id -> skip_special_tokens
        try:
            for prompt, p in zip(prompts, params_list, strict=True):
                request_id = f"offline-{next(self._ids)}"
                if p.detokenize and not p.stop:
                    # Only the final text is returned: decode it once at the end instead of
                    # token by token on the engine's loop (stop strings need the latter).
                    detokenize_at_end[request_id] = p.skip_special_tokens
                    p = p.clone(detokenize=False)
                self.engine.add_request(request_id, prompt, p)
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:
                self.engine.abort(request_id)
            raise
        outputs = self._run(request_ids)
        for output in outputs:
            skip_special = detokenize_at_end.get(output.request_id)
            if skip_special is not None:
                for completion in output.outputs:
                    completion.text = final_text(self.tokenizer, output.prompt_token_ids,
                                                 completion.token_ids, skip_special)
        return outputs

    def chat(self, messages: list[Message] | Seq[list[Message]],
             params: SamplingParams | Seq[SamplingParams] | None = None,
             tools: list[dict] | None = None) -> list[RequestOutput]:
        """Chat through the model's chat template; one conversation or a list of them."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.render_chat(conv, tools) for conv in conversations]
        return self.generate(prompts, params)

    def render_chat(self, messages: list[Message], tools: list[dict] | None = None) -> str:
        """The prompt text of a conversation, ready for the assistant's turn."""
        try:
            from corral.tools import render_chat_prompt
        except ImportError:
            render_chat_prompt = None
        if render_chat_prompt is not None:
            return render_chat_prompt(self.tokenizer, messages, tools)
        if tools:
            raise ParamError("tools", "function calling needs corral.tools")
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def _run(self, request_ids: list[str]) -> list[RequestOutput]:
        pending = set(request_ids)
        finals: dict[str, RequestOutput] = {}
        while pending:
            outputs = self.engine.step(emit_unfinished=False)
            if self.engine.last_step_idle:
                time.sleep(0.001)  # e.g. waiting for grammars to compile
            for output in outputs:
                if output.finished and output.request_id in pending:
                    pending.discard(output.request_id)
                    finals[output.request_id] = output
        errors = [finals[r].error for r in request_ids if finals[r].error]
        if errors:
            raise ValueError(errors[0])
        return [finals[r] for r in request_ids]

    # ---- grammar registration ---------------------------------------------------------

    def register_grammar(self, name: str, definition: Any, syntax: str = "lark") -> None:
        """Compile and keep a grammar; requests then use it by `grammar_name`.

        `syntax` is "lark", "regex" or "json_schema". Raises ValueError (with line and
        column for Lark) if the definition is invalid.
        """
        self.engine.grammar.registry.register(name, definition, syntax=syntax)

    def unregister_grammar(self, name: str) -> None:
        self.engine.grammar.registry.unregister(name)

    def grammars(self) -> list[dict]:
        """The registered grammars: name, syntax and definition of each."""
        return self.engine.grammar.registry.list()

    def shutdown(self) -> None:
        """Stop the grammar threads and any tensor-parallel workers."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
