"""The connection from npuctl to npud, and why it failed when it did.

npuctl talks gRPC only, through :mod:`npud.client` (identity handshake, token, session) and the
client's raw stubs where the CLI needs whole proto messages (JSON output mirrors them). The
operator's first question when something is wrong is "is the daemon there, and may I talk to
it?", so before the handshake npuctl connects to the socket once itself: the kernel's errno
then tells "no such socket" (ENOENT), "nobody listening" (ECONNREFUSED) and "not allowed"
(EACCES) apart, which a gRPC ``UNAVAILABLE`` status cannot.

Every rpc goes through :meth:`Connection.call`, which bounds it by a deadline and turns a failed
rpc into a :class:`~npud.cli.exit_codes.CliError` with the daemon's message and an exit status.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from npud.cli.exit_codes import CliError, ExitCode, exit_code_for
from npud.client import Client
from npud.client.errors import from_rpc_error
from npud.config import default_socket_path, identity_socket_for
from npud.errors import NpudError

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_START_HINT = "is npud running? try `systemctl status npud`, or pass --socket / set NPUD_SOCKET"


def resolve_socket(path: str | None) -> Path:
    """The socket npuctl talks to: ``--socket``, else ``$NPUD_SOCKET``, else npud's default."""
    return Path(path) if path else default_socket_path()


def _access_hint(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "check the permissions of its directory"
    try:
        import grp
        import pwd

        owner = pwd.getpwuid(st.st_uid).pw_name
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        owner, group = str(st.st_uid), str(st.st_gid)
    return (
        f"it is {owner}:{group} mode {st.st_mode & 0o777:04o}; ask to be added to group "
        f"{group!r} (then log in again) or run npuctl as {owner}"
    )


def probe_socket(path: Path) -> None:
    """Connect to the Unix socket at ``path`` once and hang up, to diagnose a failure early.

    Raises:
        CliError: CANNOT_CONNECT when no socket is there or nobody listens on it,
            PERMISSION_DENIED when this user may not connect to it.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(5.0)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise CliError(
                f"cannot connect to npud at {path}: no such socket ({_START_HINT})",
                ExitCode.CANNOT_CONNECT,
            ) from None
        except PermissionError:
            raise CliError(
                f"permission denied on npud's socket {path}: {_access_hint(path)}",
                ExitCode.PERMISSION_DENIED,
            ) from None
        except ConnectionRefusedError:
            raise CliError(
                f"cannot connect to npud at {path}: nobody is listening, the socket is stale "
                f"({_START_HINT})",
                ExitCode.CANNOT_CONNECT,
            ) from None
        except OSError as exc:
            raise CliError(
                f"cannot connect to npud at {path}: {exc.strerror or exc} ({_START_HINT})",
                ExitCode.CANNOT_CONNECT,
            ) from None


def _status(exc: grpc.RpcError) -> grpc.StatusCode | None:
    # A failed call is both an RpcError and a grpc.Call; the stubs type only the former.
    code = getattr(exc, "code", None)
    status = code() if callable(code) else None
    return status if isinstance(status, grpc.StatusCode) else None


def _connect_error(path: Path, exc: NpudError) -> CliError:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno in (errno.EACCES, errno.EPERM):
        ident = identity_socket_for(path)
        return CliError(
            f"permission denied on npud's identity socket {ident}: {_access_hint(ident)}",
            ExitCode.PERMISSION_DENIED,
        )
    code = exit_code_for(exc)
    return CliError(f"cannot talk to npud at {path}: {exc}", code)


class Connection:
    """An open connection to npud: a :class:`npud.client.Client` plus deadline-bounded rpcs.

    Owns the client; :meth:`close` (or leaving the ``with`` block) ends its session.
    """

    def __init__(self, path: Path, *, timeout_s: float = 10.0) -> None:
        """Probe the socket, then handshake and open a session.

        Raises:
            CliError: CANNOT_CONNECT, PERMISSION_DENIED, or DAEMON_ERROR when the handshake
                answer is not a token.
        """
        self.path = path
        self.timeout_s = timeout_s
        probe_socket(path)
        try:
            self.client = Client(path)
        except NpudError as exc:
            raise _connect_error(path, exc) from None
        self.admin = self.client.identity.admin

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries this connection's token."""
        return self.client.metadata

    def _failure(self, exc: grpc.RpcError) -> CliError:
        if _status(exc) is grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError(
                f"npud at {self.path} did not answer within {self.timeout_s:g} s "
                "(is it overloaded or stopped? see --timeout)",
                ExitCode.CANNOT_CONNECT,
            )
        err = from_rpc_error(exc)
        return CliError(str(err), exit_code_for(err))

    def call(self, method: Callable[..., Resp], request: Any) -> Resp:
        """Run one unary rpc (a bound stub method) with this connection's token and deadline.

        Raises:
            CliError: the rpc failed; the status carries the daemon's message.
        """
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._failure(exc) from None

    def stream(self, method: Callable[..., Any], request: Any) -> StreamCall:
        """Open a server-streaming rpc without a deadline (it runs until cancelled)."""
        return StreamCall(self, method(request, metadata=self.metadata))

    def close(self) -> None:
        """End the session and the channel (idempotent)."""
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StreamCall:
    """A server stream: iterate its messages; :meth:`cancel` ends it from any thread."""

    def __init__(self, conn: Connection, call: Any) -> None:
        self._conn = conn
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        """The stream's messages; ends quietly when cancelled.

        Raises:
            CliError: the stream failed (the daemon went away: CANNOT_CONNECT).
        """
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if _status(exc) is grpc.StatusCode.CANCELLED:
                return
            raise self._conn._failure(exc) from None

    def cancel(self) -> None:
        """Cancel the rpc (idempotent, thread-safe)."""
        self._call.cancel()


__all__ = ["Connection", "StreamCall", "probe_socket", "resolve_socket"]
