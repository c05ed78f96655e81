"""A GGUF model's own tokenizer and chat template.

The vocabulary (``tokenizer.ggml.tokens``), merges (``tokenizer.ggml.merges``) and token
kinds (``tokenizer.ggml.token_type``) in a GGUF file's metadata define a gpt2-style
byte-level BPE; it is built with the ``tokenizers`` library. Tokens of kind 3 (control:
``<|im_start|>``, ``<|im_end|>``, ...) are special: they are matched whole in the text
before BPE runs, never split, and dropped when decoding. The pre-tokenizer follows
``tokenizer.ggml.pre``: for ``smollm`` digits are split one by one before the gpt2 regex
(llama.cpp's rule for that name); for ``gpt2`` and ``default`` the gpt2 regex alone.

The chat template (``tokenizer.chat_template``, Jinja) is rendered in a sandbox with the
``messages`` list and ``add_generation_prompt``, as ``transformers`` and llama.cpp do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npud.llm.errors import ModelFileError

CONTROL = 3
"""``tokenizer.ggml.token_type`` of a control token (special, matched whole)."""

_PRE_DIGITS = frozenset({"smollm"})
_PRE_GPT2 = frozenset({"gpt2", "default", "smollm"})


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message: ``role`` (system, user, assistant) and its text."""

    role: str
    content: str


@dataclass(slots=True, eq=False)
class BpeTokenizer:
    """Text <-> ids with a GGUF model's vocabulary, and its chat template.

    Build it with :func:`load_tokenizer`. ``eos_id`` is the id that ends a reply (the
    template's end token for chat models).
    """

    path: Path
    vocab: tuple[str, ...] = field(repr=False)
    special: frozenset[int]
    bos_id: int | None
    eos_id: int | None
    chat_template: str | None = field(repr=False)
    _tok: Any = field(repr=False)

    @property
    def vocab_size(self) -> int:
        """The number of ids."""
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``; control tokens written in it are matched whole."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text from ids, control tokens dropped, invalid UTF-8 shown as U+FFFD."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def decode_token(self, token: int) -> bytes:
        """The raw bytes of one id (empty for a control token), for streaming output.

        A multi-byte character split over two ids comes out as its bytes in two pieces.
        """
        if token in self.special or not 0 <= token < len(self.vocab):
            return b""
        return bytes(_BYTE_OF[ch] for ch in self.vocab[token] if ch in _BYTE_OF)

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """The chat template applied to ``messages`` (ending with the assistant's header).

        Raises:
            ModelFileError: the model has no chat template, or the template fails to render.
        """
        if self.chat_template is None:
            raise ModelFileError(self.path, "missing metadata key 'tokenizer.chat_template'")
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            template = env.from_string(self.chat_template)
            return template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self._token_text(self.bos_id),
                eos_token=self._token_text(self.eos_id),
            )
        except TemplateError as exc:
            raise ModelFileError(
                self.path, f"metadata key 'tokenizer.chat_template' fails to render: {exc}"
            ) from exc

    def chat_ids(
        self, user: str, *, system: str | None = None, history: Sequence[Message] = ()
    ) -> list[int]:
        """The prompt ids of one chat turn: ``history``, then ``user``, then the reply header.

        Without ``system`` the template's own default (if any) applies.

        Raises:
            ModelFileError: as :meth:`render`.
        """
        messages = [Message("system", system)] if system is not None else []
        messages += [*history, Message("user", user)]
        return self.encode(self.render(messages))

    def _token_text(self, token: int | None) -> str:
        return self.vocab[token] if token is not None and 0 <= token < len(self.vocab) else ""


def _bytes_to_unicode() -> dict[int, str]:
    # gpt2's reversible map of bytes to printable characters (the vocabulary's alphabet).
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


_BYTE_OF = {ch: b for b, ch in _bytes_to_unicode().items()}


def tokenizer_from_metadata(path: Path, metadata: Mapping[str, Any]) -> BpeTokenizer:
    """Build the tokenizer from a GGUF file's metadata.

    Raises:
        ModelFileError: a tokenizer key is missing or malformed, or the tokenizer model or
            pre-tokenizer is not a supported one; the message names the key.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelFileError(
            path, f"metadata key 'tokenizer.ggml.model' is {model!r}: only 'gpt2' BPE is supported"
        )
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_GPT2:
        raise ModelFileError(
            path,
            f"metadata key 'tokenizer.ggml.pre' is {pre!r}: supported are {sorted(_PRE_GPT2)}",
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    merges = metadata.get("tokenizer.ggml.merges")
    kinds = metadata.get("tokenizer.ggml.token_type")
    for key, value in (
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.merges", merges),
        ("tokenizer.ggml.token_type", kinds),
    ):
        if not isinstance(value, list) or not value:
            raise ModelFileError(path, f"missing or empty metadata key {key!r}")
    assert isinstance(tokens, list)
    assert isinstance(merges, list)
    assert isinstance(kinds, list)
    if len(kinds) != len(tokens):
        raise ModelFileError(
            path,
            f"metadata key 'tokenizer.ggml.token_type' has {len(kinds)} entries for "
            f"{len(tokens)} tokens",
        )
    pairs = []
    for merge in merges:
        left, sep, right = str(merge).partition(" ")
        if not sep:
            raise ModelFileError(
                path, f"metadata key 'tokenizer.ggml.merges': malformed merge {merge!r}"
            )
        pairs.append((left, right))
    vocab = {str(t): i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    steps: list[Any] = []
    if pre in _PRE_DIGITS:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    special = frozenset(i for i, kind in enumerate(kinds) if kind == CONTROL)
    tok.add_special_tokens([AddedToken(str(tokens[i]), special=True) for i in sorted(special)])
    template = metadata.get("tokenizer.chat_template")

    def token_id(key: str) -> int | None:
        value = metadata.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or not 0 <= value < len(tokens):
            raise ModelFileError(path, f"metadata key {key!r} is not a token id: {value!r}")
        return value

    return BpeTokenizer(
        path,
        tuple(str(t) for t in tokens),
        special,
        token_id("tokenizer.ggml.bos_token_id"),
        token_id("tokenizer.ggml.eos_token_id"),
        template if isinstance(template, str) else None,
        tok,
    )


def load_tokenizer(path: Path | str) -> BpeTokenizer:
    """The tokenizer and chat template of the GGUF file at ``path``.

    Raises:
        ModelFileError: the file is not a readable GGUF file, or its tokenizer metadata is
            missing, malformed or unsupported (the message names the key).
    """
    from npud.llm.gguf_model import read_gguf

    g = read_gguf(path)
    return tokenizer_from_metadata(g.path, g.metadata)
