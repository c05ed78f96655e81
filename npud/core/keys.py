"""Persistent keys: who may name, create, write and open a shared buffer.

A PERSISTENT buffer outlives its process and can be opened by key from any context, so its key
decides who can reach it. Two kinds of key, told apart by their form alone:

* **Content-addressed** keys end in ``sha256:<64 lowercase hex>``, optionally after a prefix of
  ``:``-separated name segments (``sha256:ab12...``, ``npud-llm:sha256:ab12...``). The digest is a
  promise about the bytes: sealing checks it against the buffer's whole contents and refuses a
  mismatch. Sealed, such a key is global: every user may open it, because whoever sealed it, the
  bytes are the ones the key names. Before sealing, the buffer is its creator's private upload
  (several users may each upload the same key at once; the first seal wins and the others'
  seals attach to it), so nobody can *squat* a content key: holding it unsealed blocks no one.
* **Free-form** keys (``model@1``, ``team/weights/v3``) live in their creator's per-user
  namespace: user 1000's ``model@1`` and user 1001's ``model@1`` are two buffers. Another user
  names a sealed one explicitly as ``~<uid>/<key>`` (``~1000/model@1``): trusting a named user is
  the reader's choice, and no one can plant a buffer under a name another user will look up.

In both kinds a buffer is writable only by its creator's user until sealed, sealed contents are
immutable, and another user can open only sealed buffers. The ``~`` prefix is reserved for the
qualified form; qualified names of content keys are refused (content keys are already global).

:func:`resolve` turns a key as a client gives it into a :class:`Name`; its :attr:`Name.stored`
string is how the residency manager and the on-disk registry index the buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from npud.errors import InvalidArgument, PermissionDenied

HASH_PREFIX = "sha256:"
MAX_KEY_LENGTH = 256
_CONTENT = re.compile(r"(?:[A-Za-z0-9._@+-]+:)*sha256:([0-9a-f]{64})")
_QUALIFIED = re.compile(r"~(\d{1,10})/(.+)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Name:
    """Where a key points (a value object).

    ``namespace`` is the uid owning a free-form key, ``None`` for a content-addressed one;
    ``key`` is the key without any ``~<uid>/`` qualifier; ``digest`` is the hex sha256 a content
    key promises (``None`` for free-form keys).
    """

    namespace: int | None
    key: str
    digest: str | None

    @property
    def stored(self) -> str:
        """The name the buffer is indexed under: the key itself for a global content key,
        ``~<uid>/<key>`` for a free-form one."""
        return self.key if self.namespace is None else qualified(self.namespace, self.key)


def qualified(uid: int, key: str) -> str:
    """``key`` of user ``uid`` as another user names it (also how it is stored)."""
    return f"~{uid}/{key}"


def pending(uid: int, key: str) -> str:
    """The stored name of user ``uid``'s unsealed upload of content key ``key`` (a name no
    client can give: qualified content keys are refused)."""
    return qualified(uid, key)


def content_digest(key: str) -> str | None:
    """The hex digest a content-addressed key promises, or ``None`` for any other key."""
    match = _CONTENT.fullmatch(key)
    return match.group(1) if match else None


def check(key: str) -> None:
    """Refuse a malformed key.

    Raises:
        InvalidArgument: empty, longer than :data:`MAX_KEY_LENGTH`, unprintable, or a
            ``sha256:`` key whose digest is not 64 lowercase hex digits.
    """
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidArgument(
            f"a persistent key is 1..{MAX_KEY_LENGTH} printable characters, got {key[:80]!r}"
        )
    if key.startswith(HASH_PREFIX) and content_digest(key) is None:
        raise InvalidArgument(f"a {HASH_PREFIX} key needs 64 lowercase hex digits: {key[:80]!r}")


def resolve(key: str, uid: int) -> Name:
    """Where ``key``, given by user ``uid``, points.

    Raises:
        InvalidArgument: a malformed key (see :func:`check`), a ``~`` key not of the form
            ``~<uid>/<key>``, or a qualified content key.
    """
    check(key)
    if key.startswith("~"):
        match = _QUALIFIED.fullmatch(key)
        if match is None:
            raise InvalidArgument(
                f"keys starting with '~' name another user's key as ~<uid>/<key>: {key[:80]!r}"
            )
        rest = match.group(2)
        check(rest)
        if content_digest(rest) is not None or rest.startswith("~"):
            raise InvalidArgument(
                f"{key[:80]!r}: content-addressed keys are global; open {rest[:80]!r} unqualified"
            )
        return Name(int(match.group(1)), rest, None)
    digest = content_digest(key)
    return Name(None if digest is not None else uid, key, digest)


def own(name: Name, uid: int, key: str) -> None:
    """Refuse to create ``name`` (from ``key``) for user ``uid`` in another user's namespace.

    Raises:
        PermissionDenied: ``key`` is qualified with another user's uid.
    """
    if name.namespace is not None and name.namespace != uid:
        raise PermissionDenied(
            f"{key[:80]!r} is in user {name.namespace}'s key namespace; create keys in your own"
        )
