"""A byte-level tokenizer: ids 0..255 are bytes, then BOS and EOS.

It exists for the tiny demo model, whose vocabulary is exactly this (258 ids). It needs no
vocabulary file and round-trips any UTF-8 text. Real models come with their own tokenizers;
for those, the CLI takes token ids directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BYTE_VOCAB = 256


@dataclass(frozen=True, slots=True)
class ByteTokenizer:
    """Bytes as tokens, with BOS = 256 and EOS = 257 by default."""

    bos_id: int = BYTE_VOCAB
    eos_id: int = BYTE_VOCAB + 1

    @property
    def vocab_size(self) -> int:
        """The number of ids the tokenizer can produce."""
        return max(self.bos_id, self.eos_id) + 1

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        """The ids of ``text``'s UTF-8 bytes, after BOS when ``bos``."""
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text from ids: bytes kept, specials dropped, invalid UTF-8 shown as U+FFFD."""
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB).decode("utf-8", errors="replace")

    def decode_token(self, token: int) -> bytes:
        """The raw bytes of one id (empty for specials), for streaming output."""
        return bytes([token]) if 0 <= token < BYTE_VOCAB else b""


def check_ids(ids: Sequence[int], vocab_size: int) -> None:
    """Check every id is a valid row of the embedding table.

    Raises:
        InvalidArgument: an id is outside ``0..vocab_size-1``; the message gives its position.
    """
    from npud.errors import InvalidArgument

    for pos, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise InvalidArgument(
                f"token id {token} at position {pos} is outside the vocabulary "
                f"(0..{vocab_size - 1})"
            )
