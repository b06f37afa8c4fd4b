#!/usr/bin/env bash
# Port-forward benchmark: Berth's host -> guest TCP forwards against pasta's
# `-t` forwards and slirp4netns's add_hostfwd, each forwarding a port of the
# host's 127.0.0.1 to a server inside a network namespace.
#
# Usage: bench/forward.sh [BERTH_BINARY]        (default: build/release/berth)
#
# For each MTU (default 1500 only) and each round, the translators take turns,
# berth, pasta, slirp4netns, berth, pasta, slirp4netns, ... (A B C A B C ...).
# Each turn gets a fresh namespace running an iperf3 server (port 5201) and a
# python echo server (port 7777), and a fresh translator process that forwards
# two fresh ports of the host's 127.0.0.1 to them. Each turn runs:
#   fwd-in   iperf3 on the host to 127.0.0.1:P1, forwarded to the namespace's
#            iperf3 server: data flows host -> namespace
#   fwd-out  the same with -R: data flows namespace -> host
#   crr      a connection rate: a python client on the host makes
#            BENCH_FWD_CONNS sequential short TCP connections (connect, send 64
#            bytes, read the echo, close) to 127.0.0.1:P2, forwarded to the
#            namespace's echo server
# For every run it records the rate (bits/s or connections/s) and the
# translator process's CPU time (utime+stime from /proc/PID/stat, all threads)
# consumed during the run. It reports, per MTU and test, the median over rounds
# of the per-round ratios berth/pasta and berth/slirp4netns of the rate and of
# the CPU cost (CPU-seconds per GB moved; CPU-ms per 1000 connections).
# Times alone mean little on shared machines; the ratios are the result.
# A run in which a whole iperf3 second moved (almost) nothing is reported as a
# stall; for berth, a watcher that sees berth use no CPU for 0.75 s during
# iperf3 keeps berth's /net/flows, /net/stats, /ports/N, `ss -tnmi` and epoll
# registrations in BENCH_FWD_DIAG; a failed berth run keeps /net/stats,
# /net/flows, /ports/stats, /ports/1, /ports/2 and berth's stderr there.
#
# How each translator forwards 127.0.0.1:P on the host into the namespace:
#   berth       berth serve --link tap:bt0@NS --mtu N
#                 --forward tcp:127.0.0.1:P1:tcp:192.168.65.3:5201
#                 --forward tcp:127.0.0.1:P2:tcp:192.168.65.3:7777
#               the namespace is 192.168.65.3/24 via 192.168.65.1, configured
#               statically; it pings the gateway once so that berth knows it
#   pasta       pasta --runas 0 --config-net --netns /run/netns/NS -f --mtu N
#                 -t 127.0.0.1/P1:5201 -t 127.0.0.1/P2:7777 -u none -T none -U none
#   slirp4netns slirp4netns --configure --mtu=N --disable-dns --api-socket SOCK
#                 --netns-type=path /run/netns/NS tap0, then on SOCK
#               {"execute": "add_hostfwd", "arguments": {"proto": "tcp",
#                "host_addr": "127.0.0.1", "host_port": P1, "guest_port": 5201}}
#               (and the same for P2 -> 7777)
# The echo server notes the peer addresses it sees; the report states them
# (pasta splices connections from the host's loopback to the namespace's
# loopback instead of passing them through its tap device).
#
# The results replace the section between <!-- forward:begin --> and
# <!-- forward:end --> in docs/BENCHMARKS.md (created with an intro if missing).
#
# Environment:
#   BENCH_FWD_TIME    seconds per iperf3 run (iperf3 -t; default 3)
#   BENCH_FWD_ROUNDS  rounds per MTU (default 5; at least 5 recommended)
#   BENCH_FWD_MTUS    MTUs to test (default "1500")
#   BENCH_FWD_CONNS   connections per connection-rate run (default 1000)
#   BENCH_FWD_PEERS   peers to compare with (default "pasta slirp4netns")
#   BENCH_FWD_BERTH_LOG  berth's --log-level (default warn)
#   BENCH_FWD_DOC     the markdown file to update (default docs/BENCHMARKS.md)
#   BENCH_FWD_DIAG    where diagnostics of failed or stalled berth runs are kept
#                     (default /tmp/berth-bench-fwd-diag.PID; made only then)
#
# Exit status: 0 done (slowness never fails it; runs that fail are counted and
# reported), 1 berth could not be started or its forwards did not work at all,
# 2 bad usage, 77 skipped (not root, no network namespaces or TUN, iperf3 or
# python3 missing). A peer that is not installed and cannot be installed, or
# whose forwards do not work at all, is reported as n/a.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH=$(readlink -f "${1:-$ROOT/build/release/berth}" || true)
TIME=${BENCH_FWD_TIME:-3}
ROUNDS=${BENCH_FWD_ROUNDS:-5}
MTUS=${BENCH_FWD_MTUS:-1500}
CONNS=${BENCH_FWD_CONNS:-1000}
PEERS_WANTED=${BENCH_FWD_PEERS:-pasta slirp4netns}
BERTH_LOG=${BENCH_FWD_BERTH_LOG:-warn}
DOC=${BENCH_FWD_DOC:-$ROOT/docs/BENCHMARKS.md}
DIAG=${BENCH_FWD_DIAG:-/tmp/berth-bench-fwd-diag.$$}
GUEST_IPERF_PORT=5201
GUEST_ECHO_PORT=7777

