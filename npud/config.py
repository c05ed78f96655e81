"""The daemon's configuration: one pydantic model, filled from TOML, the environment and flags.

Precedence, lowest first: the defaults below, the TOML file (``/etc/npud/npud.toml`` or
``--config``), ``NPUD_*`` environment variables (``NPUD_SOCKET``, ``NPUD_QUOTAS__MAX_QUEUES``: a
double underscore descends into a table), then command-line flags. An invalid setting raises
:class:`npud.errors.ConfigError` naming the field and the reason; the daemon exits non-zero
with that message.

Paths follow systemd's conventions: the socket goes to ``$RUNTIME_DIRECTORY`` when systemd
created one for us, else ``/run/npud`` as root, else ``$XDG_RUNTIME_DIR/npud``; state goes to
``$STATE_DIRECTORY``, ``/var/lib/npud`` as root, else ``$XDG_STATE_HOME/npud``. The identity
socket (see docs/api.md) always sits beside the gRPC socket, so a client that knows one knows
the other: :func:`identity_socket_for`.

This module is a leaf: any layer (the client library included) may import it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from npud.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/npud/npud.toml")
ENV_PREFIX = "NPUD_"


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon listens (and the client connects) when nothing is configured."""
    env = os.environ if env is None else env
    if env.get("NPUD_SOCKET"):
        return Path(env["NPUD_SOCKET"])
    if env.get("RUNTIME_DIRECTORY"):
        # systemd may list several directories separated by ':'; ours is the first.
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "npud.sock"
    if os.geteuid() == 0:
        return Path("/run/npud/npud.sock")
    runtime = env.get("XDG_RUNTIME_DIR") or f"/tmp/npud-{os.geteuid()}"  # noqa: S108
    return Path(runtime) / "npud" / "npud.sock"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon keeps persistent state (spill files, duration estimates)."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/npud")
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "npud"


def identity_socket_for(socket: Path) -> Path:
    """The identity (SO_PEERCRED) socket that belongs to the gRPC socket ``socket``."""
    return socket.with_name(socket.name + ".identity")


def descriptor_socket_for(socket: Path) -> Path:
    """The socket beside the gRPC socket ``socket`` where buffers cross as descriptors."""
    return socket.with_name(socket.name + ".buffers")


def submit_socket_for(socket: Path) -> Path:
    """The socket beside the gRPC socket ``socket`` where local clients submit jobs without
    gRPC."""
    return socket.with_name(socket.name + ".submit")


class Quotas(BaseModel):
    """Defaults and ceilings for what one context (and one user) may hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context_memory_bytes: int = Field(default=1 << 30, gt=0)
    max_queued_jobs: int = Field(default=1024, gt=0)
    max_queues: int = Field(default=16, gt=0)
    max_contexts_per_user: int = Field(default=64, gt=0)
    max_jobs_per_user: int = Field(default=1 << 20, gt=0)  # live (queued or running) jobs
    memory_bytes_per_user: int | None = Field(default=None, gt=0)  # over all its contexts
    queue_depth_limit: int = Field(default=256, gt=0)


class Scheduling(BaseModel):
    """The ``npud`` policy's knobs an operator may turn (``[scheduler]``; ignored by ``fifo``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Guaranteed share of device time over a decaying window, per class: what prefill and batch
    # work get while decode keeps every engine busy.
    throughput_min_share: float = Field(default=0.10, ge=0, lt=1, allow_inf_nan=False)
    background_min_share: float = Field(default=0.05, ge=0, lt=1, allow_inf_nan=False)
    # The longest estimated THROUGHPUT/BACKGROUND job admitted, ms (0: no limit). A longer one
    # is refused with TimeSliceExceeded naming how many chunks to split it into.
    time_slice_ms: float = Field(default=100.0, ge=0, le=60_000, allow_inf_nan=False)
    # After the last LATENCY job, how long the engines keep shallow queues, seconds.
    latency_window_s: float = Field(default=0.5, ge=0, le=60, allow_inf_nan=False)
    # Multiplies the per-class default watchdog timeouts (jobs that set their own keep it). For
    # a host far slower than any board, e.g. arm64 under emulation, where a simulated job's real
    # computation takes many times what the board would.
    watchdog_scale: float = Field(default=1.0, ge=1, le=1000, allow_inf_nan=False)

    @model_validator(mode="after")
    def _shares_below_one(self) -> Scheduling:
        total = self.throughput_min_share + self.background_min_share
        if total >= 1.0:
            raise ValueError(
                f"throughput_min_share + background_min_share = {total:g}; they must add up to "
                "less than 1 so that the class order still decides something"
            )
        return self


