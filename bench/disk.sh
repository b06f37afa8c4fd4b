#!/usr/bin/env bash
# Disk benchmark: berth's NBD export of a qcow2 image against
# `qemu-nbd --cache=writeback` serving a copy of the same image, both driven
# by fio's nbd engine; plus fio straight on a raw file as the baseline.
#
# Usage: bench/disk.sh [BERTH_BINARY]        (default: build/release/berth)
#   (BERTH_SERVE=PROGRAM runs `PROGRAM serve ...` in place of `berth serve`.)
#
# Setup: a qcow2 image (BENCH_DISK_SIZE, default 512M, 64 KiB clusters) is
# created and filled completely (so reads hit data, and overwrites need no
# allocation), then copied: berth serves copy A, qemu-nbd copy B; two raw
# files with the same content are the baselines: berth also exports one
# (format=raw, the same NBD path without the qcow2 engine), and fio reads
# and writes the other directly. All files start in the page cache and fio
# runs with --invalidate=0, so every target works from memory. Workloads:
#   randread-4k   4 KiB random reads,  iodepth 32
#   randwrite-4k  4 KiB random writes, iodepth 32
#   read-1m       1 MiB sequential reads,  iodepth 8
#   write-1m      1 MiB sequential writes, iodepth 8
# For each workload, rounds of four runs alternate: berth (qcow2), qemu-nbd
# (qcow2), berth (raw export), fio on the raw file (psync for 1M, libaio for
# 4K, buffered) (BENCH_DISK_PAIRS rounds, BENCH_DISK_RUNTIME seconds each).
# Each ratio is the median of the per-round ratios. The server's CPU time
# (utime+stime of all its threads, /proc/PID/stat) per GB moved is reported
# too. Results replace the section between <!-- disk:begin --> and
# <!-- disk:end --> in docs/BENCHMARKS.md.
#
# Environment: BENCH_DISK_RUNTIME (default 5), BENCH_DISK_PAIRS (default 5),
# BENCH_DISK_SIZE (default 512M), BENCH_DISK_DOC (default docs/BENCHMARKS.md),
# BENCH_DISK_WORKLOADS (subset of the four names above).
#
# Exit status: 0 done (slowness never fails it), 1 a server could not start,
# 77 fio (with the nbd engine), qemu-utils or python3 unavailable.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH=$(readlink -f "${1:-$ROOT/build/release/berth}" || true)
SERVE=${BERTH_SERVE:-$BERTH}
RUNTIME=${BENCH_DISK_RUNTIME:-5}
PAIRS=${BENCH_DISK_PAIRS:-5}
SIZE=${BENCH_DISK_SIZE:-512M}
DOC=${BENCH_DISK_DOC:-$ROOT/docs/BENCHMARKS.md}
WORKLOADS=${BENCH_DISK_WORKLOADS:-randread-4k randwrite-4k read-1m write-1m}

say() { echo "bench/disk: $*" >&2; }
skip() { echo "SKIP: bench/disk: $*" >&2; exit 77; }

[ -x "$BERTH" ] || { say "$BERTH is not an executable"; exit 1; }
for t in fio qemu-img qemu-io qemu-nbd python3; do
  command -v "$t" >/dev/null 2>&1 || skip "$t is missing (apt-get install fio qemu-utils python3)"
done
fio --enghelp=nbd 2>/dev/null | grep -q uri || skip "this fio has no nbd engine"
if [ -z "${BERTH_SERVE:-}" ] && ! "$BERTH" serve --help 2>&1 | grep -q -- '--disk'; then
  skip "'$BERTH serve' has no --disk option (set BERTH_SERVE)"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench-disk.XXXXXX")
