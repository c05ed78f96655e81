#!/usr/bin/env python3
"""Start a systemd service unit's ExecStart the way systemd would, where systemd cannot run.

Why: a board root under emulation (scripts/arm64.sh) is a chroot, and systemd cannot be PID 1
there. To still test what the installed unit starts, this reads the unit and reproduces the
parts of its [Service] section that decide whether the daemon works: User=, Group=,
SupplementaryGroups=, UMask=, Environment=, RuntimeDirectory=/StateDirectory=/
ConfigurationDirectory= (created with their modes and owners, exported as *_DIRECTORY),
Type=notify (a NOTIFY_SOCKET whose READY=1 ends the start) and WatchdogSec= (WATCHDOG_USEC;
pings are counted). Sandboxing directives (ProtectSystem=, SystemCallFilter=, ...) are not
applied: `systemd-analyze verify` checks them, systemd on the board enforces them.

usage:  run-unit.py UNIT --ready FILE [--timeout S]
        Runs in the foreground: writes FILE ("READY <pid> <status>") once the service is ready,
        forwards SIGTERM/SIGINT to it as KillSignal= would, and exits with its status; a start
        that fails or times out exits 1 with the reason. Standard library only (the board's own
        python3 runs it).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_service(text: str) -> dict[str, list[str]]:
    """The [Service] section as key -> every value in order (later lines add or override)."""
    section = ""
    values: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def last(service: dict[str, list[str]], key: str, default: str = "") -> str:
    """The effective value of a single-valued setting."""
    return service.get(key, [default])[-1]


def seconds(value: str) -> float:
    """A systemd time span such as 30s, 2min, 500ms, 1min 30s (plain numbers are seconds)."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    for part in value.split():
        digits = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(digits) * units.get(part[len(digits) :] or "s", 1.0)
    return total


def make_directories(service: dict[str, list[str]], uid: int, gid: int) -> dict[str, str]:
    """Create RuntimeDirectory=, StateDirectory=, ConfigurationDirectory= as systemd does and
    return the environment variables naming them."""
    env: dict[str, str] = {}
    kinds = (
        ("RuntimeDirectory", "/run", "RUNTIME_DIRECTORY", True),
        ("StateDirectory", "/var/lib", "STATE_DIRECTORY", True),
        ("ConfigurationDirectory", "/etc", "CONFIGURATION_DIRECTORY", False),
    )
    for key, parent, variable, owned in kinds:
        names = " ".join(service.get(key, [])).split()
        if not names:
            continue
        mode = int(last(service, key + "Mode", "0755"), 8)
        paths = []
        for name in names:
            path = Path(parent) / name
            path.mkdir(parents=True, exist_ok=True)
            if owned:  # systemd chowns runtime and state directories to the service's user
                os.chown(path, uid, gid)
            path.chmod(mode)
            paths.append(str(path))
        env[variable] = ":".join(paths)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("unit", type=Path)
    parser.add_argument("--ready", type=Path, required=True, help="file written once ready")
    parser.add_argument("--timeout", type=float, default=300.0, help="start timeout, s")
    args = parser.parse_args()
    service = parse_service(args.unit.read_text())

    user = pwd.getpwnam(last(service, "User", "root"))
    gid = grp.getgrnam(last(service, "Group")).gr_gid if "Group" in service else user.pw_gid
    groups = [
        grp.getgrnam(g).gr_gid for g in " ".join(service.get("SupplementaryGroups", [])).split()
    ]
    umask = int(last(service, "UMask", "0022"), 8)
    argv = shlex.split(last(service, "ExecStart").lstrip("-@:+!"))
    env = {
        "PATH": SYSTEMD_PATH,
        "LANG": "C.UTF-8",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "SHELL": user.pw_shell,
    }
    for assignment in service.get("Environment", []):
        for item in shlex.split(assignment):
            key, _, value = item.partition("=")
            env[key] = value
    env.update(make_directories(service, user.pw_uid, gid))
    watchdog = seconds(last(service, "WatchdogSec", "0"))
    notify_dir = tempfile.mkdtemp(prefix="run-unit-")
    notify_path = os.path.join(notify_dir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    # The service's user must be able to send to it; nobody else can reach it.
    os.chown(notify_dir, user.pw_uid, gid)
    os.chown(notify_path, user.pw_uid, gid)
    env["NOTIFY_SOCKET"] = notify_path
    if watchdog > 0:
        env["WATCHDOG_USEC"] = str(int(watchdog * 1e6))

    pid = os.fork()
    if pid == 0:  # the service: drop to its user and groups, then exec ExecStart
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(user.pw_uid)
            os.umask(umask)
            os.chdir("/")
            env["WATCHDOG_PID"] = str(os.getpid())
            os.execve(argv[0], argv, env)  # noqa: S606 (ExecStart= has no shell either)
        finally:
            os._exit(127)

    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(f"run-unit: {' '.join(argv)} as {user.pw_name}:{gid} (pid {pid})", file=sys.stderr)
    deadline = time.monotonic() + args.timeout
    ready = False
    pings = 0
    notify.settimeout(0.5)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            print(
                f"run-unit: the service exited with {code} ({pings} watchdog pings)",
                file=sys.stderr,
            )
            if not ready:
                print("run-unit: it never reported READY=1", file=sys.stderr)
                return 1
            return 0 if code == 0 and forwarded else (code or 1)
        if not ready and time.monotonic() > deadline:
            print(f"run-unit: no READY=1 within {args.timeout:g} s: stopping it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 1
        try:
            message = notify.recv(4096).decode(errors="replace")
        except (TimeoutError, InterruptedError):
            continue
        fields = dict(line.partition("=")[::2] for line in message.splitlines())
        pings += fields.get("WATCHDOG") == "1"
        if fields.get("READY") == "1" and not ready:
            ready = True
            args.ready.write_text(f"READY {pid} {fields.get('STATUS', '')}\n")
            print(f"run-unit: READY=1 ({fields.get('STATUS', '')})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
