#!/usr/bin/env bash
# Network benchmark: Berth against pasta (passt) and slirp4netns, each one
# translating the traffic of a network namespace into host socket calls.
#
# Usage: bench/net.sh [BERTH_BINARY]        (default: build/release/berth)
#
# For each MTU (1500 and 65520) and each round, the translators take turns,
# berth, pasta, slirp4netns, berth, pasta, slirp4netns, ... (A B C A B C ...).
# Each turn gets a fresh namespace and a fresh translator process, and runs:
#   up    iperf3 from the namespace to an iperf3 server on the host's 127.0.0.1
#   down  the same with -R (host -> namespace)
#   crr   a connection rate: a python client in the namespace makes
#         BENCH_NET_CONNS sequential short TCP connections (connect, send 64
#         bytes, read the echo, close) to an echo server on the host's 127.0.0.1
# For every run it records the rate (bits/s or connections/s) and the
# translator process's CPU time (utime+stime from /proc/PID/stat, all threads)
# consumed during the run. It reports, per MTU and test, the median over rounds
# of the per-round ratios berth/pasta and berth/slirp4netns of the rate and of
# the CPU cost (CPU-seconds per GB moved; CPU-ms per 1000 connections).
# Times alone mean little on shared machines; the ratios are the result.
# A run in which a whole iperf3 second moved (almost) nothing is reported as a
# stall; for berth, a watcher that sees berth use no CPU for 0.75 s during
# iperf3 keeps berth's /net/flows, /net/stats, `ss -tnmi` and epoll
# registrations in BENCH_NET_DIAG.
#
# How each translator's namespace reaches the host's 127.0.0.1:
#   berth       berth serve --link tap:bt0@NS --mtu N; the namespace is
#               192.168.65.3/24, gateway .1; the host alias 192.168.65.2 is the
#               host's loopback
#   pasta       pasta --runas 0 --config-net --netns /run/netns/NS -f --mtu N;
#               the namespace's default gateway is mapped to the host's loopback
#   slirp4netns slirp4netns --configure --mtu=N --netns-type=path /run/netns/NS;
#               10.0.2.2 is the host's loopback
#
# The results replace the section between <!-- net:begin --> and <!-- net:end -->
# in docs/BENCHMARKS.md (created with an intro if missing).
#
# Environment:
#   BENCH_NET_TIME    seconds per iperf3 run (iperf3 -t; default 3)
#   BENCH_NET_ROUNDS  rounds per MTU (default 7; at least 5 recommended)
#   BENCH_NET_MTUS    MTUs to test (default "1500 65520")
#   BENCH_NET_CONNS   connections per connection-rate run (default 2000)
#   BENCH_NET_PEERS   peers to compare with (default "pasta slirp4netns")
#   BENCH_NET_BERTH_LOG  berth's --log-level (default warn)
#   BENCH_NET_DOC     the markdown file to update (default docs/BENCHMARKS.md)
#   BENCH_NET_DIAG    where diagnostics of failed berth runs are kept
#                     (default /tmp/berth-bench-net-diag.PID; made only on failure)
#   BENCH_NET_CAPTURE 1: measure packet capture's cost instead (issue 5). No
#                     peers; the translators are three configurations of berth,
#                     taking turns the same way: "berth" with no capture rules
#                     (every rule removed through /pcap/ctl), "berth-all" with
#                     only the `all` rule (every frame, both ways, into a 1 MiB
#                     ring, snaplen 256) and "berth-defaults" with the four
#                     default rules. The report gives the medians of the
#                     per-round ratios berth-all/berth and berth-defaults/berth,
#                     in the section between <!-- net-capture:begin --> and
#                     <!-- net-capture:end -->. Needs a berth with /pcap.
#                     Then, steadier than any time: each configuration once
#                     more under valgrind --tool=callgrind, moving a fixed
#                     BENCH_NET_CG_BYTES each way with iperf3 -n; the report
#                     gives berth's user-space instructions per frame.
#   BENCH_NET_CG_BYTES bytes per direction for the callgrind runs (iperf3 -n;
#                     default 20M; 0 skips them)
#
# Exit status: 0 done (slowness never fails it; runs that fail are counted and
# reported), 1 a translator could not be started at all, 2 bad usage,
# 77 skipped (not root, no network namespaces or TUN, iperf3 or python3 missing).
# A peer that is not installed and cannot be installed is reported as n/a.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH=$(readlink -f "${1:-$ROOT/build/release/berth}" || true)
TIME=${BENCH_NET_TIME:-3}
ROUNDS=${BENCH_NET_ROUNDS:-7}
MTUS=${BENCH_NET_MTUS:-1500 65520}
CONNS=${BENCH_NET_CONNS:-2000}
PEERS_WANTED=${BENCH_NET_PEERS:-pasta slirp4netns}
BERTH_LOG=${BENCH_NET_BERTH_LOG:-warn}
DOC=${BENCH_NET_DOC:-$ROOT/docs/BENCHMARKS.md}
DIAG=${BENCH_NET_DIAG:-/tmp/berth-bench-net-diag.$$}

say() { echo "bench/net: $*" >&2; }
skip() { echo "SKIP: bench/net: $*" >&2; exit 77; }
die() { echo "FAIL: bench/net: $*" >&2; exit 1; }

if [ -z "$BERTH" ] || [ ! -x "$BERTH" ]; then
  die "${1:-$ROOT/build/release/berth} is not an executable (build it: cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build/release berth)"
fi
for v in TIME ROUNDS CONNS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { say "BENCH_NET_$v must be a positive integer"; exit 2; }
done
for m in $MTUS; do
  if ! [[ "$m" =~ ^[0-9]+$ ]] || [ "$m" -lt 576 ] || [ "$m" -gt 65520 ]; then say "BENCH_NET_MTUS: $m is not in 576..65520"; exit 2; fi
done
for p in $PEERS_WANTED; do
  case "$p" in pasta | slirp4netns) ;; *) say "BENCH_NET_PEERS: unknown peer '$p'"; exit 2 ;; esac
done
[ "$ROUNDS" -ge 5 ] || say "warning: $ROUNDS rounds; at least 5 are recommended"
CAPTURE=${BENCH_NET_CAPTURE:-0}
case "$CAPTURE" in 0 | 1) ;; *) say "BENCH_NET_CAPTURE must be 0 or 1"; exit 2 ;; esac
[ "$CAPTURE" = 0 ] || PEERS_WANTED=""   # berth against itself, with and without capture

case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, TAP devices)"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
command -v ip >/dev/null 2>&1 || skip "iproute2 (ip) is missing"
command -v python3 >/dev/null 2>&1 || skip "python3 is missing"
if ip netns add "berth-bn-$$-probe" 2>/dev/null; then ip netns del "berth-bn-$$-probe"; else skip "cannot create a network namespace (ip netns add)"; fi

