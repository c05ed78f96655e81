"""Buffer memory as a descriptor: what npud checks and locks before one crosses a process.

A buffer handed to a client as a file descriptor (see docs/design.md, "Buffers as
descriptors") shares its pages with the daemon and the device: nothing is copied, so nothing
the client does to the *file* may hurt them. The kernel's memfd seals (``fcntl(2)``,
``F_ADD_SEALS``) make that a property of the file rather than a promise of the client:

* every descriptor npud hands out has ``F_SEAL_SHRINK | F_SEAL_GROW``: a client that truncated
  the file would make the daemon's and the device's next access to the missing pages a SIGBUS;
* a read-only one (sealed persistent contents) also has ``F_SEAL_FUTURE_WRITE`` (no new
  writable mapping, no ``write(2)``, whoever opens the file), and is a fresh open file
  description with ``O_RDONLY``: ``mmap(PROT_WRITE, MAP_SHARED)`` fails with EACCES and
  ``write(2)`` with EBADF. The daemon's and the device's own mappings, made before, keep
  working;
* memory a client gives npud (an upload by descriptor) must carry ``F_SEAL_WRITE`` (which the
  kernel grants only once no writable mapping of the file is left, so the sender keeps no way
  to change it), ``F_SEAL_SHRINK`` and ``F_SEAL_GROW``, or it is refused.

A descriptor that is not a memfd (a dma-buf from a kernel driver) cannot carry seals; it is
handed out writable only, since a dma-buf's access mode is fixed by its exporter.

This module is pure policy over ``fcntl``; it is a leaf of core.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Final

from npud.errors import InvalidArgument, Unsupported

F_SEAL_FUTURE_WRITE: Final = 0x0010
"""Linux 5.1's seal (``<linux/fcntl.h>``; Python 3.11's fcntl does not name it)."""
SIZE_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
"""What every descriptor npud hands out carries."""
UPLOAD_SEALS: Final = fcntl.F_SEAL_WRITE | SIZE_SEALS
"""What a client's memory must carry before npud takes it as a buffer's memory."""


def seals(fd: int) -> int | None:
    """The seals on ``fd``, or ``None`` when it is not a memfd (or other sealable file).

    Raises:
        OSError: ``fd`` is not an open descriptor.
    """
    try:
        return fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


def require_upload_seals(fd: int) -> None:
    """Check that a client's memory can no longer be written, shrunk or grown by anyone.

    Raises:
        InvalidArgument: ``fd`` is not a memfd, or lacks one of :data:`UPLOAD_SEALS`
            (the message names the missing seals and how to add them).
    """
    try:
        have = seals(fd)
    except OSError as exc:
        raise InvalidArgument(f"the descriptor is unusable: {exc.strerror or exc}") from None
    if have is None:
        raise InvalidArgument(
            "an upload by descriptor takes a memfd (memfd_create with MFD_ALLOW_SEALING); "
            "this descriptor is not one"
        )
    missing = UPLOAD_SEALS & ~have
    if missing:
        names = [
            name
            for bit, name in (
                (fcntl.F_SEAL_WRITE, "F_SEAL_WRITE"),
                (fcntl.F_SEAL_SHRINK, "F_SEAL_SHRINK"),
                (fcntl.F_SEAL_GROW, "F_SEAL_GROW"),
            )
            if missing & bit
        ]
        raise InvalidArgument(
            f"the memfd lacks {', '.join(names)}: unmap it and add the seals "
            "(fcntl F_ADD_SEALS) before handing it over, so that its contents cannot change"
        )


def hand_out(fd: int, *, writable: bool) -> int:
    """Lock a buffer's descriptor for a client and return the one to send (the caller owns
    it and closes it once sent). ``fd`` is consumed: it is closed, or it is the result.

    Raises:
        Unsupported: a read-only descriptor was asked of memory that cannot be sealed (a
            dma-buf), or the memfd refuses further seals.
    """
    try:
        have = seals(fd)
        if have is None:
            if not writable:
                raise Unsupported(
                    "this device's buffer descriptors are dma-bufs, which cannot be handed out "
                    "read-only; read sealed contents with ReadBuffer"
                )
            return fd
        want = SIZE_SEALS | (0 if writable or have & fcntl.F_SEAL_WRITE else F_SEAL_FUTURE_WRITE)
        if want & ~have:
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, want & ~have)
            except OSError as exc:
                raise Unsupported(
                    f"the buffer's memory cannot be sealed for a client: {exc.strerror or exc}"
                ) from None
        if writable:
            return fd
        readonly = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    os.close(fd)
    return readonly
