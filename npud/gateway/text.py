"""From messages to prompt ids and from generated ids to text, with stop strings.

:class:`Codec` is the seam between the gateway and a model's tokenizer: it renders a chat into
prompt ids, encodes a plain prompt, and turns ids back into text incrementally (a character
may span several ids, so text is released only once it is whole). :class:`ByteCodec` serves
models whose vocabulary is the byte tokenizer's (the tiny demo model) with a plain chat layout;
a model that brings its own tokenizer and chat template gets a codec of its own.

:class:`StopScanner` finds stop strings in streamed text and holds back the few characters that
could be the start of one, so a client never receives part of a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Protocol

from npud.llm.tokenizer import ByteTokenizer


class Detokenizer(Protocol):
    """Turns a stream of ids into text."""

    def feed(self, token: int) -> str:
        """The text completed by ``token`` (possibly empty)."""
        ...

    def flush(self) -> str:
        """Whatever text is still held back at the end."""
        ...


class Codec(Protocol):
    """A model's tokenizer as the gateway needs it."""

    def chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """The prompt ids of a chat (``(role, text)`` pairs), ending where the assistant's
        reply starts."""
        ...

    def encode(self, text: str) -> list[int]:
        """The prompt ids of a plain completion prompt."""
        ...

    def detokenizer(self) -> Detokenizer:
        """A fresh incremental decoder."""
        ...


class _ByteDetokenizer:
    __slots__ = ("_decoder", "_tok")

    def __init__(self, tok: ByteTokenizer) -> None:
        self._tok = tok
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return str(self._decoder.decode(self._tok.decode_token(token)))

    def flush(self) -> str:
        return str(self._decoder.decode(b"", final=True))


class ByteCodec:
    """The byte tokenizer (ids 0..255 are bytes, then BOS and EOS) with a plain chat layout:
    BOS, then ``<|role|>\\ntext\\n`` per message, then ``<|assistant|>\\n``."""

    __slots__ = ("tokenizer",)

    def __init__(self, tokenizer: ByteTokenizer | None = None) -> None:
        self.tokenizer = tokenizer or ByteTokenizer()

    def chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """BOS and the rendered messages, up to the assistant's turn."""
        text = "".join(f"<|{role}|>\n{content}\n" for role, content in messages)
        return self.tokenizer.encode(text + "<|assistant|>\n")

    def encode(self, text: str) -> list[int]:
        """BOS and the prompt's bytes."""
        return self.tokenizer.encode(text)

    def detokenizer(self) -> Detokenizer:
        """An incremental UTF-8 decoder over the ids' bytes (specials give no text)."""
        return _ByteDetokenizer(self.tokenizer)


class StopScanner:
    """Cuts streamed text at the first stop string and holds back what could start one.

    ``push`` returns the text that is safe to send now; once a stop string is seen,
    :attr:`stopped` is set, the text before it has been returned, and later pushes return
    nothing. ``flush`` returns what was held back at the end (when no stop string came).
    """

    __slots__ = ("_hold", "_pending", "_stops", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The part of everything pushed so far that can be released."""
        if self.stopped:
            return ""
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        if self._hold == 0:
            out, self._pending = self._pending, ""
            return out
        release = max(0, len(self._pending) - self._hold)
        out, self._pending = self._pending[:release], self._pending[release:]
        return out

    def flush(self) -> str:
        """The held-back tail (nothing after a stop)."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
