"""npuctl's exit statuses, and the one table that turns an npud error into one of them.

Scripts branch on the status, so each failure a user can act on differently has its own
number: the daemon is not there (start it), the socket is closed to you (join its group), the
id is gone (it finished, or you mistyped it), or the daemon refused the request for another
reason (read the message). 2 is argparse's usage error, as in every Unix tool. An expired
token (``Unauthenticated``: the daemon restarted under us) is a daemon error: run it again.
"""

from __future__ import annotations

import enum
from typing import Final

from npud import errors


class ExitCode(enum.IntEnum):
    """What ``npuctl`` returns to the shell."""

    OK = 0
    DAEMON_ERROR = 1
    USAGE = 2
    CANNOT_CONNECT = 3
    PERMISSION_DENIED = 4
    NOT_FOUND = 5


# Order matters: the first class an error is an instance of wins (DeviceLost is Unavailable
# but means "the daemon answered: the device is gone", which is a daemon error, not "no daemon").
_BY_ERROR: Final[tuple[tuple[type[errors.NpudError], ExitCode], ...]] = (
    (errors.DeviceLost, ExitCode.DAEMON_ERROR),
    (errors.NotFound, ExitCode.NOT_FOUND),
    (errors.PermissionDenied, ExitCode.PERMISSION_DENIED),
    (errors.Unavailable, ExitCode.CANNOT_CONNECT),
)


def exit_code_for(error: errors.NpudError) -> ExitCode:
    """The exit status for an npud error raised by the daemon or the client library."""
    for cls, code in _BY_ERROR:
        if isinstance(error, cls):
            return code
    return ExitCode.DAEMON_ERROR


class CliError(Exception):
    """A failure npuctl reports as one line on stderr and an exit status (no traceback)."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


__all__ = ["CliError", "ExitCode", "exit_code_for"]
