"""From messages to prompt ids and from generated ids to text, with stop strings.

:class:`Codec` is the seam between the gateway and a model's tokenizer: it renders a chat into
prompt ids, encodes a plain prompt, turns ids back into text incrementally (a character may
span several ids, so text is released only once it is whole) and names the ids that end a
reply. :class:`ByteCodec` serves models whose vocabulary is the byte tokenizer's (the tiny
demo model) with a plain chat layout; :class:`BpeCodec` serves a GGUF model with its own
byte-level BPE vocabulary and Jinja chat template (SmolLM2).

:class:`StopScanner` finds stop strings in streamed text and holds back the few characters that
could be the start of one, so a client never receives part of a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Protocol

from npud.llm.bpe import BpeTokenizer, Message
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

    @property
    def end_ids(self) -> frozenset[int]:
        """Ids that end a reply besides the model's EOS (a template's end-of-turn token)."""
        ...


class _ByteDetokenizer:
    # Why an incremental decoder: a byte-level id carries raw bytes, and a character of two
    # to four UTF-8 bytes may be split over ids; the decoder holds an unfinished sequence
    # until its last byte comes (and shows a sequence that can never finish as U+FFFD).
    __slots__ = ("_decoder", "_tok")

    def __init__(self, tok: _RawBytes) -> None:
        self._tok = tok
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return str(self._decoder.decode(self._tok.decode_token(token)))

    def flush(self) -> str:
        return str(self._decoder.decode(b"", final=True))


class _RawBytes(Protocol):
    def decode_token(self, token: int) -> bytes: ...


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

    @property
    def end_ids(self) -> frozenset[int]:
        """None besides EOS."""
        return frozenset()


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")
"""Control tokens that end a turn in the chat formats npud knows (ChatML, Llama 3, Phi,
GPT-2's end of text); those of them a BPE vocabulary holds as control tokens end a reply."""


class BpeCodec:
    """A GGUF model's own tokenizer: chats rendered by its chat template, text by its BPE,
    replies ended by EOS or any :data:`END_OF_TURN` control token of its vocabulary."""

    __slots__ = ("_end_ids", "tokenizer")

    def __init__(self, tokenizer: BpeTokenizer) -> None:
        self.tokenizer = tokenizer
        self._end_ids = frozenset(
            i for i in tokenizer.special if tokenizer.vocab[i] in END_OF_TURN
        ) | frozenset(() if tokenizer.eos_id is None else (tokenizer.eos_id,))

    def chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """The chat template applied to the messages, with the assistant's header, encoded.

        Raises:
            ModelFileError: the model has no chat template, or it fails to render.
        """
        return self.tokenizer.encode(
            self.tokenizer.render([Message(role, content) for role, content in messages])
        )

    def encode(self, text: str) -> list[int]:
        """The prompt's ids (control tokens written in it are matched whole)."""
        return self.tokenizer.encode(text)

    def detokenizer(self) -> Detokenizer:
        """An incremental UTF-8 decoder over the ids' bytes (control tokens give no text)."""
        return _ByteDetokenizer(self.tokenizer)

    @property
    def end_ids(self) -> frozenset[int]:
        """EOS and the vocabulary's end-of-turn control tokens."""
        return self._end_ids


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
