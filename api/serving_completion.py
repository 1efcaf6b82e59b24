"""`POST /v1/completions`: one engine request per prompt; choices ordered prompt-major."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from corral.engine.outputs import CompletionOutput, RequestOutput

from .completion_protocol import CompletionChoice, CompletionRequest, CompletionResponse
from .errors import APIError
from .generation import (
    gather_or_cancel,
    generate,
    last_output,
    merged,
    tokenize_prompt,
    until_disconnect,
    validate_constraint,
)
from .logprobs import completion_logprobs
from .protocol import UsageInfo
from .sse import SSE_HEADERS, guarded_stream, sse_event
from .state import ServerState, new_id


def _reason(o: CompletionOutput) -> str:
    return "stop" if o.finish_reason in (None, "abort") else o.finish_reason


def _usage(finals: list[RequestOutput]) -> UsageInfo:
    prompt = sum(len(f.prompt_token_ids) for f in finals)
    completion = sum(len(o.token_ids) for f in finals for o in f.outputs)
    cached = sum(f.metrics.num_cached_prompt_tokens for f in finals if f.metrics)
    return UsageInfo.of(prompt, completion, cached)


async def completion(state: ServerState, req: CompletionRequest,
                     raw: Request) -> JSONResponse | StreamingResponse:
    req.check()
    model = state.check_chat_model(req.model)
    prompts = req.prompts()
    prompt_ids = await asyncio.to_thread(
        lambda: [tokenize_prompt(state, p, chat=False,
                                 param=f"prompt.{i}" if len(prompts) > 1 else "prompt")
                 for i, p in enumerate(prompts)])
    if any(not ids for ids in prompt_ids):
        raise APIError("prompt: must hold at least one token", param="prompt")
    params = [req.sampling_params(state.check_prompt_length(len(ids), req.max_tokens, "prompt"))
              for ids in prompt_ids]
    await validate_constraint(state, params[0], req.constraint_field())
    request_id = new_id("cmpl-")
    echo_texts = [state.tokenizer.decode(ids) if isinstance(p, list) else p
                  for p, ids in zip(prompts, prompt_ids, strict=True)] if req.echo else None
    streams = [generate(state, ids, p, f"{request_id}-{i}")
               for i, (ids, p) in enumerate(zip(prompt_ids, params, strict=True))]
    n = params[0].n
    created = int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        firsts = await until_disconnect(
            raw, gather_or_cancel(*(s.__anext__() for s in streams)))
        body = _stream(state, req, request_id, model, created, n, firsts, streams,
                       echo_texts, include_usage)
        return StreamingResponse(guarded_stream(body), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    finals = await until_disconnect(raw, gather_or_cancel(*(last_output(s) for s in streams)))
    choices = []
    for p, final in enumerate(finals):
        prefix = echo_texts[p] if echo_texts else ""
        for o in final.outputs:
            logprobs = None
            if req.logprobs is not None:
                logprobs = completion_logprobs(state.token_texts, o.logprobs or [], len(prefix))
            choices.append(CompletionChoice(index=p * n + o.index, text=prefix + o.text,
                                            logprobs=logprobs, finish_reason=_reason(o)))
    response = CompletionResponse(id=request_id, created=created, model=model,
                                  choices=choices, usage=_usage(finals))
    return JSONResponse(response.model_dump())


async def _stream(state: ServerState, req: CompletionRequest, request_id: str, model: str,
                  created: int, n: int, firsts: list[RequestOutput],
                  streams: list[AsyncIterator[RequestOutput]], echo_texts: list[str] | None,
                  include_usage: bool) -> AsyncIterator[bytes]:
    sent_chars: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    offsets: dict[int, int] = {}
    done: set[int] = set()
    finals: list[RequestOutput] = list(firsts)

    def chunk(choices: list[dict[str, Any]], usage: UsageInfo | None = None) -> bytes:
        body: dict[str, Any] = {"id": request_id, "object": "text_completion",
                                "created": created, "model": model, "choices": choices}
        if include_usage:
            body["usage"] = usage.model_dump() if usage is not None else None
        return sse_event(body)

    def step(p: int, out: RequestOutput) -> list[bytes]:
        finals[p] = out
        events = []
        for o in out.outputs:
            index = p * n + o.index
            if index not in sent_chars:
                sent_chars[index] = sent_tokens[index] = 0
                offsets[index] = 0
                if echo_texts:
                    events.append(chunk([{"index": index, "text": echo_texts[p],
                                          "logprobs": None, "finish_reason": None}]))
                    offsets[index] = len(echo_texts[p])
            if index in done:
                continue
            text = o.text[sent_chars[index]:]
            logprobs = None
            if req.logprobs is not None and o.logprobs:
                new = o.logprobs[sent_tokens[index]:]
                sent_tokens[index] = len(o.logprobs)
                if new:
                    logprobs = completion_logprobs(state.token_texts, new,
                                                   offsets[index]).model_dump()
            finish = _reason(o) if o.finished else None
            if text or logprobs or finish:
                events.append(chunk([{"index": index, "text": text, "logprobs": logprobs,
                                      "finish_reason": finish}]))
            sent_chars[index] = len(o.text)
            offsets[index] += len(text)
            if o.finished:
                done.add(index)
        return events

    try:
        for p, first in enumerate(firsts):
            for event in step(p, first):
                yield event
        async for p, out in merged(streams):
            for event in step(p, out):
                yield event
        if include_usage:
            yield chunk([], _usage(finals))
    finally:
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]
