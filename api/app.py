"""The FastAPI app factory: routes, error handling, auth and body limits around an engine."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from corral.grammars.param_error import ParamError

from .chat_protocol import ChatCompletionRequest
from .completion_protocol import CompletionRequest
from .embeddings import Embedder, encode_vector
from .errors import APIError, install_error_handlers
from .generation import ClientDisconnected
from .messages_protocol import MessagesInput, MessagesRequest
from .middleware import APIKeyMiddleware, BodyLimitMiddleware
from .protocol import (
    DetokenizeRequest,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    GrammarCard,
    GrammarList,
    GrammarRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)
from .responses_protocol import ResponsesRequest
from .serving_chat import chat_completion
from .serving_completion import completion
from .serving_messages import count_tokens, create_message
from .serving_responses import create_response, delete_response, get_response
from .state import ServerSettings, ServerState


def create_app(engine: Any, settings: ServerSettings | None = None,
               embedder: Embedder | None = None) -> FastAPI:
    """An app serving `engine` (an `AsyncLLMEngine` or an `EngineCoreClient`) and, if
    given, `embedder`."""
    settings = settings or ServerSettings()
    state = ServerState(engine=engine, settings=settings, embedder=embedder)
    app = FastAPI(title="Corral", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.corral = state
    install_error_handlers(app, on_error=state.metrics.error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)

    @app.get("/health")
    async def health() -> Response:
        is_healthy = getattr(engine, "is_healthy", None)
        return Response(status_code=200 if is_healthy is None or is_healthy() else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body = await asyncio.to_thread(state.metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_cards() -> list[ModelCard]:
        cards = [ModelCard(id=state.model_name, created=state.created,
                           max_model_len=state.max_model_len)]
        if embedder is not None:
            cards.append(ModelCard(id=embedder.model_name, created=state.created,
                                   max_model_len=embedder.max_tokens))
        return cards

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": corral_version()})

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> JSONResponse:
        state.check_chat_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError("prompt: give exactly one of prompt and messages", param="prompt")
        ids = await asyncio.to_thread(_tokenize, state, req)
        return JSONResponse({"count": len(ids), "max_model_len": state.max_model_len,
                             "tokens": ids})

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> JSONResponse:
        state.check_chat_model(req.model)
        vocab = len(state.tokenizer)
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(f"tokens: token id {bad[0]} is outside the vocabulary "
                           f"(0..{vocab - 1})", param="tokens")
        return JSONResponse({"prompt": state.tokenizer.decode(req.tokens)})

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse(ModelList(data=model_cards()).model_dump(exclude_none=True))

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> JSONResponse:
        for card in model_cards():
            if card.id == model_id:
                return JSONResponse(card.model_dump(exclude_none=True))
        raise APIError(f"The model '{model_id}' does not exist", status=404, param="model",
                       code="model_not_found")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: Request) -> Response:
        return await chat_completion(state, req, raw)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request) -> Response:
        return await completion(state, req, raw)

    @app.post("/v1/responses")
    async def responses(req: ResponsesRequest, raw: Request) -> Response:
        return await create_response(state, req, raw)

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(response_id: str) -> Response:
        return await get_response(state, response_id)

    @app.delete("/v1/responses/{response_id}")
    async def remove_response(response_id: str) -> Response:
        return await delete_response(state, response_id)

    @app.post("/v1/messages")
    async def messages(req: MessagesRequest, raw: Request) -> Response:
        return await create_message(state, req, raw)

    @app.post("/v1/messages/count_tokens")
    async def messages_count_tokens(req: MessagesInput) -> Response:
        return await count_tokens(state, req)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> JSONResponse:
        model = state.check_embedding_model(req.model)
        inputs = _embedding_inputs(req)
        if req.dimensions is not None and req.dimensions != model.dimensions:
            raise APIError(f"dimensions: this model gives {model.dimensions} dimensions only",
                           param="dimensions")
        try:
            vectors, num_tokens = await model.embed_async(inputs)
        except ValueError as e:
            raise APIError.from_value_error(e, param="input") from None
        data = [EmbeddingData(index=i, embedding=encode_vector(v, req.encoding_format))
                for i, v in enumerate(vectors)]
        response = EmbeddingResponse(data=data, model=model.model_name,
                                     usage=EmbeddingUsage(prompt_tokens=num_tokens,
                                                          total_tokens=num_tokens))
        return JSONResponse(response.model_dump())

    @app.post("/v1/grammars")
    async def register_grammar(req: GrammarRequest) -> JSONResponse:
        try:
            await asyncio.to_thread(engine.register_grammar, req.name, req.definition,
                                    req.syntax)
        except ParamError as e:
            raise APIError(str(e), param=e.param, code="invalid_grammar") from None
        except ValueError as e:
            raise APIError(f"definition: {e}", param="definition", code="invalid_grammar") \
                from None
        card = _grammar_card(state, req.name) or GrammarCard(name=req.name, syntax=req.syntax)
        return JSONResponse(card.model_dump(), status_code=201)

    @app.get("/v1/grammars")
    async def list_grammars() -> JSONResponse:
        cards = [_card(g) for g in engine.grammars()]
        return JSONResponse(GrammarList(data=cards).model_dump())

    @app.get("/v1/grammars/{name}")
    async def get_grammar(name: str) -> JSONResponse:
        card = _grammar_card(state, name)
        if card is None:
            raise APIError(f"grammar '{name}' is not registered", status=404, param="name",
                           code="grammar_not_found")
        return JSONResponse(card.model_dump())

    @app.delete("/v1/grammars/{name}")
    async def delete_grammar(name: str) -> JSONResponse:
        if _grammar_card(state, name) is None:
            raise APIError(f"grammar '{name}' is not registered", status=404, param="name",
                           code="grammar_not_found")
        try:
            engine.unregister_grammar(name)
        except (KeyError, ValueError) as e:
            raise APIError(str(e), status=404, param="name", code="grammar_not_found") from None
        return JSONResponse({"object": "grammar.deleted", "name": name, "deleted": True})

    return app




def _embedding_inputs(req: EmbeddingRequest) -> list[str] | list[list[int]]:
    value = req.input
    if isinstance(value, str):
        if not value:
            raise APIError("input: must not be an empty string", param="input")
        return [value]
    if not value:
        raise APIError("input: must not be empty", param="input")
    if len(value) > 2048:
        raise APIError("input: at most 2048 inputs per request", param="input")
    if all(isinstance(x, int) for x in value):
        return [list(value)]  # type: ignore[arg-type]
    for i, item in enumerate(value):
        if isinstance(item, list) and not item:
            raise APIError(f"input.{i}: must not be empty", param=f"input.{i}")
    return list(value)  # type: ignore[arg-type]


def _card(info: dict[str, Any]) -> GrammarCard:
    extra = {k: v for k, v in info.items() if k not in ("name", "syntax")}
    return GrammarCard(name=str(info.get("name")), syntax=info.get("syntax"),
                       info=_jsonable(extra))


def _grammar_card(state: ServerState, name: str) -> GrammarCard | None:
    for info in state.engine.grammars():
        if info.get("name") == name:
            return _card(info)
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def corral_version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("corral")
    except PackageNotFoundError:
        return "unknown"


def _tokenize(state: ServerState, req: TokenizeRequest) -> list[int]:
    """Token ids of a prompt, or of chat messages as the chat template renders them."""
    if req.messages is not None:
        from corral.tools import render_chat_prompt

        try:
            text = render_chat_prompt(state.tokenizer, req.messages, None,
                                      add_generation_prompt=req.add_generation_prompt,
                                      fmt=state.tool_format)
        except ValueError as e:
            raise APIError.from_value_error(e, param="messages") from None
        return list(state.tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(state.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)
                ["input_ids"])
