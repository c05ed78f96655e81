"""Weight packs on npud: found by their content key, or uploaded once and sealed.

A model's weight packs (:mod:`npud.llm.plan`) are PERSISTENT buffers keyed by the SHA-256 of
their bytes, so every process that loads the same model file (a gateway, ``npud-llm chat``,
another user's gateway) finds the same buffers resident and uploads nothing. Only a sealed
buffer is reused as it is: npud checks the bytes against the key's digest when sealing, so a
sealed buffer holds exactly the pack.
"""

from __future__ import annotations

from npud.client import Buffer as ClientBuffer
from npud.client import BufferUsage, Persistence
from npud.client.aio import AsyncClient
from npud.errors import AlreadyExists, FailedPrecondition, NotFound
from npud.llm.daemon import KEY_PREFIX
from npud.llm.plan import BufferSpec


async def attach_pack(client: AsyncClient, context_id: str, spec: BufferSpec) -> ClientBuffer:
    """The sealed buffer holding weight pack ``spec`` in ``context_id``: opened by its key if
    it is resident, else created, written and sealed (the caller's context then holds it).

    Raises:
        ResourceExhausted: npud's quotas or memory cannot hold the pack.
        FailedPrecondition: another process holds the key unsealed (it is uploading it).
        Unavailable: npud is not there.
    """
    assert spec.pack is not None
    key = KEY_PREFIX + spec.pack.key
    try:
        buf = await client.open_persistent(context_id, key)
    except NotFound:
        try:
            buf = await client.create_buffer(
                context_id,
                spec.size,
                usage=BufferUsage.WEIGHTS,
                persistence=Persistence.PERSISTENT,
                key=key,
            )
        except AlreadyExists:
            buf = await client.open_persistent(context_id, key)
    if buf.sealed:
        return buf
    try:
        return await client.write_buffer(context_id, buf, spec.pack.data, seal=True)
    except FailedPrecondition:  # another process of this user sealed it meanwhile
        buf = await client.open_persistent(context_id, key)
        if not buf.sealed:
            raise
        return buf
