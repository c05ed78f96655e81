"""Sessions: contexts of a token are released when its session ends and is not renewed."""

from __future__ import annotations

import asyncio

import pytest

from npud.api.sessions import SessionTable
from npud.core.ids import ContextId
from npud.errors import FailedPrecondition


def _table(expired: list[tuple[str, list[ContextId]]], grace: float = 0.0) -> SessionTable:
    return SessionTable(grace_s=grace, on_expire=lambda t, c: expired.append((t, c)))


def test_end_of_session_expires_its_contexts() -> None:
    """After the stream ends and the grace passes, the token's contexts are handed over."""

    async def main() -> list[tuple[str, list[ContextId]]]:
        expired: list[tuple[str, list[ContextId]]] = []
        table = _table(expired)
        table.open("t1")
        table.bind("t1", ContextId("ctx-b"))
        table.bind("t1", ContextId("ctx-a"))
        table.bind("t2", ContextId("ctx-other"))
        table.close("t1")
        assert table.statistics().expiring == 1
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert table.statistics().expired == 1
        assert table.statistics().bound_contexts == 1
        return expired

    assert asyncio.run(main()) == [("t1", [ContextId("ctx-a"), ContextId("ctx-b")])]


def test_reconnect_within_grace_keeps_contexts() -> None:
    """A new Session on the same token before the grace ends calls the expiry off."""

    async def main() -> None:
        expired: list[tuple[str, list[ContextId]]] = []
        table = _table(expired, grace=3600.0)
        table.open("t1")
        table.bind("t1", ContextId("ctx-a"))
        table.close("t1")
        table.open("t1")
        assert table.statistics().expiring == 0
        assert table.is_open("t1")
        table.close_all()
        assert expired == []

    asyncio.run(main())


def test_one_session_per_token_and_unbind() -> None:
    """A second open on a live token is refused; destroyed contexts are forgotten."""

    async def main() -> None:
        expired: list[tuple[str, list[ContextId]]] = []
        table = _table(expired)
        table.open("t1")
        with pytest.raises(FailedPrecondition, match="one session per token"):
            table.open("t1")
        table.bind("t1", ContextId("ctx-a"))
        table.unbind(ContextId("ctx-a"))
        table.unbind(ContextId("ctx-a"))
        table.close("t1")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert expired == [("t1", [])]

    asyncio.run(main())
