"""``npuctl``: inspect npud's devices, contexts, queues, jobs and buffers, or watch them live.

::

    npuctl                                  summary (devices, engines, memory, classes, contexts)
    npuctl devices|contexts|queues|jobs|buffers list [filters]     (alias: ls)
    npuctl devices|contexts|queues|jobs|buffers show ID
    npuctl jobs cancel ID
    npuctl top                              live view from the daemon's event stream
    npuctl version

    global: -s/--socket PATH ($NPUD_SOCKET)  -o/--output table|json (--json)  -l/--loop SECONDS
            --timeout SECONDS
    filters: -d/--device NAME  -c/--context ID  --class CLASS  --state STATE  --queue ID
             (each repeatable; jobs only for --state and --queue)

Exit status (see :class:`~npud.cli.exit_codes.ExitCode`): 0 ok, 1 the daemon refused the
request, 2 usage, 3 cannot connect to npud, 4 permission denied, 5 no such object.

Global options may come before or after the command (``npuctl -o json jobs list`` and
``npuctl jobs list -o json`` mean the same): each subcommand repeats them with
``argparse.SUPPRESS`` defaults, so a value given late overrides one given early and an absent
one overrides nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from npud import __version__
from npud.cli import summary as summary_mod
from npud.cli import tables
from npud.cli.connection import Connection, resolve_socket
from npud.cli.exit_codes import CliError, ExitCode
from npud.cli.inventory import Filters, Inventory
from npud.cli.output import Output, make_console, repeat, to_dict
from npud.cli.units import enum_choices, enum_value
from npud.v1 import buffer_pb2, context_pb2, device_pb2, job_pb2, system_pb2, types_pb2

NOUNS: Final = ("devices", "contexts", "queues", "jobs", "buffers")
_CLASSES: Final = enum_choices(types_pb2.SchedulingClass.DESCRIPTOR)
_STATES: Final = enum_choices(types_pb2.JobState.DESCRIPTOR)


# ---- the parser -----------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-s",
        "--socket",
        default=default(None),
        metavar="PATH",
        help="npud's socket (default: $NPUD_SOCKET, else /run/npud/npud.sock)",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default=default("table"),
        help="table for people; json (proto field names) for scripts, the stable interface",
    )
    parser.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        default=default("table"),
        help="same as -o json",
    )
    parser.add_argument(
        "-l",
        "--loop",
        type=_positive_float,
        default=default(None),
        metavar="SECONDS",
        help="repeat every SECONDS until Ctrl-C (summary and list commands)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(10.0),
        metavar="SECONDS",
        help="give up on an rpc after SECONDS (default 10)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _lookup_context_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--context``: where ``show`` and ``cancel`` look for the object they name."""
    parser.add_argument(
        "-c",
        "--context",
        action="append",
        default=[],
        metavar="ID",
        help="look only in this context",
    )


def _filter_options(parser: argparse.ArgumentParser, *, jobs: bool) -> None:
    parser.add_argument(
        "-d", "--device", action="append", default=[], metavar="NAME", help="only this device"
    )
    parser.add_argument(
        "-c", "--context", action="append", default=[], metavar="ID", help="only this context"
    )
    parser.add_argument(
        "--class",
        dest="sched_class",
        action="append",
        default=[],
        choices=_CLASSES,
        help="only this scheduling class",
    )
    if jobs:
        parser.add_argument(
            "--state", action="append", default=[], choices=_STATES, help="only jobs in STATE"
        )
        parser.add_argument(
            "--queue", action="append", default=[], metavar="ID", help="only this queue's jobs"
        )


def build_parser() -> argparse.ArgumentParser:
    """npuctl's argument parser (every command and option)."""
    parser = argparse.ArgumentParser(
        prog="npuctl",
        description="Inspect npud: devices, contexts, queues, jobs and buffers; `top` to watch.",
        epilog="exit status: 0 ok, 1 daemon error, 2 usage, 3 cannot connect, "
        "4 permission denied, 5 not found. JSON output is the stable interface.",
    )
    _global_options(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"npuctl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="noun", metavar="COMMAND")

    summary = commands.add_parser("summary", parents=[common], help="the summary (the default)")
    _filter_options(summary, jobs=False)
    for noun in NOUNS:
        noun_parser = commands.add_parser(noun, parents=[common], help=f"list or show {noun}")
        verbs = noun_parser.add_subparsers(dest="verb", metavar="VERB", required=True)
        for alias in (("list", ["ls"]),):
            lister = verbs.add_parser(
                alias[0], aliases=alias[1], parents=[common], help=f"list {noun}"
            )
            _filter_options(lister, jobs=noun == "jobs")
        shower = verbs.add_parser("show", parents=[common], help=f"show one of the {noun}")
        shower.add_argument("id", metavar="NAME" if noun == "devices" else "ID")
        if noun not in {"devices", "contexts"}:
            _lookup_context_option(shower)
        if noun == "jobs":
            cancel = verbs.add_parser("cancel", parents=[common], help="cancel a job")
            cancel.add_argument("id", metavar="ID")
            _lookup_context_option(cancel)
    top = commands.add_parser("top", parents=[common], help="live view (q or Ctrl-C quits)")
    top.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="statistics refresh interval (default 1)",
    )
    top.add_argument(
        "-n",
        "--iterations",
        type=int,
        default=0,
        metavar="N",
        help="exit after N statistics snapshots (default: run until q)",
    )
    commands.add_parser("version", parents=[common], help="npuctl's and npud's versions")
    return parser


