"""npud.gateway: an OpenAI-compatible HTTP front for npud (``npud-llm serve``).

A separate process and a CLIENT of npud: it talks to the daemon only through npud's public
gRPC API (:mod:`npud.client.aio`) and serves one model with :class:`npud.llm.batcher.Batcher`
(continuous batching: one decode job per step over every chat in progress). It never imports
core, devices, api or daemon (an import-linter contract in ``pyproject.toml``).

Modules: :mod:`~npud.gateway.schema` (the request bodies and their checks),
:mod:`~npud.gateway.failures` (OpenAI's error JSON and the HTTP status of each npud error),
:mod:`~npud.gateway.text` (prompt rendering, incremental detokenising, stop strings),
:mod:`~npud.gateway.engine` (the connection to npud and the batcher, reconnecting),
:mod:`~npud.gateway.app` (the Starlette application), :mod:`~npud.gateway.main` (the command).
"""
