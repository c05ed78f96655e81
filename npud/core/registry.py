"""Persistent registrations on disk: what a restarted daemon can offer without a re-upload.

When a PERSISTENT buffer is sealed, its contents become immutable and npud records it in the
state directory: the bytes go to a content-addressed backing file (``blobs/<sha256>``) and a
small JSON manifest (``registrations.json``) maps each key to its size, usage, tier preference
and digest. The backing copy has two uses:

* eviction may *drop* a sealed buffer's device memory instead of spilling it, because the bytes
  can be re-read from the backing file;
* a restarted daemon reads the manifest and offers every key again, lazily: nothing is uploaded
  until a client opens the key and a job (or a read) needs the bytes.

Writes are atomic (a temporary file, ``fsync``, ``os.replace``), so a crash leaves either the old
or the new manifest, never a torn one; a blob is written before the manifest names it. The
bytes are other users' weights, so the directories are private to the daemon's user (created
0700; an existing one loses its bits for others, keeping a service manager's group read access,
0750) and every file is written 0600. Two keys
with the same contents share one blob. The registry is plain files: core stays pure Python and
the layout is easy to inspect (``jq . registrations.json``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from npud.errors import InvalidArgument, Unavailable
from npud.vocab import BufferUsage, TierPreference

MANIFEST_NAME = "registrations.json"
BLOB_DIR = "blobs"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Registration:
    """One persistent key recorded on disk (a value object)."""

    key: str
    size: int
    usage: BufferUsage
    tier_preference: TierPreference
    sha256: str  # hex digest of the contents; also the backing file's name


class Registry:
    """The manifest and backing files of persistent buffers in one state directory.

    Owned by one :class:`~npud.core.residency.ResidencyManager`; called on the core thread.
    Blocking file I/O happens only in :meth:`record` (at seal time), :meth:`verify` (at the
    first open after a restart) and :meth:`read_into` / :meth:`read` (when a dropped buffer
    is needed again).
    """

    def __init__(self, state_dir: Path) -> None:
        """Open (creating if needed) the registry under ``state_dir``.

        Raises:
            Unavailable: the directory cannot be created or the manifest cannot be read.
        """
        self._dir = Path(state_dir)
        self._blobs = self._dir / BLOB_DIR
        try:
            make_private(self._dir)
            make_private(self._blobs)
        except OSError as exc:
            raise Unavailable(f"state directory {self._dir} is not usable: {exc}") from exc
        self._entries: dict[str, Registration] = self._load()

    @property
    def directory(self) -> Path:
        """The state directory this registry lives in."""
        return self._dir

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Mapping[str, Registration]:
        """A copy of every registration by key."""
        return dict(self._entries)

    def get(self, key: str) -> Registration | None:
        """The registration of ``key``, or ``None``."""
        return self._entries.get(key)

    def blob_path(self, digest: str) -> Path:
        """Where the backing file of contents with this sha256 hex digest lives."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument(f"not a sha256 hex digest: {digest!r}")
        return self._blobs / digest

    def record(self, registration: Registration, contents: bytes | bytearray | memoryview) -> None:
        """Write the backing file (unless one with this digest exists) and the manifest entry.

        The caller keeps ownership of ``contents``; nothing holds on to it afterwards.

        Raises:
            Unavailable: the state directory is not writable (nothing was recorded).
        """
        blob = self.blob_path(registration.sha256)
        try:
            if not blob.exists() or blob.stat().st_size != registration.size:
                _atomic_write(blob, contents)
            self._entries[registration.key] = registration
            self._save()
        except OSError as exc:
            self._entries.pop(registration.key, None)
            raise Unavailable(f"cannot record {registration.key!r} in {self._dir}: {exc}") from exc

    def write_blob(self, digest: str, contents: bytes | bytearray | memoryview) -> None:
        """Write the backing file of contents with this digest (unless present). Touches
        no manifest, so a worker thread may call it for immutable contents; :meth:`add`
        then names it, on the core thread.

        Raises:
            InvalidArgument: ``digest`` is not a sha256 hex digest.
            OSError: the file cannot be written.
        """
        blob = self.blob_path(digest)
        if not blob.exists() or blob.stat().st_size != len(memoryview(contents).cast("B")):
            _atomic_write(blob, contents)

    def add(self, registration: Registration) -> None:
        """Name a backing file that :meth:`write_blob` wrote in the manifest.

        Raises:
            Unavailable: the manifest cannot be rewritten (nothing was recorded).
        """
        try:
            self._entries[registration.key] = registration
            self._save()
        except OSError as exc:
            self._entries.pop(registration.key, None)
            raise Unavailable(f"cannot record {registration.key!r} in {self._dir}: {exc}") from exc

    def forget(self, key: str) -> None:
        """Remove ``key`` from the manifest; its blob goes when no other key shares it.

        Raises:
            Unavailable: the manifest cannot be rewritten.
        """
        registration = self._entries.pop(key, None)
        if registration is None:
            return
        try:
            self._save()
            if all(r.sha256 != registration.sha256 for r in self._entries.values()):
                self.blob_path(registration.sha256).unlink(missing_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot forget {key!r} in {self._dir}: {exc}") from exc

    def verify(self, registration: Registration) -> bool:
        """Whether the backing file exists, has the right size and the recorded digest."""
        blob = self.blob_path(registration.sha256)
        try:
            if blob.stat().st_size != registration.size:
                return False
            digest = hashlib.sha256()
            with blob.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        except OSError:
            return False
        return digest.hexdigest() == registration.sha256

    def read_into(self, registration: Registration, view: memoryview) -> None:
        """Copy the whole backing file into ``view`` (at least ``registration.size`` bytes).

        Raises:
            Unavailable: the backing file is missing or short.
        """
        blob = self.blob_path(registration.sha256)
        try:
            with blob.open("rb") as f:
                done = 0
                while done < registration.size:
                    n = f.readinto(view[done : registration.size])
                    if not n:
                        raise OSError(f"backing file ends at {done} of {registration.size} bytes")
                    done += n
        except OSError as exc:
            raise Unavailable(f"backing copy of {registration.key!r} is unreadable: {exc}") from exc

    def read(self, registration: Registration, offset: int, size: int) -> bytes:
        """``size`` bytes of the backing file from ``offset``.

        Raises:
            Unavailable: the backing file is missing or short.
        """
        blob = self.blob_path(registration.sha256)
        try:
            with blob.open("rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as exc:
            raise Unavailable(f"backing copy of {registration.key!r} is unreadable: {exc}") from exc
        if len(data) != size:
            raise Unavailable(f"backing copy of {registration.key!r} is short")
        return data

    def _load(self) -> dict[str, Registration]:
        manifest = self._dir / MANIFEST_NAME
        if not manifest.exists():
            return {}
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            if doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unknown manifest version {doc.get('version')!r}")
            out: dict[str, Registration] = {}
            for item in doc["registrations"]:
                reg = Registration(
                    key=str(item["key"]),
                    size=int(item["size"]),
                    usage=BufferUsage(item["usage"]),
                    tier_preference=TierPreference(item["tier_preference"]),
                    sha256=str(item["sha256"]),
                )
                self.blob_path(reg.sha256)  # validates the digest's form
                out[reg.key] = reg
        except (OSError, ValueError, KeyError, TypeError, InvalidArgument) as exc:
            raise Unavailable(f"manifest {manifest} is unreadable: {exc}") from exc
        return out

    def _save(self) -> None:
        doc = {
            "version": MANIFEST_VERSION,
            "registrations": [
                {
                    "key": r.key,
                    "size": r.size,
                    "usage": r.usage.value,
                    "tier_preference": r.tier_preference.value,
                    "sha256": r.sha256,
                }
                for r in sorted(self._entries.values(), key=lambda r: r.key)
            ],
        }
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        _atomic_write(self._dir / MANIFEST_NAME, text.encode("utf-8"))


def make_private(path: Path) -> None:
    """Create ``path`` and any missing parents mode 0700; strip an existing one's permissions
    for others (and group write), so no other local user can read what npud keeps there.

    Raises:
        OSError: a directory cannot be created or changed.
    """
    missing = []
    at = path
    while not at.exists():
        missing.append(at)
        at = at.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            new.mkdir(mode=0o700)
    mode = path.stat().st_mode & 0o777
    if mode & 0o027:
        path.chmod(mode & ~0o027)


def _atomic_write(path: Path, contents: bytes | bytearray | memoryview) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(contents)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
