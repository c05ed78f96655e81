#!/usr/bin/env bash
# Run a command inside a real Linux kernel with vgem loaded, under QEMU, and exit with its status.
#
# Why: npud's DRM path (GEM, PRIME, fences, syncobj, udev) must run against a kernel, and the CI
# machine has no /dev/dri. A Debian kernel boots under QEMU TCG in a few seconds; the guest sees
# the host's root filesystem read-only over 9p with a throw-away tmpfs overlay on top, and the
# work directory read-write at the same path, so the host's venv and pytest run unchanged
# against a real /dev/dri/card0 and /dev/dri/renderD128.
#
# usage:  scripts/run-in-kernel.sh [--arch amd64|arm64] [--root DIR] [--setup-only] [--] COMMAND...
#         --arch   the kernel's architecture (default amd64; arm64 boots Debian's arm64 kernel
#                  under qemu-system-aarch64, virt machine, cortex-a72)
#         --root   the guest's root filesystem, shared read-only (default /, the host's; arm64
#                  needs an arm64 root such as scripts/arm64.sh's, with busybox-static and kmod)
# env:    NPUD_CACHE            cache root (default ${XDG_CACHE_HOME:-~/.cache}/npud)
#         NPUD_KERNEL_ARCH, NPUD_KERNEL_ROOT  the defaults of --arch and --root
#         NPUD_KERNEL_SUITE     Debian suite of the kernel (default trixie; sid works too)
#         NPUD_KERNEL_MODULES   modules loaded in the guest (default: vgem)
#         NPUD_KERNEL_WORKDIR   directory shared read-write (default: $PWD)
#         NPUD_KERNEL_TIMEOUT   seconds before QEMU is killed (default 900)
#         NPUD_KERNEL_MEM       guest memory (default 2G)
#
# Exit status: the command's own, or 125 when the guest reported none (boot failure, kernel
# panic, timeout). Callers may retry once on 125 (scripts/kernel-tests.sh does).
#
# Host packages: qemu-system-x86 busybox-static kmod cpio xz-utils (scripts/test.sh installs
# them on Debian). Downloads go to the cache; apt runs with a private sources list, lists and
# cache there and never touches /etc/apt; the kernel .debs are unpacked with dpkg -x, never
# installed. Facts this relies on (timings, the -smp 1 choice, vgem's behaviour) are measured
# in docs/abi.md.
set -euo pipefail

CACHE=${NPUD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/npud}
SUITE=${NPUD_KERNEL_SUITE:-trixie}
MODULES=${NPUD_KERNEL_MODULES:-vgem}
WORK=${NPUD_KERNEL_WORKDIR:-$PWD}
TIMEOUT=${NPUD_KERNEL_TIMEOUT:-900}
MEM=${NPUD_KERNEL_MEM:-2G}
ARCH=${NPUD_KERNEL_ARCH:-amd64}
ROOT=${NPUD_KERNEL_ROOT:-/}
SETUP_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --setup-only) SETUP_ONLY=1; shift;;
    --arch) ARCH=$2; shift 2;;
    --root) ROOT=$2; shift 2;;
    --) shift; break;;
    -*) echo "run-in-kernel: unknown option $1" >&2; exit 2;;
    *) break;;
  esac
done
log() { echo "[run-in-kernel] $*" >&2; }
case "$ARCH" in
  amd64) KC="$CACHE/kernel/$SUITE";;
  arm64) KC="$CACHE/kernel/$SUITE-arm64";;
  *) log "unknown architecture $ARCH (amd64 or arm64)"; exit 2;;
esac
ROOT=$(cd "$ROOT" && pwd -P)

