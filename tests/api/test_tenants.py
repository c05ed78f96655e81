"""Tenants end to end: two allocations of one uid, two client processes, kept apart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import npud.client
from npud.errors import AlreadyExists, InvalidArgument, Unauthenticated
from npud.testing.daemon import DaemonProcess, isolated_env, start_daemon
from npud.v1 import tenant_pb2
from tests import ROOT

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("npud-tenants"))
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Iterator[npud.client.Client]:
    with npud.client.connect(daemon.socket) as client:
        assert client.owner is not None
        assert client.owner.admin
        yield client


def _create(
    admin: npud.client.Client, name: str, *, memory: int = 0, contexts: int = 0, **kw: Any
) -> tenant_pb2.CreateTenantResponse:
    req = tenant_pb2.CreateTenantRequest(
        name=name,
        shares=kw.pop("shares", 1),
        total_shares=kw.pop("total_shares", 4),
        quota=tenant_pb2.TenantQuota(memory_bytes=memory, max_contexts=contexts),
        **kw,
    )
    try:
        resp: tenant_pb2.CreateTenantResponse = admin.tenant_stub.CreateTenant(
            req, metadata=admin.metadata
        )
    except grpc.RpcError as exc:
        raise npud.client.errors.from_rpc_error(exc) from None
    return resp


class Proc:
    """One tenant_client process: send a command, read its answer."""

    def __init__(self, socket: Path, credential_file: Path | None) -> None:
        env = isolated_env()
        if credential_file is not None:
            env["NPUD_TENANT_FILE"] = str(credential_file)
        self.p = subprocess.Popen(
            [sys.executable, "-m", "tests.api.tenant_client", str(socket)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=str(ROOT),
            text=True,
        )
        assert self.read() == {"ready": True}

    def read(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        assert line, f"tenant client exited with {self.p.wait()}"
        out: dict[str, Any] = json.loads(line)
        return out

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return self.read()

    def close(self) -> None:
        assert self.p.stdin is not None
        assert self.p.stdout is not None
        self.p.stdin.close()
        try:
            assert self.p.wait(30) == 0
        finally:
            self.p.stdout.close()


def test_two_allocations_of_one_uid_are_kept_apart(
    daemon: DaemonProcess, admin: npud.client.Client, tmp_path: Path
) -> None:
    """Two processes of the same uid, each joined to its own tenant, see only their own
    contexts, are not admins, and one exhausting its quota leaves the other's untouched."""
    files = {}
    for name in ("alloc-a", "alloc-b"):
        resp = _create(admin, name, memory=4 * MiB, contexts=2)
        files[name] = tmp_path / f"{name}.token"
        files[name].write_text(resp.credential + "\n")
    a = Proc(daemon.socket, files["alloc-a"])
    b = Proc(daemon.socket, files["alloc-b"])
    plain = Proc(daemon.socket, None)
    try:
        assert a.ask(op="whoami") == {"tenant": "alloc-a", "uid": 0, "admin": False}
        assert b.ask(op="whoami") == {"tenant": "alloc-b", "uid": 0, "admin": False}
        ca = a.ask(op="create_context", label="a-ctx")["id"]
        cb = b.ask(op="create_context", label="b-ctx")["id"]
        assert a.ask(op="contexts")["ids"] == [ca]
        assert b.ask(op="contexts")["ids"] == [cb]
        # A tenant is no admin, though root: it may not list every owner's contexts.
        assert a.ask(op="contexts", all=True)["error"] == "PermissionDenied"
        # The plain root user (an admin) sees both; neither tenant can name the other's.
        assert {ca, cb} <= set(plain.ask(op="contexts", all=True)["ids"])
        assert a.ask(op="alloc", context=cb, bytes=4096)["error"] == "NotFound"

        # Tenant a fills its 4 MiB and its 2 contexts ...
        assert "id" in a.ask(op="alloc", context=ca, bytes=3 * MiB)
        over = a.ask(op="alloc", context=ca, bytes=2 * MiB)
        assert over["error"] == "QuotaExceeded"
        assert "per tenant" in over["message"]
        assert "id" in a.ask(op="create_context", label="a-ctx2")
        assert a.ask(op="create_context", label="a-ctx3")["error"] == "QuotaExceeded"
        # ... and tenant b, same uid, still has all of its own.
        assert "id" in b.ask(op="alloc", context=cb, bytes=3 * MiB)
        assert "id" in b.ask(op="create_context", label="b-ctx2")

        listed = admin.tenant_stub.ListTenants(
            tenant_pb2.ListTenantsRequest(), metadata=admin.metadata
        )
        by_name = {t.name: t for t in listed.tenants}
        assert by_name["alloc-a"].contexts == 2
        assert by_name["alloc-b"].contexts == 2
        assert by_name["alloc-a"].quota.memory_bytes == 4 * MiB
    finally:
        for p in (a, b, plain):
            p.close()
    for name in ("alloc-a", "alloc-b"):
        admin.tenant_stub.DeleteTenant(
            tenant_pb2.DeleteTenantRequest(name=name), metadata=admin.metadata
        )


