"""Tools for testing and benchmarking against a real npud, importable by any project.

:mod:`npud.testing.daemon` starts the daemon as a subprocess on a private socket and waits for
its own readiness notification; npud's tests and benchmarks start every daemon there. Nothing
here reaches into the daemon's layers: it runs npud as a process, as a user would.
"""
