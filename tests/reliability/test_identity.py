"""Identity and isolation: clients run as other uids; each sees and touches only its own objects.

Users: A = 65534 (nobody), B = 65533, C = 65532 (a second member of the socket group), D = 65531
(in the admin group). The shared daemon's admin is root (the test process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import npud.client
from npud.testing.daemon import DaemonProcess
from npud.v1 import admin_pb2, context_pb2, context_pb2_grpc
from tests.reliability.harness import NOBODY, OTHER, Actor, own_daemon, record
from tests.reliability.leaks import Baseline, assert_back

pytestmark = pytest.mark.slow

MiB = 1 << 20
C_UID = 65532
D_UID = 65531
SOCKET_GID = OTHER  # the quota daemon's socket group: B's primary group
ADMIN_GID = 65530


@pytest.fixture
def pair(shared: DaemonProcess) -> Iterator[tuple[Actor, Actor]]:
    a = Actor(shared.socket, NOBODY)
    b = Actor(shared.socket, OTHER)
    yield a, b
    a.close()
    b.close()


def test_handshake_reports_the_kernels_identity(pair: tuple[Actor, Actor]) -> None:
    """The identity socket names each client by its real uid/gid/pid; neither is admin."""
    a, b = pair
    assert a.hello["ok"], a.hello
    assert (a.hello["value"]["uid"], a.hello["value"]["gid"]) == (NOBODY, NOBODY)
    assert a.hello["value"]["pid"] == a.proc.pid
    assert a.hello["value"]["admin"] is False
    assert (b.hello["value"]["uid"], b.hello["value"]["admin"]) == (OTHER, False)


def test_forged_or_missing_token_is_unauthenticated(shared: DaemonProcess) -> None:
    """A token the daemon did not issue, or none at all, gets UNAUTHENTICATED."""
    with grpc.insecure_channel(f"unix:{shared.socket}") as channel:
        stub = context_pb2_grpc.ContextServiceStub(channel)
        for md in ((("npud-token", "A" * 43),), ()):
            with pytest.raises(grpc.RpcError) as err:
                stub.ListContexts(context_pb2.ListContextsRequest(), metadata=md, timeout=10)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_user_cannot_see_or_touch_another_users_objects_but_admin_can(
    shared: DaemonProcess,
    root: npud.client.Client,
    base: Baseline,
    pair: tuple[Actor, Actor],
) -> None:
    """B cannot read, write, cancel, bind, destroy or even see A's context, queue, buffer or
    jobs (NOT_FOUND, PERMISSION_DENIED for all-owner views) and nothing of A changes; root can
    see, read, cancel and destroy them."""
    a, b = pair
    ctx = a.ok("create_context", label="alice")["context_id"]
    q = a.ok("create_queue", ctx)["queue_id"]
    buf = a.ok("create_buffer", ctx, 4096)["buffer_id"]
    data = bytes(range(256)) * 16
    a.ok("write_buffer", ctx, buf, "hex:" + data.hex())
    running = a.submit(ctx, q, 30.0, timeout_s=60.0)["value"]["job_id"]
    queued = a.submit(ctx, q, 0.01, timeout_s=60.0)["value"]["job_id"]
    for identifier in (ctx, q, buf, running):
        _, token = identifier.split("-", 1)
        assert len(token) == 32, identifier  # 128 random bits: not guessable by trying
        int(token, 16)

    mine = b.ok("create_context", label="bob")["context_id"]
    b_q = b.ok("create_queue", mine)["queue_id"]
    b_buf = b.ok("create_buffer", mine, 4096)["buffer_id"]
    attempts = {
        "get context": b.call("context", ctx),
        "destroy context": b.call("destroy_context", ctx),
        "list buffers": b.call("buffers", ctx),
        "read buffer": b.call("read_buffer", ctx, buf),
        "write buffer": b.call("write_buffer", ctx, buf, "hex:" + b"\xff".hex() * 16),
        "pin buffer": b.call("pin_buffer", ctx, buf),
        "release buffer": b.call("release_buffer", ctx, buf),
        "list queues": b.call("queues", ctx),
        "destroy queue": b.call("destroy_queue", ctx, q),
        "create queue": b.call("create_queue", ctx),
        "get job": b.call("job", ctx, running),
        "wait job": b.call("wait", ctx, queued, timeout_s=0.1),
        "cancel job": b.call("cancel", ctx, queued),
        "list jobs": b.call("jobs", ctx),
        "watch jobs": b.call("watch_jobs", ctx),
        "submit to A's context": b.submit(ctx, q, 0.001),
        "submit to A's queue": b.submit(mine, q, 0.001),
        "bind A's buffer": b.submit(mine, b_q, 0.001, bind=[[buf, "read"]]),
        "open A's buffer id as a key": b.call("open_persistent", mine, buf),
    }
    for what, reply in attempts.items():
        assert not reply["ok"], f"B could {what}: {reply}"
        assert reply["kind"] == "NotFound", f"{what}: {reply}"
        assert buf not in reply["message"] or "no " in reply["message"]
    refused = {
        "list every owner's contexts": b.call("contexts", all_owners=True),
        "watch every owner's events": b.call("events", all_owners=True),
        "rescan devices": b.send(op="rescan"),
        "inject a fault": b.send(op="inject", kind=admin_pb2.FAULT_KIND_HANG),
    }
    for what, reply in refused.items():
        assert reply["kind"] == "PermissionDenied", f"{what}: {reply}"
    assert ctx not in [c["context_id"] for c in b.ok("contexts")]
    assert b.ok("buffers", mine)[0]["buffer_id"] == b_buf

    # A's objects are untouched by all of that
    assert a.ok("read_buffer", ctx, buf) == data.hex()
    assert a.ok("job", ctx, queued)["state"] in ("queued", "ready")
    assert a.ok("job", ctx, running)["state"] == "running"
    assert [x["queue_id"] for x in a.ok("queues", ctx)] == [q]
    assert a.ok("buffers", ctx)[0]["pins"] == 0

    # the admin sees and acts on them
    assert ctx in [c.context_id for c in root.contexts(all_owners=True)]
    assert root.read_buffer(ctx, buf) == data
    assert root.cancel(ctx, queued).state.value == "cancelled"
    assert a.ok("job", ctx, queued)["state"] == "cancelled"
    root.destroy_context(ctx)
    refused_queue = a.call("create_queue", ctx)
    assert refused_queue["kind"] == "FailedPrecondition", refused_queue  # closing
    # the running job gets the close grace, then is aborted; the context is gone after it
    assert a.ok("wait", ctx, running)["state"] == "cancelled"
    assert a.call("context", ctx)["kind"] == "NotFound"
    record("isolation_attempts_refused", len(attempts) + len(refused))
    a.close()
    b.close()
    assert_back(shared, root, base)


@pytest.fixture(scope="module")
def guarded() -> Iterator[DaemonProcess]:
    """A daemon with socket mode 0660 group 65533, an admin group, small per-user quotas and
    fault injection off."""
    with own_daemon(
        "npud-quota-",
        socket_mode="0660",
        socket_group=str(SOCKET_GID),
        admin_group=str(ADMIN_GID),
        quotas__max_contexts_per_user="3",
        quotas__memory_bytes_per_user=str(2 * MiB),
        quotas__max_jobs_per_user="4",
        fault_injection="0",
        scheduler__time_slice_ms="60000",  # the live-jobs quota is held by 10 s jobs
    ) as daemon:
        yield daemon


def test_socket_mode_and_group_decide_who_may_connect(guarded: DaemonProcess) -> None:
    """With mode 0660 and group 65533, a member connects and anyone else is refused."""
    for path in (guarded.socket, Path(str(guarded.socket) + ".identity")):
        st = path.stat()
        assert st.st_mode & 0o777 == 0o660
        assert st.st_gid == SOCKET_GID
    outsider = Actor(guarded.socket, NOBODY)
    member = Actor(guarded.socket, C_UID, SOCKET_GID)
    try:
        assert not outsider.hello["ok"]
        assert "ermission" in outsider.hello["message"], outsider.hello
        assert member.hello["ok"], member.hello
    finally:
        outsider.close()
        member.close()


def test_per_user_quotas_bound_one_user_and_spare_the_others(guarded: DaemonProcess) -> None:
    """Contexts, buffer bytes and live jobs are bounded per user over all its contexts:
    B hits each limit with a precise RESOURCE_EXHAUSTED and C, in the same group, is unaffected."""
    b = Actor(guarded.socket, OTHER)
    c = Actor(guarded.socket, C_UID, SOCKET_GID)
    try:
        ctxs = [b.ok("create_context", label=f"b{i}")["context_id"] for i in range(3)]
        fourth = b.call("create_context")
        assert fourth["kind"] == "QuotaExceeded", fourth
        assert "limit per user is 3" in fourth["message"]
        c_ctx = c.ok("create_context")["context_id"]

        b.ok("create_buffer", ctxs[0], 3 * MiB // 2)
        over = b.call("create_buffer", ctxs[1], MiB)
        assert over["kind"] == "QuotaExceeded", over
        assert "limit per user" in over["message"]
        assert b.ok("buffers", ctxs[1]) == []
        c.ok("create_buffer", c_ctx, 3 * MiB // 2)

        queues = [b.ok("create_queue", x)["queue_id"] for x in ctxs[:2]]
        for i in range(4):
            reply = b.submit(ctxs[i % 2], queues[i % 2], 10.0, timeout_s=30.0)
            assert reply["ok"], reply
        fifth = b.submit(ctxs[0], queues[0], 0.001)
        assert fifth["kind"] == "QuotaExceeded", fifth
        assert "live jobs" in fifth["message"]
        c_q = c.ok("create_queue", c_ctx)["queue_id"]
        done = c.submit(c_ctx, c_q, 0.001)["value"]["job_id"]
        assert c.ok("wait", c_ctx, done)["state"] == "completed"
        record("quota_refusals_checked", len([fourth, over, fifth]))
    finally:
        b.close()
        c.close()


def test_admin_group_member_may_act_on_other_users(guarded: DaemonProcess) -> None:
    """A member of admin_group (by supplementary group) lists and destroys B's contexts and
    may rescan; B may do neither; fault injection stays off without the daemon's switch."""
    b = Actor(guarded.socket, OTHER)
    d = Actor(guarded.socket, D_UID, SOCKET_GID, groups=(ADMIN_GID,))
    try:
        assert d.hello["value"]["admin"] is True, d.hello
        ctx = b.ok("create_context")["context_id"]
        assert ctx in [x["context_id"] for x in d.ok("contexts", all_owners=True)]
        assert b.call("contexts", all_owners=True)["kind"] == "PermissionDenied"
        assert d.send(op="rescan") == {"ok": True, "value": []}
        assert b.send(op="rescan")["kind"] == "PermissionDenied"
        # even an admin cannot inject faults into a daemon started without the switch
        refused = d.send(op="inject", kind=admin_pb2.FAULT_KIND_HANG)
        assert refused["kind"] == "PermissionDenied", refused
        assert "fault_injection" in refused["message"]
        d.ok("destroy_context", ctx)
        assert b.call("context", ctx)["kind"] == "NotFound"
    finally:
        b.close()
        d.close()