class Residency(BaseModel):
    """How much of each memory tier npud lets itself use (``[residency]``), per device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Bytes of device DRAM / on-chip SRAM npud may hold at once; unset: the tier's capacity. A
    # budget above the capacity is capped to it. Leaving room serves other users of the memory
    # (a display pipeline sharing the DRAM carve-out, firmware scratch in SRAM).
    dram_budget_bytes: int | None = Field(default=None, ge=0)
    sram_budget_bytes: int | None = Field(default=None, ge=0)
    # Place KV caches and scratch buffers in SRAM when they fit (false: SRAM only on request).
    sram_placement: bool = True


class CuConfig(BaseModel):
    """One compute unit of an amdxdna program: its PDI image file and function number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pdi: Path
    func: int = Field(default=0, ge=0, le=255)

    @field_validator("pdi")
    @classmethod
    def _readable(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"{value} is not a file (expected a PDI image of the xclbin)")
        if value.stat().st_size == 0:
            raise ValueError(f"{value} is empty (expected a PDI image of the xclbin)")
        return value


class Amdxdna(BaseModel):
    """``[amdxdna]``: the program an AMD XDNA NPU runs and how npud lays it out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The PDI images (and function numbers) loaded into every hardware context npud creates
    # (CONFIG_HWCTX). Without them the kernel refuses every command, so an amdxdna NPU is
    # served only when they are set.
    cu_configs: tuple[CuConfig, ...] = ()
    # Hardware-context lanes exposed as engines (at most the device's context limit).
    engines: int = Field(default=4, ge=1, le=16)


_HOOK = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


class Qaic(BaseModel):
    """``[qaic]``: how a Cloud AI 100's network is activated on npud's file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "package.module:function": called with npud's open file of the card, it activates the
    # network (the Cloud AI SDK's NNC protocol over DRM_IOCTL_QAIC_MANAGE) and returns the DMA
    # Bridge Channel ids, one engine each. A qaic is served only when it is set.
    activate: str | None = Field(default=None, pattern=_HOOK)
    # Send each job's command range as the request's first input.
    command_input: bool = False


class Metrics(BaseModel):
    """The Prometheus endpoint (``[metrics]``): off unless ``listen`` names an address."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # "host:port" ("127.0.0.1:9464", "[::1]:9464", "0.0.0.0:9464"); None: no endpoint.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        host, port = split_listen(value)
        del host, port
        return value


def split_listen(value: str) -> tuple[str, int]:
    """``"host:port"`` (IPv6 hosts in brackets) to ``(host, port)``.

    Raises:
        ValueError: not host:port, or a port outside 1..65535.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port such as 127.0.0.1:9464, got {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"put an IPv6 host in brackets ([::1]:9464), got {value!r}")
    return host, port


