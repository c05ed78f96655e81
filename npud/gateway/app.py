"""The OpenAI-compatible HTTP application (Starlette).

Routes: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/chat/completions``,
``POST /v1/completions`` (streamed as server-sent events ending with ``data: [DONE]``, or
not), ``GET /health``.

A request's life: the body is read up to ``max_body`` bytes (a larger ``Content-Length`` is
refused before a byte of the body is read; a chunked body is cut off at the limit), parsed and
checked (:mod:`~npud.gateway.schema`), rendered to prompt ids (:mod:`~npud.gateway.text`), and
submitted to the batcher. The gateway waits for the first token before it answers, so anything
that fails before it (npud's admission, quotas, npud being down, a job failing) gets its own
HTTP status (:mod:`~npud.gateway.failures`); a failure after it ends the stream with an error
event and ``[DONE]``. A client that goes away, at any point, has its sequence cancelled: no
more jobs, its chunk in flight cancelled in npud, its buffers released.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive

from npud.errors import InvalidArgument, NpudError
from npud.gateway.engine import Engine
from npud.gateway.failures import (
    Failure,
    bad_request,
    from_npud,
    too_large,
    unauthorised,
    unknown_model,
)
from npud.gateway.schema import (
    BadRequest,
    Options,
    message_text,
    parse_chat,
    parse_completion,
    parse_json,
)
from npud.gateway.text import Codec, StopScanner
from npud.llm.batcher import BatchSequence, Finish, Request
from npud.llm.sampling import Sampler, SamplingParams

log = logging.getLogger("npud.gateway")

MAX_BODY = 1 << 20
"""The default largest request body: 1 MiB (a prompt longer than any context fits easily)."""

T = TypeVar("T")


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    """The client disconnected before the answer started."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the application serves and how."""

    model_name: str
    max_body: int = MAX_BODY
    api_key: str | None = None