# ---- the commands ---------------------------------------------------------------------------


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(
        devices=tuple(getattr(args, "device", ())),
        contexts=tuple(getattr(args, "context", ())),
        classes=tuple(
            enum_value(types_pb2.SchedulingClass.DESCRIPTOR, c)
            for c in getattr(args, "sched_class", ())
        ),
        states=tuple(
            enum_value(types_pb2.JobState.DESCRIPTOR, s) for s in getattr(args, "state", ())
        ),
        queues=tuple(getattr(args, "queue", ())),
    )


def _list(noun: str, inv: Inventory, f: Filters, out: Output) -> None:
    if noun == "devices":
        devices = inv.devices(f)
        out.emit(
            to_dict(device_pb2.ListDevicesResponse(devices=devices)),
            lambda: tables.devices(devices),
        )
    elif noun == "contexts":
        ctxs = inv.contexts(f)
        out.emit(
            to_dict(context_pb2.ListContextsResponse(contexts=ctxs)),
            lambda: tables.contexts(ctxs),
        )
    elif noun == "queues":
        queues = inv.queues(f)
        out.emit(to_dict(job_pb2.ListQueuesResponse(queues=queues)), lambda: tables.queues(queues))
    elif noun == "jobs":
        jobs = inv.jobs(f)
        out.emit(to_dict(job_pb2.ListJobsResponse(jobs=jobs)), lambda: tables.jobs(jobs))
    else:
        bufs = inv.buffers(f)
        out.emit(
            to_dict(buffer_pb2.ListBuffersResponse(buffers=bufs)), lambda: tables.buffers(bufs)
        )


def _show(noun: str, ident: str, inv: Inventory, f: Filters, out: Output) -> None:
    message: Any
    if noun == "devices":
        message = inv.device(ident)
        key = "device"
    elif noun == "contexts":
        message = inv.context(ident)
        key = "context"
    elif noun == "queues":
        message = inv.find_queue(ident, f)
        key = "queue"
    elif noun == "jobs":
        message = inv.find_job(ident, f)
        key = "job"
    else:
        message = inv.find_buffer(ident, f)
        key = "buffer"
    out.emit({key: to_dict(message)}, lambda: tables.detail(message))


def _version(conn: Connection, out: Output) -> None:
    resp = conn.call(conn.client.system.GetVersion, system_pb2.GetVersionRequest())
    doc = {"npuctl": __version__, "daemon": to_dict(resp)}
    out.emit(doc, lambda: f"npuctl {__version__}\nnpud {resp.version} (API {resp.api_version})")


def _run(args: argparse.Namespace) -> None:
    noun = args.noun or "summary"
    looping = bool(args.loop) and noun not in ("top", "version") and args.verb != "show"
    looping = looping and getattr(args, "verb", None) != "cancel"
    out = Output(args.output, make_console(), looping=looping)
    with Connection(resolve_socket(args.socket), timeout_s=args.timeout) as conn:
        inv = Inventory(conn)
        f = _filters(args)
        action: Callable[[], None]
        if noun == "summary":

            def action() -> None:
                s = summary_mod.gather(inv, f)
                out.emit(s.to_json(), lambda: summary_mod.render(s))

        elif noun == "top":
            from npud.cli.top import run_top

            run_top(
                conn,
                inv,
                interval_s=args.interval,
                iterations=args.iterations,
                json_lines=out.json,
            )
            return
        elif noun == "version":
            _version(conn, out)
            return
        elif args.verb == "cancel":
            job = inv.cancel_job(args.id, f)
            out.emit(to_dict(job_pb2.CancelJobResponse(job=job)), lambda: tables.detail(job))
            return
        elif args.verb == "show":
            _show(noun, args.id, inv, f, out)
            return
        else:

            def action() -> None:
                _list(noun, inv, f, out)

        repeat(action, args.loop if looping else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run npuctl; returns the exit status (see :class:`~npud.cli.exit_codes.ExitCode`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error is 2
        return int(exc.code) if isinstance(exc.code, int) else int(ExitCode.USAGE)
    if not hasattr(args, "verb"):
        args.verb = None
    try:
        _run(args)
    except CliError as exc:
        print(f"npuctl: {exc.message}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `npuctl jobs list | head`: the reader left, nothing to report
        sys.stderr.close()
        return int(ExitCode.OK)
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