# --- tools ------------------------------------------------------------------------
apt_install() {  # best effort; the callers check what is there afterwards
  command -v apt-get >/dev/null 2>&1 || return 0
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
    { apt-get update -qq >&2 || true; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 || true; }
}
need=()
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
for p in $PEERS_WANTED; do
  case "$p" in
    pasta) command -v pasta >/dev/null 2>&1 || need+=(passt) ;;
    slirp4netns) command -v slirp4netns >/dev/null 2>&1 || need+=(slirp4netns) ;;
  esac
done
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
command -v iperf3 >/dev/null 2>&1 || skip "iperf3 is missing and could not be installed"

PEERS=()            # peers that are installed
declare -A NA=()    # peer -> why it is n/a
for p in $PEERS_WANTED; do
  if command -v "$p" >/dev/null 2>&1; then PEERS+=("$p"); else NA[$p]="not installed, and apt-get install failed"; say "$p: n/a (${NA[$p]})"; fi
done
TRANSLATORS=(berth "${PEERS[@]}")
[ "$CAPTURE" = 0 ] || TRANSLATORS=(berth berth-all berth-defaults)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-benchnet.XXXXXX")
# Run a copy, so that a rebuild during the benchmark cannot mix two versions.
BERTH_ARG=$BERTH
cp "$BERTH" "$TMP/berth"
BERTH=$TMP/berth
TREE=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
NS=""             # the current namespace
TPID=""           # the current translator's pid
IPERF_PID=""
ECHO_PID=""
NSSEQ=0
# shellcheck disable=SC2317  # invoked by traps and teardown
stop_pid() {
  local p=$1
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
# shellcheck disable=SC2317
teardown() {
  stop_pid "$TPID"
  TPID=""
  if [ -n "$NS" ]; then ip netns del "$NS" 2>/dev/null || true; fi
  NS=""
}
# shellcheck disable=SC2317
cleanup() {
  teardown
  stop_pid "$IPERF_PID"
  stop_pid "$ECHO_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# --- host side servers ------------------------------------------------------------
IPORT=$(free_port)
IPERF_SERVER_CMD=(iperf3 -s -B 127.0.0.1 -p "$IPORT")
start_iperf_server() {
  stop_pid "$IPERF_PID"
  "${IPERF_SERVER_CMD[@]}" >>"$TMP/iperf-server.log" 2>&1 &
  IPERF_PID=$!
  for _ in $(seq 1 100); do listening "$IPORT" && return 0; kill -0 "$IPERF_PID" 2>/dev/null || break; sleep 0.1; done
  die "the iperf3 server did not start: ${IPERF_SERVER_CMD[*]}: $(tail -n 5 "$TMP/iperf-server.log")"
}
start_iperf_server

cat >"$TMP/echo.py" <<'PY'
import selectors, socket
sel = selectors.DefaultSelector()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(1024); s.setblocking(False)
print(s.getsockname()[1], flush=True)
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            try:
                c, _ = s.accept()
            except OSError:
                continue
            c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:
            try: b = key.fileobj.recv(65536)
            except OSError: b = b""
            if b:
                try: key.fileobj.sendall(b)
                except OSError: b = b""
            if not b:
                sel.unregister(key.fileobj); key.fileobj.close()
PY
python3 "$TMP/echo.py" >"$TMP/echo.port" 2>"$TMP/echo.err" &
ECHO_PID=$!
EPORT=""
for _ in $(seq 1 100); do EPORT=$(head -n1 "$TMP/echo.port" 2>/dev/null || true); [ -n "$EPORT" ] && break; sleep 0.1; done
[ -n "$EPORT" ] || die "the echo server did not start: $(cat "$TMP/echo.err")"

cat >"$TMP/crr.py" <<'PY'
# N sequential short connections: connect, send 64 bytes, read the echo, close.
# Prints: ok failed seconds
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
msg = b"b" * 64
ok = failed = 0
t0 = time.monotonic()
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=10)
        try:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                b = s.recv(len(msg) - len(got))
                if not b:
                    break
                got += b
        finally:
            s.close()
        if got == msg:
            ok += 1
        else:
            failed += 1
    except OSError:
        failed += 1
print(ok, failed, "%.6f" % (time.monotonic() - t0))
PY
cat >"$TMP/probe.py" <<'PY'
# Is the host's echo server reachable from here? Retries for up to 10 s.
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
end = time.monotonic() + 10
err = None
while time.monotonic() < end:
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(b"probe"); got = s.recv(16); s.close()
        if got == b"probe":
            sys.exit(0)
        err = "echo returned %r" % got
    except OSError as e:
        err = str(e)
    time.sleep(0.2)
print(err); sys.exit(1)
PY

cpu_ticks() {  # utime+stime of every thread of process $1, in clock ticks
  local s f
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -1; return; }
  s=${s##*) }
  read -r -a f <<<"$s"
  echo $((f[11] + f[12]))
}

NSX() { timeout "${T:-30}" ip netns exec "$NS" "$@"; }

# --- translators --------------------------------------------------------------------
# setup NAME MTU: a fresh namespace with the translator NAME attached; sets NS,
# TPID, HOSTIP (the host's loopback as seen from the namespace), SOCK (berth's
# control socket) and TCMD (the translator's command line). Returns non-zero,
# with the reason in $TMP/setup.err, if the namespace cannot reach the host.
BERTH_EXTRA=()
BERTH_PREFIX=()   # a wrapper for berth (valgrind, in the callgrind runs)
if "$BERTH" serve --help 2>&1 | grep -q -- '--dns-upstream'; then
  # Nothing here queries DNS, but keep the forwarder on loopback anyway.
  BERTH_EXTRA=(--dns-upstream 127.0.0.1:53)
fi
declare -A TCMD_SHOWN=()
declare -A RULES_SHOWN=()
setup() {
  local name=$1 mtu=$2 dev
  NSSEQ=$((NSSEQ + 1))
  NS=berth-bn-$$-$NSSEQ
  HOSTIP=""
  : >"$TMP/setup.err"
  ip netns add "$NS" 2>>"$TMP/setup.err" || { NS=""; return 1; }
  NSX ip link set lo up
  case "$name" in
    berth | berth-all | berth-defaults)
      SOCK=$TMP/berth-$NSSEQ.sock
      TCMD=("${BERTH_PREFIX[@]}" "$BERTH" serve --link "tap:bt0@$NS" --9p "unix:$SOCK" --mtu "$mtu" "${BERTH_EXTRA[@]}" --log-level "$BERTH_LOG")
      "${TCMD[@]}" >"$TMP/translator.out" 2>"$TMP/translator.err" &
      TPID=$!
      for _ in $(seq 1 $((${#BERTH_PREFIX[@]} ? 600 : 100))); do
        [ -S "$SOCK" ] && NSX ip link show bt0 >/dev/null 2>&1 && break
        kill -0 "$TPID" 2>/dev/null || break
        sleep 0.1
      done
      if ! NSX ip link show bt0 >/dev/null 2>&1; then
        echo "berth did not create bt0 in $NS: $(tail -n 20 "$TMP/translator.err")" >>"$TMP/setup.err"; return 1
      fi
      NSX ip addr add 192.168.65.3/24 dev bt0
      NSX ip link set bt0 mtu "$mtu"
      NSX ip link set bt0 up
      NSX ip route add default via 192.168.65.1
      HOSTIP=192.168.65.2
      if [ "$CAPTURE" = 1 ]; then  # the capture rules of this configuration
        local drop="" r
        case "$name" in berth) drop="all dns dhcp icmp" ;; berth-all) drop="dns dhcp icmp" ;; esac
        if ! timeout 10 "$BERTH" ctl --9p "unix:$SOCK" stat /pcap/ctl >/dev/null 2>&1; then
          echo "this berth has no /pcap (tools/serve.cpp must wire pcap-ring)" >>"$TMP/setup.err"; return 1
        fi
        for r in $drop; do
          timeout 10 "$BERTH" ctl --9p "unix:$SOCK" write /pcap/ctl "rm $r" >/dev/null 2>>"$TMP/setup.err" || return 1
        done
        RULES_SHOWN[$name]=$(timeout 10 "$BERTH" ctl --9p "unix:$SOCK" cat /pcap/rules | awk '{print $1}' | tr '\n' ' ')
      fi
      ;;
    pasta)
      TCMD=(pasta --runas 0 --config-net --netns "/run/netns/$NS" -f -t none -u none -T none -U none --mtu "$mtu" -l "$TMP/pasta.log")
      "${TCMD[@]}" >"$TMP/translator.out" 2>"$TMP/translator.err" &
      TPID=$!
      ;;
    slirp4netns)
      TCMD=(slirp4netns --configure --mtu="$mtu" --disable-dns --netns-type=path "/run/netns/$NS" tap0)
      "${TCMD[@]}" >"$TMP/translator.out" 2>"$TMP/translator.err" &
      TPID=$!
      ;;
  esac
  if [ -z "$HOSTIP" ]; then  # pasta, slirp4netns: wait for them to configure the namespace
    for _ in $(seq 1 100); do
      HOSTIP=$(NSX ip -4 route show default 2>/dev/null | awk '/^default via/ {print $3; exit}')
      [ -n "$HOSTIP" ] && break
      kill -0 "$TPID" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$HOSTIP" ]; then
      echo "$name did not configure $NS (no default route): $(grep -v 'to syslog' "$TMP/translator.err" | tail -n 20)" >>"$TMP/setup.err"; return 1
    fi
    [ "$name" != slirp4netns ] || [ "$HOSTIP" = 10.0.2.2 ] || { echo "slirp4netns: unexpected gateway $HOSTIP" >>"$TMP/setup.err"; return 1; }
  fi
  dev=$(NSX ip -4 route show default | awk '/^default via/ {for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1); exit}')
  LINKMTU=$(NSX cat "/sys/class/net/$dev/mtu" 2>/dev/null || echo "?")
  if [ "$LINKMTU" != "$mtu" ]; then
    echo "$name: the namespace's $dev has MTU $LINKMTU, not $mtu" >>"$TMP/setup.err"; return 1
  fi
  if [ -z "${TCMD_SHOWN[$name-$mtu]:-}" ]; then
    local shown="${TCMD[*]}"
    shown=${shown//$BERTH /$BERTH_ARG }; shown=${shown//$NS/NS}; shown=${shown//berth-$NSSEQ.sock/berth-N.sock}; shown=${shown//$TMP/\$TMP}; shown=${shown//$ROOT\//}
    TCMD_SHOWN[$name-$mtu]="$shown"
  fi
  if ! T=20 NSX python3 "$TMP/probe.py" "$HOSTIP" "$EPORT" >>"$TMP/setup.err" 2>&1; then
    echo "$name: the namespace cannot reach the host's echo server at $HOSTIP:$EPORT" >>"$TMP/setup.err"; return 1
  fi
  return 0
}

diag_berth() {  # $1 label: keep berth's view of a failed run
  [[ "$CUR" == berth* ]] || return 0
  mkdir -p "$DIAG"
  local file=$DIAG/$1
  {
    echo "# $1: ${TCMD[*]}"
    echo "# alive: $(kill -0 "$TPID" 2>/dev/null && echo yes || echo no)"
    echo "# /net/stats"; timeout 10 "$BERTH" ctl --9p "unix:$SOCK" cat /net/stats 2>&1 || echo "(ctl failed)"
    echo "# /net/flows"; timeout 10 "$BERTH" ctl --9p "unix:$SOCK" cat /net/flows 2>&1 || echo "(ctl failed)"
    echo "# berth stderr (last 50 lines)"; tail -n 50 "$TMP/translator.err"
  } >"$file" 2>&1
  say "berth diagnostics kept in $file"
}

RAW="$TMP/raw.tsv"   # mtu test round translator rate amount cpu_ticks status note
: >"$RAW"
FLOWS_SNAPSHOT="$TMP/flows.snapshot"
record_fail() {  # mtu test round translator why
  printf '%s\t%s\t%s\t%s\t0\t0\t0\tfailed\t%s\n' "$1" "$2" "$3" "$4" "$(tr '\t\n' '  ' <<<"$5" | cut -c1-300)" >>"$RAW"
  say "FAILED: $4 mtu $1 $2 round $3: $5"
}

# While berth runs iperf3, a watcher samples berth's CPU time every 0.25 s;
# 0.75 s without any (berth idle while iperf3 is still running) is a
# stall, and the watcher keeps berth's view of it: /net/flows, /net/stats, the
# host sockets (ss) and berth's epoll registrations. The dump is kept only if
# iperf3's own per-second intervals confirm the stall.
stall_watch() {  # $1 dump file
  local a b c cur f
  a=-1 b=-1 c=-1   # the samples 0.75, 0.5 and 0.25 s ago
  while sleep 0.25; do
    cur=$(cpu_ticks "$TPID")
    [ "$cur" -ge 0 ] || return 0
    if [ "$cur" = "$a" ]; then
      {
        echo "# berth used no CPU for 0.75 s while iperf3 was running ($(date -u '+%H:%M:%S.%N'))"
        echo "# /net/flows"; timeout 10 "$BERTH" ctl --9p "unix:$SOCK" cat /net/flows 2>&1 || echo "(ctl failed)"
        echo "# /net/stats"; timeout 10 "$BERTH" ctl --9p "unix:$SOCK" cat /net/stats 2>&1 || echo "(ctl failed)"
        echo "# ss -tnmi (port $IPORT)"; ss -tnmi "( sport = :$IPORT or dport = :$IPORT )" 2>&1
        echo "# berth's fds"; ls -l "/proc/$TPID/fd" 2>&1
        for f in /proc/"$TPID"/fd/*; do
          [ "$(readlink "$f" 2>/dev/null)" = "anon_inode:[eventpoll]" ] || continue
          echo "# epoll registrations ($f)"; cat "/proc/$TPID/fdinfo/${f##*/}" 2>&1
        done
      } >"$1" 2>&1
      return 0
    fi
    a=$b b=$c c=$cur
  done
}

