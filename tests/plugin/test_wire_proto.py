"""npud's device plugin proto against Kubernetes' own: the same wire, checked field by field."""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from npud.plugin.v1beta1 import deviceplugin_pb2
from tests.plugin.kubernetes_proto import descriptor

Field = descriptor_pb2.FieldDescriptorProto


def _ours() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto()
    deviceplugin_pb2.DESCRIPTOR.CopyToProto(fd)
    return fd


def _messages(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    """Every message (nested ones as Outer.Inner) -> its fields' wire-relevant facts."""
    out: dict[str, object] = {}

    def walk(prefix: str, msgs: object) -> None:
        for m in msgs:  # type: ignore[attr-defined]
            name = f"{prefix}{m.name}"
            out[name] = sorted(
                (
                    f.number,
                    f.name,
                    Field.Type.Name(f.type),
                    Field.Label.Name(f.label),
                    f.type_name,
                    m.options.map_entry,
                )
                for f in m.field
            )
            walk(f"{name}.", m.nested_type)

    walk("", fd.message_type)
    return out


def _services(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    return {
        s.name: sorted(
            (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in s.method
        )
        for s in fd.service
    }


def test_same_package_messages_fields_and_services_as_kubernetes() -> None:
    """Package, every message with every field's number, name, type, label and message type
    (maps included), every enum, and every service with its methods' types and streaming
    match Kubernetes' deviceplugin/v1beta1/api.proto exactly."""
    k8s, ours = descriptor(), _ours()
    assert ours.package == k8s.package == "v1beta1"
    assert _messages(ours) == _messages(k8s)
    assert _services(ours) == _services(k8s)
    assert [e.name for e in ours.enum_type] == [e.name for e in k8s.enum_type]
    assert ours.syntax == k8s.syntax == "proto3"


def test_the_kubelet_calls_resolve_to_our_methods() -> None:
    """The method paths the kubelet dials exist in our generated code."""
    services = deviceplugin_pb2.DESCRIPTOR.services_by_name
    paths = {f"/{s.full_name}/{m.name}" for s in services.values() for m in s.methods}
    for path in (
        "/v1beta1.Registration/Register",
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "/v1beta1.DevicePlugin/Allocate",
        "/v1beta1.DevicePlugin/PreStartContainer",
    ):
        assert path in paths
