"""The identity socket: tokens bound to the kernel's SO_PEERCRED record of the caller."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from npud.api.identity import IdentityServer, TokenRegistry
from npud.client.identity import handshake_async
from npud.config import identity_socket_for
from npud.errors import Unauthenticated, Unavailable


class _Ctx:
    def __init__(self, md: tuple[tuple[str, str], ...]) -> None:
        self._md = md

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md


def test_handshake_issues_a_token_for_our_credentials(tmp_path: Path) -> None:
    """The token resolves to this process's uid, gid and pid; the socket gets its mode."""

    async def main() -> None:
        registry = TokenRegistry()
        grpc_sock = tmp_path / "npud.sock"
        server = IdentityServer(registry, identity_socket_for(grpc_sock), mode=0o600)
        await server.start()
        try:
            assert identity_socket_for(grpc_sock).stat().st_mode & 0o777 == 0o600
            me = await handshake_async(grpc_sock)
            other = await handshake_async(grpc_sock)
        finally:
            await server.stop()
        assert not identity_socket_for(grpc_sock).exists()
        assert me.token != other.token
        owner = registry.resolve(_Ctx((("npud-token", me.token),)))  # type: ignore[arg-type]
        assert (owner.uid, owner.gid, owner.pid) == (os.getuid(), os.getgid(), os.getpid())
        assert me.admin == (os.getuid() == 0)
        assert registry.statistics().issued == 2

    asyncio.run(main())


def test_missing_forged_and_revoked_tokens_are_refused() -> None:
    """No token, an unknown token and a revoked one are Unauthenticated with guidance."""
    registry = TokenRegistry()
    from npud.core.owner import Owner

    token = registry.issue(Owner(uid=1000, gid=1000, pid=1))
    with pytest.raises(Unauthenticated, match="identity socket"):
        registry.resolve(_Ctx(()))  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match="unknown or expired"):
        registry.resolve(_Ctx((("npud-token", "nope"),)))  # type: ignore[arg-type]
    assert registry.resolve(_Ctx((("npud-token", token),))).uid == 1000  # type: ignore[arg-type]
    registry.revoke(token)
    with pytest.raises(Unauthenticated):
        registry.resolve(_Ctx((("npud-token", token),)))  # type: ignore[arg-type]
    assert registry.statistics().refused == 3


def test_no_daemon_is_unavailable(tmp_path: Path) -> None:
    """Without a daemon the client's handshake says npud is not reachable."""
    with pytest.raises(Unavailable, match="is npud running"):
        asyncio.run(handshake_async(tmp_path / "npud.sock"))
