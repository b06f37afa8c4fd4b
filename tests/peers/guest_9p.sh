#!/usr/bin/env bash
# Real-peer test: a Linux guest under QEMU (TCG, never KVM) mounts berth's
# 9P2000.L server with trans=tcp and exercises it.
#
# Usage: tests/peers/guest_9p.sh BERTH_BINARY
#
# Starts `BERTH_BINARY serve --9p tcp:127.0.0.1:0 --9p unix:TMP/x.sock`, reads
# the port from its stdout line `berth: listening on tcp:127.0.0.1:PORT`, and
# boots the guest from scripts/guest/build-guest.sh with `-netdev user`, where
# the host's loopback is 10.0.2.2. The guest mounts the tree, lists it, reads
# debug/version and README, checks that `echo hi > debug/version` is refused
# with EACCES, reads debug/version again and unmounts.
#
# Exit status: 0 pass, 1 fail, 77 skipped (no QEMU or no guest kernel).
# Environment: BERTH_GUEST_TIMEOUT (seconds for the whole guest run, default 180),
#              BERTH_GUEST_DIR (guest cache, see build-guest.sh),
#              BERTH_GUEST_APPEND (extra guest kernel command line, e.g. berth.aname=/x).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BERTH_BINARY" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BERTH=$(readlink -f "$1" || true)
TIMEOUT=${BERTH_GUEST_TIMEOUT:-180}

say() { echo "guest_9p: $*"; }
skip() { echo "SKIP: guest_9p: $*"; exit 77; }

if [ -z "$BERTH" ] || [ ! -x "$BERTH" ]; then
  say "FAIL: $1 is not an executable"
  exit 1
fi

# --- QEMU -----------------------------------------------------------------
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo_cmd=(sudo -n)
  fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ ${#sudo_cmd[@]} -gt 0 ]; }; then
    say "installing qemu-system-x86"
    inst=(env DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends qemu-system-x86)
    "${inst[@]}" >&2 || { env DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get update -qq >&2 || true; "${inst[@]}" >&2 || true; }
  fi
  command -v qemu-system-x86_64 >/dev/null 2>&1 || skip "qemu-system-x86_64 is missing and could not be installed"
fi

# --- guest kernel + initramfs ---------------------------------------------
rc=0
GUEST_DIR=$("$ROOT/scripts/guest/build-guest.sh") || rc=$?
if [ $rc -eq 77 ]; then
  skip "cannot build the guest (guest kernel or busybox/cpio/kmod unavailable; see build-guest messages above)"
elif [ $rc -ne 0 ] || [ ! -s "$GUEST_DIR/vmlinuz" ] || [ ! -s "$GUEST_DIR/initramfs.cpio.gz" ]; then
  say "FAIL: scripts/guest/build-guest.sh failed (exit $rc)"
  exit 1
fi

# --- server ---------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-guest9p.XXXXXX")
SERVER_PID=""
QEMU_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true   # timeout(1) passes it on to QEMU
    wait "$QEMU_PID" 2>/dev/null || true
  fi
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

dump() {
  if [ -f "$TMP/console.log" ]; then
    echo "----- guest console -----"
    tr -d '\r' <"$TMP/console.log" || true
  fi
  echo "----- berth stdout -----"
  cat "$TMP/server.out" 2>/dev/null || true
  echo "----- berth stderr -----"
  cat "$TMP/server.err" 2>/dev/null || true
  echo "------------------------"
}
fail() { say "FAIL: $*"; dump; exit 1; }

# stdbuf: berth's stdout is a file here; make sure its lines arrive promptly.
stdbuf -oL -eL "$BERTH" serve --9p tcp:127.0.0.1:0 --9p "unix:$TMP/x.sock" \
  >"$TMP/server.out" 2>"$TMP/server.err" </dev/null &
SERVER_PID=$!

PORT=""
for _ in $(seq 1 200); do   # up to 20 s
  PORT=$(sed -n 's/^berth: listening on tcp:127\.0\.0\.1:\([0-9][0-9]*\).*$/\1/p' "$TMP/server.out" | head -n1)
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || fail "berth serve exited before listening"
  sleep 0.1
done
[ -n "$PORT" ] || fail "no 'berth: listening on tcp:127.0.0.1:PORT' line on berth's stdout within 20 s"
say "berth serving 9P on tcp:127.0.0.1:$PORT (pid $SERVER_PID)"

# --- guest ----------------------------------------------------------------
WATCHDOG=$(( TIMEOUT > 40 ? TIMEOUT - 20 : TIMEOUT ))
say "booting guest ($(cut -d' ' -f1,2 "$GUEST_DIR/kernel-package" 2>/dev/null || echo kernel)) under QEMU TCG, timeout ${TIMEOUT}s"
start=$(date +%s.%N)
qrc=0
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg -m 256 -smp 1 \
  -nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot \
  -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" \
  -append "console=ttyS0 panic=-1 loglevel=4 berth.test=9p berth.port=$PORT berth.watchdog=$WATCHDOG${BERTH_GUEST_APPEND:+ $BERTH_GUEST_APPEND}" \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
  </dev/null >"$TMP/console.log" 2>&1 &
QEMU_PID=$!
wait "$QEMU_PID" || qrc=$?   # in the background so that signals reach our traps at once
QEMU_PID=""
elapsed=$(echo "$start $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')

log=$(tr -d '\r' <"$TMP/console.log")
if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
  fail "QEMU did not finish within ${TIMEOUT}s"
fi
if echo "$log" | grep -qa 'BERTH-GUEST: FAIL'; then
  fail "guest reported: $(echo "$log" | grep -a -m1 'BERTH-GUEST: FAIL' | sed 's/.*BERTH-GUEST: //')"
fi
echo "$log" | grep -qa 'BERTH-GUEST: PASS' || fail "no BERTH-GUEST: PASS marker (QEMU exit $qrc)"
echo "$log" | grep -qa 'BERTH-GUEST: readonly write refused: .*Permission denied' \
  || fail "no 'readonly write refused: ... Permission denied' marker"
for m in 'mount ok' 'ls ok' 'version ok' 'readme ok' 'reread ok' 'umount ok'; do
  echo "$log" | grep -qa "BERTH-GUEST: $m" || fail "missing marker: BERTH-GUEST: $m"
done
kill -0 "$SERVER_PID" 2>/dev/null || fail "berth serve is no longer running after the guest test"

echo "$log" | grep -a 'BERTH-GUEST:' | sed 's/^/  /'
say "PASS (guest run ${elapsed}s wall)"
exit 0
