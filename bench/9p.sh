#!/usr/bin/env bash
# 9P benchmark: berth's 9P server against the reference server diod, both
# driven by diodload over TCP loopback.
#
# Usage: bench/9p.sh [BERTH_BINARY]        (default: build/release/berth)
#
# Starts `BERTH serve --9p tcp:127.0.0.1:0` and `diod -f -n -e ctl -l 127.0.0.1:PORT`
# side by side, then, for each configuration, runs diodload against berth and
# against diod in alternation (A B A B ..., BENCH_9P_PAIRS pairs). For each run
# it records diodload's "N ops/s, R rMB/s, W wMB/s" and the server process's CPU
# time (utime+stime from /proc/PID/stat, all threads) consumed during the run.
# It reports, per configuration, the median over pairs of the ratios
# berth/diod for ops/s, for MB/s (read+write) and for CPU-seconds per op.
# Times alone mean little on shared machines; the ratios are the result.
#
# The results replace the section between <!-- 9p:begin --> and <!-- 9p:end -->
# in docs/BENCHMARKS.md (created with an intro if missing), so other benchmarks
# can share that file.
#
# Environment:
#   BENCH_9P_RUNTIME  seconds per diodload run (default 3)
#   BENCH_9P_PAIRS    berth/diod pairs per configuration (default 5, at least 5 recommended)
#   BENCH_9P_DOC      the markdown file to update (default docs/BENCHMARKS.md)
#   BENCH_9P_CONFIGS  space-separated subset of: io-n1-m8192 io-n4-m8192 io-n1-m65536
#                     io-n4-m65536 getattr-n1 getattr-n4 (default: all)
#
# Exit status: 0 done (slowness never fails it; runs that fail are counted and
# reported), 1 a server could not be started, 77 diod or python3 unavailable.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH=$(readlink -f "${1:-$ROOT/build/release/berth}" || true)
RUNTIME=${BENCH_9P_RUNTIME:-3}
PAIRS=${BENCH_9P_PAIRS:-5}
DOC=${BENCH_9P_DOC:-$ROOT/docs/BENCHMARKS.md}
CONFIGS=${BENCH_9P_CONFIGS:-io-n1-m8192 io-n4-m8192 io-n1-m65536 io-n4-m65536 getattr-n1 getattr-n4}

say() { echo "bench/9p: $*" >&2; }
skip() { echo "SKIP: bench/9p: $*" >&2; exit 77; }

if [ -z "$BERTH" ] || [ ! -x "$BERTH" ]; then
  say "FAIL: ${1:-$ROOT/build/release/berth} is not an executable (build it: cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build/release berth)"
  exit 1
fi
[[ "$RUNTIME" =~ ^[1-9][0-9]*$ ]] || { say "BENCH_9P_RUNTIME must be a positive integer"; exit 2; }
[[ "$PAIRS" =~ ^[1-9][0-9]*$ ]] || { say "BENCH_9P_PAIRS must be a positive integer"; exit 2; }

case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
if ! command -v diod >/dev/null 2>&1 || ! command -v diodload >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    say "installing diod"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends diod >&2 ||
      { apt-get update -qq >&2 || true; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends diod >&2 || true; }
  fi
  { command -v diod && command -v diodload; } >/dev/null 2>&1 || skip "diod/diodload missing and the diod package could not be installed"
fi
command -v python3 >/dev/null 2>&1 || skip "python3 is missing (used to compute the medians)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench9p.XXXXXX")
BERTH_PID=""
DIOD_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local p
  for p in "$BERTH_PID" "$DIOD_PID"; do
    [ -n "$p" ] || continue
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- servers --------------------------------------------------------------------
"$BERTH" serve --9p tcp:127.0.0.1:0 --log-level warn >"$TMP/berth.out" 2>"$TMP/berth.err" &
BERTH_PID=$!
BPORT=""
for _ in $(seq 1 100); do
  BPORT=$(sed -n 's/^berth: listening on tcp:127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$TMP/berth.out" | head -n1)
  [ -n "$BPORT" ] && break
  kill -0 "$BERTH_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$BPORT" ]; then
  say "FAIL: berth did not print 'berth: listening on tcp:127.0.0.1:PORT'"
  cat "$TMP/berth.out" "$TMP/berth.err" >&2
  exit 1
