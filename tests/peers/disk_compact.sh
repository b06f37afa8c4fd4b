#!/usr/bin/env bash
# Online compaction and discard-zeroes through /disks/ID/ctl, with QEMU's NBD
# client reading (and checking) the disk all the while.
#
# Usage: tests/peers/disk_compact.sh BERTH_BINARY
#   (BERTH_SERVE=PROGRAM runs `PROGRAM serve ...` in place of `berth serve`.)
#
# Steps:
#   1. A 256 MiB qcow2 disk (64 KiB clusters) is filled 100% through NBD
#      with qemu-io (a different pattern per MiB), and every other MiB is
#      then discarded; a raw reference gets the same commands.
#   2. `berth ctl write /disks/d0/ctl compact` answers "OK started compact"
#      at once. While it runs, readers compare the whole disk through NBD
#      with the reference (qemu-img compare), over and over; every compare
#      must say identical. The ctl file is polled until it reads
#      "OK compact: ...".
#   3. The image file has shrunk to about the live data (128 MiB plus at
#      most 8 MiB of metadata and slack), and still compares identical.
#   4. discard-zeroes: 8 MiB of literal zeros are written (allocated
#      clusters), the ctl runs discard-zeroes, and the allocated-cluster
#      count in /disks/d0/stats drops by at least those 128 clusters.
#   5. A second job while one runs is refused (EBUSY, "ERROR ...").
#   6. After SIGTERM: qemu-img check is clean and the image compares
#      identical with the reference.
# Exit status: 0 pass, 1 fail, 77 skipped (qemu-utils unavailable, or no --disk).
set -euo pipefail
NAME=disk_compact
if [ $# -ne 1 ]; then
  echo "usage: $0 BERTH_BINARY" >&2
  exit 2
fi
BERTH=$(readlink -f "$1" || true)
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/peers/nbd_common.sh
. "$HERE/nbd_common.sh"
need_qemu_utils

MIB=$((1 << 20))
SIZE_MIB=256
IMG="$TMP/d0.qcow2"
REF="$TMP/ref.raw"
qemu-img create -q -f qcow2 -o cluster_size=65536 "$IMG" "${SIZE_MIB}M"
truncate -s "${SIZE_MIB}M" "$REF"
start_berth --disk "d0=$IMG,nbd=unix:$TMP/d0.nbd"
U=$(nbd_uri d0)

# --- 1. fill, then discard half ---------------------------------------------------
fill=() hole=()
for m in $(seq 0 $((SIZE_MIB - 1))); do
  fill+=(-c "write -P $(( (m * 37) % 255 + 1 )) $((m * MIB)) $MIB")
  [ $((m % 2)) -eq 1 ] && hole+=(-c "discard $((m * MIB)) $MIB")
done
qemu-io -f raw "$U" "${fill[@]}" -c flush >"$TMP/fill.log" 2>&1 || fail "filling through NBD: $(tail -n 3 "$TMP/fill.log")"
qemu-io -f raw "$U" "${hole[@]}" -c flush >"$TMP/hole.log" 2>&1 || fail "discarding through NBD: $(tail -n 3 "$TMP/hole.log")"
qemu-io -f raw "$REF" "${fill[@]}" "${hole[@]}" >/dev/null 2>&1 || fail "building the reference"
before=$(stat -c %s "$IMG")
say "filled ${SIZE_MIB} MiB, discarded half: image file is $((before / MIB)) MiB"
[ "$before" -ge $((SIZE_MIB * MIB)) ] || fail "the image should be at least ${SIZE_MIB} MiB before compaction"

# --- 2. compact online while reading ------------------------------------------------
: >"$TMP/compares"
reader() {  # compare through NBD until told to stop; log each result
  local k=$1
  while [ ! -e "$TMP/stop-readers" ]; do
    if qemu-img compare -f raw -F raw "$U" "$REF" >"$TMP/rc.$k" 2>&1; then
      echo "ok" >>"$TMP/compares"
    else
      echo "DIFF reader $k: $(cat "$TMP/rc.$k")" >>"$TMP/compares"
    fi
  done
}
# The readers are mid-compare when the compaction starts.
reader 1 &
r1=$!
reader 2 &
r2=$!
sleep 0.5
out=$(ctl write /disks/d0/ctl compact) || fail "ctl write compact: $out"
case "$out" in "OK started compact"*) ;; *) fail "ctl write compact said: $out" ;; esac

