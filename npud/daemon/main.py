"""``npud``: the command line of the daemon.

    npud [--config FILE] [--socket PATH] [--device auto|sim|vgem|/dev/accel/accelN] [-v]

Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for invalid configuration (the
message names the field and the reason), 1 when start-up fails (no device, socket in use).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from npud import __version__
from npud.config import load_settings
from npud.daemon.allocator import MMAP_THRESHOLD_BYTES, return_large_blocks
from npud.errors import ConfigError, NpudError
from npud.log import configure, get_logger


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="npud", description="npud: the NPU job-scheduling daemon (gRPC on a Unix socket)"
    )
    p.add_argument("--config", type=Path, help="TOML configuration (default /etc/npud/npud.toml)")
    p.add_argument("--socket", type=Path, help="the gRPC Unix socket to serve")
    p.add_argument("--device", help="auto (discover, else simulate), sim, vgem, or a /dev/... node")
    p.add_argument("--state-dir", type=Path, help="persistent state directory")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v: debug)")
    p.add_argument("--version", action="version", version=f"npud {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, load the configuration, run the daemon; returns the exit status."""
    args = _parser().parse_args(argv)
    overrides = {
        "socket": args.socket,
        "device": args.device,
        "state_dir": args.state_dir,
        "log_level": "debug" if args.verbose else None,
    }
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"npud: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)
    from npud.daemon.app import run

    if return_large_blocks():
        get_logger("npud").debug("npud.allocator", mmap_threshold_bytes=MMAP_THRESHOLD_BYTES)

    try:
        return run(settings)
    except ConfigError as exc:
        get_logger("npud").error("npud.config_error", error=str(exc))
        return 2
    except NpudError as exc:
        get_logger("npud").error("npud.start_failed", error=str(exc), kind=type(exc).__name__)
        return 1


if __name__ == "__main__":
    sys.exit(main())
