"""`POST /v1/chat/completions`: prompt building, constraint, generation, response or stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from corral.engine.outputs import CompletionOutput, RequestOutput

from .chat_protocol import ChatCompletionRequest, FunctionCall, ToolCall
from .chat_response import ChatChoice, ChatCompletionResponse, ChoiceLogprobs, ResponseMessage
from .errors import APIError
from .generation import (
    generate,
    last_output,
    tokenize_prompt,
    until_disconnect,
    validate_constraint,
)
from .logprobs import chat_logprobs
from .protocol import UsageInfo
from .sse import SSE_HEADERS, guarded_stream, sse_event
from .state import ServerState, new_id
from .tool_call_audit import AuditedParser, ToolCallAudit


@dataclass
class PreparedChat:
    """A chat request turned into engine input, and how to read its output."""

    request_id: str
    model: str
    prompt_ids: list[int]
    params: Any
    # A new output parser (reasoning, content, tool calls) per choice; None: text as is.
    new_parser: Callable[[], Any] | None


def _prompt_and_constraint(state: ServerState, req: ChatCompletionRequest
                           ) -> tuple[list[int], Any, Callable[[], Any] | None, str]:
    """The prompt's token ids, the output constraint (or None), the parser factory and the
    field a refused constraint is named by; CPU work, run off-loop."""
    from corral.tools import render_chat_prompt
    from corral.tools.constraint import chat_constraint

    fmt = state.tool_format
    tools = req.tool_dicts()
    uses_tools = req.uses_tools()
    try:
        prompt = render_chat_prompt(state.tokenizer, req.message_dicts(),
                                    tools if uses_tools else None,
                                    tool_choice=req.tool_choice_value() if uses_tools else None,
                                    fmt=fmt, template_kwargs=req.template_kwargs())
        mode = fmt.reasoning_mode(prompt)
        answer, answer_field = req.answer()
        if req.constrain_tool_calls is False:
            constraint = answer
        else:
            parallel = True if req.parallel_tool_calls is None else req.parallel_tool_calls
            constraint = chat_constraint(
                fmt, tools, req.tool_choice_value(), parallel, answer=answer,
                answer_field=answer_field, reasoning_mode=mode,
                max_reasoning_tokens=req.max_reasoning_tokens)
    except ValueError as e:
        raise APIError.from_value_error(e) from None
    new_parser = None
    if uses_tools or mode != "off" or fmt.frames_answer:
        audit = ToolCallAudit(tools, state.metrics.tool_call) if uses_tools else None

        def new_parser() -> Any:
            parser = fmt.output_parser(tools, parse_calls=uses_tools, reasoning_mode=mode)
            return parser if audit is None else AuditedParser(parser, audit)
    where = "tools" if tools and constraint is not answer else answer_field
    return tokenize_prompt(state, prompt, chat=True, param="messages"), constraint, \
        new_parser, where


async def prepare_chat(state: ServerState, req: ChatCompletionRequest) -> PreparedChat:
    req.check()
    model = state.check_chat_model(req.model)
    prompt_ids, constraint, new_parser, where = await asyncio.to_thread(
        _prompt_and_constraint, state, req)
    max_tokens = state.check_prompt_length(len(prompt_ids), req.requested_max_tokens())
    fmt = state.tool_format
    # A format whose markers are special tokens keeps them in the text it parses.
    keep_special = new_parser is not None and not fmt.skip_special_tokens
    params = req.sampling_params(max_tokens, constraint, skip_special_tokens=not keep_special,
                                 extra_stop_token_ids=fmt.stop_token_ids())
    await validate_constraint(state, params, where)
    return PreparedChat(new_id("chatcmpl-"), model, prompt_ids, params, new_parser)


def _finish_reason(output: CompletionOutput, has_calls: bool) -> str:
    reason = output.finish_reason or "stop"
    if reason == "abort":
        reason = "stop"
    if has_calls and reason == "stop":
        return "tool_calls"
    return reason


def _parse_output(prep: PreparedChat, text: str, truncated: bool) -> ResponseMessage:
    """The assistant message of one finished output."""
    if prep.new_parser is None:
        return ResponseMessage(content=text)
    parser = prep.new_parser()
    parser.feed(text)
    parser.finish(truncated)
    calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
             for c in parser.tool_calls]
    return ResponseMessage(content=parser.content, reasoning_content=parser.reasoning,
                           tool_calls=calls or None)


def _usage(final: RequestOutput) -> UsageInfo:
    cached = final.metrics.num_cached_prompt_tokens if final.metrics else 0
    return UsageInfo.of(len(final.prompt_token_ids),
                        sum(len(o.token_ids) for o in final.outputs), cached)


async def chat_completion(state: ServerState, req: ChatCompletionRequest,
                          raw: Request) -> JSONResponse | StreamingResponse:
    prep = await prepare_chat(state, req)
    outputs = generate(state, prep.prompt_ids, prep.params, prep.request_id)
    if req.stream:
        first = await until_disconnect(raw, outputs.__anext__())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        body = ChatStream(state, prep, include_usage).events(first, outputs)
        return StreamingResponse(guarded_stream(body), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    final = await until_disconnect(raw, last_output(outputs))
    choices = []
    for out in final.outputs:
        message = _parse_output(prep, out.text, out.finish_reason == "length")
        logprobs = None
        if req.logprobs:
            logprobs = ChoiceLogprobs(content=chat_logprobs(state.token_texts, out.logprobs or []))
        choices.append(ChatChoice(
            index=out.index,
            message=message,
            logprobs=logprobs,
            finish_reason=_finish_reason(out, bool(message.tool_calls)),
        ))
    response = ChatCompletionResponse(id=prep.request_id, created=int(time.time()),
                                      model=prep.model, choices=choices, usage=_usage(final))
    return JSONResponse(response.model_dump())


class ChatStream:
    """Turns a request's growing outputs into `chat.completion.chunk` events."""

    def __init__(self, state: ServerState, prep: PreparedChat, include_usage: bool) -> None:
        self.state = state
        self.prep = prep
        self.include_usage = include_usage
        self.created = int(time.time())
        self.want_logprobs = prep.params.logprobs is not None
        n = prep.params.n
        self.sent_chars = [0] * n
        self.sent_tokens = [0] * n
        self.num_calls = [0] * n
        self.done = [False] * n
        self.parsers: list[Any] = [None] * n
        if prep.new_parser is not None:
            self.parsers = [prep.new_parser() for _ in range(n)]

    def chunk(self, choices: list[dict[str, Any]], usage: UsageInfo | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.prep.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.prep.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage.model_dump() if usage is not None else None
        return sse_event(body)

    async def events(self, first: RequestOutput,
                     rest: AsyncIterator[RequestOutput]) -> AsyncIterator[bytes]:
        try:
            n = self.prep.params.n
            yield self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                               "logprobs": None, "finish_reason": None} for i in range(n)])
            final = first
            for event in self.step(first):
                yield event
            async for out in rest:
                final = out
                for event in self.step(out):
                    yield event
            if self.include_usage:
                yield self.chunk([], _usage(final))
        finally:
            await rest.aclose()  # type: ignore[attr-defined]

    def step(self, out: RequestOutput) -> list[bytes]:
        events = []
        for o in out.outputs:
            i = o.index
            if self.done[i]:
                continue
            delta: dict[str, Any] = {}
            text = o.text[self.sent_chars[i]:]
            self.sent_chars[i] = len(o.text)
            parser = self.parsers[i]
            if parser is None:
                if text:
                    delta["content"] = text
            else:
                pieces = parser.feed(text) if text else []
                if o.finished:
                    pieces += parser.finish(truncated=o.finish_reason == "length")
                delta = self._tool_delta(i, pieces)
            logprobs = None
            if self.want_logprobs and o.logprobs and (delta or o.finished):
                new = o.logprobs[self.sent_tokens[i]:]
                self.sent_tokens[i] = len(o.logprobs)
                if new:
                    logprobs = {"content": [x.model_dump() for x in
                                            chat_logprobs(self.state.token_texts, new)],
                                "refusal": None}
            if delta or logprobs:
                events.append(self.chunk([{"index": i, "delta": delta, "logprobs": logprobs,
                                           "finish_reason": None}]))
            if o.finished:
                self.done[i] = True
                reason = _finish_reason(o, self.num_calls[i] > 0)
                events.append(self.chunk([{"index": i, "delta": {}, "logprobs": None,
                                           "finish_reason": reason}]))
        return events

    def _tool_delta(self, i: int, pieces: list[Any]) -> dict[str, Any]:
        from corral.tools import ContentDelta, ReasoningDelta

        content = "".join(p.text for p in pieces if isinstance(p, ContentDelta))
        reasoning = "".join(p.text for p in pieces if isinstance(p, ReasoningDelta))
        calls: list[dict[str, Any]] = []
        for p in pieces:
            if isinstance(p, (ContentDelta, ReasoningDelta)):
                continue
            if p.id is not None:
                self.num_calls[i] = max(self.num_calls[i], p.index + 1)
                calls.append({"index": p.index, "id": p.id, "type": "function",
                              "function": {"name": p.name, "arguments": p.arguments}})
            elif calls and calls[-1]["index"] == p.index:
                calls[-1]["function"]["arguments"] += p.arguments
            else:
                calls.append({"index": p.index, "function": {"arguments": p.arguments}})
        delta: dict[str, Any] = {}
        if reasoning:
            delta["reasoning_content"] = reasoning
        if content:
            delta["content"] = content
        if calls:
            delta["tool_calls"] = calls
        return delta
