"""Logging: structlog, readable on a terminal, one JSON object per line otherwise.

Under systemd the daemon's stderr goes to the journal; there every line is prefixed with its
syslog level (``<6>`` info, ``<4>`` warning, ...) so that ``journalctl -p warning`` filters
work (systemd's ``SyslogLevelPrefix=yes`` is the default). On a terminal the console renderer
is used. The daemon logs one canonical line per finished job (event ``job.finished`` with queue
wait, run time, bytes moved and outcome): that line is the thing to grep. Records of the
standard ``logging`` module (core and the device adapters use it) are rendered the same way.

This module is a leaf: any layer may import it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_SYSLOG_PREFIX = {
    "debug": "<7>",
    "info": "<6>",
    "warning": "<4>",
    "error": "<3>",
    "critical": "<2>",
}


def _with_syslog_prefix(renderer: Processor) -> Processor:
    def render(logger: WrappedLogger, name: str, event: EventDict) -> str:
        level = str(event.get("level", "info"))
        text = renderer(logger, name, event)
        if isinstance(text, bytes):
            text = text.decode()
        return f"{_SYSLOG_PREFIX.get(level, '<6>')}{text}"

    return render


def configure(
    level: str = "info",
    fmt: Literal["auto", "console", "json"] = "auto",
    *,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the process (idempotent; the last call wins).

    ``fmt="auto"`` picks the console renderer when ``stream`` is a terminal and JSON otherwise;
    JSON lines get a syslog level prefix when running under journald (``$JOURNAL_STREAM``).
    """
    stream = sys.stderr if stream is None else stream
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        if os.environ.get("JOURNAL_STREAM"):
            renderer = _with_syslog_prefix(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Core and the adapters log through the standard library (they must not depend on
    # structlog); render those records the same way, on the same stream.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])


def get_logger(name: str, **bound: Any) -> Any:
    """A structlog logger carrying ``logger=name`` and any ``bound`` fields."""
    return structlog.get_logger(name).bind(logger=name, **bound)