fi

# diod has no "port 0"; take a free port from the kernel and hand it over.
DPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DIOD_CMD=(diod -f -n -e ctl -l "127.0.0.1:$DPORT")
"${DIOD_CMD[@]}" >"$TMP/diod.log" 2>&1 &
DIOD_PID=$!
up=0
for _ in $(seq 1 100); do
  kill -0 "$DIOD_PID" 2>/dev/null || break
  if timeout 5 diodls -s "127.0.0.1:$DPORT" -a ctl / >/dev/null 2>&1; then up=1; break; fi
  sleep 0.1
done
if [ $up -ne 1 ]; then
  say "FAIL: diod did not start: ${DIOD_CMD[*]}"
  cat "$TMP/diod.log" >&2
  exit 1
fi
timeout 5 diodls -s "127.0.0.1:$BPORT" -a ctl / >/dev/null 2>&1 || { say "FAIL: diodls cannot list berth's ctl tree"; exit 1; }
say "berth pid $BERTH_PID on 127.0.0.1:$BPORT, diod pid $DIOD_PID on 127.0.0.1:$DPORT; ${RUNTIME}s per run, $PAIRS pairs per configuration"

cpu_ticks() {  # utime+stime of every thread of process $1, in clock ticks
  local s f
  s=$(cat "/proc/$1/stat") || { echo -1; return; }
  s=${s##*) }
  read -r -a f <<<"$s"
  echo $((f[11] + f[12]))
}

config_args() {  # configuration name -> diodload arguments
  case "$1" in
    io-n1-m8192) echo "-n 1 -m 8192" ;;
    io-n4-m8192) echo "-n 4 -m 8192" ;;
    io-n1-m65536) echo "-n 1 -m 65536" ;;
    io-n4-m65536) echo "-n 4 -m 65536" ;;
    getattr-n1) echo "-g -n 1" ;;
    getattr-n4) echo "-g -n 4" ;;
    *) return 1 ;;
  esac
}

RAW="$TMP/raw.tsv"   # config pair server ops rMB wMB cpu_ticks status
: >"$RAW"
run_one() {  # $1 config, $2 pair, $3 server name, $4 port, $5 pid
  local args t0 t1 rc=0 line ops r w
  args=$(config_args "$1")
  t0=$(cpu_ticks "$5")
  # shellcheck disable=SC2086  # args is a word list on purpose
  timeout -k 5 $((RUNTIME + 60)) diodload -s "127.0.0.1:$4" $args -r "$RUNTIME" >"$TMP/load.out" 2>&1 || rc=$?
  t1=$(cpu_ticks "$5")
  line=$(grep -E '[0-9]+ ops/s, [0-9]+ rMB/s, [0-9]+ wMB/s' "$TMP/load.out" | tail -n1 || true)
  if [ $rc -ne 0 ] || [ -z "$line" ] || [ "$t0" -lt 0 ] || [ "$t1" -lt 0 ]; then
    say "run failed: $3 $1 pair $2 (diodload exit $rc): $(tr '\n' ' ' <"$TMP/load.out")"
    printf '%s\t%s\t%s\t0\t0\t0\t0\tfailed\n' "$1" "$2" "$3" >>"$RAW"
    return 0
  fi
  read -r ops r w < <(sed -E 's/^(.*[^0-9])?([0-9]+) ops\/s, ([0-9]+) rMB\/s, ([0-9]+) wMB\/s.*$/\2 \3 \4/' <<<"$line")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\tok\n' "$1" "$2" "$3" "$ops" "$r" "$w" $((t1 - t0)) >>"$RAW"
  say "$1 pair $2 $3: $ops ops/s, $r rMB/s, $w wMB/s, $((t1 - t0)) cpu ticks"
}

