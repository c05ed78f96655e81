"""Who is calling: session tokens issued against kernel-verified peer credentials.

grpcio cannot tell a servicer the uid of a Unix-socket peer (``context.peer()`` is just
``"unix:"``), yet quotas are per user and some operations are for admins only. So npud runs a
second, tiny Unix socket beside the gRPC one, the *identity socket*. A client connects; npud
reads the peer's credentials from the kernel (``SO_PEERCRED``: uid, gid, pid; supplementary
groups from ``/proc/<pid>/status``), issues a random 256-bit token bound to them and writes one
JSON line back::

    {"version": 1, "token": "...", "uid": 1000, "gid": 1000, "pid": 4242, "admin": false}

The client presents the token as ``npud-token`` metadata on every rpc; :meth:`TokenRegistry.
resolve` turns it back into the :class:`~npud.core.owner.Owner` the kernel vouched for, or
raises :class:`~npud.errors.Unauthenticated`. The token is a bearer credential: a process that
hands its token to another hands over its identity (as with any session cookie); it never
leaves the machine, and it dies with its session (see :mod:`npud.api.sessions`) or the daemon.
Both sockets get the same mode and group, so socket permissions still decide who may connect
at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pwd
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from npud.api.local_socket import bind_local
from npud.core.owner import Owner
from npud.errors import QuotaExceeded, Unauthenticated
from npud.vocab import TOKEN_KEY

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a connected Unix socket.

    Raises:
        OSError: the socket is not a connected AF_UNIX socket.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def supplementary_groups(pid: int) -> frozenset[int]:
    """The peer's supplementary groups from ``/proc/<pid>/status`` (empty when unreadable)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line.split()[1:])
    return frozenset()


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@dataclass(frozen=True, slots=True)
class TokenStatistics:
    """How many tokens are live and how many were issued / refused."""

    live: int
    issued: int
    refused: int


def _idle_unknown(token: str) -> bool:
    return False


