"""An engine stand-in that answers with scripted texts through the real embedded tokenizer.

The API layer (prompt rendering, tool grammar building, output parsing, event shaping) runs
for real; only the model is replaced, so protocol tests are fast and exact. Each request
takes the next scripted reply (or a default one), streamed a few tokens at a time; it is
cut at `max_tokens` (finish "length") and at the first stop string (finish "stop").
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from corral.engine.engine_stats import EngineStats
from corral.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput

TOKENS_PER_STEP = 3


class ScriptedEngine:
    """Replies with `replies` in order; records each request's prompt ids and params."""

    model_name = "SmolLM2-135M-Instruct"
    max_model_len = 2048

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.replies: deque[str] = deque()
        self.requests: list[tuple[list[int], Any]] = []
        self._grammar: Any = None

    def script(self, *replies: str) -> None:
        self.replies.extend(replies)

    def last_prompt(self) -> str:
        return self.tokenizer.decode(self.requests[-1][0])

    async def generate(self, prompt: list[int], params: Any,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        self.requests.append((list(prompt), params))
        text = self.replies.popleft() if self.replies else "Hello there."
        finish, stop_reason = "stop", self.tokenizer.eos_token_id
        for stop in params.stop or []:
            if stop in text:
                text, finish, stop_reason = text[:text.index(stop)], "stop", stop
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > params.max_tokens:
            ids, finish, stop_reason = ids[:params.max_tokens], "length", None
        out = RequestOutput(request_id, None, list(prompt), [CompletionOutput(0)],
                            metrics=RequestMetrics(arrival_time=0.0))
        for end in range(TOKENS_PER_STEP, len(ids) + TOKENS_PER_STEP, TOKENS_PER_STEP):
            o = out.outputs[0]
            o.token_ids = ids[:end]
            o.text = self.tokenizer.decode(o.token_ids)
            if end >= len(ids):
                o.finish_reason, o.stop_reason = finish, stop_reason
                out.finished = True
            yield out
        if not ids:
            out.outputs[0].finish_reason = finish
            out.finished = True
            yield out

    async def abort(self, request_id: str) -> None:
        pass

    def validate_structured(self, spec: Any) -> None:
        pass

    @property
    def grammar(self) -> Any:
        """A real grammar compiler (and registry) for the tokenizer, built on first use."""
        if self._grammar is None:
            from corral.grammars import GrammarCompiler

            eos = self.tokenizer.eos_token_id
            self._grammar = GrammarCompiler(self.tokenizer, len(self.tokenizer), [eos])
        return self._grammar

    def register_grammar(self, name: str, definition: Any, syntax: str = "lark") -> None:
        self.grammar.registry.register(name, definition, syntax=syntax)

    def unregister_grammar(self, name: str) -> None:
        self.grammar.registry.unregister(name)

    def grammars(self) -> list[dict[str, Any]]:
        return self.grammar.registry.list() if self._grammar is not None else []

    def stats(self) -> EngineStats:
        return EngineStats()

    def grammar_stats(self) -> list[Any]:
        return []