say() { echo "bench/forward: $*" >&2; }
skip() { echo "SKIP: bench/forward: $*" >&2; exit 77; }
die() { echo "FAIL: bench/forward: $*" >&2; exit 1; }

if [ -z "$BERTH" ] || [ ! -x "$BERTH" ]; then
  die "${1:-$ROOT/build/release/berth} is not an executable (build it: cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build/release berth)"
fi
for v in TIME ROUNDS CONNS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { say "BENCH_FWD_$v must be a positive integer"; exit 2; }
done
[ -n "${MTUS// /}" ] || { say "BENCH_FWD_MTUS is empty"; exit 2; }
for m in $MTUS; do
  if ! [[ "$m" =~ ^[0-9]+$ ]] || [ "$m" -lt 576 ] || [ "$m" -gt 65520 ]; then say "BENCH_FWD_MTUS: $m is not in 576..65520"; exit 2; fi
done
for p in $PEERS_WANTED; do
  case "$p" in pasta | slirp4netns) ;; *) say "BENCH_FWD_PEERS: unknown peer '$p'"; exit 2 ;; esac
done
[ "$ROUNDS" -ge 5 ] || say "warning: $ROUNDS rounds; at least 5 are recommended"

case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces, TAP devices)"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
command -v ip >/dev/null 2>&1 || skip "iproute2 (ip) is missing"
command -v ss >/dev/null 2>&1 || skip "iproute2 (ss) is missing"
command -v python3 >/dev/null 2>&1 || skip "python3 is missing"
if ip netns add "berth-bf-$$-probe" 2>/dev/null; then ip netns del "berth-bf-$$-probe"; else skip "cannot create a network namespace (ip netns add)"; fi

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

TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-benchfwd.XXXXXX")
# Run a copy, so that a rebuild during the benchmark cannot mix two versions.
BERTH_ARG=$BERTH
cp "$BERTH" "$TMP/berth"
BERTH=$TMP/berth
TREE=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
NS=""             # the current namespace
TPID=""           # the current translator's pid
SIPERF_PID=""     # the namespace's iperf3 server
SECHO_PID=""      # the namespace's echo server
NSSEQ=0
SOCK="" P1="" P2=""
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
  stop_pid "$SIPERF_PID"
  SIPERF_PID=""
  stop_pid "$SECHO_PID"
  SECHO_PID=""
  if [ -n "$NS" ]; then ip netns del "$NS" 2>/dev/null || true; fi
  NS=""
}
# shellcheck disable=SC2317
cleanup() {
  teardown
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() {  # two distinct ports of 127.0.0.1 that no socket uses, below the ephemeral range
  local p ports=()
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    [ "${ports[0]:-}" != "$p" ] || continue
    ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null | grep -q . && continue
    ports+=("$p")
    [ ${#ports[@]} -lt 2 ] || { echo "${ports[*]}"; return 0; }
  done
  return 1
}
NSX() { timeout "${T:-30}" ip netns exec "$NS" "$@"; }
ns_listening() { NSX ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# --- helper programs --------------------------------------------------------------
cat >"$TMP/echo.py" <<'PY'
# Echo server on all of the namespace's addresses; appends each new peer
# address it sees to the file argv[2].
import selectors, socket, sys
port, peers_file = int(sys.argv[1]), sys.argv[2]
seen = set()
sel = selectors.DefaultSelector()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port)); s.listen(1024); s.setblocking(False)
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            try:
                c, peer = s.accept()
            except OSError:
                continue
            if peer[0] not in seen and len(seen) < 16:
                seen.add(peer[0])
                with open(peers_file, "a") as f:
                    f.write(peer[0] + "\n")
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


cat >"$TMP/slirpapi.py" <<'PY'
# slirp4netns --api-socket: add_hostfwd 127.0.0.1:HOSTPORT -> guest GUESTPORT
# for each pair. Usage: slirpapi.py SOCKET HOSTPORT GUESTPORT [HOSTPORT GUESTPORT]...
import json, socket, sys, time
path, args = sys.argv[1], [int(x) for x in sys.argv[2:]]


def add(hport, gport):
    req = {"execute": "add_hostfwd",
           "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": hport, "guest_port": gport}}
    end = time.monotonic() + 10
    err = None
    while time.monotonic() < end:
        try:
            s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path)
            s.sendall(json.dumps(req).encode()); s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                data += b
            s.close()
            rep = json.loads(data.decode() or "{}")
            if "return" in rep:
                return
            print("add_hostfwd %d -> %d: %s" % (hport, gport, data.decode(errors="replace"))); sys.exit(1)
        except (OSError, ValueError) as e:
            err = str(e)
        time.sleep(0.1)
    print("api socket %s: %s" % (path, err)); sys.exit(1)


for i in range(0, len(args) - 1, 2):
    add(args[i], args[i + 1])
PY

