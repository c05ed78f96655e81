"""Bad input: hypothesis sends every rpc of every npud service malformed and extreme requests.

Requests are generated from the proto descriptors, so a new rpc or field is fuzzed without
touching this file. Values are the ones that break daemons: sizes 0, 2^63 and 2^64-1,
negative and huge integers, NaN and infinities, enum numbers no enum defines, ids that are
unknown, empty, 10 000 characters long or owned by another user, and command streams that are
random or a valid stream with bytes flipped. The caller is an ordinary user (uid 65533).

Each call must end with a precise status (never INTERNAL or UNKNOWN, never a dropped
connection), a failed unary call must change nothing (the daemon's context, queue and buffer
counts, and another user's objects, are the same before and after), the daemon must stay up
and its resident memory must stay within a bound.

The run is bounded: :data:`EXAMPLES` random requests per rpc (derandomized, so every run sends
the same ones), then a directed pass that sets each float field of each request, one at a time,
to NaN, +inf, -inf and 1e308, and each string field to 1 MiB; every answer is tallied by
status code, and the tally must hold 0 INTERNAL and 0 UNKNOWN.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npud.client
from npud.api.server import SERVICE_NAMES
from npud.isa import Program
from npud.testing.daemon import DaemonProcess
from npud.v1 import buffer_pb2, job_pb2
from tests.reliability.harness import NOBODY, OTHER, Actor, record, rss_bytes
from tests.reliability.leaks import Baseline, assert_back, difference

pytestmark = pytest.mark.slow

PRECISE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
}
"""Statuses a malformed request may get. INTERNAL, UNKNOWN and UNAVAILABLE mean a bug."""

RSS_BOUND = 96 << 20
"""How much the daemon's resident memory may grow over the whole fuzz run."""

EXAMPLES = 12
"""Random requests per rpc (the directed pass adds a fixed number more)."""

TALLY: Counter[grpc.StatusCode] = Counter()
"""Every answer of the run by status code."""

CALL_TIMEOUT_S = 3.0
STREAM_TIMEOUT_S = 0.5  # watch streams never end: read what comes in this long
STREAM_ITEMS = 3

_INT_EXTREMES = (0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1)
_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


@dataclass(frozen=True)
class World:
    """Ids the fuzzer draws from: its own objects, another user's, and nonsense."""

    ids: tuple[str, ...]
    program: bytes


def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    extremes = [v for v in _INT_EXTREMES if lo <= v <= hi]
    return st.one_of(st.sampled_from(extremes), st.integers(lo, hi), st.integers(0, 1 << 16))


def _mutated(program: bytes) -> st.SearchStrategy[bytes]:
    def flip(edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(program)
        for pos, value in edits:
            out[pos % len(out)] = value
        return bytes(out)

    return st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=4).map(flip)


def _field(f: FieldDescriptor, world: World, depth: int) -> st.SearchStrategy[Any] | None:
    t = f.type
    if t in _RANGES:
        return _ints(*_RANGES[t])
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(
            st.sampled_from([0.0, -1.0, 1e-9, 1e308, float("inf"), float("-inf"), float("nan")]),
            st.floats(-1e6, 1e6),
        )
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.integers(-3, 12), st.just(2**31 - 1))
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(world.ids), st.text(max_size=24))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=512), _mutated(world.program))
    if t == FieldDescriptor.TYPE_MESSAGE and depth < 2:
        if f.message_type.GetOptions().map_entry:
            return None
        return message(f.message_type, world, depth + 1)
    return None