class LimitSettings(BaseModel):
    """Bounds on what one client may ask (``[limits]``): every number it sends is finite and
    within these, or its rpc fails INVALID_ARGUMENT naming the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The longest watchdog timeout a job may ask for, per class, seconds: the longest one job
    # may hold an engine (no job is preempted).
    latency_timeout_max_s: float = Field(default=10.0, gt=0, le=86400, allow_inf_nan=False)
    throughput_timeout_max_s: float = Field(default=60.0, gt=0, le=86400, allow_inf_nan=False)
    background_timeout_max_s: float = Field(default=600.0, gt=0, le=86400, allow_inf_nan=False)
    # How far ahead a deadline may lie, the largest declared estimate, the longest WaitJob.
    max_deadline_s: float = Field(default=3600.0, gt=0, le=86400 * 7, allow_inf_nan=False)
    max_estimate_s: float = Field(default=3600.0, gt=0, le=86400 * 7, allow_inf_nan=False)
    max_wait_s: float = Field(default=3600.0, gt=0, le=86400 * 7, allow_inf_nan=False)
    # The statistics interval of StreamEvents (npuctl top), seconds.
    min_event_interval_s: float = Field(default=0.1, gt=0, le=60, allow_inf_nan=False)
    max_event_interval_s: float = Field(default=3600.0, gt=0, le=86400, allow_inf_nan=False)
    # The largest fair-share weight of a context; the smallest is its inverse.
    max_weight: float = Field(default=16.0, ge=1, le=1e6, allow_inf_nan=False)
    # Duration-estimate kinds kept per user (per device); past it a user's least recently used
    # kind is forgotten.
    max_kinds_per_owner: int = Field(default=256, gt=0, le=1 << 20)
    # The longest label (context, queue, job) and job kind, characters.
    max_label_chars: int = Field(default=256, gt=0, le=1 << 16)
    max_kind_chars: int = Field(default=64, gt=0, le=4096)
    # Readbacks per SubmitStream request, and their bytes together.
    max_readbacks: int = Field(default=16, gt=0, le=4096)
    max_readback_bytes: int = Field(default=16 << 20, gt=0, le=64 << 20)

    @model_validator(mode="after")
    def _interval_order(self) -> LimitSettings:
        if self.min_event_interval_s > self.max_event_interval_s:
            raise ValueError(
                f"min_event_interval_s = {self.min_event_interval_s:g} is above "
                f"max_event_interval_s = {self.max_event_interval_s:g}"
            )
        return self


class Settings(BaseModel):
    """Every setting of the daemon, with its default (see systemd/npud.toml.example)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    socket: Path = Field(default_factory=default_socket_path)
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    socket_group: str | None = None
    device: str = "auto"  # "auto" (discovery, sim if none), "sim", "vgem", or a device node path
    sim_profile: str = "rk3588"
    # The simulated board runs this many times slower than its profile (1: as modelled).
    sim_slowdown: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False)
    state_dir: Path = Field(default_factory=default_state_dir)
    policy: Literal["npud", "fifo"] = "npud"
    admin_group: str | None = None
    session_grace_s: float = Field(default=5.0, ge=0, le=86400, allow_inf_nan=False)
    close_grace_s: float = Field(default=5.0, ge=0, le=3600, allow_inf_nan=False)
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=3600, allow_inf_nan=False)
    # Tests only: let admins inject faults into simulated devices (AdminService.InjectFault).
    fault_injection: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    quotas: Quotas = Field(default_factory=Quotas)
    scheduler: Scheduling = Field(default_factory=Scheduling)
    residency: Residency = Field(default_factory=Residency)
    amdxdna: Amdxdna = Field(default_factory=Amdxdna)
    qaic: Qaic = Field(default_factory=Qaic)
    metrics: Metrics = Field(default_factory=Metrics)
    limits: LimitSettings = Field(default_factory=LimitSettings)

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal_mode(cls, value: object) -> object:
        """Accept ``"0660"`` / ``"660"`` (octal text) as well as an integer."""
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError as exc:
                raise ValueError(f"not an octal mode: {value!r}") from exc
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "sim", "vgem") and not value.startswith("/dev/"):
            raise ValueError(f"expected 'auto', 'sim', 'vgem' or a /dev/ path, got {value!r}")
        return value

    @property
    def identity_socket(self) -> Path:
        """The SO_PEERCRED identity socket beside :attr:`socket`."""
        return identity_socket_for(self.socket)

    @property
    def descriptor_socket(self) -> Path:
        """The descriptor socket beside :attr:`socket` (buffers as file descriptors)."""
        return descriptor_socket_for(self.socket)

    @property
    def submit_socket(self) -> Path:
        """The submit socket beside :attr:`socket` (the submit stream without gRPC)."""
        return submit_socket_for(self.socket)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``NPUD_A__B=v`` -> ``{"a": {"b": "v"}}`` for the fields Settings knows.

    Variables whose first part names no setting are the clients' and tools' own (for example
    ``NPUD_TENANT_FILE``) and are left alone; inside a known section an unknown key is kept, so
    a typo there is refused by validation, naming it.
    """
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == "NPUD_CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in Settings.model_fields:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from the TOML file, the environment and explicit overrides.

    Args:
        path: a TOML file; ``None`` reads ``$NPUD_CONFIG`` or ``/etc/npud/npud.toml`` when it
            exists (a missing default file is not an error; a missing explicit one is).
        env: the environment (default ``os.environ``).
        overrides: values from command-line flags (``None`` values are ignored).

    Raises:
        ConfigError: the file is unreadable or not TOML, or a field is invalid; the message
            names the field and the reason.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    explicit = path is not None or bool(env.get("NPUD_CONFIG"))
    file = path or Path(env.get("NPUD_CONFIG") or DEFAULT_CONFIG_PATH)
    if explicit or file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except OSError as exc:
            raise ConfigError(f"config file {file}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: not valid TOML: {exc}") from exc
    data = _merge(data, _env_overrides(env))
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            f" (got {err.get('input')!r})"
            for err in exc.errors()
        )
        source = file if file.exists() else "defaults and environment"
        raise ConfigError(f"invalid configuration ({source}): {problems}") from exc