def test_quota_is_sized_by_the_share(admin: npud.client.Client) -> None:
    """Limits a request leaves at 0 are the tenant's fraction of the per-user limits (at
    least one) and of the devices' DRAM budget."""
    one = _create(admin, "sized-1", shares=1, total_shares=4).tenant
    two = _create(admin, "sized-2", shares=2, total_shares=4).tenant
    try:
        assert one.quota.memory_bytes > 0
        assert two.quota.memory_bytes == pytest.approx(2 * one.quota.memory_bytes, abs=1)
        assert two.quota.max_contexts == 2 * one.quota.max_contexts  # 64 per user: 16 and 32
        assert one.quota.max_live_jobs >= 1
    finally:
        for name in ("sized-1", "sized-2"):
            admin.tenant_stub.DeleteTenant(
                tenant_pb2.DeleteTenantRequest(name=name), metadata=admin.metadata
            )


def test_bad_requests_change_nothing(daemon: DaemonProcess, admin: npud.client.Client) -> None:
    """A bad name or share is INVALID_ARGUMENT, a taken name ALREADY_EXISTS (unless
    replaced), an unknown credential UNAUTHENTICATED; a tenant, though root, is no admin."""
    with pytest.raises(InvalidArgument, match="tenant name"):
        _create(admin, "Bad Name")
    with pytest.raises(InvalidArgument, match="shares"):
        _create(admin, "ok", shares=5, total_shares=4)
    first = _create(admin, "dup")
    with pytest.raises(AlreadyExists):
        _create(admin, "dup")
    second = _create(admin, "dup", replace=True)
    assert second.credential != first.credential
    with pytest.raises(Unauthenticated, match="unknown tenant credential"):
        npud.client.connect(daemon.socket, tenant=first.credential)
    with npud.client.connect(daemon.socket, tenant=second.credential) as t:
        assert t.tenant == "dup"
        with pytest.raises(grpc.RpcError) as refused:
            t.tenant_stub.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=t.metadata)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = admin.tenant_stub.ListTenants(tenant_pb2.ListTenantsRequest(), metadata=admin.metadata)
    assert [t.name for t in listed.tenants if t.name in {"ok", "dup"}] == ["dup"]
    admin.tenant_stub.DeleteTenant(
        tenant_pb2.DeleteTenantRequest(name="dup"), metadata=admin.metadata
    )


def test_join_after_creating_contexts_is_refused(
    daemon: DaemonProcess, admin: npud.client.Client
) -> None:
    """A session that already holds contexts as its user cannot join a tenant."""
    cred = _create(admin, "late").credential
    try:
        with npud.client.connect(daemon.socket) as c:
            c.create_context(label="mine")
            with pytest.raises(grpc.RpcError) as refused:
                c.tenant_stub.JoinTenant(
                    tenant_pb2.JoinTenantRequest(credential=cred), metadata=c.metadata
                )
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "before creating contexts" in (refused.value.details() or "")
    finally:
        admin.tenant_stub.DeleteTenant(
            tenant_pb2.DeleteTenantRequest(name="late"), metadata=admin.metadata
        )