# ---- the kernel: resolve, download, unpack, depmod (once per cache) ------------------------
fetch_kernel() {
  [ -f "$KC/kernel.env" ] && return 0
  local t0=$SECONDS apt img ver p pkgs=()
  mkdir -p "$KC/lists/partial" "$KC/aptcache/archives/partial" "$KC/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main" \
    > "$KC/sources.list"
  apt=(-o Dir::Etc::SourceList="$KC/sources.list" -o Dir::Etc::SourceParts=/dev/null
       -o Dir::State::Lists="$KC/lists" -o Dir::Cache="$KC/aptcache" -o Dir::State::Status=/dev/null
       -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  [ "$ARCH" = amd64 ] || apt+=(-o APT::Architecture="$ARCH" -o APT::Architectures::="$ARCH")
  log "resolving the $SUITE $ARCH kernel (private apt state under $KC)"
  apt-get "${apt[@]}" -qq update >&2
  img=$(apt-cache "${apt[@]}" depends "linux-image-$ARCH" |
        sed -n "s/^ *Depends: \(linux-image-[0-9][^ ]*-$ARCH\)\$/\1/p" | head -1)
  [ -n "$img" ] || { log "cannot resolve linux-image-$ARCH in $SUITE"; exit 1; }
  ver=${img#linux-image-}
  # sid's 7.x kernels split the image into binary/modules/base packages; trixie ships one.
  for p in "linux-binary-$ver" "linux-modules-$ver" "linux-base-$ver"; do
    apt-cache "${apt[@]}" show "$p" >/dev/null 2>&1 && pkgs+=("$p")
  done
  [ ${#pkgs[@]} -gt 0 ] || pkgs=("$img")
  log "downloading ${pkgs[*]}"
  rm -f "$KC"/debs/*.deb
  (cd "$KC/debs" && apt-get "${apt[@]}" -qq download "${pkgs[@]}" 2>&1 | grep -v unsandboxed >&2 || true)
  rm -rf "$KC/root"; mkdir -p "$KC/root"
  for p in "$KC"/debs/*.deb; do dpkg -x "$p" "$KC/root"; done
  local moddir kv
  moddir=$(ls -d "$KC"/root/usr/lib/modules "$KC"/root/lib/modules 2>/dev/null | head -1 || true)
  kv=$(ls "$moddir" | head -1)
  [ -e "$KC/root/lib" ] || ln -s usr/lib "$KC/root/lib"
  depmod -b "$KC/root" "$kv"
  local vmlinuz="$KC/root/boot/vmlinuz-$kv"
  [ -f "$vmlinuz" ] || vmlinuz="$moddir/$kv/vmlinuz"    # sid's linux-binary layout
  printf 'KV=%q\nMODDIR=%q\nVMLINUZ=%q\n' "$kv" "$moddir/$kv" "$vmlinuz" > "$KC/kernel.env"
  log "kernel $kv ready in $((SECONDS - t0))s"
}

# ---- the initramfs: busybox + the 9p/overlay modules + /init -------------------------------
build_initramfs() {
  local out="$KC/initramfs.cpio.gz"
  # The initramfs's busybox must run on the guest's CPU: the root's own (static) busybox.
  local bb
  bb=$(ls "$ROOT/bin/busybox" "$ROOT/usr/bin/busybox" 2>/dev/null | head -1 || true)
  [ -n "$bb" ] || { log "no busybox in $ROOT (install busybox-static there)"; exit 1; }
  [ -f "$out" ] && [ "$out" -nt "$0" ] && [ "$out" -nt "$bb" ] && return 0
  local st="$KC/initramfs.d" m f b
  rm -rf "$st"; mkdir -p "$st"/{bin,dev,proc,sys,mnt/host,mnt/rw,mnt/xfer,root,lib/modules}
  cp "$bb" "$st/bin/busybox"
  ln -s busybox "$st/bin/sh"
  # busybox insmod cannot read .ko.xz: ship decompressed copies, in dependency order.
  : > "$st/modules.order"
  for m in 9pnet_virtio 9p overlay; do
    modprobe -d "$KC/root" -S "$KV" --show-depends "$m" | awk '$1 == "insmod" {print $2}' |
    while read -r f; do
      b=$(basename "$f"); b=${b%.xz}; b=${b%.zst}
      grep -qx "$b" "$st/modules.order" && continue
      case "$f" in
        *.xz) xz -dc "$f" > "$st/lib/modules/$b";;
        *.zst) zstd -qdc "$f" > "$st/lib/modules/$b";;
        *) cp "$f" "$st/lib/modules/$b";;
      esac
      echo "$b" >> "$st/modules.order"
    done
  done
  cat > "$st/init" <<'EOF'
#!/bin/sh
# PID 1: mount the host root read-only with a tmpfs overlay, the work dir read-write, then run
# the command chrooted into that view; report its status on the xfer share and power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
bye() { sync; echo 0 > /proc/sys/kernel/printk; reboot -f; }
while read -r m; do insmod "/lib/modules/$m" || echo "npud-kq: insmod $m failed" > /dev/console; done < /modules.order
O="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$O,cache=none" xfer /mnt/xfer || bye
. /mnt/xfer/env.sh
mount -t 9p -o "$O,ro,cache=loose" hostroot /mnt/host || bye
mount -t tmpfs -o mode=755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
R=/root
mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay $R || bye
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
mount -t tmpfs tmpfs $R/tmp
mkdir -p "$R/usr/lib/modules/$KQ_KV" "$R$KQ_WORK" "$R/run/kq"
mount --bind "/mnt/host$KQ_MODDIR" "$R/usr/lib/modules/$KQ_KV"
mount -t 9p -o "$O,cache=loose" work "$R$KQ_WORK" || bye
mount --bind /mnt/xfer "$R/run/kq"
chroot $R /bin/bash /run/kq/cmd.sh < /dev/console > /dev/console 2>&1
echo $? > /mnt/xfer/rc
umount "$R$KQ_WORK" 2>/dev/null
bye
EOF
  chmod 755 "$st/init"
  (cd "$st" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
  mv "$out.tmp" "$out"
  log "initramfs $out ($(du -h "$out" | cut -f1))"
}

fetch_kernel
# shellcheck disable=SC1091
. "$KC/kernel.env"
build_initramfs
[ "$SETUP_ONLY" = 1 ] && exit 0
[ $# -gt 0 ] || { echo "usage: $0 [--setup-only] [--] COMMAND [ARGS...]" >&2; exit 2; }

WORK=$(cd "$WORK" && pwd -P)
[ "$WORK" != / ] || { log "refusing to share / read-write"; exit 2; }
XFER=$(mktemp -d "${TMPDIR:-/tmp}/npud-kq.XXXXXX")
trap 'rm -rf "$XFER"' EXIT
printf 'KQ_KV=%q\nKQ_MODDIR=%q\nKQ_WORK=%q\n' "$KV" "$MODDIR" "$WORK" > "$XFER/env.sh"
{
  echo '# generated by scripts/run-in-kernel.sh; runs as root in the guest'
  export -p | grep -vE '^declare -x (PWD|OLDPWD|SHLVL|_|TERM|TMPDIR|DISPLAY|SSH_[A-Z_]*|XDG_RUNTIME_DIR|DBUS_SESSION_BUS_ADDRESS)='
  echo 'export TERM=dumb NPUD_IN_KERNEL=1'
  # Another root has its own layout: its standard PATH first (the host's may name pyenv shims).
  [ "$ROOT" = / ] || echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root'
  echo 'stty -onlcr 2>/dev/null'
  printf 'for m in %s; do modprobe "$m" || echo "npud-kq: modprobe $m failed" >&2; done\n' "$MODULES"
  printf 'cd %q || exit 125\n' "$PWD"
  printf '%q ' "$@"; echo
} > "$XFER/cmd.sh"

log "booting $KV ($ARCH, TCG, 1 cpu, $MEM, root $ROOT): $*"
if [ "$ARCH" = arm64 ]; then
  # cortex-a72: -cpu max is ~3x slower under TCG (it emulates pointer authentication).
  machine=(qemu-system-aarch64 -machine virt -cpu cortex-a72)
  append="console=ttyAMA0 quiet loglevel=1 panic=-1 rdinit=/init"
else
  machine=(qemu-system-x86_64 -cpu max)
  append="console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init mitigations=off tsc=reliable no_timer_check"
fi
set +e
# -smp 1: multi-threaded TCG with 2 vCPUs hits a rare int3 Oops at boot on QEMU 7.2.
timeout --foreground -k 10 "$TIMEOUT" "${machine[@]}" \
  -accel tcg,thread=multi,tb-size=512 -smp 1 -m "$MEM" \
  -nodefaults -no-user-config -display none -no-reboot -serial stdio -monitor none \
  -kernel "$VMLINUZ" -initrd "$KC/initramfs.cpio.gz" \
  -append "$append" \
  -device virtio-rng-pci \
  -fsdev local,id=host,path="$ROOT",security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=host,mount_tag=hostroot \
  -fsdev local,id=xfer,path="$XFER",security_model=none \
  -device virtio-9p-pci,fsdev=xfer,mount_tag=xfer \
  -fsdev local,id=work,path="$WORK",security_model=passthrough,multidevs=remap \
  -device virtio-9p-pci,fsdev=work,mount_tag=work </dev/null
qrc=$?
set -e
if [ -s "$XFER/rc" ]; then
  exit "$(cat "$XFER/rc")"
fi
log "the guest reported no exit status (qemu/timeout status $qrc)"
exit 125
