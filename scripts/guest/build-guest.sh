#!/usr/bin/env bash
# Build (and cache) a small Linux guest for Berth's real-peer tests:
#   - Debian's generic 6.1 kernel (linux-image-6.1.0-N-amd64, fetched with
#     `apt-get download` and unpacked with `dpkg -x`; the cloud kernel lacks 9p)
#   - a busybox-static initramfs whose /init brings up virtio-net for QEMU's
#     `-netdev user` and runs a test chosen on the kernel command line.
#
# Usage: scripts/guest/build-guest.sh [--force]
#
# Output goes to $BERTH_GUEST_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/berth/guest):
#   vmlinuz             the kernel
#   initramfs.cpio.gz   the initramfs
#   kernel-package      name and version of the kernel package used
# Things that already exist are reused; the initramfs is rebuilt when this
# script changes. --force (or BERTH_GUEST_FORCE=1) rebuilds everything.
# BERTH_GUEST_KERNEL_PKG=linux-image-6.1.0-N-amd64 pins the kernel package.
#
# Progress goes to stderr; the only line on stdout is the output directory.
# Exit status: 0 built or cached, 77 prerequisites unavailable (cannot install
# packages or fetch the kernel), anything else is a real error.
#
# Guest kernel command line understood by /init:
#   berth.test=9p|boot   test to run (default 9p)
#   berth.port=N         9P server port on the host (default 564)
#   berth.host=A.B.C.D   9P server address (default 10.0.2.2, the host under -netdev user)
#   berth.watchdog=S     guest-side timeout in seconds (default 150)
#   berth.aname=PATH     9P attach name (default none, i.e. the server's root)
# Console markers (all start with "BERTH-GUEST: "):
#   init started, modules loaded, net up, mount ok, ls ok, version ok: ...,
#   readme ok ..., readonly write refused: <shell message>, reread ok,
#   umount ok, PASS | FAIL <reason>
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
GUEST_DIR=${BERTH_GUEST_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/berth/guest}
FORCE=${BERTH_GUEST_FORCE:-0}
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-guest: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# Modules the guest loads, in this order. Dependencies found by depmod are
# added before each module; modules that are built in or absent are skipped.
MODULES=(virtio_ring virtio virtio_mmio virtio_pci_modern_dev virtio_pci_legacy_dev
         virtio_pci failover net_failover virtio_net 9pnet 9pnet_fd netfs fscache 9p)

log() { echo "build-guest: $*" >&2; }
unavailable() { log "UNAVAILABLE: $*"; exit 77; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); fi
fi
APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" = 1 ] && return 0
  APT_UPDATED=1
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get update -qq >&2 || true
}
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    unavailable "missing packages ${missing[*]} and not root (no passwordless sudo)"
  fi
  command -v apt-get >/dev/null 2>&1 || unavailable "missing packages ${missing[*]} and no apt-get"
  log "installing ${missing[*]}"
  local inst=(env DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends)
  if ! "${inst[@]}" "${missing[@]}" >&2; then
    apt_update
    "${inst[@]}" "${missing[@]}" >&2 || unavailable "apt-get install ${missing[*]} failed"
  fi
}

mkdir -p "$GUEST_DIR"
# One builder at a time per cache directory.
exec 9>"$GUEST_DIR/.lock"
flock 9

if [ "$FORCE" = 1 ]; then
  rm -rf "$GUEST_DIR/vmlinuz" "$GUEST_DIR/modules" "$GUEST_DIR/initramfs.cpio.gz" \
         "$GUEST_DIR/initramfs.stamp" "$GUEST_DIR/kernel-package"
fi

