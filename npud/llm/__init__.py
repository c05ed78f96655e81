"""npud.llm: a small Llama-style decoder compiled to the npud command stream.

The daemon's main client. A model (config.json + safetensors, HF-like names) is loaded and
checked, compiled into command streams (prefill in fixed-size chunks, one decode step per
token), and run on a backend: in process on a :class:`~npud.devices.base.Device` (tests and
the direct-vs-daemon benchmark), or through the daemon with :mod:`npud.client` (weights as
PERSISTENT buffers keyed by content, the KV cache as a STATE buffer, prefill as THROUGHPUT
jobs, decode steps as LATENCY jobs on the bidirectional submit stream).

This package is a top layer: it may import :mod:`npud.client`, :mod:`npud.isa`,
:mod:`npud.errors` and (for the direct backend only) :mod:`npud.devices`; never core, api or
daemon.
"""