BERTH_PID="" QNBD_PID=""
cleanup() {
  for p in $BERTH_PID $QNBD_PID; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# --- images ------------------------------------------------------------------------
say "creating and filling a $SIZE image"
qemu-img create -q -f qcow2 -o cluster_size=65536 "$TMP/base.qcow2" "$SIZE"
bytes=$(qemu-img info --output=json "$TMP/base.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
qemu-io -f qcow2 "$TMP/base.qcow2" -c "write -P 0x3c 0 $bytes" >/dev/null
cp "$TMP/base.qcow2" "$TMP/a.qcow2"
cp "$TMP/base.qcow2" "$TMP/b.qcow2"
qemu-img convert -f qcow2 -O raw "$TMP/base.qcow2" "$TMP/raw.img"
cp "$TMP/raw.img" "$TMP/c.raw"
rm -f "$TMP/base.qcow2"
# Every target starts with its data in the page cache.
cat "$TMP/a.qcow2" "$TMP/b.qcow2" "$TMP/c.raw" "$TMP/raw.img" >/dev/null

# --- servers -------------------------------------------------------------------------
"$SERVE" serve --9p "unix:$TMP/9p.sock" --log-level warn --disk "d0=$TMP/a.qcow2,nbd=unix:$TMP/a.sock" \
  --disk "d1=$TMP/c.raw,format=raw,nbd=unix:$TMP/c.sock" >"$TMP/berth.out" 2>"$TMP/berth.err" &
BERTH_PID=$!
qemu-nbd --cache=writeback --aio=threads -f qcow2 -x d0 --shared=8 --persistent --socket="$TMP/b.sock" \
  "$TMP/b.qcow2" >"$TMP/qnbd.err" 2>&1 &
QNBD_PID=$!
for _ in $(seq 1 100); do [ -S "$TMP/a.sock" ] && [ -S "$TMP/b.sock" ] && [ -S "$TMP/c.sock" ] && break; sleep 0.1; done
[ -S "$TMP/a.sock" ] || { say "berth did not start: $(cat "$TMP/berth.err")"; exit 1; }
[ -S "$TMP/b.sock" ] || { say "qemu-nbd did not start: $(cat "$TMP/qnbd.err")"; exit 1; }

fio_args() {  # fio_args WORKLOAD
  case "$1" in
    randread-4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
    randwrite-4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    read-1m) echo "--rw=read --bs=1m --iodepth=8" ;;
    write-1m) echo "--rw=write --bs=1m --iodepth=8" ;;
    *) return 1 ;;
  esac
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

RAW="$TMP/results.tsv"
: >"$RAW"
# run_one WORKLOAD PAIR NAME: one fio run; appends "wl pair name iops bw_bytes ticks status".
run_one() {
  local wl=$1 pair=$2 name=$3 pid="" t0=0 t1=0 target status=ok
  # shellcheck disable=SC2046
  case "$name" in
    berth) pid=$BERTH_PID; target=(--ioengine=nbd "--uri=nbd+unix:///d0?socket=$TMP/a.sock") ;;
    qemu-nbd) pid=$QNBD_PID; target=(--ioengine=nbd "--uri=nbd+unix:///d0?socket=$TMP/b.sock") ;;
    berth-raw) pid=$BERTH_PID; target=(--ioengine=nbd "--uri=nbd+unix:///d1?socket=$TMP/c.sock") ;;
    raw)
      if [ "${wl%-1m}" != "$wl" ]; then target=(--ioengine=psync "--filename=$TMP/raw.img")
      else target=(--ioengine=libaio "--filename=$TMP/raw.img"); fi ;;
  esac
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  # shellcheck disable=SC2046
  if ! fio --name=bench "${target[@]}" $(fio_args "$wl") --size="$bytes" --time_based --runtime="$RUNTIME" \
      --invalidate=0 --randrepeat=0 --output-format=json --output="$TMP/fio.json" >/dev/null 2>"$TMP/fio.err"; then
    status=failed
  fi
  [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  python3 - "$TMP/fio.json" "$wl" "$pair" "$name" "$((t1 - t0))" "$status" >>"$RAW" <<'PY' || echo -e "$wl\t$pair\t$name\t0\t0\t0\tfailed" >>"$RAW"
import json, sys
path, wl, pair, name, ticks, status = sys.argv[1:]
try:
    j = json.load(open(path))["jobs"][0]
    side = j["read"] if "read" in wl else j["write"]
    iops, bw = side["iops"], side["bw_bytes"]
    if j.get("error"):
        status = "failed"
except Exception:
    iops, bw, status = 0, 0, "failed"
print("%s\t%s\t%s\t%.1f\t%d\t%s\t%s" % (wl, pair, name, iops, bw, ticks, status))
PY
  say "$wl pair $pair $name: $(tail -n 1 "$RAW" | cut -f4,5 | awk '{printf "%.0f IOPS, %.1f MB/s", $1, $2/1e6}')"
}