for cfg in $CONFIGS; do
  config_args "$cfg" >/dev/null || { say "unknown configuration '$cfg'"; exit 2; }
  for pair in $(seq 1 "$PAIRS"); do
    run_one "$cfg" "$pair" berth "$BPORT" "$BERTH_PID"
    run_one "$cfg" "$pair" diod "$DPORT" "$DIOD_PID"
  done
done

# Servers still alive? A crash mid-benchmark shows up as failed runs; say so.
kill -0 "$BERTH_PID" 2>/dev/null || say "WARNING: berth exited during the benchmark: $(cat "$TMP/berth.err")"
kill -0 "$DIOD_PID" 2>/dev/null || say "WARNING: diod exited during the benchmark"

# --- report ------------------------------------------------------------------------
export RAW DOC RUNTIME PAIRS CONFIGS BPORT DPORT ROOT
CLK_TCK=$(getconf CLK_TCK)
BERTH_VERSION=$("$BERTH" --version 2>/dev/null || echo unknown)
DIOD_VERSION=$(dpkg-query -W -f '${Version}' diod 2>/dev/null || echo unknown)
NPROC=$(nproc)
KERNEL=$(uname -r)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
WHEN=$(date -u '+%Y-%m-%d %H:%M UTC')
BERTH_REL=${BERTH#"$ROOT"/}
export CLK_TCK BERTH_VERSION DIOD_VERSION NPROC KERNEL CPU_MODEL WHEN BERTH_REL
python3 - <<'PY'
import os, statistics, sys

env = os.environ
rt, pairs, tck = int(env["RUNTIME"]), int(env["PAIRS"]), int(env["CLK_TCK"])
configs = env["CONFIGS"].split()
rows = {}
failed = 0
for line in open(env["RAW"]):
    cfg, pair, srv, ops, r, w, ticks, status = line.rstrip("\n").split("\t")
    if status != "ok":
        failed += 1
        continue
    rows[(cfg, int(pair), srv)] = (int(ops), int(r) + int(w), int(ticks))

ARGS = {
    "io-n1-m8192": "-n 1 -m 8192", "io-n4-m8192": "-n 4 -m 8192",
    "io-n1-m65536": "-n 1 -m 65536", "io-n4-m65536": "-n 4 -m 65536",
    "getattr-n1": "-g -n 1", "getattr-n4": "-g -n 4",
}
DESC = {
    "io-n1-m8192": "IO, 1 thread, msize 8192", "io-n4-m8192": "IO, 4 threads, msize 8192",
    "io-n1-m65536": "IO, 1 thread, msize 65536", "io-n4-m65536": "IO, 4 threads, msize 65536",
    "getattr-n1": "getattr, 1 thread", "getattr-n4": "getattr, 4 threads",
}


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def cpu_us_per_op(ops, ticks):
    total_ops = ops * rt
    return None if total_ops <= 0 else ticks / tck / total_ops * 1e6


ratio_rows, abs_rows = [], []
for cfg in configs:
    r_ops, r_mb, r_cpu = [], [], []
    a = {"berth": ([], [], []), "diod": ([], [], [])}
    n = 0
    for p in range(1, pairs + 1):
        b, d = rows.get((cfg, p, "berth")), rows.get((cfg, p, "diod"))
        for srv, v in (("berth", b), ("diod", d)):
            if v:
                a[srv][0].append(v[0]); a[srv][1].append(v[1])
                c = cpu_us_per_op(v[0], v[2])
                if c is not None:
                    a[srv][2].append(c)
        if not b or not d:
            continue
        n += 1
        if d[0] > 0:
            r_ops.append(b[0] / d[0])
        if d[1] > 0 and b[1] > 0:
            r_mb.append(b[1] / d[1])
        cb, cd = cpu_us_per_op(b[0], b[2]), cpu_us_per_op(d[0], d[2])
        if cb is not None and cd:
            r_cpu.append(cb / cd)
    ratio_rows.append((cfg, n, med(r_ops), med(r_mb), med(r_cpu),
                       (min(r_ops), max(r_ops)) if r_ops else None))
    abs_rows.append((cfg, [med(a[s][i]) for s in ("berth", "diod") for i in range(3)]))

L = []
L.append("<!-- 9p:begin -->")
L.append("## 9P: berth vs diod (diodload)")
L.append("")
L.append("Generated by `bench/9p.sh` on %s. Machine: %d CPUs (%s), kernel %s. "
         "berth: `%s`; diod: Debian package %s." % (env["WHEN"], int(env["NPROC"]), env["CPU_MODEL"] or "unknown",
                                                   env["KERNEL"], env["BERTH_VERSION"], env["DIOD_VERSION"]))
L.append("")
L.append("Both servers run side by side on TCP loopback; diodload (Debian's diod package) is the client. "
         "For each configuration the runs alternate berth, diod, berth, diod, ... "
         "(%d pairs, %d s per run), and each number below is the **median of the per-pair ratios berth/diod**. "
         "ops/s and MB/s: higher is better for berth. CPU per op: the server process's utime+stime "
         "(all threads, from `/proc/PID/stat`) during the run divided by the ops diodload reports "
         "(ops/s x run time); lower is better for berth. diodload itself runs on the same machine "
         "and competes for the same CPUs, so absolute rates are only indicative." % (pairs, rt))
L.append("")
L.append("| configuration | diodload args | pairs | ops/s ratio | MB/s ratio | CPU/op ratio | ops/s ratio range |")
L.append("|---|---|---:|---:|---:|---:|---:|")
for cfg, n, ro, rm, rc, rng in ratio_rows:
    L.append("| %s | `%s` | %d | %s | %s | %s | %s |" % (
        DESC[cfg], ARGS[cfg], n, fmt(ro), "n/a (no data moved)" if cfg.startswith("getattr") else fmt(rm), fmt(rc),
        "n/a" if rng is None else "%.2f-%.2f" % rng))
L.append("")
L.append("Medians of the absolute numbers (noisy; for orientation only):")
L.append("")
L.append("| configuration | berth ops/s | berth MB/s (r+w) | berth CPU us/op | diod ops/s | diod MB/s (r+w) | diod CPU us/op |")
L.append("|---|---:|---:|---:|---:|---:|---:|")
for cfg, v in abs_rows:
    L.append("| %s | %s | %s | %s | %s | %s | %s |" % (DESC[cfg], fmt(v[0], ".0f"), fmt(v[1], ".0f"), fmt(v[2], ".1f"),
                                                     fmt(v[3], ".0f"), fmt(v[4], ".0f"), fmt(v[5], ".1f")))
L.append("")
if failed:
    L.append("**%d run(s) failed** (diodload exited non-zero or printed no rate); their pairs are left out." % failed)
    L.append("")
L.append("Command lines (ports are picked at run time; these are the ones this run used):")
L.append("")
L.append("```")
L.append("BENCH_9P_RUNTIME=%d BENCH_9P_PAIRS=%d bench/9p.sh %s" % (rt, pairs, env["BERTH_REL"]))
L.append("%s serve --9p tcp:127.0.0.1:0 --log-level warn      # printed: berth: listening on tcp:127.0.0.1:%s"
         % (env["BERTH_REL"], env["BPORT"]))
L.append("diod -f -n -e ctl -l 127.0.0.1:%s" % env["DPORT"])
for cfg in configs:
    for srv, port in (("berth", env["BPORT"]), ("diod", env["DPORT"])):
        L.append("diodload -s 127.0.0.1:%s %s -r %d    # %s, %s" % (port, ARGS[cfg], rt, srv, cfg))
L.append("```")
L.append("<!-- 9p:end -->")
section = "\n".join(L) + "\n"

sys.path.insert(0, os.path.join(env["ROOT"], "bench"))
from docsection import replace_section
replace_section(env["DOC"], "9p", section)
print(section)
PY
say "updated $DOC"