# ---- Why a full table revokes an idle token of the same process first ------------------------
#
# A user holds at most ``max_per_user`` live tokens, so a handshake loop cannot grow the table
# without bound. Revoking the user's oldest token to make room let one process of the user, by
# handshaking in a loop, revoke the live tokens of the user's other processes: their sessions
# and contexts then answered UNAUTHENTICATED. So room is made from tokens nobody is using (no
# open Session stream, no live context: ``in_use``), the caller's own process's first (a
# handshake loop then only recycles its own tokens), then any process's; a token in use is never
# revoked to make room. When every token of the user is in use, the handshake is refused
# (RESOURCE_EXHAUSTED) instead.
# -----------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class TokenRegistry:
    """Session tokens and the owners they stand for. Lives on the event loop's thread.

    ``in_use(token)`` says whether a token backs a live session or context (the daemon wires
    it to its session table); only tokens not in use make room for new ones.
    """

    admin_gid: int | None = None
    max_per_user: int = 1024
    in_use: Callable[[str], bool] = _idle_unknown
    _owners: dict[str, Owner] = field(default_factory=dict)
    _by_uid: dict[int, dict[str, None]] = field(default_factory=dict)
    _issued: int = 0
    _refused: int = 0

    def issue(self, owner: Owner) -> str:
        """A fresh token for ``owner``; it stays valid until :meth:`revoke`.

        A user holds at most ``max_per_user`` live tokens: issuing one more revokes the oldest
        token of the user not in use, the calling process's own first (see the "why" above).

        Raises:
            QuotaExceeded: every one of the user's ``max_per_user`` tokens is in use.
        """
        mine = self._by_uid.setdefault(owner.uid, {})
        while len(mine) >= self.max_per_user:
            idle = self._idle(mine, owner.pid)
            if idle is None:
                self._refused += 1
                raise QuotaExceeded(
                    f"uid {owner.uid} holds {len(mine)} tokens, every one with a live session "
                    f"or context; the limit per user is {self.max_per_user}"
                )
            self.revoke(idle)
        token = secrets.token_urlsafe(32)
        self._owners[token] = owner
        mine[token] = None
        self._issued += 1
        return token

    def _idle(self, mine: dict[str, None], pid: int) -> str | None:
        """The oldest token of ``mine`` not in use, one issued to ``pid`` first."""
        other: str | None = None
        for token in mine:
            if self.in_use(token):
                continue
            if self._owners[token].pid == pid:
                return token
            if other is None:
                other = token
        return other

    def revoke(self, token: str) -> None:
        """Forget ``token`` (idempotent)."""
        owner = self._owners.pop(token, None)
        if owner is not None:
            mine = self._by_uid.get(owner.uid)
            if mine is not None:
                mine.pop(token, None)
                if not mine:
                    del self._by_uid[owner.uid]

    def rebind(self, token: str, owner: Owner) -> None:
        """Make live ``token`` stand for ``owner`` from now on (a session joining a tenant:
        same uid, so the per-user table is unchanged).

        Raises:
            KeyError: ``token`` is not live.
        """
        old = self._owners[token]
        assert old.uid == owner.uid, "a token keeps its kernel-verified uid"
        self._owners[token] = owner

    def owner(self, token: str) -> Owner | None:
        """The owner of ``token``, or None."""
        return self._owners.get(token)

    def tokens(self) -> list[str]:
        """Every live token."""
        return list(self._owners)

    def is_admin(self, owner: Owner) -> bool:
        """Whether ``owner`` is root or in the configured admin group."""
        return owner.is_admin(self.admin_gid)

    def token_of(self, context: grpc.aio.ServicerContext[object, object]) -> str:
        """The ``npud-token`` metadata of a call.

        Raises:
            Unauthenticated: the call carries no token, or one the daemon did not issue.
        """
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == TOKEN_KEY:
                token = value if isinstance(value, str) else value.decode()
                break
        if token is None:
            self._refused += 1
            raise Unauthenticated(
                f"no {TOKEN_KEY!r} metadata: connect to the identity socket first "
                "(npud.client does this for you; see docs/api.md)"
            )
        if token not in self._owners:
            self._refused += 1
            raise Unauthenticated(
                f"unknown or expired {TOKEN_KEY!r}: the daemon restarted or the session ended; "
                "reconnect to the identity socket for a new one"
            )
        return token

    def resolve(self, context: grpc.aio.ServicerContext[object, object]) -> Owner:
        """The owner behind a call's token.

        Raises:
            Unauthenticated: no token, or an unknown one.
        """
        return self._owners[self.token_of(context)]

    def statistics(self) -> TokenStatistics:
        """A snapshot of the registry."""
        return TokenStatistics(live=len(self._owners), issued=self._issued, refused=self._refused)


class IdentityServer:
    """The asyncio Unix-socket server that hands out tokens against SO_PEERCRED.

    ``on_issue`` (optional) is told about every token issued, e.g. to log it.
    """

    def __init__(
        self,
        registry: TokenRegistry,
        path: Path,
        *,
        mode: int = 0o660,
        gid: int | None = None,
        on_issue: Callable[[Owner], None] | None = None,
    ) -> None:
        self._registry = registry
        self._path = path
        self._mode = mode
        self._gid = gid
        self._on_issue = on_issue
        self._server: asyncio.Server | None = None

    @property
    def path(self) -> Path:
        """Where the identity socket lives."""
        return self._path

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) with the configured mode and group.

        Raises:
            OSError: the path cannot be bound.
        """
        sock = bind_local(self._path, socket.SOCK_STREAM, self._mode, self._gid)
        try:
            self._server = await asyncio.start_unix_server(self._handle, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            pid, uid, gid = peer_credentials(sock)
            owner = Owner(
                uid=uid,
                gid=gid,
                pid=pid,
                name=_user_name(uid),
                groups=supplementary_groups(pid),
            )
            try:
                token = self._registry.issue(owner)
            except QuotaExceeded as exc:
                refusal = {"version": 1, "error": "QuotaExceeded", "message": str(exc)}
                writer.write(json.dumps(refusal).encode() + b"\n")
                await writer.drain()
                return
            reply = {
                "version": 1,
                "token": token,
                "uid": uid,
                "gid": gid,
                "pid": pid,
                "admin": self._registry.is_admin(owner),
            }
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            if self._on_issue is not None:
                self._on_issue(owner)
        except OSError:
            pass  # the client went away mid-handshake: nothing was promised
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        """Stop accepting and remove the socket file (idempotent)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