def message(desc: Descriptor, world: World, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type ``desc`` with any subset of fields set to hostile values."""
    cls = message_factory.GetMessageClass(desc)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        strategy = _field(f, world, depth)
        if strategy is None:
            continue
        optional[f.name] = st.lists(strategy, max_size=3) if f.is_repeated else strategy
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: cls(**kw))


def _methods() -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [m for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods]


METHODS = {f"{m.containing_service.name}.{m.name}": m for m in _methods()}


@dataclass
class Caller:
    """Calls any rpc generically with the fuzzer's token; keeps the figures."""

    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]
    calls: int = 0

    def call(self, method: MethodDescriptor, requests: list[Message]) -> grpc.StatusCode:
        """Send ``requests`` (one unless client-streaming); the final status."""
        path = f"/{method.containing_service.full_name}/{method.name}"
        out_cls = message_factory.GetMessageClass(method.output_type)
        kw: dict[str, Any] = {
            "request_serializer": lambda m: m.SerializeToString(),
            "response_deserializer": out_cls.FromString,
        }
        self.calls += 1
        try:
            if method.client_streaming and method.server_streaming:
                stream = self.channel.stream_stream(path, **kw)(
                    iter(requests), metadata=self.metadata, timeout=CALL_TIMEOUT_S
                )
                return self._drain(stream)
            if method.client_streaming:
                self.channel.stream_unary(path, **kw)(
                    iter(requests), metadata=self.metadata, timeout=CALL_TIMEOUT_S
                )
                return grpc.StatusCode.OK
            if method.server_streaming:
                stream = self.channel.unary_stream(path, **kw)(
                    requests[0], metadata=self.metadata, timeout=STREAM_TIMEOUT_S
                )
                return self._drain(stream)
            self.channel.unary_unary(path, **kw)(
                requests[0], metadata=self.metadata, timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            TALLY[code] += 1
            return code
        TALLY[grpc.StatusCode.OK] += 1
        return grpc.StatusCode.OK

    @staticmethod
    def _drain(stream: Any) -> grpc.StatusCode:
        """Read a few items of a response stream, then cancel it (watch streams never end)."""
        try:
            for _ in itertools.islice(stream, STREAM_ITEMS):
                pass
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
        finally:
            stream.cancel()
        return grpc.StatusCode.OK


@dataclass
class Fuzz:
    """The fuzz run's parties: the caller (as B), its id pool, A and A's objects."""

    caller: Caller
    world: World
    a: Actor
    b: Actor
    theirs: dict[str, str]
    rss_before: int


@pytest.fixture(scope="module")
def setup(shared: DaemonProcess, base: Baseline) -> Iterator[Fuzz]:
    """B (the fuzzer's identity) and A (another user) with a few objects each."""
    rss_before = rss_bytes(shared.proc.pid)
    a = Actor(shared.socket, NOBODY)
    b = Actor(shared.socket, OTHER)
    theirs = {"ctx": a.ok("create_context", label="fuzz-victim")["context_id"]}
    # a BACKGROUND queue: its job may hold an engine for the whole run (timeout ceiling 600 s)
    theirs["queue"] = a.ok("create_queue", theirs["ctx"], "background")["queue_id"]
    theirs["buffer"] = a.ok("create_buffer", theirs["ctx"], 4096)["buffer_id"]
    a.ok("write_buffer", theirs["ctx"], theirs["buffer"], "hex:" + ("5a" * 4096))
    theirs["job"] = a.submit(theirs["ctx"], theirs["queue"], 60.0, timeout_s=120.0)["value"][
        "job_id"
    ]
    own_ctx = b.ok("create_context", label="fuzzer")["context_id"]
    own = [
        own_ctx,
        b.ok("create_queue", own_ctx)["queue_id"],
        b.ok("create_buffer", own_ctx, 4096)["buffer_id"],
        b.submit(own_ctx, b.ok("create_queue", own_ctx)["queue_id"], 0.001)["value"]["job_id"],
    ]
    token = b.send(op="token")
    assert token["ok"], token
    world = World(
        ids=(
            *own,
            *theirs.values(),
            "",
            "ctx-0000000000000000",
            "buf-ffffffffffffffff",
            "x" * 10_000,
            "\u202e\x00\udfff".encode("utf-8", "replace").decode(),
            "../../etc/passwd",
            "sha256:" + "0" * 64,
            "sim0",
        ),
        program=Program().burn(0.001).encode(),
    )
    channel = grpc.insecure_channel(f"unix:{shared.socket}")
    caller = Caller(channel, (("npud-token", token["value"]),))
    yield Fuzz(caller, world, a, b, theirs, rss_before)
    channel.close()
    a.close()
    b.close()


def _fingerprint(root: npud.client.Client) -> tuple[int, int, int]:
    dev = root.stats().devices[0]
    return dev.contexts, dev.queues, dev.persistent_buffers


@pytest.mark.parametrize("name", sorted(METHODS))
def test_rpc_answers_hostile_requests_precisely(
    name: str,
    setup: Fuzz,
    root: npud.client.Client,
    shared: DaemonProcess,
) -> None:
    """Every rpc answers malformed and extreme requests with a precise status; a failed unary
    call changes nothing; the daemon stays up."""
    caller, world = setup.caller, setup.world
    method = METHODS[name]
    n = STREAM_ITEMS if method.client_streaming else 1

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(message(method.input_type, world), min_size=1, max_size=n))
    def check(requests: list[Message]) -> None:
        before = _fingerprint(root)
        code = caller.call(method, requests)
        streaming = method.server_streaming or method.client_streaming
        allowed = PRECISE | ({grpc.StatusCode.DEADLINE_EXCEEDED} if streaming else set())
        if name == "JobService.WaitJob":
            allowed = allowed | {grpc.StatusCode.DEADLINE_EXCEEDED}
        assert code in allowed, f"{name} answered {code} to {requests}"
        if code is not grpc.StatusCode.OK and not streaming:
            assert _fingerprint(root) == before, f"a failed {name} changed state: {requests}"
        assert shared.proc.poll() is None, "npud died"

    check()


