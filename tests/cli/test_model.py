"""npuctl's pure parts: units, the error -> exit status table, the top model and the parser."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from npud import errors
from npud.cli import tables, units
from npud.cli.exit_codes import ExitCode, exit_code_for
from npud.cli.main import build_parser
from npud.cli.tables import bar
from npud.cli.top import TopModel
from npud.v1 import context_pb2, job_pb2, stats_pb2, types_pb2


def test_sizes_use_binary_units() -> None:
    """Bytes print as B below 1 KiB, then KiB/MiB/GiB with one decimal."""
    assert units.size(0) == "0 B"
    assert units.size(1023) == "1023 B"
    assert units.size(4096) == "4.0 KiB"
    assert units.size(978944) == "956.0 KiB"
    assert units.size(4 << 30) == "4.0 GiB"


def test_durations_pick_a_readable_unit() -> None:
    """Zero is '-', then us, ms, s, min, h."""
    assert units.duration(0) == "-"
    assert units.duration(250e-6) == "250 us"
    assert units.duration(0.00107) == "1.07 ms"
    assert units.duration(51.7) == "51.70 s"
    assert units.duration(600) == "10.0 min"
    assert units.duration(3 * 3600) == "3.0 h"


def test_usage_says_none_for_a_missing_tier() -> None:
    """A tier of capacity 0 is 'none', otherwise used / capacity (share)."""
    assert units.usage(0, 0) == "none"
    assert units.usage(4096, 8192) == "4.0 KiB / 8.0 KiB (50.0%)"


def test_enum_names_round_trip_and_unknown_values_print_as_numbers() -> None:
    """Short names drop the buf prefix; UNSPECIFIED is '-'; a newer value prints as its number."""
    desc = types_pb2.JobState.DESCRIPTOR
    for short in units.enum_choices(desc):
        assert units.enum_name(desc, units.enum_value(desc, short)) == short
    assert units.enum_name(desc, types_pb2.JOB_STATE_TIMED_OUT) == "timed_out"
    assert units.enum_name(desc, 0) == "-"
    assert units.enum_name(desc, 99) == "99"
    with pytest.raises(ValueError, match="sleeping"):
        units.enum_value(desc, "sleeping")


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=-1.0, max_value=2.0, allow_nan=False))
def test_bar_is_always_ten_cells(fraction: float) -> None:
    """The utilisation bar has a fixed width whatever the (even out-of-range) fraction."""
    assert len(bar(fraction)) == 10
    assert set(bar(fraction)) <= {"█", "░"}


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFound("x"), ExitCode.NOT_FOUND),
        (errors.PermissionDenied("x"), ExitCode.PERMISSION_DENIED),
        (errors.Unavailable("x"), ExitCode.CANNOT_CONNECT),
        (errors.DeviceLost("x"), ExitCode.DAEMON_ERROR),
        (errors.QueueFull("x"), ExitCode.DAEMON_ERROR),
        (errors.Unauthenticated("x"), ExitCode.DAEMON_ERROR),
        (errors.InvalidArgument("x"), ExitCode.DAEMON_ERROR),
    ],
)
def test_errors_map_to_distinct_exit_statuses(error: errors.NpudError, code: ExitCode) -> None:
    """Each npud error class maps to the exit status a script can act on."""
    assert exit_code_for(error) is code


def _job(job_id: str, state: int, *, run_s: float = 0.0, wait_s: float = 0.0) -> job_pb2.Job:
    return job_pb2.Job(
        job_id=job_id,
        context_id="ctx-1",
        queue_id="q-1",
        state=state,  # type: ignore[arg-type]
        run_s=run_s,
        queue_wait_s=wait_s,
        engine=0 if state == types_pb2.JOB_STATE_RUNNING else -1,
    )


def test_top_model_lists_live_jobs_first_and_ages_them() -> None:
    """Running, ready, queued, then finished newest first; live times grow with elapsed time."""
    model = TopModel(everyone=True)
    model.apply(stats_pb2.StreamEventsResponse(job=_job("a", types_pb2.JOB_STATE_COMPLETED)), 0.0)
    model.apply(stats_pb2.StreamEventsResponse(job=_job("b", types_pb2.JOB_STATE_QUEUED)), 0.0)
    model.apply(
        stats_pb2.StreamEventsResponse(job=_job("c", types_pb2.JOB_STATE_RUNNING, run_s=1.0)),
        0.0,
    )
    model.apply(stats_pb2.StreamEventsResponse(job=_job("d", types_pb2.JOB_STATE_FAILED)), 0.0)
    shown = model.visible_jobs(10, now=2.0)
    assert [j.job_id for j in shown] == ["c", "b", "d", "a"]
    assert shown[0].run_s == pytest.approx(3.0)
    assert shown[1].queue_wait_s == pytest.approx(2.0)
    assert shown[2].run_s == 0.0  # a finished job's figures are final
    assert [j.job_id for j in model.visible_jobs(2, now=2.0)] == ["c", "b"]


def test_top_model_replaces_a_job_with_its_latest_state() -> None:
    """A job's later event replaces the earlier one rather than adding a row."""
    model = TopModel(everyone=False)
    model.apply(stats_pb2.StreamEventsResponse(job=_job("a", types_pb2.JOB_STATE_QUEUED)), 0.0)
    model.apply(stats_pb2.StreamEventsResponse(job=_job("a", types_pb2.JOB_STATE_RUNNING)), 1.0)
    model.apply(stats_pb2.StreamEventsResponse(job=_job("a", types_pb2.JOB_STATE_COMPLETED)), 2.0)
    (only,) = model.visible_jobs(10, now=3.0)
    assert only.state == types_pb2.JOB_STATE_COMPLETED
    stats = model.statistics()
    assert (stats.job_events, stats.jobs_tracked, stats.snapshots) == (3, 1, 0)


