"""Errors of the LLM workload: a bad model file names the file and the tensor.

Everything here subclasses :class:`npud.errors.InvalidArgument`, so a caller that handles
npud's vocabulary handles these too; the extra attributes let a tool point at the culprit.
"""

from __future__ import annotations

from pathlib import Path

from npud.errors import InvalidArgument


class ModelFileError(InvalidArgument):
    """A model file (config.json or safetensors) is unreadable, inconsistent or incomplete.

    ``path`` is the file at fault; ``tensor`` the tensor name (``None`` for config errors and
    for damage to a safetensors header that no tensor owns).
    """

    def __init__(self, path: Path | str, message: str, *, tensor: str | None = None) -> None:
        where = f"{path}" if tensor is None else f"{path}: tensor {tensor!r}"
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.tensor = tensor