iperf_run() {  # mtu dir(up|down) round
  local mtu=$1 dir=$2 round=$3 t0 t1 rc=0 args=() parsed snap="" watch=""
  [ "$dir" = down ] && args=(-R)
  kill -0 "$IPERF_PID" 2>/dev/null || start_iperf_server
  if [ "$CUR" = berth ] && [ "$dir" = up ] && [ ! -s "$FLOWS_SNAPSHOT.$mtu" ] && [ "$CAPTURE" = 0 ]; then
    ( sleep 1; timeout 10 "$BERTH" ctl --9p "unix:$SOCK" cat /net/flows >"$FLOWS_SNAPSHOT.$mtu" 2>&1 ) &
    snap=$!
  fi
  rm -f "$TMP/stall.dump"
  if [[ "$CUR" == berth* ]]; then
    stall_watch "$TMP/stall.dump" &
    watch=$!
  fi
  t0=$(cpu_ticks "$TPID")
  T=$((TIME + 60)) NSX iperf3 -c "$HOSTIP" -p "$IPORT" -t "$TIME" --connect-timeout 5000 -J "${args[@]}" >"$TMP/iperf.json" 2>"$TMP/iperf.err" || rc=$?
  t1=$(cpu_ticks "$TPID")
  if [ -n "$watch" ]; then kill "$watch" 2>/dev/null || true; wait "$watch" 2>/dev/null || true; fi
  [ -z "$snap" ] || wait "$snap" 2>/dev/null || true
  # Prints: bytes bits/s sender-retransmits stalled-intervals ("-" if none).
  # An interval is stalled if it moved less than 1% of the run's busiest one.
  parsed=$(python3 - "$TMP/iperf.json" <<'PY' 2>&1
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print("no JSON from iperf3: %s" % e); sys.exit(1)
if j.get("error"):
    print("iperf3: %s" % j["error"]); sys.exit(1)
r = j["end"]["sum_received"]
retr = j["end"].get("sum_sent", {}).get("retransmits", -1)
iv = [x["sum"] for x in j.get("intervals", [])]
top = max([x["bytes"] for x in iv] or [0])
stalled = [str(i + 1) for i, x in enumerate(iv) if x.get("seconds", 0) >= 0.5 and x["bytes"] < top / 100]
print("%d %.0f %d %s" % (int(r["bytes"]), float(r["bits_per_second"]), retr, ",".join(stalled) or "-"))
PY
  ) || { record_fail "$mtu" "$dir" "$round" "$CUR" "iperf3 exit $rc: $parsed $(tail -c 300 "$TMP/iperf.err")"; diag_berth "mtu$mtu-$dir-round$round"; start_iperf_server; return 0; }
  if [ "$rc" -ne 0 ] || [ "$t0" -lt 0 ] || [ "$t1" -lt 0 ]; then
    record_fail "$mtu" "$dir" "$round" "$CUR" "iperf3 exit $rc, or the translator exited (cpu $t0..$t1)"; diag_berth "mtu$mtu-$dir-round$round"; start_iperf_server; return 0
  fi
  local bytes bps retr stalled note
  read -r bytes bps retr stalled <<<"$parsed"
  note="retr=$retr"
  if [ "$stalled" != - ]; then
    note+=";stalled=$stalled"
    say "STALL: $CUR mtu $mtu $dir round $round: iperf3 interval(s) $stalled moved (almost) nothing"
    if [ -s "$TMP/stall.dump" ]; then
      mkdir -p "$DIAG"
      { echo "# $CUR mtu $mtu $dir round $round: ${TCMD[*]}"; cat "$TMP/stall.dump"; echo "# berth stderr (last 50 lines)"; tail -n 50 "$TMP/translator.err"; } \
        >"$DIAG/stall-mtu$mtu-$dir-round$round"
      note+=";dump"
      say "berth's view of the stall kept in $DIAG/stall-mtu$mtu-$dir-round$round"
    fi
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\tok\t%s\n' "$mtu" "$dir" "$round" "$CUR" "$bps" "$bytes" $((t1 - t0)) "$note" >>"$RAW"
  say "mtu $mtu $dir round $round $CUR: $(awk -v b="$bps" 'BEGIN{printf "%.2f", b/1e9}') Gbit/s, $bytes bytes, $((t1 - t0)) cpu ticks, $retr retransmits"
}

