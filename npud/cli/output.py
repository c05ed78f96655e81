"""How npuctl prints: a rich table for people, or JSON that mirrors the proto messages.

JSON is the stable scripting interface. Every document is a proto message (or an object of
them) rendered by ``google.protobuf.json_format.MessageToDict`` with the .proto field names
(``preserving_proto_field_name``), every field present even when it holds its default (so a
script never has to guess whether a missing key means 0), enums by name, and 64-bit integers
as JSON numbers. One indented document per run, or one line per iteration under ``-l``
(JSON Lines). Tables are not stable: columns and units may change between releases.

Without a terminal and without ``$COLUMNS``, tables are laid out for a wide page instead of
80 columns, so piping a listing into grep never truncates an id.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.rule import Rule

PIPE_WIDTH: Final = 250


def to_dict(message: Message) -> dict[str, Any]:
    """A proto message as the JSON object npuctl prints (see the module docstring)."""
    return MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def make_console(stream: TextIO | None = None) -> Console:
    """A rich console on ``stream`` (stdout), wide when it is not a terminal."""
    stream = stream if stream is not None else sys.stdout
    wide = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(
        file=stream,
        width=PIPE_WIDTH if wide else None,
        highlight=False,
        soft_wrap=False,
    )


class Output:
    """Prints one result as a table or as JSON, once or on each turn of a ``-l`` loop."""

    def __init__(self, fmt: str, console: Console, *, looping: bool = False) -> None:
        self.fmt = fmt
        self.console = console
        self.looping = looping

    @property
    def json(self) -> bool:
        """Whether the output is JSON."""
        return self.fmt == "json"

    def emit(self, document: dict[str, Any], table: Callable[[], RenderableType]) -> None:
        """Print ``document`` as JSON, or the renderable ``table()`` builds."""
        if self.json:
            text = json.dumps(document, indent=None if self.looping else 2)
            self.console.file.write(text + "\n")
            self.console.file.flush()
            return
        if self.looping:
            self.console.print(Rule(time.strftime("%Y-%m-%d %H:%M:%S"), align="left"))
        renderable = table()
        # A listing is never truncated: wider than the terminal, its lines wrap (as kubectl's
        # do) rather than cut the ids a user copies into the next command.
        unbounded = self.console.options.update_width(10_000)
        natural = Measurement.get(self.console, unbounded, renderable).maximum
        width = self.console.width
        self.console.width = max(natural, width)
        try:
            self.console.print(renderable)
        finally:
            self.console.width = width


def repeat(once: Callable[[], None], every_s: float | None) -> None:
    """Run ``once``; with ``every_s``, again every ``every_s`` seconds until Ctrl-C.

    Ctrl-C ends the loop quietly: it is how a user stops ``-l``.
    """
    once()
    if not every_s:
        return
    try:
        while True:
            time.sleep(every_s)
            once()
    except KeyboardInterrupt:
        return


__all__ = ["PIPE_WIDTH", "Output", "make_console", "repeat", "to_dict"]