for wl in $WORKLOADS; do
  fio_args "$wl" >/dev/null || { say "unknown workload '$wl'"; exit 2; }
  for pair in $(seq 1 "$PAIRS"); do
    run_one "$wl" "$pair" berth
    run_one "$wl" "$pair" qemu-nbd
    run_one "$wl" "$pair" berth-raw
    run_one "$wl" "$pair" raw
  done
done
kill -0 "$BERTH_PID" 2>/dev/null || say "WARNING: berth exited during the benchmark: $(cat "$TMP/berth.err")"
kill -0 "$QNBD_PID" 2>/dev/null || say "WARNING: qemu-nbd exited during the benchmark"

# --- report ---------------------------------------------------------------------------
export RAW DOC RUNTIME PAIRS WORKLOADS ROOT SIZE
CLK_TCK=$(getconf CLK_TCK)
BERTH_VERSION=$("$BERTH" --version 2>/dev/null || echo unknown)
QEMU_VERSION=$(qemu-nbd --version | head -n1)
FIO_VERSION=$(fio --version)
NPROC=$(nproc)
KERNEL=$(uname -r)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
WHEN=$(date -u '+%Y-%m-%d %H:%M UTC')
BERTH_REL=${BERTH#"$ROOT"/}
SERVE_REL=$(readlink -f "$SERVE")
SERVE_REL=${SERVE_REL#"$ROOT"/}
export SERVE_REL
export CLK_TCK BERTH_VERSION QEMU_VERSION FIO_VERSION NPROC KERNEL CPU_MODEL WHEN BERTH_REL
python3 - <<'PY'
import os, statistics, sys

env = os.environ
rt, pairs, tck = int(env["RUNTIME"]), int(env["PAIRS"]), int(env["CLK_TCK"])
wls = env["WORKLOADS"].split()
rows, failed = {}, 0
for line in open(env["RAW"]):
    wl, pair, name, iops, bw, ticks, status = line.rstrip("\n").split("\t")
    if status != "ok" or float(iops) <= 0:
        failed += 1
        continue
    rows[(wl, int(pair), name)] = (float(iops), int(bw), int(ticks))

ARGS = {"randread-4k": "--rw=randread --bs=4k --iodepth=32", "randwrite-4k": "--rw=randwrite --bs=4k --iodepth=32",
        "read-1m": "--rw=read --bs=1m --iodepth=8", "write-1m": "--rw=write --bs=1m --iodepth=8"}


def med(xs):
    return statistics.median(xs) if xs else None


def f(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def cpu_per_gb(v):
    moved = v[1] * rt
    return None if moved <= 0 else v[2] / tck / (moved / 1e9)


SERVERS = ("berth", "qemu-nbd", "berth-raw", "raw")
ratio_rows, abs_rows = [], []
for wl in wls:
    r_q, r_rx, r_raw, r_cpu, n = [], [], [], [], 0
    a = {s: ([], [], []) for s in SERVERS}
    for p in range(1, pairs + 1):
        b, q, x, r = (rows.get((wl, p, s)) for s in SERVERS)
        for s, v in zip(SERVERS, (b, q, x, r)):
            if v:
                a[s][0].append(v[0]); a[s][1].append(v[1] / 1e6)
                c = cpu_per_gb(v)
                if c is not None and s != "raw":
                    a[s][2].append(c)
        if b and q:
            n += 1
            r_q.append(b[0] / q[0])
            cb, cq = cpu_per_gb(b), cpu_per_gb(q)
            if cb is not None and cq:
                r_cpu.append(cb / cq)
        if b and x:
            r_rx.append(b[0] / x[0])
        if b and r:
            r_raw.append(b[0] / r[0])
    ratio_rows.append((wl, n, med(r_q), med(r_rx), med(r_raw), med(r_cpu), (min(r_q), max(r_q)) if r_q else None))
    abs_rows.append((wl, [med(a[s][i]) for s in SERVERS for i in range(3)]))

L = ["<!-- disk:begin -->", "## Disk: berth's NBD export vs qemu-nbd (fio nbd engine)", ""]
L.append("Generated by `bench/disk.sh` on %s. Machine: %d CPUs (%s), kernel %s. berth: `%s`; %s; fio %s." % (
    env["WHEN"], int(env["NPROC"]), env["CPU_MODEL"] or "unknown", env["KERNEL"], env["BERTH_VERSION"],
    env["QEMU_VERSION"], env["FIO_VERSION"]))
L.append("")
L.append("Two copies of one fully written qcow2 image (%s, 64 KiB clusters): berth serves one "
         "(`serve --disk`), `qemu-nbd --cache=writeback --aio=threads` the other, both on unix sockets; fio's nbd "
         "engine (libnbd) is the client. Two raw files with the same content are the baselines: berth exports one "
         "(`format=raw`: the same NBD path, no qcow2 engine), and fio reads and writes the other directly "
         "(buffered; libaio for 4K, psync for 1M). Every file starts in the page cache and fio runs with "
         "`--invalidate=0`. Per workload the runs alternate berth, qemu-nbd, berth raw export, raw file "
         "(%d rounds, %d s each). Ratios are the **median of the per-round ratios**; IOPS and MB/s ratios are the "
         "same number for a fixed block size. CPU per GB: the server process's utime+stime (all threads) during the "
         "run per GB moved; lower is better for berth. Client and servers share the machine's CPUs, so a direct fio "
         "run, which needs no server and no socket copies, is an upper bound that no NBD server reaches."
         % (env["SIZE"], pairs, rt))
L.append("")
L.append("| workload | fio args | rounds | berth/qemu-nbd IOPS (= MB/s) | berth qcow2 / berth raw export | berth / fio on the raw file | CPU per GB berth/qemu-nbd | berth/qemu-nbd range |")
L.append("|---|---|---:|---:|---:|---:|---:|---:|")
for wl, n, rq, rx, rr, rc, rng in ratio_rows:
    L.append("| %s | `%s` | %d | %s | %s | %s | %s | %s |" % (wl, ARGS[wl], n, f(rq), f(rx), f(rr), f(rc),
                                                          "n/a" if rng is None else "%.2f-%.2f" % rng))
L.append("")
L.append("Medians of the absolute numbers (noisy; for orientation only):")
L.append("")
L.append("| workload | berth IOPS | berth MB/s | berth CPU s/GB | qemu-nbd IOPS | qemu-nbd MB/s | qemu-nbd CPU s/GB | berth raw export MB/s | raw file MB/s |")
L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for wl, v in abs_rows:
    L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (wl, f(v[0], ".0f"), f(v[1], ".1f"), f(v[2], ".2f"),
                                                              f(v[3], ".0f"), f(v[4], ".1f"), f(v[5], ".2f"),
                                                              f(v[7], ".1f"), f(v[10], ".1f")))
L.append("")
if failed:
    L.append("**%d run(s) failed**; their rounds are left out." % failed)
    L.append("")
L.append("Command lines:")
L.append("")
L.append("```")
L.append("BENCH_DISK_RUNTIME=%d BENCH_DISK_PAIRS=%d BENCH_DISK_SIZE=%s bench/disk.sh %s" % (rt, pairs, env["SIZE"], env["BERTH_REL"]))
L.append("%s serve --9p unix:TMP/9p.sock --log-level warn --disk d0=TMP/a.qcow2,nbd=unix:TMP/a.sock "
         "--disk d1=TMP/c.raw,format=raw,nbd=unix:TMP/c.sock" % env["SERVE_REL"])
L.append("qemu-nbd --cache=writeback --aio=threads -f qcow2 -x d0 --shared=8 --persistent --socket=TMP/b.sock TMP/b.qcow2")
for wl in wls:
    L.append("fio --name=bench --ioengine=nbd --uri='nbd+unix:///{d0,d0,d1}?socket=TMP/{a,b,c}.sock' %s --size=%s --time_based --runtime=%d --invalidate=0" % (ARGS[wl], env["SIZE"], rt))
    L.append("fio --name=bench --ioengine=%s --filename=TMP/raw.img %s --size=%s --time_based --runtime=%d --invalidate=0" % (
        "psync" if wl.endswith("1m") else "libaio", ARGS[wl], env["SIZE"], rt))
L.append("```")
L.append("<!-- disk:end -->")
section = "\n".join(L) + "\n"
sys.path.insert(0, os.path.join(env["ROOT"], "bench"))
from docsection import replace_section
replace_section(env["DOC"], "disk", section)
print(section)
PY
say "updated $DOC"
