#!/usr/bin/env bash
# Install npud on a Debian-based board (arm64 or x86_64) as a systemd service.
#
# What it does, as root, from a board with Debian 12 (or newer) and network access to PyPI:
#   1. python3-venv from apt if the venv module is missing;
#   2. a venv under /opt/npud with npud's wheel and its dependencies (binary wheels of grpcio,
#      numpy, cffi exist for aarch64 and x86_64, so nothing is compiled on the board);
#   3. the unit (ExecStart pointing into that venv), the sysusers, tmpfiles and udev files under
#      /usr/lib, the documentation under /usr/share/doc/npud, /etc/npud/npud.toml from the
#      example unless one exists;
#   4. systemd-sysusers and systemd-tmpfiles applied, udev rules reloaded, the unit checked by
#      `systemd-analyze verify`;
#   5. with systemd running: `systemctl enable --now npud` and a wait until it is active.
#      Without (a chroot, a root under emulation) it stops after 4 and says so.
#
# usage:  scripts/install-board.sh [--wheel FILE] [--prefix DIR] [--no-start]
#         --wheel   npud's wheel (default: build one from this checkout with pip)
#         --prefix  the venv (default /opt/npud; the unit's ExecStart follows it)
# Re-running it upgrades in place and keeps /etc/npud/npud.toml. docs/board.md explains the
# choices; scripts/arm64.sh runs it in a fresh arm64 root on every CI run.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd -P)
PREFIX=/opt/npud
WHEEL=""
START=1
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) WHEEL=$2; shift 2;;
    --prefix) PREFIX=$2; shift 2;;
    --no-start) START=0; shift;;
    *) echo "usage: $0 [--wheel FILE] [--prefix DIR] [--no-start]" >&2; exit 2;;
  esac
done
log() { echo "[install-board ${SECONDS}s] $*"; }
die() { echo "[install-board] $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it creates a user, a venv under $PREFIX and unit files)"
command -v systemctl >/dev/null || die "systemd is needed: npud runs as a systemd service"

# ---- 1. python3 and its venv module -----------------------------------------------------
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  log "apt-get install python3-venv"
  export DEBIAN_FRONTEND=noninteractive
  compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || apt-get -qq update
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' 2>/dev/null ||
  die "npud needs Python 3.11 or newer (Debian 12 has it)"

# ---- 2. the venv ------------------------------------------------------------------------
if [ -z "$WHEEL" ]; then
  WHEEL_DIR=$(mktemp -d)
  trap 'rm -rf "$WHEEL_DIR"' EXIT
  log "building npud's wheel from $SRC"
  python3 -m venv "$WHEEL_DIR/venv"
  "$WHEEL_DIR/venv/bin/python" -m pip wheel -q --no-deps -w "$WHEEL_DIR" "$SRC"
  WHEEL=$(ls "$WHEEL_DIR"/npud-*.whl)
fi
[ -f "$WHEEL" ] || die "no wheel at $WHEEL"
log "venv $PREFIX with $(basename "$WHEEL")"
[ -x "$PREFIX/bin/python" ] || python3 -m venv "$PREFIX"
"$PREFIX/bin/python" -m pip install -q --upgrade pip
"$PREFIX/bin/python" -m pip install -q --upgrade "$WHEEL"
"$PREFIX/bin/npud" --help >/dev/null || die "$PREFIX/bin/npud does not run"

# ---- 3. the files systemd, sysusers, tmpfiles and udev read ------------------------------
install -d /usr/lib/systemd/system /usr/lib/sysusers.d /usr/lib/tmpfiles.d \
  /usr/lib/udev/rules.d /usr/share/doc/npud /etc/npud
sed "s|^ExecStart=/opt/npud/bin/npud |ExecStart=$PREFIX/bin/npud |" "$SRC/systemd/npud.service" \
  > /usr/lib/systemd/system/npud.service
grep -q "^ExecStart=$PREFIX/bin/npud " /usr/lib/systemd/system/npud.service ||
  die "the unit's ExecStart does not point at $PREFIX/bin/npud"
install -m 0644 "$SRC/systemd/npud.sysusers" /usr/lib/sysusers.d/npud.conf
install -m 0644 "$SRC/systemd/npud.tmpfiles" /usr/lib/tmpfiles.d/npud.conf
install -m 0644 "$SRC/systemd/70-npud.rules" /usr/lib/udev/rules.d/70-npud.rules
install -m 0644 "$SRC"/docs/*.md /usr/share/doc/npud/
install -m 0644 "$SRC/systemd/npud.toml.example" /usr/share/doc/npud/npud.toml.example
[ -f /etc/npud/npud.toml ] || install -m 0644 "$SRC/systemd/npud.toml.example" /etc/npud/npud.toml

# ---- 4. users, directories, udev, and the unit checked -----------------------------------
# render is udev's group for accel and render nodes; Debian's udev creates it, sysusers needs it.
getent group render >/dev/null || groupadd --system render
systemd-sysusers /usr/lib/sysusers.d/npud.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/npud.conf
id npud >/dev/null || die "systemd-sysusers did not create the npud user"
if [ -d /run/udev ] && command -v udevadm >/dev/null; then
  udevadm control --reload && udevadm trigger --subsystem-match=accel || true
fi
log "systemd-analyze verify npud.service"
systemd-analyze verify /usr/lib/systemd/system/npud.service

# ---- 5. the service -----------------------------------------------------------------------
if [ "$START" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now npud.service
  for _ in $(seq 60); do systemctl is-active -q npud.service && break; sleep 1; done
  systemctl is-active -q npud.service || { systemctl status npud.service --no-pager; exit 1; }
  log "npud is running: add users to group npu to let them connect (npuctl, npud-llm)"
else
  log "installed; systemd is not running here, so npud was not started" \
      "(on the board: systemctl enable --now npud)"
fi