probe_echo() {  # $1 port: does 127.0.0.1:PORT echo (through the forward)? Tries for about 10 s.
  local reply err=""
  for _ in $(seq 1 40); do
    reply=""
    if { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null; then
      if printf 'probe\n' >&3 && IFS= read -r -t 3 reply <&3 && [ "$reply" = probe ]; then
        exec 3>&-
        return 0
      fi
      err="the echo returned '${reply}'"
      exec 3>&-
    else
      err="cannot connect to 127.0.0.1:$1"
    fi
    sleep 0.25
  done
  echo "$err"
  return 1
}

cpu_ticks() {  # utime+stime of every thread of process $1, in clock ticks
  local s f
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -1; return; }
  s=${s##*) }
  read -r -a f <<<"$s"
  echo $((f[11] + f[12]))
}

# --- servers inside the namespace ---------------------------------------------------
start_ns_iperf() {
  stop_pid "$SIPERF_PID"
  ip netns exec "$NS" iperf3 -s -p "$GUEST_IPERF_PORT" >>"$TMP/iperf-server.log" 2>&1 &
  SIPERF_PID=$!
  for _ in $(seq 1 100); do ns_listening "$GUEST_IPERF_PORT" && return 0; kill -0 "$SIPERF_PID" 2>/dev/null || break; sleep 0.1; done
  echo "the iperf3 server in $NS did not start: $(tail -n 5 "$TMP/iperf-server.log")" >>"$TMP/setup.err"
  return 1
}
start_ns_servers() {  # $1 translator name (for the peers file); wait_ns_servers waits for them
  ip netns exec "$NS" iperf3 -s -p "$GUEST_IPERF_PORT" >>"$TMP/iperf-server.log" 2>&1 &
  SIPERF_PID=$!
  ip netns exec "$NS" python3 "$TMP/echo.py" "$GUEST_ECHO_PORT" "$TMP/peers.$1" >>"$TMP/echo.err" 2>&1 &
  SECHO_PID=$!
}
wait_ns_servers() {
  local i=0 e=0
  for _ in $(seq 1 150); do
    [ "$i" = 1 ] || { ns_listening "$GUEST_IPERF_PORT" && i=1; }
    [ "$e" = 1 ] || { ns_listening "$GUEST_ECHO_PORT" && e=1; }
    [ "$i$e" = 11 ] && return 0
    { kill -0 "$SIPERF_PID" && kill -0 "$SECHO_PID"; } 2>/dev/null || break
    sleep 0.1
  done
  [ "$i" = 1 ] || echo "the iperf3 server in $NS did not start: $(tail -n 5 "$TMP/iperf-server.log")" >>"$TMP/setup.err"
  [ "$e" = 1 ] || echo "the echo server in $NS did not start: $(tail -n 5 "$TMP/echo.err")" >>"$TMP/setup.err"
  return 1
}

# --- translators --------------------------------------------------------------------
# setup NAME MTU: a fresh namespace with its servers, and the translator NAME
# attached and forwarding 127.0.0.1:P1 -> iperf3 and 127.0.0.1:P2 -> echo;
# sets NS, TPID, P1, P2, SOCK (berth's control socket) and TCMD. Returns
# non-zero, with the reason in $TMP/setup.err, if the forward does not echo.
BERTH_EXTRA=()
if "$BERTH" serve --help 2>&1 | grep -q -- '--dns-upstream'; then
  # Nothing here queries DNS, but keep the forwarder on loopback anyway.
  BERTH_EXTRA=(--dns-upstream 127.0.0.1:53)
fi
declare -A TCMD_SHOWN=()
setup() {
  local name=$1 mtu=$2 dev linkmtu ok
  NSSEQ=$((NSSEQ + 1))
  NS=berth-bf-$$-$NSSEQ
  SOCK="" P1="" P2=""
  : >"$TMP/setup.err"
  ip netns add "$NS" 2>>"$TMP/setup.err" || { NS=""; return 1; }
  NSX ip link set lo up
  start_ns_servers "$name"   # they start while the translator does
  read -r P1 P2 < <(free_ports) || true
  [ -n "${P2:-}" ] || { echo "no free ports on 127.0.0.1" >>"$TMP/setup.err"; return 1; }
  case "$name" in
    berth)
      SOCK=$TMP/berth-$NSSEQ.sock
      TCMD=("$BERTH" serve --link "tap:bt0@$NS" --9p "unix:$SOCK" --mtu "$mtu"
            --forward "tcp:127.0.0.1:$P1:tcp:192.168.65.3:$GUEST_IPERF_PORT"
            --forward "tcp:127.0.0.1:$P2:tcp:192.168.65.3:$GUEST_ECHO_PORT"
            "${BERTH_EXTRA[@]}" --log-level "$BERTH_LOG")
      "${TCMD[@]}" >"$TMP/translator.out" 2>"$TMP/translator.err" &
      TPID=$!
      for _ in $(seq 1 100); do
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
      # berth learns the guest's address from its traffic; a static guest
      # that has sent nothing yet is unknown to it, so say hello once.
      ok=""
      for _ in $(seq 1 10); do
        if NSX ping -c1 -W1 192.168.65.1 >/dev/null 2>&1; then ok=1; break; fi
        kill -0 "$TPID" 2>/dev/null || break
      done
      [ -n "$ok" ] || { echo "berth: the namespace cannot ping the gateway 192.168.65.1" >>"$TMP/setup.err"; return 1; }
      ;;
    pasta)
      TCMD=(pasta --runas 0 --config-net --netns "/run/netns/$NS" -f --mtu "$mtu"
            -t "127.0.0.1/$P1:$GUEST_IPERF_PORT" -t "127.0.0.1/$P2:$GUEST_ECHO_PORT"
            -u none -T none -U none -l "$TMP/pasta.log")
      "${TCMD[@]}" >"$TMP/translator.out" 2>"$TMP/translator.err" &
      TPID=$!
      ;;
    slirp4netns)
      SOCK=$TMP/slirp-$NSSEQ.sock
      TCMD=(slirp4netns --configure --mtu="$mtu" --disable-dns --api-socket "$SOCK" --netns-type=path "/run/netns/$NS" tap0)
      "${TCMD[@]}" >"$TMP/translator.out" 2>"$TMP/translator.err" &
      TPID=$!
      for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; kill -0 "$TPID" 2>/dev/null || break; sleep 0.1; done
      if [ ! -S "$SOCK" ]; then
        echo "slirp4netns did not create its API socket: $(tail -n 20 "$TMP/translator.err")" >>"$TMP/setup.err"; return 1
      fi
      timeout 30 python3 "$TMP/slirpapi.py" "$SOCK" "$P1" "$GUEST_IPERF_PORT" "$P2" "$GUEST_ECHO_PORT" >>"$TMP/setup.err" 2>&1 || return 1
      ;;
  esac
  # Wait for the namespace's default route (pasta and slirp4netns configure it).
  dev=""
  for _ in $(seq 1 100); do
    dev=$(NSX ip -4 route show default 2>/dev/null | awk '/^default via/ {for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1); exit}')
    [ -n "$dev" ] && break
    kill -0 "$TPID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$dev" ]; then
    echo "$name did not configure $NS (no default route): $(grep -v 'to syslog' "$TMP/translator.err" | tail -n 20)" >>"$TMP/setup.err"; return 1
  fi
  linkmtu=$(NSX cat "/sys/class/net/$dev/mtu" 2>/dev/null || echo "?")
  if [ "$linkmtu" != "$mtu" ]; then
    echo "$name: the namespace's $dev has MTU $linkmtu, not $mtu" >>"$TMP/setup.err"; return 1
  fi
  if [ -z "${TCMD_SHOWN[$name-$mtu]:-}" ]; then
    local shown="${TCMD[*]}"
    shown=${shown//$BERTH /$BERTH_ARG }; shown=${shown//$NS/NS}; shown=${shown//$TMP/\$TMP}; shown=${shown//$ROOT\//}
    shown=${shown//-$NSSEQ.sock/-N.sock}; shown=${shown//127.0.0.1:$P1:/127.0.0.1:P1:}; shown=${shown//127.0.0.1:$P2:/127.0.0.1:P2:}
    shown=${shown//127.0.0.1\/$P1:/127.0.0.1\/P1:}; shown=${shown//127.0.0.1\/$P2:/127.0.0.1\/P2:}
    TCMD_SHOWN[$name-$mtu]="$shown"
  fi
  wait_ns_servers || return 1
  if ! probe_echo "$P2" >>"$TMP/setup.err" 2>&1; then
    echo "$name: the forward 127.0.0.1:$P2 -> the namespace's echo server does not echo" >>"$TMP/setup.err"; return 1
  fi
  return 0
}

berth_ctl() { timeout 10 "$BERTH" ctl --9p "unix:$SOCK" cat "$1" 2>&1 || echo "(ctl cat $1 failed)"; }

diag_berth() {  # $1 label: keep berth's view of a failed run
  [ "$CUR" = berth ] || return 0
  mkdir -p "$DIAG"
  local file=$DIAG/$1 f
  {
    echo "# $1: ${TCMD[*]}"
    echo "# alive: $(kill -0 "$TPID" 2>/dev/null && echo yes || echo no)"
    for f in /net/stats /net/flows /ports/stats /ports/1 /ports/2; do echo "# $f"; berth_ctl "$f"; done
    echo "# ss -tnmi (ports $P1 $P2)"; ss -tnmi "( sport = :$P1 or dport = :$P1 or sport = :$P2 or dport = :$P2 )" 2>&1
    echo "# ss -tnmi in $NS"; NSX ss -tnmi 2>&1 | head -n 60
    echo "# berth stderr (last 50 lines)"; tail -n 50 "$TMP/translator.err"
  } >"$file" 2>&1
  say "berth diagnostics kept in $file"
}

RAW="$TMP/raw.tsv"   # mtu test round translator rate amount cpu_ticks status note
: >"$RAW"
record_fail() {  # mtu test round translator why
  printf '%s\t%s\t%s\t%s\t0\t0\t0\tfailed\t%s\n' "$1" "$2" "$3" "$4" "$(tr '\t\n' '  ' <<<"$5" | cut -c1-300)" >>"$RAW"
  say "FAILED: $4 mtu $1 $2 round $3: $5"
}

# While berth runs iperf3, a watcher samples berth's CPU time every 0.25 s;
# 0.75 s without any (berth idle while iperf3 is still running) is a
# stall, and the watcher keeps berth's view of it. The dump is kept only if
# iperf3's own per-second intervals confirm the stall.
stall_watch() {  # $1 dump file
  local a b c cur f
  a=-1 b=-1 c=-1   # the samples 0.75, 0.5 and 0.25 s ago
  for _ in $(seq 1 $(((TIME + 70) * 4))); do
    sleep 0.25
    cur=$(cpu_ticks "$TPID")
    [ "$cur" -ge 0 ] || return 0
    if [ "$cur" = "$a" ]; then
      {
        echo "# berth used no CPU for 0.75 s while iperf3 was running ($(date -u '+%H:%M:%S.%N'))"
        echo "# /net/flows"; berth_ctl /net/flows
        echo "# /net/stats"; berth_ctl /net/stats
        echo "# /ports/1"; berth_ctl /ports/1
        echo "# ss -tnmi (host port $P1)"; ss -tnmi "( sport = :$P1 or dport = :$P1 )" 2>&1
        echo "# ss -tnmi in the namespace (port $GUEST_IPERF_PORT)"; NSX ss -tnmi "( sport = :$GUEST_IPERF_PORT or dport = :$GUEST_IPERF_PORT )" 2>&1
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

# iperf3's JSON is parsed once, after all the runs (a python start costs
# seconds on a loaded machine): each run keeps its JSON and, for berth, the
# watcher's dump in $RUNS, listed in $RUNS/index.tsv.
RUNS="$TMP/runs"
mkdir -p "$RUNS"
: >"$RUNS/index.tsv"
NRUN=0
iperf_run() {  # mtu test(fwd-in|fwd-out) round
  local mtu=$1 test=$2 round=$3 t0 t1 rc=0 args=() watch="" bps
  [ "$test" = fwd-out ] && args=(-R)
  if ! kill -0 "$SIPERF_PID" 2>/dev/null; then start_ns_iperf || true; fi
  rm -f "$TMP/stall.dump"
  if [ "$CUR" = berth ]; then
    stall_watch "$TMP/stall.dump" &
    watch=$!
  fi
  t0=$(cpu_ticks "$TPID")
  timeout $((TIME + 60)) iperf3 -c 127.0.0.1 -p "$P1" -t "$TIME" --connect-timeout 5000 -J "${args[@]}" >"$TMP/iperf.json" 2>"$TMP/iperf.err" || rc=$?
  t1=$(cpu_ticks "$TPID")
  if [ -n "$watch" ]; then kill "$watch" 2>/dev/null || true; wait "$watch" 2>/dev/null || true; fi
  if [ "$rc" -ne 0 ] || [ "$t0" -lt 0 ] || [ "$t1" -lt 0 ]; then
    record_fail "$mtu" "$test" "$round" "$CUR" "iperf3 exit $rc (translator cpu ticks $t0..$t1; -1: it exited): $(grep -o '"error":.*' "$TMP/iperf.json" | head -n1) $(tail -c 300 "$TMP/iperf.err")"
    diag_berth "mtu$mtu-$test-round$round"; start_ns_iperf || true; return 0
  fi
  NRUN=$((NRUN + 1))
  cp "$TMP/iperf.json" "$RUNS/$NRUN.json"
  if [ -s "$TMP/stall.dump" ]; then
    { echo "# $CUR mtu $mtu $test round $round: ${TCMD[*]}"; cat "$TMP/stall.dump"; echo "# berth stderr (last 50 lines)"; tail -n 50 "$TMP/translator.err"; } \
      >"$RUNS/$NRUN.dump"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$NRUN" "$mtu" "$test" "$round" "$CUR" $((t1 - t0)) >>"$RUNS/index.tsv"
  # For the progress line only: the last bits_per_second of iperf3's JSON is sum_received's.
  bps=$(grep -o '"bits_per_second":[[:space:]]*[0-9.e+]*' "$TMP/iperf.json" | tail -n1 | grep -o '[0-9.e+]*$' || true)
  say "mtu $mtu $test round $round $CUR: $(awk -v b="${bps:-0}" 'BEGIN{printf "%.2f", b/1e9}') Gbit/s, $((t1 - t0)) cpu ticks"
}

crr_run() {  # mtu round
  local mtu=$1 round=$2 t0 t1 rc=0 ok failed secs
  if ! kill -0 "$SECHO_PID" 2>/dev/null; then
    record_fail "$mtu" crr "$round" "$CUR" "the namespace's echo server died: $(tail -c 300 "$TMP/echo.err")"; return 0
  fi
  t0=$(cpu_ticks "$TPID")
  timeout $((CONNS / 10 + 120)) python3 "$TMP/crr.py" 127.0.0.1 "$P2" "$CONNS" >"$TMP/crr.out" 2>&1 || rc=$?
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

# --- the runs ----------------------------------------------------------------------------
# The first turn of each translator is its preflight: if berth's forwards do
# not work at all the script stops (exit 1); a peer whose forwards do not work
# is reported as n/a and left out of the remaining rounds.
FIRST_MTU=${MTUS%% *}
TRANSLATORS=(berth "${PEERS[@]}")
say "translators: ${TRANSLATORS[*]}; MTUs: $MTUS; $ROUNDS rounds, iperf3 -t $TIME, $CONNS connections per rate run"
LINGER="$TMP/linger.txt"   # berth forwards' connections still active after a turn
: >"$LINGER"
for mtu in $MTUS; do
  for round in $(seq 1 "$ROUNDS"); do
    for CUR in "${TRANSLATORS[@]}"; do
      if ! setup "$CUR" "$mtu"; then
        why=$(grep -v 'to syslog' "$TMP/setup.err" | tr '\n' ' ')
        if [ "$mtu" = "$FIRST_MTU" ] && [ "$round" = 1 ]; then
          if [ "$CUR" = berth ]; then
            diag_berth preflight
            teardown
            die "berth's forwards do not work: $why (diagnostics in $DIAG/preflight)"
          fi
          NA[$CUR]="its forwards did not work: $(cut -c1-300 <<<"$why")"
          say "$CUR: n/a (${NA[$CUR]})"
          ok_tr=()
          for t in "${TRANSLATORS[@]}"; do [ "$t" = "$CUR" ] || ok_tr+=("$t"); done
          TRANSLATORS=("${ok_tr[@]}")
          teardown
          continue
        fi
        diag_berth "mtu$mtu-setup-round$round"
        for t in fwd-in fwd-out crr; do record_fail "$mtu" "$t" "$round" "$CUR" "setup: $why"; done
        teardown
        continue
      fi
      iperf_run "$mtu" fwd-in "$round"
      iperf_run "$mtu" fwd-out "$round"
      crr_run "$mtu" "$round"
      if [ "$CUR" = berth ] && kill -0 "$TPID" 2>/dev/null; then
        # Every connection has been closed by both ends: the forwards should
        # drain to 0 active connections; allow 5 s.
        active=""
        for i in $(seq 0 10); do
          active=$( { berth_ctl /ports/1; berth_ctl /ports/2; } | awk '$1 == "active" {n += $2} END {print n + 0}')
          [ "$active" = 0 ] && break
          [ "$i" = 10 ] || sleep 0.5
        done
        echo "$mtu $round $active $(awk -v i="$i" 'BEGIN {printf "%.1f", i / 2}')" >>"$LINGER"
        if [ "$active" != 0 ]; then
          say "berth mtu $mtu round $round: $active forwarded connection(s) still active 5 s after the tests"
          diag_berth "mtu$mtu-linger-round$round"
        fi
        if [ "$round" = 1 ] && [ "$mtu" = "$FIRST_MTU" ]; then
          { berth_ctl /ports/1; echo; berth_ctl /ports/2; } >"$TMP/ports.snapshot" 2>&1
        fi
      fi
      if ! kill -0 "$TPID" 2>/dev/null; then say "WARNING: $CUR exited during round $round: $(grep -v 'to syslog' "$TMP/translator.err" | tail -n 5)"; fi
      teardown
    done
  done
done

# --- iperf3 results -----------------------------------------------------------------
# Appends each iperf3 run to $RAW; an interval that moved less than 1% of the
# run's busiest one is a stall, and berth's view of it (if the watcher caught
# it) is kept in $DIAG.
export RUNS RAW DIAG
python3 - <<'PY'
import json, os, shutil, sys

env = os.environ
runs, raw, diag = env["RUNS"], env["RAW"], env["DIAG"]
with open(raw, "a") as out:
    for line in open(os.path.join(runs, "index.tsv")):
        n, mtu, test, rnd, tr, ticks = line.rstrip("\n").split("\t")
        key = "%s mtu %s %s round %s" % (tr, mtu, test, rnd)
        try:
            j = json.load(open(os.path.join(runs, n + ".json")))
            if j.get("error"):
                raise ValueError("iperf3: %s" % j["error"])
            r = j["end"]["sum_received"]
            nbytes, bps = int(r["bytes"]), float(r["bits_per_second"])
        except Exception as e:
            why = ("no usable JSON from iperf3: %s" % e).replace("\t", " ").replace("\n", " ")[:300]
            out.write("%s\t%s\t%s\t%s\t0\t0\t0\tfailed\t%s\n" % (mtu, test, rnd, tr, why))
            print("bench/forward: FAILED: %s: %s" % (key, why), file=sys.stderr)
            continue
        retr = j["end"].get("sum_sent", {}).get("retransmits", -1)
        iv = [x["sum"] for x in j.get("intervals", [])]
        top = max([x["bytes"] for x in iv] or [0])
        stalled = [str(i + 1) for i, x in enumerate(iv) if x.get("seconds", 0) >= 0.5 and x["bytes"] < top / 100]
        note = "retr=%d" % retr
        if stalled:
            note += ";stalled=" + ",".join(stalled)
            print("bench/forward: STALL: %s: iperf3 interval(s) %s moved (almost) nothing" % (key, ",".join(stalled)),
                  file=sys.stderr)
            dump = os.path.join(runs, n + ".dump")
            if os.path.exists(dump):
                os.makedirs(diag, exist_ok=True)
                dest = os.path.join(diag, "stall-mtu%s-%s-round%s" % (mtu, test, rnd))
                shutil.copy(dump, dest)
                note += ";dump"
                print("bench/forward: berth's view of the stall kept in %s" % dest, file=sys.stderr)
        out.write("%s\t%s\t%s\t%s\t%.0f\t%d\t%s\tok\t%s\n" % (mtu, test, rnd, tr, bps, nbytes, ticks, note))
PY

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
for p in "${!NA[@]}"; do NA_TEXT+="$p: ${NA[$p]//; /, }; "; done
CMDS="$TMP/cmds.txt"
: >"$CMDS"
for mtu in $MTUS; do
  for t in "${TRANSLATORS[@]}"; do echo "$t	$mtu	${TCMD_SHOWN[$t-$mtu]:-}" >>"$CMDS"; done
done
export ROOT RAW DOC TIME ROUNDS MTUS CONNS CLK_TCK BERTH_VERSION PASST_VERSION SLIRP_VERSION IPERF_VERSION NPROC KERNEL \
  CPU_MODEL WHEN BERTH_REL TREE NA_TEXT CMDS TMP PEERS_WANTED DIAG GUEST_IPERF_PORT GUEST_ECHO_PORT
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

TESTS = [("fwd-in", "iperf3, host -> forward -> namespace"), ("fwd-out", "iperf3 -R, namespace -> forward -> host"),
         ("crr", "short TCP connections through the forward")]


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


def peers_seen(tr):
    try:
        return sorted({l.strip() for l in open(os.path.join(env["TMP"], "peers." + tr)) if l.strip()})
    except OSError:
        return []


L = ["<!-- forward:begin -->", "## Port forwards: berth vs pasta `-t` and slirp4netns `add_hostfwd`", ""]
L.append("Generated by `bench/forward.sh` on %s. Machine: %s CPUs (%s), kernel %s. berth: `%s` (`%s`; source tree %s when "
         "the run began); pasta: Debian package passt %s; slirp4netns %s; iperf3 %s." % (
             env["WHEN"], env["NPROC"], env["CPU_MODEL"] or "unknown", env["KERNEL"], env["BERTH_VERSION"], env["BERTH_REL"],
             env["TREE"], env["PASST_VERSION"], env["SLIRP_VERSION"], env["IPERF_VERSION"]))
L.append("")
L.append(
    "Each translator forwards two ports of the host's 127.0.0.1 into a network namespace (the namespace's own "
    "Linux TCP/IP stack is the guest), one to an iperf3 server (port %s) and one to a python echo server (port %s) "
    "in the namespace: berth with `--forward`, pasta with `-t 127.0.0.1/P:GUESTPORT`, slirp4netns with "
    "`add_hostfwd` on its API socket. For each MTU the translators take turns, berth, pasta, slirp4netns, berth, "
    "... (%d rounds); each turn starts a fresh namespace, fresh servers in it and a fresh translator process, and "
    "runs three tests from the host: **fwd-in**, `iperf3 -t %d` to the forwarded port (data flows host -> "
    "namespace); **fwd-out**, the same with `-R` (namespace -> host); **crr**, %d sequential short TCP "
    "connections (connect, send 64 bytes, read the echo, close) from a python client to the forwarded echo port. "
    "Rate: iperf3's receiver-side bits/s, or connections/s. CPU: the translator process's utime+stime (all "
    "threads, `/proc/PID/stat`, %d ticks/s) during the test, per GB received (10^9 bytes) or per 1000 "
    "connections. Each ratio below is the **median over rounds of the per-round ratio berth/peer**: above 1 is "
    "better for berth in the rate columns, below 1 is better for berth in the CPU columns. The iperf3 and python "
    "processes share the machine's CPUs with the translator, so absolute numbers are only indicative." % (
        env["GUEST_IPERF_PORT"], env["GUEST_ECHO_PORT"], rounds, int(env["TIME"]), conns, tck))
L.append("")
hdr = "| MTU | test |"
sep = "|---:|---|"
for p in peers:
    hdr += " rounds | rate berth/%s | CPU per unit berth/%s |" % (p, p)
    sep += "---:|---:|---:|"
L.append(hdr); L.append(sep)
for mtu in mtus:
    for test, desc in TESTS:
        row = "| %s | %s: %s |" % (mtu, test, desc)
        for p in peers:
            if p in na:
                row += " 0 | n/a | n/a |"
                continue
            rr, rc = ratios(mtu, test, p, 0), ratios(mtu, test, p, 1)
            rng = " (%.2f-%.2f)" % (min(rr), max(rr)) if rr else ""
            row += " %d | %s%s | %s |" % (len(rr), fmt(med(rr)), rng, fmt(med(rc)))
        L.append(row)
L.append("")
L.append("Rate ratio: median (min-max over rounds). CPU per unit: CPU-seconds per GB for fwd-in/fwd-out, "
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
L.append("retr: iperf3's count of TCP retransmissions by the sender (the host's kernel for fwd-in, the "
         "namespace's for fwd-out), median over rounds.")
L.append("")
seen = []
for t in trs:
    ps = peers_seen(t)
    if ps:
        seen.append("%s %s" % (t, ", ".join("`%s`" % x for x in ps)))
if seen:
    text = "Peer addresses the namespace's echo server saw: %s." % "; ".join(seen)
    if any(x in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for x in peers_seen("pasta")):
        text += (" pasta splices a connection from the host's loopback to the namespace's loopback (two kernel "
                 "sockets joined with `splice()`): its frames never cross pasta's tap device, so the MTU does not "
                 "apply to pasta here, while berth and slirp4netns pass every segment through the namespace's tap "
                 "device and their own translation.")
    L.append(text)
    L.append("")
for p, why in sorted(na.items()):
    L.append("**%s: n/a** (%s)." % (p, why))
    L.append("")
if fails:
    L.append("**%d run(s) failed** and are left out of the ratios:" % len(fails))
    L.append("")
    for mtu, test, rnd, tr, note in fails:
        L.append("- %s, MTU %s, %s, round %s: %s" % (tr, mtu, test, rnd, note.replace("|", "/")))
    if any(f[3] == "berth" for f in fails) and os.path.isdir(env["DIAG"]):
        L.append("")
        L.append("berth's `/net/stats`, `/net/flows`, `/ports/*` and stderr at its failures were kept in `%s` on "
                 "the machine that ran it." % env["DIAG"])
    L.append("")
if stalls:
    L.append("**Stalls**: %d iperf3 run(s) had one or more 1-s intervals that moved less than 1%% of the run's "
             "busiest interval; they are kept in the numbers above:" % len(stalls))
    L.append("")
    for mtu, test, rnd, tr, ivs, dump in stalls:
        L.append("- %s, MTU %s, %s, round %s: interval(s) %s of %d%s" % (
            tr, mtu, test, rnd, ivs, int(env["TIME"]),
            "; berth's /net/flows, /net/stats, /ports/1, `ss -tnmi` and epoll registrations during the stall were "
            "kept in `%s/stall-mtu%s-%s-round%s`" % (env["DIAG"], mtu, test, rnd) if dump else ""))
    L.append("")
linger = [l.split() for l in open(os.path.join(env["TMP"], "linger.txt")) if l.strip()]
if linger:
    left = [x for x in linger if x[2] != "0"]
    waits = [float(x[3]) for x in linger if x[2] == "0"]
    text = ("After each berth turn the script polls `/ports/1` and `/ports/2` every 0.5 s until no forwarded "
            "connection is active (all were closed by both ends): %d of %d turns drained" % (len(linger) - len(left), len(linger)))
    if waits:
        text += ", after %.1f-%.1f s (median %.1f s)" % (min(waits), max(waits), statistics.median(waits))
    text += "."
    if left:
        text += (" **%d turn(s) still had active connections 5 s later** (%s); berth's view of them was kept in "
                 "`%s/mtuM-linger-roundR`." % (len(left), ", ".join("MTU %s round %s: %s" % (x[0], x[1], x[2]) for x in left),
                                                env["DIAG"]))
    L.append(text)
    L.append("")
snap = os.path.join(env["TMP"], "ports.snapshot")
if os.path.exists(snap):
    lines = [l for l in open(snap).read().splitlines() if l.strip()]
    L.append("berth's `/ports/1` and `/ports/2` after its first turn's tests (once drained):")
    L.append("")
    L.append("```")
    L += lines[:20]
    L.append("```")
    L.append("")
L.append("Command lines (NS is a fresh namespace per turn, `berth-bf-PID-N`; P1 and P2 are unused ports of the "
         "host's 127.0.0.1 (20000-31999) picked per turn; $TMP is the script's temporary directory):")
L.append("")
L.append("```")
L.append("BENCH_FWD_TIME=%s BENCH_FWD_ROUNDS=%d BENCH_FWD_MTUS='%s' BENCH_FWD_CONNS=%d bench/forward.sh %s" % (
    env["TIME"], rounds, env["MTUS"], conns, env["BERTH_REL"]))
L.append("ip netns add NS; ip netns exec NS ip link set lo up")
L.append("ip netns exec NS iperf3 -s -p %s &                      # in the namespace" % env["GUEST_IPERF_PORT"])
L.append("ip netns exec NS python3 $TMP/echo.py %s $TMP/peers &   # echo server in the namespace" % env["GUEST_ECHO_PORT"])
for line in open(env["CMDS"]):
    tr, mtu, cmd = line.rstrip("\n").split("\t", 2)
    if cmd:
        L.append("%s    # %s, MTU %s" % (cmd, tr, mtu))
L.append("ip netns exec NS sh -c 'ip addr add 192.168.65.3/24 dev bt0; ip link set bt0 mtu MTU; ip link set bt0 up; "
         "ip route add default via 192.168.65.1; ping -c1 -W1 192.168.65.1'    # berth only")
L.append("python3 $TMP/slirpapi.py $TMP/slirp-N.sock P1 %s P2 %s"
         "    # slirp4netns only: add_hostfwd" % (env["GUEST_IPERF_PORT"], env["GUEST_ECHO_PORT"]))
L.append("iperf3 -c 127.0.0.1 -p P1 -t %s --connect-timeout 5000 -J         # fwd-in" % env["TIME"])
L.append("iperf3 -c 127.0.0.1 -p P1 -t %s --connect-timeout 5000 -J -R      # fwd-out" % env["TIME"])
L.append("python3 $TMP/crr.py 127.0.0.1 P2 %d                                # crr" % conns)
L.append("```")
L.append("<!-- forward:end -->")
section = "\n".join(L) + "\n"

sys.path.insert(0, os.path.join(env["ROOT"], "bench"))
from docsection import replace_section
replace_section(env["DOC"], "forward", section)
print(section)
PY
say "updated $DOC"