def _directed(desc: Descriptor, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(field path, hostile value) for every float and string field of ``desc`` (and of its
    message fields, two levels deep)."""
    for f in desc.fields:
        path = f"{prefix}{f.name}"
        if f.is_repeated:
            continue
        if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            for value in (math.nan, math.inf, -math.inf, 1e308):
                yield path, value
        elif f.type == FieldDescriptor.TYPE_STRING:
            yield path, "x" * (1 << 20)
        elif (
            f.type == FieldDescriptor.TYPE_MESSAGE
            and depth < 2
            and not f.message_type.GetOptions().map_entry
        ):
            yield from _directed(f.message_type, f"{path}.", depth + 1)


def _set(msg: Message, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        msg = getattr(msg, name)
    setattr(msg, leaf, value)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_float_and_string_field_at_its_extreme_is_answered_precisely(
    name: str, setup: Fuzz, shared: DaemonProcess
) -> None:
    """Each float field of the rpc's request alone set to NaN, +-inf or 1e308, and each string
    field to 1 MiB (on top of the caller's own valid ids): a precise status, never INTERNAL,
    UNKNOWN or a dropped stream (a 1 MiB id echoed whole overflowed gRPC's trailer)."""
    method = METHODS[name]
    cls = message_factory.GetMessageClass(method.input_type)
    own_ctx, own_queue = setup.world.ids[0], setup.world.ids[1]
    streaming = method.server_streaming or method.client_streaming
    allowed = PRECISE | ({grpc.StatusCode.DEADLINE_EXCEEDED} if streaming else set())
    if name == "JobService.WaitJob":
        allowed = allowed | {grpc.StatusCode.DEADLINE_EXCEEDED}
    for path, value in _directed(method.input_type):
        request = cls()
        for field, default in (("context_id", own_ctx), ("queue_id", own_queue)):
            if field in method.input_type.fields_by_name and not path.startswith(field):
                setattr(request, field, default)
        _set(request, path, value)
        code = setup.caller.call(method, [request])
        shown = value if isinstance(value, float) else f"<{len(value)} characters>"
        assert code in allowed, f"{name}: {path} = {shown} answered {code}"
        assert shared.proc.poll() is None, "npud died"


def test_huge_and_extreme_inputs_are_bounded(
    setup: Fuzz,
    root: npud.client.Client,
    shared: DaemonProcess,
    base: Baseline,
) -> None:
    """Sizes 0, 2^63 and 2^64-1, a 65 MiB message, 64 MiB streamed past a 4 KiB buffer and
    10 000 bad submit-stream entries each get a precise status; A's objects are unchanged;
    RSS growth over the whole fuzz run stays under the bound; afterwards the daemon returns to
    its baseline of contexts, buffers and fds."""
    caller, a, theirs = setup.caller, setup.a, setup.theirs
    methods = {m.name: m for m in METHODS.values()}
    own_ctx = setup.b.ok("create_context", label="extremes")["context_id"]
    own_buf = setup.b.ok("create_buffer", own_ctx, 4096)["buffer_id"]
    for size in (0, 2**63, 2**64 - 1):
        code = caller.call(
            methods["CreateBuffer"],
            [buffer_pb2.CreateBufferRequest(context_id=own_ctx, size=size)],
        )
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    huge = buffer_pb2.WriteBufferRequest(
        context_id=own_ctx, buffer_id=own_buf, data=b"\0" * (65 << 20)
    )
    assert caller.call(methods["WriteBuffer"], [huge]) is grpc.StatusCode.RESOURCE_EXHAUSTED
    flood = [
        buffer_pb2.WriteBufferRequest(
            context_id=own_ctx, buffer_id=own_buf, offset=i << 20, data=b"\1" * (1 << 20)
        )
        for i in range(64)
    ]
    assert caller.call(methods["WriteBuffer"], flood) in (
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bad = [
        job_pb2.SubmitStreamRequest(
            tag=i, context_id=own_ctx, job=job_pb2.JobSpec(queue_id=f"q-{i:016x}")
        )
        for i in range(10_000)
    ]
    assert caller.call(methods["SubmitStream"], bad) in PRECISE | {
        grpc.StatusCode.DEADLINE_EXCEEDED
    }
    # another user's objects are exactly as they were
    assert a.ok("read_buffer", theirs["ctx"], theirs["buffer"]) == "5a" * 4096
    assert a.ok("job", theirs["ctx"], theirs["job"])["state"] == "running"
    assert [q["queue_id"] for q in a.ok("queues", theirs["ctx"])] == [theirs["queue"]]
    growth = rss_bytes(shared.proc.pid) - setup.rss_before
    assert growth < RSS_BOUND, f"daemon RSS grew by {growth >> 20} MiB"
    assert TALLY[grpc.StatusCode.INTERNAL] == 0, TALLY
    assert TALLY[grpc.StatusCode.UNKNOWN] == 0, TALLY
    record("fuzz_rpcs", len(METHODS))
    record("fuzz_calls", caller.calls)
    record("fuzz_answers", {code.name: n for code, n in sorted(TALLY.items(), key=str)})
    record("fuzz_rss_growth_mib", round(growth / (1 << 20), 1))
    setup.a.close()
    setup.b.close()
    caller.channel.close()  # its own connection (raw channel options differ from the client's)
    after = assert_back(shared, root, base)
    record("leaks_after_fuzz", difference(after, base))