# 5. A second job now is EBUSY (unless the first already finished).
if busy=$(ctl write /disks/d0/ctl discard-zeroes 2>&1); then
  case "$busy" in *"OK started discard-zeroes"*) say "compaction had already finished; EBUSY not exercised" ;;
    *) fail "a second job: $busy" ;; esac
else
  case "$busy" in *"ERROR"*"running"*) ;; *) fail "a second job should be refused as running: $busy" ;; esac
fi

progress_seen=""
final=""
for _ in $(seq 1 1200); do
  s=$(ctl cat /disks/d0/ctl) || fail "cannot read /disks/d0/ctl"
  case "$s" in
    "OK compact"*|"OK discard-zeroes"*) final=$s; break ;;
    "ERROR"*) fail "the job failed: $s" ;;
    "compact "*%|"discard-zeroes "*%) progress_seen="$progress_seen ${s##* }" ;;
  esac
  sleep 0.1
done
[ -n "$final" ] || fail "no result within 120 s; last status: $s"
# One more full compare after the job, then stop the readers.
n0=$(grep -c . "$TMP/compares" || true)
for _ in $(seq 1 600); do [ "$(grep -c . "$TMP/compares" || true)" -ge $((n0 + 2)) ] && break; sleep 0.1; done
# (When compaction finished before the EBUSY probe, that probe started a
# discard-zeroes, whose result is what the ctl shows now.)
touch "$TMP/stop-readers"
wait "$r1" "$r2" || true
grep -q DIFF "$TMP/compares" && fail "a read during compaction differed: $(grep DIFF "$TMP/compares" | head -n 2)"
ncmp=$(grep -c ok "$TMP/compares" || true)
[ "$ncmp" -ge 1 ] || fail "no compare completed during compaction"
say "compaction: $final; progress seen:${progress_seen:- none (too fast)}; $ncmp concurrent compares identical"

# --- 3. the file shrank ------------------------------------------------------------
after=$(stat -c %s "$IMG")
live=$((SIZE_MIB / 2 * MIB))
say "image file: $((before / MIB)) MiB -> $((after / MIB)) MiB (live data $((live / MIB)) MiB)"
[ "$after" -le $((live + 8 * MIB)) ] || fail "the image is $after bytes after compaction; expected about $live"
qemu-img compare -f raw -F raw "$U" "$REF" >/dev/null 2>&1 || fail "the disk differs after compaction"
grep -q "file_size $after" <(ctl cat /disks/d0/info) || fail "/disks/d0/info does not show the new file size: $(ctl cat /disks/d0/info)"

# --- 4. discard-zeroes ---------------------------------------------------------------
# Literal zeros (not write-zeroes) into a discarded MiB range: allocated clusters.
zoff=$((1 * MIB))
qemu-io -f raw "$U" -c "write -P 0 $zoff $((8 * MIB))" -c flush >/dev/null 2>&1 || fail "writing zeros"
qemu-io -f raw "$REF" -c "write -P 0 $zoff $((8 * MIB))" >/dev/null 2>&1
alloc_before=$(ctl cat /disks/d0/stats | sed -n 's/^allocated_clusters //p')
out=$(ctl write /disks/d0/ctl discard-zeroes) || fail "ctl write discard-zeroes: $out"
for _ in $(seq 1 600); do
  s=$(ctl cat /disks/d0/ctl)
  case "$s" in "OK discard-zeroes"*) break ;; "ERROR"*) fail "discard-zeroes failed: $s" ;; esac
  sleep 0.1
done
case "$s" in "OK discard-zeroes"*) ;; *) fail "discard-zeroes did not finish: $s" ;; esac
alloc_after=$(ctl cat /disks/d0/stats | sed -n 's/^allocated_clusters //p')
say "discard-zeroes: $s; allocated clusters $alloc_before -> $alloc_after"
[ $((alloc_before - alloc_after)) -ge 128 ] || fail "discard-zeroes freed fewer than 128 clusters"
qemu-img compare -f raw -F raw "$U" "$REF" >/dev/null 2>&1 || fail "the disk differs after discard-zeroes"

# --- 6. offline checks -----------------------------------------------------------------
stop_berth TERM
qemu-img check -f qcow2 "$IMG" >"$TMP/check.log" 2>&1 || fail "qemu-img check: $(cat "$TMP/check.log")"
qemu-img compare -f qcow2 -F raw "$IMG" "$REF" >/dev/null 2>&1 || fail "image differs from the reference offline"
say "PASS"