crr_run() {  # mtu round
  local mtu=$1 round=$2 t0 t1 rc=0 ok failed secs
  t0=$(cpu_ticks "$TPID")
  T=$((CONNS / 10 + 120)) NSX python3 "$TMP/crr.py" "$HOSTIP" "$EPORT" "$CONNS" >"$TMP/crr.out" 2>&1 || rc=$?
  t1=$(cpu_ticks "$TPID")
  read -r ok failed secs < <(tail -n1 "$TMP/crr.out") || true
  if [ "$rc" -ne 0 ] || ! [[ "${ok:-}" =~ ^[0-9]+$ ]] || [ "$t0" -lt 0 ] || [ "$t1" -lt 0 ]; then
    record_fail "$mtu" crr "$round" "$CUR" "client exit $rc: $(tail -c 300 "$TMP/crr.out")"; diag_berth "mtu$mtu-crr-round$round"; return 0
  fi
  if [ "$failed" -ne 0 ]; then
    record_fail "$mtu" crr "$round" "$CUR" "$failed of $CONNS connections failed"; diag_berth "mtu$mtu-crr-round$round"; return 0
  fi
  local rate
  rate=$(awk -v n="$ok" -v s="$secs" 'BEGIN{printf "%.3f", (s > 0 ? n / s : 0)}')
  printf '%s\tcrr\t%s\t%s\t%s\t%s\t%s\tok\t\n' "$mtu" "$round" "$CUR" "$rate" "$ok" $((t1 - t0)) >>"$RAW"
  say "mtu $mtu crr round $round $CUR: $rate conn/s, $((t1 - t0)) cpu ticks"
}

# --- preflight: every translator must start and reach the host -------------------
FIRST_MTU=${MTUS%% *}
for CUR in "${TRANSLATORS[@]}"; do
  if ! setup "$CUR" "$FIRST_MTU"; then
    err=$(cat "$TMP/setup.err")
    teardown
    die "$CUR cannot be started or cannot reach the host's loopback: $err"
  fi
  teardown
done
say "iperf3 server 127.0.0.1:$IPORT, echo server 127.0.0.1:$EPORT; translators: ${TRANSLATORS[*]}; MTUs: $MTUS; $ROUNDS rounds, iperf3 -t $TIME, $CONNS connections per rate run"