async def _read_body(request: HttpRequest, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BadRequest(f"Content-Length {length!r} is not a byte count")
        if int(length) > limit:
            raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_gone(awaitable: Awaitable[T], gone: asyncio.Future[None]) -> T:
    """``awaitable``'s result, or :class:`_Gone` if the client disconnects first."""
    task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
    both: set[asyncio.Future[Any]] = {task, gone}
    done, _ = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise _Gone


def _finish_reason(seq: BatchSequence, stopped: bool) -> str:
    if stopped or seq.finish is Finish.STOP:
        return "stop"
    return "length"


class Gateway:
    """The handlers, bound to one engine, codec and settings."""

    def __init__(self, engine: Engine, codec: Codec, settings: Settings) -> None:
        self.engine = engine
        self.codec = codec
        self.settings = settings
        self.created = int(time.time())

    # ---- helpers --------------------------------------------------------------------------

    def _user(self, request: HttpRequest, options: Options) -> str:
        if options.user:
            return "user:" + options.user
        auth = request.headers.get("authorization", "")
        if auth:
            return "key:" + hashlib.sha256(auth.encode()).hexdigest()[:16]
        return "anonymous"

    def _authorised(self, request: HttpRequest) -> bool:
        key = self.settings.api_key
        return key is None or request.headers.get("authorization", "") == f"Bearer {key}"

    async def _body(self, request: HttpRequest) -> dict[str, Any]:
        return parse_json(await _read_body(request, self.settings.max_body))

    # ---- routes ---------------------------------------------------------------------------

    async def models(self, request: HttpRequest) -> Response:
        """``GET /v1/models``: the one model served."""
        if not self._authorised(request):
            return unauthorised().response()
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: HttpRequest) -> Response:
        """``GET /v1/models/{id}``."""
        if not self._authorised(request):
            return unauthorised().response()
        name = request.path_params["model"]
        if name != self.settings.model_name:
            return unknown_model(name, self.settings.model_name).response()
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.settings.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "npud",
            "max_model_len": self.engine.max_seq,
        }

    async def health(self, request: HttpRequest) -> Response:
        """``GET /health``: 200 when npud is reachable and the model loaded, else 503."""
        del request
        try:
            await self.engine.check()
        except NpudError as exc:
            stats = self.engine.statistics()
            return JSONResponse(
                {"status": "unavailable", "error": str(exc), "connects": stats.connects},
                status_code=503,
            )
        stats = self.engine.statistics()
        batcher = asdict(stats.batcher) if stats.batcher is not None else None
        return JSONResponse({"status": "ok", "model": self.settings.model_name, "batcher": batcher})

    async def chat(self, request: HttpRequest) -> Response:
        """``POST /v1/chat/completions``."""
        return await self._serve(request, chat=True)

    async def completions(self, request: HttpRequest) -> Response:
        """``POST /v1/completions``."""
        return await self._serve(request, chat=False)

    # ---- generation -----------------------------------------------------------------------

    async def _serve(self, request: HttpRequest, *, chat: bool) -> Response:
        if not self._authorised(request):
            return unauthorised().response()
        try:
            body = await self._body(request)
            if chat:
                chat_body, options = parse_chat(body)
                messages = [(m.role, message_text(m)) for m in chat_body.messages]
                prompt = self.codec.chat(messages)
            else:
                completion, options = parse_completion(body)
                text = completion.prompt
                prompt = self.codec.encode(text if isinstance(text, str) else text[0])
        except _TooLarge:
            return too_large(self.settings.max_body).response()
        except BadRequest as exc:
            return bad_request(str(exc), exc.param).response()
        except InvalidArgument as exc:  # the chat template refuses these messages
            return bad_request(str(exc), "messages" if chat else "prompt").response()
        if options.model != self.settings.model_name:
            return unknown_model(options.model, self.settings.model_name).response()
        max_seq = self.engine.max_seq
        if len(prompt) >= max_seq:
            return bad_request(
                f"the prompt is {len(prompt)} tokens; this model's context holds {max_seq}, "
                "which must leave room for at least one generated token",
                "messages" if chat else "prompt",
            ).response()
        room = max_seq + 1 - len(prompt)
        max_tokens = room if options.max_tokens is None else options.max_tokens
        sampler = None
        if options.temperature > 0:
            params = SamplingParams(options.temperature, 0, options.top_p, options.seed)
            sampler = Sampler(params)
        job = Request(
            tuple(prompt),
            max_tokens,
            tier=options.tier,
            user=self._user(request, options),
            sampler=sampler,
            stop_ids=self.codec.end_ids,
        )
        gone = asyncio.ensure_future(_disconnect(request.receive))
        seq: BatchSequence | None = None
        try:
            batcher = await _unless_gone(self.engine.batcher(), gone)
            seq = await _unless_gone(batcher.submit(job), gone)
            tokens = seq.tokens().__aiter__()
            first = await _unless_gone(anext(tokens, None), gone)
        except _Gone:
            if seq is not None:
                seq.cancel()
            return Response(status_code=499)
        except NpudError as exc:
            if seq is not None:
                seq.cancel()
            return from_npud(exc).response()
        except BaseException:
            if seq is not None:
                seq.cancel()
            raise
        finally:
            gone.cancel()
        reply = _Reply(self, seq, options, chat, len(prompt))
        if options.stream:
            return StreamingResponse(
                reply.events(first, tokens),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        gone = asyncio.ensure_future(_disconnect(request.receive))
        try:
            return JSONResponse(await _unless_gone(reply.whole(first, tokens), gone))
        except _Gone:
            return Response(status_code=499)
        except NpudError as exc:
            return from_npud(exc).response()
        finally:
            gone.cancel()
            seq.cancel()


class _Reply:
    """Builds one answer, whole or as chunks, from a sequence's ids."""

    def __init__(
        self, gateway: Gateway, seq: BatchSequence, options: Options, chat: bool, n_prompt: int
    ) -> None:
        self.seq = seq
        self.options = options
        self.chat = chat
        self.n_prompt = n_prompt
        self.model = gateway.settings.model_name
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.detok = gateway.codec.detokenizer()
        self.scanner = StopScanner(options.stop)
        self.generated = 0

    def _text(self, token: int | None) -> str:
        if token is None:
            return self.scanner.push(self.detok.flush()) + self.scanner.flush()
        self.generated += 1
        out = self.scanner.push(self.detok.feed(token))
        if self.scanner.stopped:
            self.seq.stop()
        return out

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.n_prompt,
            "completion_tokens": self.generated,
            "total_tokens": self.n_prompt + self.generated,
        }

    def _tier(self) -> str:
        return "flex" if self.options.tier == "batch" else "default"

    async def _pieces(self, first: int | None, tokens: AsyncIterator[int]) -> AsyncIterator[str]:
        token = first
        while token is not None:
            text = self._text(token)
            if text:
                yield text
            if self.scanner.stopped:
                return
            token = await anext(tokens, None)
        tail = self._text(None)
        if tail:
            yield tail

    async def whole(self, first: int | None, tokens: AsyncIterator[int]) -> dict[str, Any]:
        """The non-streamed answer."""
        text = "".join([piece async for piece in self._pieces(first, tokens)])
        reason = _finish_reason(self.seq, self.scanner.stopped)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self._usage(),
            "service_tier": self._tier(),
            "system_fingerprint": None,
        }

    def _chunk(self, text: str | None, reason: str | None, *, role: bool = False) -> str:
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": reason}
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "service_tier": self._tier(),
        }
        if self.options.include_usage:
            chunk["usage"] = None
        return f"data: {json.dumps(chunk)}\n\n"

    async def events(self, first: int | None, tokens: AsyncIterator[int]) -> AsyncIterator[str]:
        """The server-sent events of a streamed answer, ending with ``data: [DONE]``.

        Cancelled (the client went away) or finished, the sequence is cancelled on the way
        out: a no-op when it ended by itself.
        """
        try:
            if self.chat:
                yield self._chunk("", None, role=True)
            try:
                async for piece in self._pieces(first, tokens):
                    yield self._chunk(piece, None)
            except NpudError as exc:
                yield f"data: {json.dumps(from_npud(exc).body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            reason = _finish_reason(self.seq, self.scanner.stopped)
            yield self._chunk(None if self.chat else "", reason)
            if self.options.include_usage:
                usage: dict[str, Any] = {
                    "id": self.id,
                    "object": "chat.completion.chunk" if self.chat else "text_completion",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self._usage(),
                }
                yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.seq.cancel()


def create_app(engine: Engine, codec: Codec, settings: Settings) -> Starlette:
    """The ASGI application; it closes ``engine`` when the server shuts down."""
    gateway = Gateway(engine, codec, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        try:
            await engine.batcher()
            log.info("connected to npud; serving %s", settings.model_name)
        except NpudError as exc:
            log.error("npud is not reachable (%s); answering 503 until it is", exc)
        try:
            yield
        finally:
            await engine.close()

    routes = [
        Route("/health", gateway.health, methods=["GET"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/v1/models/{model:path}", gateway.model, methods=["GET"]),
        Route("/v1/chat/completions", gateway.chat, methods=["POST"]),
        Route("/v1/completions", gateway.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)

    async def not_found(request: HttpRequest, exc: Exception) -> Response:
        del exc
        return Failure(
            404, f"no route {request.url.path}", "invalid_request_error", None, "not_found"
        ).response()

    async def not_allowed(request: HttpRequest, exc: Exception) -> Response:
        del exc
        return Failure(
            405,
            f"{request.method} is not allowed on {request.url.path}",
            "invalid_request_error",
            None,
            "method_not_allowed",
        ).response()

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    return app
