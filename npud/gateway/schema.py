"""The request bodies of the OpenAI-compatible endpoints, and their checks.

Parsed with pydantic (unknown fields are ignored, as OpenAI's own clients send many); every
problem becomes one :class:`BadRequest` naming the offending field (OpenAI's ``param``), which
the application answers with HTTP 400. Supported: ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``top_p``, ``seed``, ``stop`` (a string or up to
four), ``stream`` with ``stream_options.include_usage``, ``user``, ``service_tier``
(``auto``/``default``/``priority`` interactive, ``flex``/``batch`` the batch tier) or vLLM's
integer ``priority`` (above 0: the batch tier), and ``n`` = 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from npud.llm.batcher import Tier

MAX_STOP = 4
"""Stop strings per request (OpenAI's limit)."""


class BadRequest(Exception):
    """A request the gateway cannot serve as sent: HTTP 400 with ``param`` named."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)


B = TypeVar("B", bound=_Body)


class StreamOptions(_Body):
    """``stream_options``: whether the last chunk carries ``usage``."""

    include_usage: bool = False


class ContentPart(_Body):
    """One part of a message's content; only text is accepted."""

    type: str
    text: str = ""


class Message(_Body):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class _Sampling(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    service_tier: str | None = None
    priority: int | None = None
    n: int = Field(default=1, ge=1, le=1)


class ChatBody(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None


class CompletionBody(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str]
    echo: bool = False


@dataclass(frozen=True, slots=True)
class Options:
    """What the gateway needs of a request besides its prompt, checked."""

    model: str
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    tier: Tier
    user: str | None


_TIERS = {
    "auto": Tier.INTERACTIVE,
    "default": Tier.INTERACTIVE,
    "priority": Tier.INTERACTIVE,
    "flex": Tier.BATCH,
    "batch": Tier.BATCH,
}


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object.

    Raises:
        BadRequest: not UTF-8 JSON, or not an object.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _validate(cls: type[B], body: dict[str, Any]) -> B:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field(tuple(first["loc"]))
        raise BadRequest(f"{field}: {first['msg']}", field) from None


def _options(body: _Sampling, max_tokens: int | None) -> Options:
    if max_tokens is not None and max_tokens <= 0:
        raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
    stop: tuple[str, ...] = ()
    if isinstance(body.stop, str):
        stop = (body.stop,)
    elif body.stop is not None:
        stop = tuple(body.stop)
    if len(stop) > MAX_STOP or any(not s for s in stop):
        raise BadRequest(f"stop takes 1..{MAX_STOP} non-empty strings", "stop")
    tier = Tier.INTERACTIVE
    if body.service_tier is not None:
        if body.service_tier not in _TIERS:
            raise BadRequest(
                f"service_tier {body.service_tier!r} is not one of {sorted(_TIERS)}",
                "service_tier",
            )
        tier = _TIERS[body.service_tier]
    elif body.priority is not None and body.priority > 0:
        tier = Tier.BATCH
    include_usage = body.stream_options.include_usage if body.stream_options else False
    return Options(
        model=body.model,
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
        stream=body.stream,
        include_usage=include_usage,
        tier=tier,
        user=body.user,
    )


def parse_chat(body: dict[str, Any]) -> tuple[ChatBody, Options]:
    """A checked chat completion request.

    Raises:
        BadRequest: a missing or malformed field (named), a non-text content part.
    """
    chat = _validate(ChatBody, body)
    for index, message in enumerate(chat.messages):
        if isinstance(message.content, list):
            for part in message.content:
                if part.type != "text":
                    raise BadRequest(
                        f"messages.{index}.content: only text parts are supported, got "
                        f"{part.type!r}",
                        f"messages.{index}.content",
                    )
    max_tokens = chat.max_completion_tokens if chat.max_tokens is None else chat.max_tokens
    return chat, _options(chat, max_tokens)


def parse_completion(body: dict[str, Any]) -> tuple[CompletionBody, Options]:
    """A checked (legacy) completion request; ``prompt`` is one string (or a list of one).

    Raises:
        BadRequest: a missing or malformed field, several prompts, or ``echo``.
    """
    completion = _validate(CompletionBody, body)
    if isinstance(completion.prompt, list) and len(completion.prompt) != 1:
        raise BadRequest("prompt: exactly one prompt per request is supported", "prompt")
    if completion.echo:
        raise BadRequest("echo is not supported", "echo")
    max_tokens = 16 if completion.max_tokens is None else completion.max_tokens
    return completion, _options(completion, max_tokens)


def message_text(message: Message) -> str:
    """A message's text (its text parts joined)."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content)