# --- the runs ----------------------------------------------------------------------------
for mtu in $MTUS; do
  for round in $(seq 1 "$ROUNDS"); do
    for CUR in "${TRANSLATORS[@]}"; do
      if ! setup "$CUR" "$mtu"; then
        why=$(tr '\n' ' ' <"$TMP/setup.err")
        diag_berth "mtu$mtu-setup-round$round"
        for t in up down crr; do record_fail "$mtu" "$t" "$round" "$CUR" "setup: $why"; done
        teardown
        continue
      fi
      iperf_run "$mtu" up "$round"
      iperf_run "$mtu" down "$round"
      crr_run "$mtu" "$round"
      if ! kill -0 "$TPID" 2>/dev/null; then say "WARNING: $CUR exited during round $round: $(grep -v 'to syslog' "$TMP/translator.err" | tail -n 5)"; fi
      teardown
    done
  done
done

# --- capture: instructions under callgrind -----------------------------------------------
CG_BYTES=${BENCH_NET_CG_BYTES:-20M}
CG="$TMP/cg.tsv"   # translator instructions frames bytes
: >"$CG"
if [ "$CAPTURE" = 1 ] && [ "$CG_BYTES" != 0 ]; then
  command -v valgrind >/dev/null 2>&1 || apt_install valgrind
  if command -v valgrind >/dev/null 2>&1 && command -v callgrind_annotate >/dev/null 2>&1; then
    mtu=${MTUS%% *}
    for CUR in "${TRANSLATORS[@]}"; do
      BERTH_PREFIX=(valgrind --tool=callgrind "--callgrind-out-file=$TMP/callgrind.$CUR")
      if setup "$CUR" "$mtu"; then
        ok=1
        callgrind_control -z "$TPID" >/dev/null 2>&1 || true  # count the transfers only, not start-up
        T=600 NSX iperf3 -c "$HOSTIP" -p "$IPORT" -n "$CG_BYTES" --connect-timeout 20000 >"$TMP/cg-iperf.out" 2>&1 || ok=0
        T=600 NSX iperf3 -c "$HOSTIP" -p "$IPORT" -n "$CG_BYTES" --connect-timeout 20000 -R >>"$TMP/cg-iperf.out" 2>&1 || ok=0
        frames=$(timeout 60 "$BERTH" ctl --9p "unix:$SOCK" cat /net/stats 2>/dev/null | awk '$1 == "frames_in" || $1 == "frames_out" {n += $2} END {print n + 0}')
        kill -TERM "$TPID" 2>/dev/null || true
        for _ in $(seq 1 600); do kill -0 "$TPID" 2>/dev/null || break; sleep 0.1; done
        wait "$TPID" 2>/dev/null || true
        TPID=""
        ir=$(callgrind_annotate "$TMP/callgrind.$CUR" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
        if [ "$ok" = 1 ] && [ -n "$ir" ] && [ "$frames" -gt 0 ]; then
          printf '%s\t%s\t%s\n' "$CUR" "$ir" "$frames" >>"$CG"
          say "callgrind $CUR: $ir instructions, $frames frames"
        else
          say "callgrind $CUR: failed ($(tail -n 3 "$TMP/cg-iperf.out" | tr '\n' ' '))"
        fi
      else
        say "callgrind $CUR: setup failed: $(tr '\n' ' ' <"$TMP/setup.err")"
      fi
      teardown
      start_iperf_server
    done
    BERTH_PREFIX=()
  else
    say "valgrind is missing: no callgrind runs"
  fi
fi

# --- report ------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
BERTH_VERSION=$("$BERTH" --version 2>/dev/null || echo unknown)
PASST_VERSION=$(dpkg-query -W -f '${Version}' passt 2>/dev/null || echo unknown)
SLIRP_VERSION=$(slirp4netns --version 2>/dev/null | awk '/^slirp4netns version/ {v=$3} /^libslirp:/ {l=$2} END {if (v) printf "%s (libslirp %s)", v, l; else print "unknown"}')
IPERF_VERSION=$(iperf3 --version 2>/dev/null | head -n1 | awk '{print $2}')
NPROC=$(nproc)
KERNEL=$(uname -r)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
WHEN=$(date -u '+%Y-%m-%d %H:%M UTC')
BERTH_REL=${BERTH_ARG#"$ROOT"/}
NA_TEXT=""
for p in "${!NA[@]}"; do NA_TEXT+="$p: ${NA[$p]}; "; done
CMDS="$TMP/cmds.txt"
: >"$CMDS"
for mtu in $MTUS; do
  for t in "${TRANSLATORS[@]}"; do echo "$t	$mtu	${TCMD_SHOWN[$t-$mtu]:-}" >>"$CMDS"; done
done
for mtu in $MTUS; do
  [ -s "$FLOWS_SNAPSHOT.$mtu" ] && cp "$FLOWS_SNAPSHOT.$mtu" "$TMP/flows.$mtu"
done
export ROOT RAW DOC TIME ROUNDS MTUS CONNS CLK_TCK BERTH_VERSION PASST_VERSION SLIRP_VERSION IPERF_VERSION NPROC KERNEL \
  CPU_MODEL WHEN BERTH_REL TREE NA_TEXT CMDS TMP IPORT EPORT PEERS_WANTED DIAG
if [ "$CAPTURE" = 1 ]; then
  RULES_TEXT=""
  for t in "${TRANSLATORS[@]}"; do RULES_TEXT+="$t: ${RULES_SHOWN[$t]:-(none)}; "; done
  export RULES_TEXT CG CG_BYTES
  python3 - <<'PY'
import os, statistics, sys

env = os.environ
rounds, tck, conns = int(env["ROUNDS"]), int(env["CLK_TCK"]), int(env["CONNS"])
mtus = env["MTUS"].split()
runs, fails, stalls = {}, [], []
for line in open(env["RAW"]):
    mtu, test, rnd, tr, rate, amount, ticks, status, note = line.rstrip("\n").split("\t")
    if status != "ok":
        fails.append((mtu, test, rnd, tr, note))
        continue
    kv = dict(x.split("=", 1) if "=" in x else (x, "") for x in note.split(";") if x)
    if "stalled" in kv:
        stalls.append((mtu, test, rnd, tr, kv["stalled"]))
    rate, amount, ticks = float(rate), float(amount), int(ticks)
    if test == "crr":
        cost = ticks / tck * 1e3 / amount * 1000 if amount > 0 else None
    else:
        cost = ticks / tck / (amount / 1e9) if amount > 0 else None
    runs[(mtu, test, int(rnd), tr)] = (rate, cost)

TESTS = [("up", "iperf3, namespace -> host"), ("down", "iperf3 -R, host -> namespace"),
         ("crr", "short TCP connections")]
VARIANTS = [("berth-all", "all"), ("berth-defaults", "defaults")]


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def ratios(mtu, test, v, idx):
    out = []
    for r in range(1, rounds + 1):
        b, p = runs.get((mtu, test, r, "berth")), runs.get((mtu, test, r, v))
        if b and p and p[idx] is not None and b[idx]:
            out.append(p[idx] / b[idx])
    return out


L = ["<!-- net-capture:begin -->", "## Network: the cost of packet capture (berth with capture rules vs none)", ""]
L.append("Generated by `BENCH_NET_CAPTURE=1 bench/net.sh` on %s. Machine: %s CPUs (%s), kernel %s. berth: `%s` (`%s`; "
         "source tree %s when the run began); iperf3 %s." % (
             env["WHEN"], env["NPROC"], env["CPU_MODEL"] or "unknown", env["KERNEL"], env["BERTH_VERSION"],
             env["BERTH_REL"], env["TREE"], env["IPERF_VERSION"]))
L.append("")
L.append(
    "The same berth binary runs in three configurations that take turns, none, all, defaults, none, ... "
    "(%d rounds per MTU), each turn with a fresh namespace and a fresh berth process: **none** has every "
    "capture rule removed through `/pcap/ctl` (the link wrapper's one branch is all that is left), **all** keeps "
    "only the `all` rule (every frame, both ways, recorded with a nanosecond timestamp into a 1 MiB ring, "
    "snaplen 256), **defaults** keeps the four rules berth starts with (`all`, and the tcpdump filters "
    "`port 53`, `port 67 or port 68`, `icmp` run by libpcap on every frame). Tests as in the section above: "
    "iperf3 -t %s up and down between the namespace and the host's 127.0.0.1, and %d short TCP connections. "
    "Each number is the **median over rounds of the per-round ratio configuration/none**: the rate ratio "
    "should be near 1 (above is better), the CPU ratio (CPU-seconds per GB, CPU-ms per 1000 connections) near "
    "1 (below is better). Nobody reads the rings during the runs." % (rounds, env["TIME"], conns))
L.append("")
L.append("| MTU | test | rounds | rate all/none | CPU per unit all/none | rate defaults/none | CPU per unit defaults/none |")
L.append("|---:|---|---:|---:|---:|---:|---:|")
summary = {}
for mtu in mtus:
    for test, desc in TESTS:
        row = "| %s | %s |" % (mtu, desc)
        n = None
        cells = ""
        for v, short in VARIANTS:
            rr, rc = ratios(mtu, test, v, 0), ratios(mtu, test, v, 1)
            summary[(mtu, test, v)] = (med(rr), med(rc))
            n = len(rr) if n is None else min(n, len(rr))
            rng = " (%.2f-%.2f)" % (min(rr), max(rr)) if rr else ""
            cells += " %s%s | %s |" % (fmt(med(rr)), rng, fmt(med(rc)))
        L.append(row + " %d |" % n + cells)
L.append("")
L.append("Rate ratio: median (min-max over rounds).")
L.append("")
cg = {}
for line in open(env["CG"]):
    tr, ir, frames = line.split()
    cg[tr] = (int(ir), int(frames))
if "berth" in cg:
    base = cg["berth"][0] / cg["berth"][1]
    L.append("Instructions (steadier than any time): each configuration once more, under `valgrind --tool=callgrind`, "
             "while iperf3 moves %s bytes each way (`iperf3 -n %s`, then `-R`) at MTU %s. Frames: `/net/stats` "
             "frames_in + frames_out; counters zeroed (`callgrind_control -z`) once the namespace is up, so start-up "
             "is not counted. Callgrind counts berth's user-space instructions only; the kernel's share "
             "of the work (tap and socket I/O) is in the CPU columns above." % (
                 env["CG_BYTES"], env["CG_BYTES"], mtus[0]))
    L.append("")
    L.append("| configuration | instructions | frames | instructions per frame | ratio to none | added per frame |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for t in ("berth", "berth-all", "berth-defaults"):
        if t in cg:
            ir, fr = cg[t]
            short = {"berth": "none", "berth-all": "all", "berth-defaults": "defaults"}[t]
            L.append("| %s | %d | %d | %.0f | %.3f | %+.0f |" % (short, ir, fr, ir / fr, (ir / fr) / base, ir / fr - base))
    L.append("")
L.append("Medians of the absolute numbers (noisy; for orientation only):")
L.append("")
trs = ["berth", "berth-all", "berth-defaults"]
names = {"berth": "none", "berth-all": "all", "berth-defaults": "defaults"}
L.append("| MTU | test |" + "".join(" %s rate | %s CPU |" % (names[t], names[t]) for t in trs))
L.append("|---:|---|" + "---:|---:|" * len(trs))
for mtu in mtus:
    for test, desc in TESTS:
        row = "| %s | %s |" % (mtu, test)
        for t in trs:
            vals = [runs[k] for k in runs if k[0] == mtu and k[1] == test and k[3] == t]
            rate = med([v[0] for v in vals]); cost = med([v[1] for v in vals if v[1] is not None])
            if test == "crr":
                row += " %s conn/s | %s ms/1000 conn |" % (fmt(rate, ".0f"), fmt(cost, ".0f"))
            else:
                row += " %s Gbit/s | %s s/GB |" % (fmt(None if rate is None else rate / 1e9, ".2f"), fmt(cost, ".2f"))
        L.append(row)
L.append("")
aims = []
for mtu in mtus:
    for test in ("up", "down"):
        s = summary.get((mtu, test, "berth-all"))
        if s and s[0] is not None and s[1] is not None:
            aims.append("MTU %s %s: throughput %.3fx no capture (aim >= 0.95: %s), CPU/GB %.3fx (aim <= 1.05: %s)" % (
                mtu, test, s[0], "met" if s[0] >= 0.95 else "NOT met", s[1], "met" if s[1] <= 1.05 else "NOT met"))
if aims:
    L.append("Against the aim of issue 5 (the `all` rule within 5% of no capture):")
    L.append("")
    L += ["- " + a for a in aims]
    L.append("")
if fails:
    L.append("**%d run(s) failed** and are left out of the ratios:" % len(fails))
    L.append("")
    for mtu, test, rnd, tr, note in fails:
        L.append("- %s, MTU %s, %s, round %s: %s" % (tr, mtu, test, rnd, note.replace("|", "/")))
    L.append("")
if stalls:
    L.append("**Stalls** (a 1-s iperf3 interval that moved less than 1%% of the busiest one; kept in the numbers): %s." %
             "; ".join("%s MTU %s %s round %s" % (tr, mtu, test, rnd) for mtu, test, rnd, tr, _ in stalls))
    L.append("")
L.append("Command lines ($TMP is the script's temporary directory; NS a fresh namespace per turn):")
L.append("")
L.append("```")
L.append("BENCH_NET_CAPTURE=1 BENCH_NET_TIME=%s BENCH_NET_ROUNDS=%d BENCH_NET_MTUS='%s' BENCH_NET_CONNS=%d bench/net.sh %s" % (
    env["TIME"], rounds, env["MTUS"], conns, env["BERTH_REL"]))
for line in open(env["CMDS"]):
    tr, mtu, cmd = line.rstrip("\n").split("\t", 2)
    if cmd and tr == "berth":
        L.append("%s    # every configuration, MTU %s" % (cmd, mtu))
L.append("berth ctl --9p unix:$TMP/berth-N.sock write /pcap/ctl 'rm R'    # none: R = all dns dhcp icmp; "
         "all: R = dns dhcp icmp; defaults: none removed")
L.append("# rules left, as /pcap/rules listed them: %s" % env["RULES_TEXT"].strip())
L.append("iperf3 -s -B 127.0.0.1 -p %s; python3 $TMP/echo.py     # on the host" % env["IPORT"])
L.append("ip netns exec NS iperf3 -c 192.168.65.2 -p %s -t %s --connect-timeout 5000 -J [-R]" % (env["IPORT"], env["TIME"]))
L.append("ip netns exec NS python3 $TMP/crr.py 192.168.65.2 %s %d" % (env["EPORT"], conns))
L.append("```")
L.append("<!-- net-capture:end -->")
section = "\n".join(L) + "\n"
sys.path.insert(0, os.path.join(env["ROOT"], "bench"))
from docsection import replace_section
replace_section(env["DOC"], "net-capture", section)
print(section)
PY
  say "updated $DOC (section net-capture)"
  exit 0
fi
python3 - <<'PY'
import os, statistics, sys

env = os.environ
rounds, tck, conns = int(env["ROUNDS"]), int(env["CLK_TCK"]), int(env["CONNS"])
mtus = env["MTUS"].split()
peers = env["PEERS_WANTED"].split()
na = dict(x.split(": ", 1) for x in env["NA_TEXT"].split("; ") if x)
runs, fails, stalls, retr = {}, [], [], {}
for line in open(env["RAW"]):
    mtu, test, rnd, tr, rate, amount, ticks, status, note = line.rstrip("\n").split("\t")
    if status != "ok":
        fails.append((mtu, test, rnd, tr, note))
        continue
    kv = dict(x.split("=", 1) if "=" in x else (x, "") for x in note.split(";") if x)
    if "retr" in kv and int(kv["retr"]) >= 0:
        retr.setdefault((mtu, test, tr), []).append(int(kv["retr"]))
    if "stalled" in kv:
        stalls.append((mtu, test, rnd, tr, kv["stalled"], "dump" in kv))
    rate, amount, ticks = float(rate), float(amount), int(ticks)
    if test == "crr":   # CPU-ms per 1000 connections
        cost = ticks / tck * 1e3 / amount * 1000 if amount > 0 else None
    else:               # CPU-seconds per GB (1e9 bytes)
        cost = ticks / tck / (amount / 1e9) if amount > 0 else None
    runs[(mtu, test, int(rnd), tr)] = (rate, cost)

TESTS = [("up", "iperf3, namespace -> host"), ("down", "iperf3 -R, host -> namespace"),
         ("crr", "short TCP connections")]


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def ratios(mtu, test, peer, idx):
    out = []
    for r in range(1, rounds + 1):
        b, p = runs.get((mtu, test, r, "berth")), runs.get((mtu, test, r, peer))
        if b and p and b[idx] is not None and p[idx]:
            out.append(b[idx] / p[idx])
    return out


L = ["<!-- net:begin -->", "## Network: berth vs pasta and slirp4netns (iperf3, connection rate)", ""]
L.append("Generated by `bench/net.sh` on %s. Machine: %s CPUs (%s), kernel %s. berth: `%s` (`%s`; source tree %s when the run began); "
         "pasta: Debian package passt %s; slirp4netns %s; iperf3 %s." % (
             env["WHEN"], env["NPROC"], env["CPU_MODEL"] or "unknown", env["KERNEL"], env["BERTH_VERSION"], env["BERTH_REL"], env["TREE"],
             env["PASST_VERSION"], env["SLIRP_VERSION"], env["IPERF_VERSION"]))
L.append("")
L.append(
    "Each translator connects a network namespace (the namespace's own Linux TCP/IP stack is the guest) "
    "to the host, and the namespace talks to servers on the host's 127.0.0.1: berth through its host alias "
    "192.168.65.2, pasta through the namespace's default gateway (which pasta maps to the host's loopback), "
    "slirp4netns through 10.0.2.2. For each MTU the translators take turns, berth, pasta, slirp4netns, berth, ... "
    "(%d rounds); each turn starts a fresh namespace and a fresh translator process and runs three tests: "
    "**up**, `iperf3 -t %d` from the namespace to the host; **down**, the same with `-R`; **crr**, %d sequential "
    "short TCP connections (connect, send 64 bytes, read the echo, close) from a python client in the "
    "namespace to a python echo server on the host. Rate: iperf3's receiver-side bits/s, or connections/s. "
    "CPU: the translator process's utime+stime (all threads, `/proc/PID/stat`, %d ticks/s) during the test, "
    "per GB received (10^9 bytes) or per 1000 connections. Each ratio below is the **median over rounds of the "
    "per-round ratio berth/peer**: above 1 is better for berth in the rate columns, below 1 is better for berth "
    "in the CPU columns. The iperf3 and python processes share the machine's CPUs with the translator, so "
    "absolute numbers are only indicative." % (rounds, int(env["TIME"]), conns, tck))
L.append("")
hdr = "| MTU | test |"
sep = "|---:|---|"
for p in peers:
    hdr += " rounds | rate berth/%s | CPU per unit berth/%s |" % (p, p)
    sep += "---:|---:|---:|"
L.append(hdr); L.append(sep)
summary = {}
for mtu in mtus:
    for test, desc in TESTS:
        row = "| %s | %s |" % (mtu, desc)
        for p in peers:
            if p in na:
                row += " 0 | n/a | n/a |"
                continue
            rr, rc = ratios(mtu, test, p, 0), ratios(mtu, test, p, 1)
            summary[(mtu, test, p)] = (med(rr), med(rc))
            rng = " (%.2f-%.2f)" % (min(rr), max(rr)) if rr else ""
            row += " %d | %s%s | %s |" % (len(rr), fmt(med(rr)), rng, fmt(med(rc)))
        L.append(row)
L.append("")
L.append("Rate ratio: median (min-max over rounds). CPU per unit: CPU-seconds per GB for up/down, "
         "CPU-ms per 1000 connections for crr.")
L.append("")
L.append("Medians of the absolute numbers (noisy; for orientation only):")
L.append("")
trs = ["berth"] + [p for p in peers if p not in na]
hdr = "| MTU | test |" + "".join(" %s rate | %s CPU |" % (t, t) for t in trs)
L.append(hdr); L.append("|---:|---|" + "---:|---:|" * len(trs))
for mtu in mtus:
    for test, desc in TESTS:
        row = "| %s | %s |" % (mtu, test)
        for t in trs:
            vals = [runs[k] for k in runs if k[0] == mtu and k[1] == test and k[3] == t]
            rate = med([v[0] for v in vals]); cost = med([v[1] for v in vals if v[1] is not None])
            if test == "crr":
                row += " %s conn/s | %s ms/1000 conn |" % (fmt(rate, ".0f"), fmt(cost, ".0f"))
            else:
                rt = med(retr.get((mtu, test, t), []))
                row += " %s Gbit/s%s | %s s/GB |" % (fmt(None if rate is None else rate / 1e9),
                                                   "" if rt is None else ", %.0f retr" % rt, fmt(cost, ".2f"))
        L.append(row)
L.append("")
L.append("retr: iperf3's count of TCP retransmissions by the sender (the namespace's kernel for up, the host's "
         "for down), median over rounds.")
L.append("")

# Against the aims of issue 3.
def stalled(mtu, test, tr):
    n = sum(1 for x in stalls if x[0] == mtu and x[1] == test and x[3] == tr)
    return "" if not n else "; %s stalled in %d of %d rounds" % (tr, n, rounds)


aims = []
for mtu in mtus:
    for test in ("up", "down"):
        s = summary.get((mtu, test, "pasta"))
        if s and s[0] is not None and s[1] is not None:
            aims.append("MTU %s %s: throughput %.2fx pasta (aim >= 1: %s), CPU/GB %.2fx pasta (aim <= 1: %s)%s%s" % (
                mtu, test, s[0], "met" if s[0] >= 1 else "NOT met", s[1], "met" if s[1] <= 1 else "NOT met",
                stalled(mtu, test, "berth"), stalled(mtu, test, "pasta")))
    if mtu == "1500":
        for test in ("up", "down"):
            s = summary.get((mtu, test, "slirp4netns"))
            if s and s[0] is not None:
                aims.append("MTU 1500 %s: throughput %.2fx slirp4netns (aim >= 2: %s)%s%s" % (
                    test, s[0], "met" if s[0] >= 2 else "NOT met", stalled(mtu, test, "berth"),
                    stalled(mtu, test, "slirp4netns")))
if aims:
    L.append("Against the aims of issue 3 (medians of the ratios above; a translator's stalls, listed below, "
             "count in its numbers):")
    L.append("")
    L += ["- " + a for a in aims]
    L.append("")
for p, why in sorted(na.items()):
    L.append("**%s: n/a** (%s)." % (p, why))
    L.append("")
if fails:
    L.append("**%d run(s) failed** and are left out of the ratios:" % len(fails))
    L.append("")
    for mtu, test, rnd, tr, note in fails:
        L.append("- %s, MTU %s, %s, round %s: %s" % (tr, mtu, test, rnd, note.replace("|", "/")))
    if any(f[3] == "berth" for f in fails):
        L.append("")
        L.append("berth's `/net/stats`, `/net/flows` and stderr at each failure were kept in `%s` on the "
                 "machine that ran it." % env["DIAG"])
    L.append("")
if stalls:
    L.append("**Stalls**: %d iperf3 run(s) had one or more 1-s intervals that moved less than 1%% of the run's "
             "busiest interval; they are kept in the numbers above:" % len(stalls))
    L.append("")
    for mtu, test, rnd, tr, ivs, dump in stalls:
        L.append("- %s, MTU %s, %s, round %s: interval(s) %s of %d%s" % (
            tr, mtu, test, rnd, ivs, int(env["TIME"]),
            "; berth's /net/flows, /net/stats, `ss -tnmi` and epoll registrations during the stall were kept in "
            "`%s/stall-mtu%s-%s-round%s`" % (env["DIAG"], mtu, test, rnd) if dump else ""))
    L.append("")
    first = next((x for x in stalls if x[5]), None)
    if first:
        mtu, test, rnd, tr, ivs, _ = first
        path = "%s/stall-mtu%s-%s-round%s" % (env["DIAG"], mtu, test, rnd)
        keep, sec = [], None
        try:
            for line in open(path).read().splitlines():
                if line.startswith("# "):
                    sec = line
                    if any(k in line for k in ("/net/flows", "ss -tnmi", "epoll", "no CPU")):
                        keep.append(line)
                    continue
                if sec and any(k in sec for k in ("/net/flows", "ss -tnmi", "epoll")) and line.strip():
                    keep.append(" ".join(line.split())[:240])
        except OSError:
            keep = []
        if keep:
            L.append("berth's view during the first stall (%s, MTU %s, round %s): flows, host sockets on the iperf3 "
                     "port, and the fds berth's epoll watches:" % (test, mtu, rnd))
            L.append("")
            L.append("```")
            L += keep[:40]
            L.append("```")
            L.append("")
for mtu in mtus:
    f = os.path.join(env["TMP"], "flows." + mtu)
    if os.path.exists(f):
        lines = [l for l in open(f).read().splitlines() if l.strip()]
        L.append("`/net/flows` 1 s into berth's first iperf3 run at MTU %s (%d line(s)):" % (mtu, len(lines)))
        L.append("")
        L.append("```")
        L += lines[:10]
        L.append("```")
        L.append("")
L.append("Command lines (NS is a fresh namespace per turn, `berth-bn-PID-N`; ports are picked at run time, "
         "these are the ones this run used; $TMP is the script's temporary directory):")
L.append("")
L.append("```")
L.append("BENCH_NET_TIME=%s BENCH_NET_ROUNDS=%d BENCH_NET_MTUS='%s' BENCH_NET_CONNS=%d bench/net.sh %s" % (
    env["TIME"], rounds, env["MTUS"], conns, env["BERTH_REL"]))
L.append("iperf3 -s -B 127.0.0.1 -p %s                 # on the host" % env["IPORT"])
L.append("python3 $TMP/echo.py                             # echo server on the host, printed port %s" % env["EPORT"])
L.append("ip netns add NS; ip netns exec NS ip link set lo up")
for line in open(env["CMDS"]):
    tr, mtu, cmd = line.rstrip("\n").split("\t", 2)
    if cmd:
        L.append("%s    # %s, MTU %s" % (cmd, tr, mtu))
L.append("ip netns exec NS sh -c 'ip addr add 192.168.65.3/24 dev bt0; ip link set bt0 mtu MTU; "
         "ip link set bt0 up; ip route add default via 192.168.65.1'    # berth only")
L.append("ip netns exec NS iperf3 -c HOST -p %s -t %s --connect-timeout 5000 -J         # up" % (env["IPORT"], env["TIME"]))
L.append("ip netns exec NS iperf3 -c HOST -p %s -t %s --connect-timeout 5000 -J -R      # down" % (env["IPORT"], env["TIME"]))
L.append("ip netns exec NS python3 $TMP/crr.py HOST %s %d                           # crr" % (env["EPORT"], conns))
L.append("# HOST: berth 192.168.65.2; pasta the namespace's default gateway (here the host's gateway, "
         "copied by pasta); slirp4netns 10.0.2.2")
L.append("```")
L.append("<!-- net:end -->")
section = "\n".join(L) + "\n"

sys.path.insert(0, os.path.join(env["ROOT"], "bench"))
from docsection import replace_section
replace_section(env["DOC"], "net", section)
print(section)
PY
say "updated $DOC"