WORK=$(mktemp -d "$GUEST_DIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- kernel ---
pick_kernel_candidates() {
  # Newest first: exact names linux-image-6.1.0-N-amd64 (not -cloud, -rt, -dbg, -unsigned).
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null \
    | awk '{print $1}' | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -rV || true
}

fetch_kernel() {
  command -v apt-get >/dev/null 2>&1 || unavailable "no apt-get to fetch the kernel"
  ensure_pkgs kmod
  local candidates pkg deb="" tries=0
  if [ -n "${BERTH_GUEST_KERNEL_PKG:-}" ]; then
    candidates=$BERTH_GUEST_KERNEL_PKG
  else
    candidates=$(pick_kernel_candidates)
    if [ -z "$candidates" ]; then apt_update; candidates=$(pick_kernel_candidates); fi
    [ -n "$candidates" ] || unavailable "no linux-image-6.1.0-*-amd64 package known to apt"
  fi
  mkdir -p "$WORK/deb"
  local apt_opts=()
  [ "$(id -u)" -eq 0 ] && apt_opts=(-o APT::Sandbox::User=root)
  download() {
    local f
    (cd "$WORK/deb" && apt-get "${apt_opts[@]}" download -qq "$1" >&2) || return 1
    for f in "$WORK/deb/$1"_*.deb; do [ -f "$f" ] && deb=$f && return 0; done
    return 1
  }
  for pkg in $candidates; do
    tries=$((tries + 1)); [ $tries -le 3 ] || break
    log "fetching $pkg"
    if download "$pkg"; then break; fi
    if [ "$APT_UPDATED" = 0 ]; then
      apt_update
      if download "$pkg"; then break; fi
    fi
  done
  [ -n "$deb" ] || unavailable "could not download a linux-image-6.1.0-*-amd64 package"

  log "unpacking $(basename "$deb")"
  dpkg -x "$deb" "$WORK/kroot"
  local kver
  kver=$(find "$WORK/kroot/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)
  if [ -z "$kver" ] || [ ! -f "$WORK/kroot/boot/vmlinuz-$kver" ]; then
    log "unexpected package layout in $deb"; exit 1
  fi
  local mdir="$WORK/kroot/lib/modules/$kver"
  # The package ships no modules.dep (postinst makes it); make one.
  depmod -b "$WORK/kroot" "$kver"

  # Resolve load order: dependencies first, each module once.
  declare -A seen=()
  local order=()
  resolve() {
    local m=$1 line path deps d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    line=$(grep -E "(^|/)${m}\.ko(\.xz|\.zst|\.gz)?:" "$mdir/modules.dep" | head -n1 || true)
    if [ -z "$line" ]; then
      if grep -qE "(^|/)${m}\.ko$" "$mdir/modules.builtin" 2>/dev/null; then
        log "module $m is built in"
      else
        log "module $m not in this kernel; skipped"
      fi
      return 0
    fi
    path=${line%%:*}
    deps=${line#*:}
    for d in $deps; do
      d=$(basename "$d"); d=${d%%.ko*}
      resolve "$d"
    done
    order+=("$path")
  }
  local m
  for m in "${MODULES[@]}"; do
    # depmod names files with '-' or '_' as they are; try both spellings.
    if grep -qE "(^|/)${m//_/-}\.ko" "$mdir/modules.dep" && ! grep -qE "(^|/)${m}\.ko" "$mdir/modules.dep"; then
      resolve "${m//_/-}"
    else
      resolve "$m"
    fi
  done

  mkdir -p "$WORK/modules"
  : >"$WORK/modules/load.list"
  local p name n=0
  for p in "${order[@]}"; do
    n=$((n + 1))
    name=$(basename "$p")
    local out
    out=$(printf '%02d-%s' "$n" "${name%%.ko*}.ko")
    case "$name" in
      *.ko.xz)  ensure_pkgs xz-utils; xz -dc "$mdir/$p" >"$WORK/modules/$out" ;;
      *.ko.zst) ensure_pkgs zstd;     zstd -qdc "$mdir/$p" >"$WORK/modules/$out" ;;
      *.ko.gz)  gzip -dc "$mdir/$p" >"$WORK/modules/$out" ;;
      *.ko)     cp "$mdir/$p" "$WORK/modules/$out" ;;
    esac
    echo "$out" >>"$WORK/modules/load.list"
  done
  log "modules: $(tr '\n' ' ' <"$WORK/modules/load.list")"

  local version
  version=$(dpkg-deb -f "$deb" Version)
  rm -rf "$GUEST_DIR/modules"
  mv "$WORK/modules" "$GUEST_DIR/modules"
  echo "$(dpkg-deb -f "$deb" Package) $version $kver" >"$GUEST_DIR/kernel-package"
  cp "$WORK/kroot/boot/vmlinuz-$kver" "$WORK/vmlinuz"
  mv "$WORK/vmlinuz" "$GUEST_DIR/vmlinuz"    # last: its presence means the kernel is complete
  rm -rf "$WORK/kroot" "$WORK/deb"
  log "kernel: $(cat "$GUEST_DIR/kernel-package")"
}

if [ ! -s "$GUEST_DIR/vmlinuz" ] || [ ! -s "$GUEST_DIR/modules/load.list" ]; then
  rm -f "$GUEST_DIR/initramfs.cpio.gz"
  fetch_kernel
fi

