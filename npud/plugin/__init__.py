"""npud-device-plugin: shares of npud's NPUs as a Kubernetes extended resource.

A separate process and a client of npud like any other (it talks to the daemon only through
its public gRPC API and :mod:`npud.client`). It speaks the kubelet's device plugin API
(v1beta1): it registers ``npud.io/npu`` with the kubelet, advertises every NPU npud serves as
N shares, follows npud's device events to mark shares unhealthy while their NPU is lost, and
on Allocate creates one npud tenant per allocation and hands the container npud's sockets and
the tenant's credential, never a device node. See docs/kubernetes.md.
"""
