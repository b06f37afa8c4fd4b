#!/usr/bin/env bash
# Real-peer test: a Linux guest under QEMU (TCG) whose virtio-blk disk is
# QEMU's NBD client (-drive driver=nbd) on `berth serve --disk` (Berth's qcow2
# engine behind Berth's NBD server).
#
#   - a fresh 2 GiB qcow2 image (qemu-img create, sparse) is served as d0 on a
#     unix socket;
#   - the guest (scripts/guest/build-guest.sh, berth.test=disk) checks that an
#     unwritten region reads as zeros, writes regions at several offsets
#     (sector-stamped text, 0xa5 bytes, random bytes; one past the first GiB,
#     one at the end of the disk), syncs, drops its page cache, reads them back
#     and compares sha256; then discards one region with blkdiscard and checks
#     that it reads back as zeros;
#   - while berth still runs: /disks/d0/stats counts writes, flushes and
#     discards;
#   - after SIGTERM (exit 0): `qemu-img check` of the image is clean; each
#     region is read on the host (qemu-img convert to raw) and its sha256 matches the
#     guest's, and the stamped regions match data made again on the host;
#     `qemu-io -c 'read -P 0xa5 ...'` verifies the const region; `qemu-img
#     map` shows the discarded region unallocated; and `qemu-img compare` of
#     the image against a raw file made on the host from the regions says the
#     whole disk is identical (nothing written anywhere else).
#
# Usage: tests/peers/guest_nbd.sh BERTH_BINARY
#   BERTH_GUEST_TIMEOUT=S bounds the QEMU run (default 300).
#   (BERTH_SERVE=PROGRAM runs `PROGRAM serve ...` in place of `berth serve`.)
# Exit status: 0 pass, 1 fail, 77 skipped (no qemu-system-x86_64, guest kernel,
# qemu-utils, or berth without --disk).
set -euo pipefail
NAME=guest_nbd
[ $# -eq 1 ] || { echo "usage: $0 BERTH_BINARY" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/peers
BERTH=$(readlink -f "$1" || true)
TIMEOUT=${BERTH_GUEST_TIMEOUT:-300}
# shellcheck source=tests/peers/nbd_common.sh
. "$HERE/nbd_common.sh"
need_qemu_utils
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then install_pkgs qemu-system-x86 || true; fi
command -v qemu-system-x86_64 >/dev/null 2>&1 || skip "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
rc=0
GUEST_DIR=$("$ROOT/scripts/guest/build-guest.sh") || rc=$?
[ $rc -ne 77 ] || skip "cannot build the guest (see build-guest messages above)"
[ $rc -eq 0 ] && [ -s "$GUEST_DIR/vmlinuz" ] || fail "build-guest.sh failed (exit $rc)"

QEMU_PID=""
# nbd_common's cleanup kills berth and background jobs; stop QEMU first.
trap 'trap "" INT TERM; [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null; cleanup' EXIT
trap 'exit 143' TERM

FAILS=0
ok() { say "ok: $*"; }
bad() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
dump() {
  echo "----- guest console -----"; tr -d '\r' <"$TMP/console.log" 2>/dev/null || true
  echo "----- berth stderr (last 50 lines) -----"; tail -n 50 "$TMP/berth.log" 2>/dev/null || true
}
die() { say "FAIL: $*"; dump; exit 1; }

IMG=$TMP/d0.qcow2
SIZE=$((2 << 30))
SEED=s$$x$RANDOM
qemu-img create -q -f qcow2 "$IMG" "$SIZE"
start_berth --disk "d0=$IMG,nbd=unix:$TMP/d0.nbd"
ok "berth serves d0 ($(du -k "$IMG" | cut -f1) KiB qcow2, 2 GiB virtual) on unix:$TMP/d0.nbd"

APPEND="console=ttyS0 panic=-1 loglevel=4 berth.test=disk berth.seed=$SEED berth.watchdog=$((TIMEOUT - 20))"
DRIVE="driver=nbd,server.type=unix,server.path=$TMP/d0.nbd,export=d0,if=none,id=d0,discard=unmap"
say "booting the guest under QEMU TCG, disk -drive $DRIVE (timeout ${TIMEOUT}s)"
t0=$(date +%s.%N)
qrc=0
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -accel tcg -m 384 -smp 1 \
  -nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot \
  -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" -append "$APPEND" \
  -drive "$DRIVE" -device virtio-blk-pci,drive=d0 \
  </dev/null >"$TMP/console.log" 2>&1 &
QEMU_PID=$!
wait "$QEMU_PID" || qrc=$?
QEMU_PID=""
secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
log=$(tr -d '\r' <"$TMP/console.log")
echo "$log" | grep -a 'BERTH-GUEST' | sed 's/^/  /'
[ $qrc -ne 124 ] && [ $qrc -ne 137 ] || die "QEMU did not finish within ${TIMEOUT}s"
say "QEMU exited $qrc after ${secs}s"

if echo "$log" | grep -qa 'BERTH-GUEST: FAIL'; then bad "guest: $(echo "$log" | grep -a -m1 'BERTH-GUEST: FAIL')"
elif ! echo "$log" | grep -qa 'BERTH-GUEST: PASS'; then bad "no BERTH-GUEST: PASS marker (QEMU exit $qrc)"
else ok "guest: $(echo "$log" | grep -a -m1 'BERTH-GUEST: PASS')"; fi
echo "$log" | grep -qa "BERTH-GUEST: disk /dev/vda: $SIZE bytes" || bad "the guest did not see a $SIZE-byte /dev/vda"
for m in 'ok zeros before write' 'ok written: ' 'ok discard: '; do
  echo "$log" | grep -qa "BERTH-GUEST: $m" || bad "missing guest marker: $m"
done
# The regions the guest wrote: NAME KIND OFFSET LENGTH SHA256.
echo "$log" | sed -n 's/^BERTH-GUEST: region \([a-z]*\) \([a-z]*\) \([0-9]*\) \([0-9]*\) sha256 \([0-9a-f]*\)$/\1 \2 \3 \4 \5/p' \
  >"$TMP/regions"
for n in start const rand pastgib discard end; do
  grep -q "^$n " "$TMP/regions" || { bad "the guest reported no region $n"; continue; }
  echo "$log" | grep -qa "BERTH-GUEST: ok readback $n: " || bad "missing guest marker: ok readback $n"
done
awk -v s="$SIZE" '$3 >= 1073741824 { g = 1 } $3 + $4 == s { e = 1 } END { exit !(g && e) }' "$TMP/regions" ||
  bad "no region past the first GiB or at the end of the disk: $(tr '\n' ';' <"$TMP/regions")"

# --- while berth still runs: the tree counted the guest's I/O ------------------
if ctl cat /disks/d0/stats >"$TMP/stats" 2>"$TMP/stats.err"; then
  st() { sed -n "s/^$1 //p" "$TMP/stats"; }
  w=$(st writes) bw=$(st bytes_written) f=$(st flushes) d=$(st discards)
  say "/disks/d0/stats: writes $w ($bw bytes), flushes $f, discards $d ($(st bytes_discarded) bytes), reads $(st reads), errors $(st errors)"
  want=$(awk '{ t += $4 } END { print t }' "$TMP/regions")
  [ "${w:-0}" -gt 0 ] && [ "${bw:-0}" -ge "${want:-1}" ] || bad "/disks/d0/stats: writes ${w:-?}, ${bw:-?} bytes; the guest wrote $want"
  [ "${f:-0}" -gt 0 ] || bad "/disks/d0/stats counts no flushes (the guest ran sync)"
  [ "${d:-0}" -gt 0 ] || bad "/disks/d0/stats counts no discards (the guest ran blkdiscard)"
  [ "$(st errors)" = 0 ] || bad "/disks/d0/stats counts errors: $(st errors)"
else
  bad "berth ctl cat /disks/d0/stats: $(cat "$TMP/stats.err")"
fi

# --- offline: QEMU's own qcow2 driver reads what the guest wrote through Berth ---
stop_berth TERM
ok "berth exited 0 after SIGTERM"
if qemu-img check -f qcow2 "$IMG" >"$TMP/check.log" 2>&1 && grep -q "No errors were found" "$TMP/check.log"; then
  ok "qemu-img check: $(grep -E 'allocated' "$TMP/check.log" | head -n1)"
else
  bad "qemu-img check: $(cat "$TMP/check.log")"
fi

# The expected disk: zeros, plus every region (the discarded one stays zeros).
EXP=$TMP/expected.raw
truncate -s "$SIZE" "$EXP"
# The image as QEMU's qcow2 driver reads it, as a sparse raw file.
qemu-img convert -f qcow2 -O raw "$IMG" "$TMP/image.raw" 2>"$TMP/convert.err" || bad "qemu-img convert: $(cat "$TMP/convert.err")"
stamp() {  # stamp NAME OFFSET LENGTH: the guest's stamped data, made again here
  awk -v s="$SEED" -v n="$1" -v b=$(($2 / 512)) -v c=$(($3 / 512)) \
    'BEGIN { for (i = 0; i < c; i++) printf "%-511s\n", "berth-disk " s " " n " sector " (b + i) }'
}
while read -r n k off len sha; do
  dd if="$TMP/image.raw" of="$TMP/got.$n" bs=4096 skip=$((off / 4096)) count=$((len / 4096)) status=none
  got=$(sha256sum <"$TMP/got.$n" | cut -d' ' -f1)
  case "$k" in
    stamp) mine=$(stamp "$n" "$off" "$len" | sha256sum | cut -d' ' -f1) ;;
    const) mine=$(head -c "$len" /dev/zero | tr '\0' '\245' | sha256sum | cut -d' ' -f1) ;;
    *) mine=$sha ;;
  esac
  [ "$mine" = "$sha" ] || bad "region $n: the guest wrote sha256 $sha, the host makes $mine"
  if [ "$n" = discard ]; then
    zero=$(head -c "$len" /dev/zero | sha256sum | cut -d' ' -f1)
    if [ "$got" = "$zero" ]; then ok "region discard ($len bytes at $off) reads as zeros in the image"
    else bad "region discard: the image holds sha256 $got there, not zeros"; fi
    continue
  fi
  if [ "$got" = "$sha" ]; then ok "region $n $k ($len bytes at $off): the image holds the guest's data"
  else bad "region $n $k ($len bytes at $off): the image holds sha256 $got, the guest wrote $sha"; fi
  dd if="$TMP/got.$n" of="$EXP" bs=4096 seek=$((off / 4096)) conv=notrunc status=none
  if [ "$k" = const ]; then
    if qemu-io -r -f qcow2 "$IMG" -c "read -P 0xa5 $off $len" >"$TMP/qio.log" 2>&1 && ! grep -qi 'fail' "$TMP/qio.log"; then
      ok "qemu-io read -P 0xa5 $off $len: $(grep -m1 '^read' "$TMP/qio.log")"
    else
      bad "qemu-io read -P 0xa5 $off $len: $(cat "$TMP/qio.log")"
    fi
  fi
done <"$TMP/regions"

if read -r _ _ off len _ < <(grep '^discard ' "$TMP/regions"); then
  qemu-img map -f qcow2 --output=json "$IMG" >"$TMP/map.json" 2>&1 || bad "qemu-img map: $(cat "$TMP/map.json")"
  if python3 - "$TMP/map.json" "$off" "$len" <<'EOF'; then
import json, sys
m, off, ln = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
hits = [e for e in m if e["start"] < off + ln and e["start"] + e["length"] > off and e["data"]]
sys.exit(1 if hits else 0)
EOF
    ok "qemu-img map: the discarded region ($len bytes at $off) holds no data clusters"
  else
    bad "qemu-img map: the discarded region still has data: $(head -c 600 "$TMP/map.json")"
  fi
fi

if qemu-img compare -f qcow2 -F raw "$IMG" "$EXP" >"$TMP/compare.log" 2>&1; then
  ok "qemu-img compare: the whole 2 GiB disk is identical to the expected one"
else
  bad "qemu-img compare against the expected disk: $(cat "$TMP/compare.log")"
fi

if [ "$FAILS" -ne 0 ]; then dump; say "FAILED: $FAILS check(s)"; exit 1; fi
say "PASS (QEMU run ${secs}s)"