def test_top_model_counts_snapshots_and_keeps_recent_context_events() -> None:
    """Snapshots replace the statistics; context events keep the last four lines."""
    model = TopModel(everyone=True)
    model.apply(stats_pb2.StreamEventsResponse(stats=stats_pb2.GetStatsResponse()), 0.0)
    for i in range(6):
        event = stats_pb2.ContextEvent(
            change=stats_pb2.CONTEXT_CHANGE_CREATED,
            context_id=f"ctx-{i}",
            device="sim0",
            snapshot=context_pb2.Context(label=f"l{i}"),
        )
        model.apply(stats_pb2.StreamEventsResponse(context=event), 0.0)
    assert model.statistics().snapshots == 1
    assert model.statistics().context_events == 6
    assert len(model.context_lines) == 4
    assert "ctx-5 (l5) on sim0 created" in model.context_lines[-1]


def test_parser_accepts_global_options_after_the_verb() -> None:
    """-o/--socket/-l given after the command override the defaults, and absent ones do not."""
    parser = build_parser()
    args = parser.parse_args(["jobs", "list", "-o", "json", "--state", "running", "-l", "2"])
    assert (args.noun, args.verb, args.output, args.loop) == ("jobs", "list", "json", 2.0)
    assert args.state == ["running"]
    args = parser.parse_args(["-o", "json", "-s", "/x.sock", "queues", "ls"])
    assert (args.output, args.socket, args.verb) == ("json", "/x.sock", "ls")
    args = parser.parse_args([])
    assert (args.noun, args.output, args.socket) == (None, "table", None)


def test_top_names_a_jobs_context_by_its_label_else_its_id() -> None:
    """top's jobs table shows the context's label ("chat-alice"); a context without one by id."""
    labelled = _job("a", types_pb2.JOB_STATE_RUNNING)
    labelled.context_label = "chat-alice"
    plain = _job("b", types_pb2.JOB_STATE_QUEUED)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(tables.live_jobs([labelled, plain]))
    rows = {line.split()[0]: line.split() for line in console.export_text().splitlines() if line}
    assert rows["a"][1] == "chat-alice"
    assert rows["b"][1] == "ctx-1"
    assert tables.context_name(labelled) == "chat-alice"
