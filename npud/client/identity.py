"""The client half of npud's identity handshake (see docs/api.md, "Identity").

Before its first rpc a client connects to the identity socket beside the gRPC socket; the
daemon reads the kernel's record of who connected (``SO_PEERCRED``) and answers one JSON line
with a session token. Every rpc then carries the token as ``npud-token`` metadata. This module
does the handshake, synchronously or on an asyncio loop.

A process that should act as a *tenant* (an account inside its uid, e.g. a Kubernetes pod's
allocation; see docs/kubernetes.md) joins it with the tenant's credential right after the
handshake; :func:`tenant_credential` finds that credential: the argument, else
``$NPUD_TENANT_CREDENTIAL``, else the first line of the file ``$NPUD_TENANT_FILE`` names.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from npud.config import identity_socket_for
from npud.errors import QuotaExceeded, Unauthenticated, Unavailable

TENANT_CREDENTIAL_ENV: Final = "NPUD_TENANT_CREDENTIAL"
TENANT_FILE_ENV: Final = "NPUD_TENANT_FILE"
_MAX_REPLY: Final = 4096


@dataclass(frozen=True, slots=True)
class Identity:
    """The session token and the identity the daemon bound it to."""

    token: str
    uid: int
    gid: int
    pid: int
    admin: bool


def _parse(raw: bytes, path: Path) -> Identity:
    try:
        reply = json.loads(raw.decode())
        if isinstance(reply, dict) and reply.get("error") == "QuotaExceeded":
            raise QuotaExceeded(f"npud issued no token: {reply.get('message', '')}")
        return Identity(
            token=str(reply["token"]),
            uid=int(reply["uid"]),
            gid=int(reply["gid"]),
            pid=int(reply["pid"]),
            admin=bool(reply["admin"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise Unauthenticated(
            f"identity socket {path} answered something unexpected: {raw!r}"
        ) from exc


def handshake(socket_path: Path | str, *, timeout_s: float = 5.0) -> Identity:
    """Obtain a session token for this process from the daemon at ``socket_path``.

    Raises:
        Unavailable: the identity socket is missing or refuses the connection.
        Unauthenticated: the daemon's answer is not a token.
        QuotaExceeded: every token the user may hold is in use by a live session.
    """
    path = identity_socket_for(Path(socket_path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
            chunks: list[bytes] = []
            while sum(len(c) for c in chunks) < _MAX_REPLY:
                chunk = sock.recv(_MAX_REPLY)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as exc:
            raise Unavailable(
                f"cannot reach npud's identity socket {path}: {exc.strerror or exc} "
                "(is npud running, and may you open its socket?)"
            ) from exc
    return _parse(b"".join(chunks), path)


async def handshake_async(socket_path: Path | str, *, timeout_s: float = 5.0) -> Identity:
    """:func:`handshake` on the running asyncio loop.

    Raises:
        Unavailable: the identity socket is missing or refuses the connection.
        Unauthenticated: the daemon's answer is not a token.
        QuotaExceeded: every token the user may hold is in use by a live session.
    """
    path = identity_socket_for(Path(socket_path))
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
        try:
            raw = await asyncio.wait_for(reader.read(_MAX_REPLY), timeout_s)
        finally:
            writer.close()
    except (OSError, TimeoutError) as exc:
        raise Unavailable(
            f"cannot reach npud's identity socket {path}: {exc} "
            "(is npud running, and may you open its socket?)"
        ) from exc
    return _parse(raw, path)


def tenant_credential(explicit: str | None = None) -> str | None:
    """The tenant credential this process should join with, or None (act as its user).

    Raises:
        Unauthenticated: ``$NPUD_TENANT_FILE`` names a file that cannot be read or is empty.
    """
    if explicit:
        return explicit.strip()
    value = os.environ.get(TENANT_CREDENTIAL_ENV, "").strip()
    if value:
        return value
    path = os.environ.get(TENANT_FILE_ENV, "")
    if not path:
        return None
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise Unauthenticated(
            f"${TENANT_FILE_ENV} names {path}, which cannot be read: {exc.strerror or exc}"
        ) from exc
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise Unauthenticated(f"${TENANT_FILE_ENV} names {path}, which is empty")
    return lines[0].strip()
