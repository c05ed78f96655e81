"""Identifiers of npud's own objects.

npud ids are opaque strings handed to clients; kernel handles (:data:`npud.devices.base.BoHandle`)
never leave the daemon. Each kind has its own ``NewType`` so that a job id cannot be passed where
a buffer id is expected. Ids are unguessable (128 random bits) so that knowing one is not enough
to reach another owner's object; ownership is checked as well.
"""

from __future__ import annotations

import secrets
from typing import NewType

ContextId = NewType("ContextId", str)
QueueId = NewType("QueueId", str)
JobId = NewType("JobId", str)
BufferId = NewType("BufferId", str)


def _token(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"


def new_context_id() -> ContextId:
    """A fresh, unguessable context id (``ctx-`` + 32 hex digits)."""
    return ContextId(_token("ctx"))


def new_queue_id() -> QueueId:
    """A fresh, unguessable queue id (``q-`` + 32 hex digits)."""
    return QueueId(_token("q"))


def new_job_id() -> JobId:
    """A fresh, unguessable job id (``job-`` + 32 hex digits)."""
    return JobId(_token("job"))


def new_buffer_id() -> BufferId:
    """A fresh, unguessable buffer id (``buf-`` + 32 hex digits)."""
    return BufferId(_token("buf"))
