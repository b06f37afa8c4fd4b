#!/usr/bin/env bash
# Crash safety: SIGKILL `berth serve --disk` in the middle of a random-write
# workload over NBD, many times, on the same qcow2 image.
#
# Usage: tests/peers/nbd_crash.sh BERTH_BINARY [ITERATIONS]
#   (BERTH_SERVE=PROGRAM runs `PROGRAM serve ...` in place of `berth serve`;
#    NBD_CRASH_ITERATIONS and NBD_CRASH_SECONDS override the defaults.)
#
# Each iteration: start berth on the image; run tests/peers/nbd_client.py's
# crash workload (4 KiB-block writes, write-zeroes and trims, 16 requests in
# flight, a flush every ~12 requests, some FUA); kill -9 berth after a random
# 0.3-1.5 s; then
#   - `qemu-img check` must report no corruption (leaked clusters are
#     allowed: exit 0 or 3);
#   - the image, converted to raw by qemu-img, must hold for every block the
#     last operation a completed flush (or FUA) covered, or a later one that
#     was sent; never older data, never garbage (nbd_client.py verify).
# Half of the iterations use an image with lazy refcounts: the kill leaves
# it dirty, so `berth qcow check --repair` (what a writable open does by
# itself) runs before qemu-img check. The whole run is bounded (NBD_CRASH_BUDGET seconds, default 240):
# iterations stop early rather than let a slow machine fail the test, but at
# least 5 must run.
# Exit status: 0 pass, 1 fail, 77 skipped (qemu-utils unavailable, or no --disk).
set -euo pipefail
NAME=nbd_crash
if [ $# -lt 1 ]; then
  echo "usage: $0 BERTH_BINARY [ITERATIONS]" >&2
  exit 2
fi
BERTH=$(readlink -f "$1" || true)
ITER=${2:-${NBD_CRASH_ITERATIONS:-20}}
BUDGET=${NBD_CRASH_BUDGET:-240}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/peers/nbd_common.sh
. "$HERE/nbd_common.sh"
need_qemu_utils
CLIENT="$HERE/nbd_client.py"

start=$(date +%s)
done_iters=0
leaks_seen=0
for variant in plain lazy; do
  IMG="$TMP/$variant.qcow2"
  STATE="$TMP/$variant.state.json"
  # Large enough that every round still allocates clusters (the metadata
  # a kill can lose lives in the engine's caches until a flush).
  if [ "$variant" = lazy ]; then
    qemu-img create -q -f qcow2 -o cluster_size=65536,lazy_refcounts=on "$IMG" 256M
  else
    qemu-img create -q -f qcow2 -o cluster_size=4096 "$IMG" 128M
  fi
  half=$(( (ITER + 1) / 2 ))
  for i in $(seq 1 "$half"); do
    now=$(date +%s)
    if [ $((now - start)) -gt "$BUDGET" ]; then
      say "time budget of ${BUDGET}s spent after $done_iters iterations"
      break 2
    fi
    start_berth --disk "d0=$IMG,nbd=unix:$TMP/d0.nbd"
    seed=$((i * 7919 + ${#variant}))
    python3 "$CLIENT" crash-workload "$(nbd_uri d0)" "$STATE" "$seed" 30 >"$TMP/client.log" 2>&1 &
    client=$!
    for _ in $(seq 1 600); do
      grep -q '^ready' "$TMP/client.log" 2>/dev/null && break
      kill -0 "$client" 2>/dev/null || break
      sleep 0.05
    done
    grep -q '^ready' "$TMP/client.log" ||
      fail "iteration $variant/$i: the client did not connect within 30 s: $(cat "$TMP/client.log"); berth: $(cat "$TMP/berth.out")"
    # Kill berth at a random moment, 0.3..1.5 s into the workload.
    sleep "$(python3 -c "import random; random.seed($seed); print(round(random.uniform(0.3, 1.5), 2))")"
    stop_berth KILL
    wait "$client" || fail "iteration $variant/$i: the client failed: $(cat "$TMP/client.log")"
    # A lazy-refcounts image is left dirty by the kill: its refcounts are
    # rebuilt on the next writable open, as QEMU does. Do that first (our
    # repair), then hold it to the same standard.
    if [ "$variant" = lazy ]; then
      "$BERTH" qcow check --repair "$IMG" >"$TMP/repair.log" 2>&1 || {
        rc=$?
        [ "$rc" -eq 3 ] || fail "iteration $variant/$i: berth qcow check --repair exit $rc: $(cat "$TMP/repair.log")"
      }
    fi
    # qemu-img check: no corruption; leaks are allowed.
    rc=0
    qemu-img check -f qcow2 "$IMG" >"$TMP/check.log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
      cp "$IMG" "${TMPDIR:-/tmp}/berth-nbd-crash-failed.qcow2" 2>/dev/null || true
      fail "iteration $variant/$i: qemu-img check exit $rc: $(cat "$TMP/check.log")"
    fi
    [ "$rc" -eq 3 ] && leaks_seen=$((leaks_seen + 1))
    qemu-img convert -f qcow2 -O raw "$IMG" "$TMP/image.raw" || fail "iteration $variant/$i: qemu-img convert failed"
    python3 "$CLIENT" verify "$STATE" "$TMP/image.raw" >"$TMP/verify.log" 2>&1 || {
      cp "$IMG" "${TMPDIR:-/tmp}/berth-nbd-crash-failed.qcow2" 2>/dev/null || true
      fail "iteration $variant/$i: $(tail -n 20 "$TMP/verify.log")"
    }
    say "$variant $i: $(tail -n 1 "$TMP/client.log" | sed 's/^workload: //'); check exit $rc; $(tail -n 1 "$TMP/verify.log")"
    done_iters=$((done_iters + 1))
  done
done
[ "$done_iters" -ge 5 ] || fail "only $done_iters iterations ran"
say "PASS: $done_iters kills, no corruption, every flushed write present ($leaks_seen checks saw leaked clusters)"