# ------------------------------------------------------------- initramfs ---
write_init() {
cat >"$1" <<'INIT'
#!/bin/sh
# Berth test guest /init (generated by scripts/guest/build-guest.sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

up() { read -r u _ </proc/uptime; echo "$u"; }
say() { echo "BERTH-GUEST: $*"; }
finish() { sync; poweroff -f; sleep 10; }
fail() { say "FAIL $*"; finish; }
pass() { say "PASS (uptime $(up)s)"; finish; }

say "init started (uptime $(up)s)"

TEST=9p PORT=564 HOST=10.0.2.2 WATCHDOG=150 ANAME=
for w in $(cat /proc/cmdline); do
  case "$w" in
    berth.test=*) TEST=${w#*=} ;;
    berth.port=*) PORT=${w#*=} ;;
    berth.host=*) HOST=${w#*=} ;;
    berth.watchdog=*) WATCHDOG=${w#*=} ;;
    berth.aname=*) ANAME=${w#*=} ;;
  esac
done
( sleep "$WATCHDOG"; say "FAIL guest watchdog: no result after ${WATCHDOG}s"; poweroff -f ) &

while read -r ko; do
  [ -n "$ko" ] || continue
  insmod "/lib/modules/berth/$ko" || say "warning: insmod $ko failed"
done </lib/modules/berth/load.list
say "modules loaded (uptime $(up)s)"

i=0
while [ ! -e /sys/class/net/eth0 ]; do
  i=$((i + 1))
  [ $i -le 600 ] || fail "eth0 did not appear"
  usleep 50000
done
ip link set lo up
ip link set eth0 up || fail "ip link set eth0 up"
ip addr add 10.0.2.15/24 dev eth0 || fail "ip addr add"
ip route add default via 10.0.2.2 || fail "ip route add"
say "net up: eth0 10.0.2.15/24 gw 10.0.2.2 (uptime $(up)s)"

test_9p() {
  opts="trans=tcp,port=$PORT,version=9p2000.L${ANAME:+,aname=$ANAME}"
  if ! err=$(mount -t 9p -o "$opts" "$HOST" /mnt 2>&1); then
    fail "mount -t 9p $HOST port $PORT: $err"
  fi
  say "mount ok ($HOST port $PORT)"

  out=$(ls -la /mnt 2>&1) || fail "ls /mnt: $out"
  echo "$out"
  names=$(ls -1 /mnt 2>&1) || fail "ls -1 /mnt: $names"
  echo "$names" | grep -qx README || fail "ls /mnt: no README"
  echo "$names" | grep -qx debug || fail "ls /mnt: no debug"
  say "ls ok: $(echo $names)"

  v=$(cat /mnt/debug/version 2>&1) || fail "cat /mnt/debug/version: $v"
  [ -n "$v" ] || fail "/mnt/debug/version is empty"
  say "version ok: $(echo "$v" | head -n1)"

  r=$(cat /mnt/README 2>&1) || fail "cat /mnt/README: $r"
  [ -n "$r" ] || fail "/mnt/README is empty"
  say "readme ok ($(cat /mnt/README | wc -c) bytes): $(echo "$r" | head -n1)"

  if werr=$( (echo hi >/mnt/debug/version) 2>&1 ); then
    fail "readonly write succeeded: 'echo hi > /mnt/debug/version' was accepted"
  fi
  werr=$(echo "$werr" | head -n1)
  say "readonly write refused: ${werr:-<no message>}"
  case "$werr" in
    *"Permission denied"*) ;;
    *) fail "readonly write refused with an unexpected error (want EACCES, Permission denied): $werr" ;;
  esac

  v2=$(cat /mnt/debug/version 2>&1) || fail "cat /mnt/debug/version after refused write: $v2"
  [ "$v2" = "$v" ] || fail "/mnt/debug/version changed after refused write: $(echo "$v2" | head -n1)"
  say "reread ok: $(echo "$v2" | head -n1)"

  err=$(umount /mnt 2>&1) || fail "umount /mnt: $err"
  say "umount ok"
}

case "$TEST" in
  9p) test_9p ;;
  boot) ;;
  *) fail "unknown berth.test=$TEST" ;;
esac
pass
INIT
}

STAMP=$( { sha256sum "$SCRIPT_PATH"; cat "$GUEST_DIR/kernel-package"; } | sha256sum | cut -d' ' -f1)
if [ ! -s "$GUEST_DIR/initramfs.cpio.gz" ] || [ "$(cat "$GUEST_DIR/initramfs.stamp" 2>/dev/null)" != "$STAMP" ]; then
  ensure_pkgs busybox-static cpio
  BUSYBOX=/bin/busybox
  [ -x "$BUSYBOX" ] || BUSYBOX=$(command -v busybox)
  R="$WORK/root"
  mkdir -p "$R"/{bin,dev,proc,sys,mnt,tmp,etc,root,lib/modules/berth,usr}
  cp "$BUSYBOX" "$R/bin/busybox"
  for a in $("$BUSYBOX" --list); do
    [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
  done
  ln -s bin "$R/sbin"; ln -s ../bin "$R/usr/bin"; ln -s ../bin "$R/usr/sbin"
  cp "$GUEST_DIR"/modules/* "$R/lib/modules/berth/"
  write_init "$R/init"
  chmod 0755 "$R/init"
  mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true   # init also copes without it
  log "packing initramfs"
  (cd "$R" && find . -print0 | LC_ALL=C sort -z \
     | cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -6n >"$WORK/initramfs.cpio.gz"
  mv "$WORK/initramfs.cpio.gz" "$GUEST_DIR/initramfs.cpio.gz"
  echo "$STAMP" >"$GUEST_DIR/initramfs.stamp"
  log "initramfs: $(du -h "$GUEST_DIR/initramfs.cpio.gz" | cut -f1)"
fi

echo "$GUEST_DIR"
