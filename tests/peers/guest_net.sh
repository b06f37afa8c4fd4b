#!/usr/bin/env bash
# Real-peer test: a Linux guest under QEMU (TCG, never KVM) on berth's qemu
# link — the guest kernel's own TCP/IP stack behind berth's translator.
#
# Usage: tests/peers/guest_net.sh BERTH_BINARY
#
# Starts `BERTH_BINARY serve --link qemu:TMP/q.sock --9p unix:TMP/b.sock`
# (waiting for its stdout lines `berth: link 0 is qemu [unix:]PATH ...` and
# `berth: listening on unix:PATH`), host-side peers on 127.0.0.1 (an HTTP
# server with a 20 MB random file, a TCP sink that answers "SHA256 BYTES", a
# DNS-shaped UDP echo, a bound port with no listener), and boots the guest of
# scripts/guest/build-guest.sh with berth.test=net and
# `-netdev stream,server=off,addr.type=unix,addr.path=TMP/q.sock`.
# The guest, addressed statically as 192.168.65.3/24 via 192.168.65.1:
#   - pings the gateway (.1) and the host alias (.2);
#   - wgets the file from http://192.168.65.2:PORT/ and checks its sha256;
#   - uploads it with `nc 192.168.65.2 SINK < file` and checks the sink's answer;
#   - sends a UDP query to 192.168.65.2:PORT (busybox nslookup; busybox has no
#     nc -u) and checks the echo;
#   - connects to the closed port: "Connection refused" within 5 s;
#   - mounts the control tree from the gateway (9P over TCP port 564), reads
#     net/config (subnet 192.168.65.0/24), net/flows, lists links, and checks
#     that `echo x > debug/version` is refused with Permission denied.
# The host checks the sink's and the UDP echo's logs, /net/flows while the
# download runs, /links/0 (type qemu, ip 192.168.65.3) while the guest runs,
# and that berth is still serving afterwards.
#
# Exit status: 0 pass, 1 fail, 77 skipped (no QEMU or no guest kernel).
# Environment: BERTH_GUEST_TIMEOUT (seconds for the whole guest run, default 300),
#              BERTH_GUEST_NET_MB (size of the transferred file in MB, default 20),
#              BERTH_GUEST_NET_LOG (berth's --log-level, default info),
#              BERTH_GUEST_DIR (guest cache, see build-guest.sh),
#              BERTH_GUEST_APPEND (extra guest kernel command line).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BERTH_BINARY" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BERTH=$(readlink -f "$1" || true)
TIMEOUT=${BERTH_GUEST_TIMEOUT:-300}
MB=${BERTH_GUEST_NET_MB:-20}
LOGLEVEL=${BERTH_GUEST_NET_LOG:-info}

say() { echo "guest_net: $*"; }
skip() { echo "SKIP: guest_net: $*"; exit 77; }

if [ -z "$BERTH" ] || [ ! -x "$BERTH" ]; then
  say "FAIL: $1 is not an executable"
  exit 1
fi
command -v python3 >/dev/null 2>&1 || skip "python3 is missing (host-side peers)"

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
# -netdev stream arrived in QEMU 7.2.
qemu-system-x86_64 -netdev help 2>/dev/null | grep -qx stream \
  || skip "this QEMU ($(qemu-system-x86_64 --version | head -n1)) has no -netdev stream"

# --- guest kernel + initramfs ---------------------------------------------
rc=0
GUEST_DIR=$("$ROOT/scripts/guest/build-guest.sh") || rc=$?
if [ $rc -eq 77 ]; then
  skip "cannot build the guest (guest kernel or busybox/cpio/kmod unavailable; see build-guest messages above)"
elif [ $rc -ne 0 ] || [ ! -s "$GUEST_DIR/vmlinuz" ] || [ ! -s "$GUEST_DIR/initramfs.cpio.gz" ]; then
  say "FAIL: scripts/guest/build-guest.sh failed (exit $rc)"
  exit 1
fi

# --- cleanup ----------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-guestnet.XXXXXX")
SERVER_PID="" QEMU_PID="" PEERS_PID="" WATCH_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
stop() {   # stop PID: TERM, then KILL after 5 s
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317
cleanup() {
  trap '' INT TERM   # a second signal must not cut the cleanup short
  stop "$WATCH_PID"
  stop "$QEMU_PID"    # timeout(1) passes the signal on to QEMU
  stop "$SERVER_PID"
  stop "$PEERS_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FAILS=0
ok() { say "ok: $*"; }
bad() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
dump() {
  if [ -f "$TMP/console.log" ]; then
    echo "----- guest console -----"
    tr -d '\r' <"$TMP/console.log" || true
  fi
  echo "----- host peers -----"
  cat "$TMP/peers.out" "$TMP/peers.err" 2>/dev/null || true
  echo "----- berth /net/stats -----"
  CTL cat /net/stats 2>&1 || true
  echo "----- berth stdout -----"
  cat "$TMP/server.out" 2>/dev/null || true
  echo "----- berth stderr (last 200 lines) -----"
  tail -n 200 "$TMP/server.err" 2>/dev/null || true
  echo "------------------------"
}
die() { say "FAIL: $*"; dump; exit 1; }

QSOCK=$TMP/q.sock
SOCK=$TMP/b.sock
CTL() { timeout 20 "$BERTH" ctl --9p "unix:$SOCK" "$@"; }

# --- host-side peers --------------------------------------------------------
mkdir -p "$TMP/www"
head -c $((MB * 1000000)) /dev/urandom >"$TMP/www/big"
WANT=$(sha256sum <"$TMP/www/big" | cut -d' ' -f1)
TOKEN=t$$x$RANDOM
cat >"$TMP/peers.py" <<'PY'
# Host-side peers on 127.0.0.1, one process: prints "http=P sink=P udp=P closed=P",
# then logs "sink SHA256 BYTES" per upload and "udp NAME" per UDP query.
import hashlib, http.server, os, socket, socketserver, struct, sys, threading

def log(*a):
    print(*a, flush=True)

class Quiet(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=sys.argv[1], **kw)
    def log_message(self, fmt, *args):
        log("http " + (fmt % args))

class HTTP(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

httpd = HTTP(("127.0.0.1", 0), Quiet)

sink = socket.socket()
sink.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sink.bind(("127.0.0.1", 0)); sink.listen(8)

def sink_conn(c):
    h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 16)
        if not b: break
        h.update(b); n += len(b)
    log("sink %s %d" % (h.hexdigest(), n))
    c.sendall(("%s %d\n" % (h.hexdigest(), n)).encode()); c.close()

def sink_loop():
    while True:
        c, _ = sink.accept()
        threading.Thread(target=sink_conn, args=(c,), daemon=True).start()

# UDP echo, DNS-shaped so that busybox nslookup can be the client: a query
# for NAME gets one TXT answer "echo NAME" (other types: no answers).
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))

def udp_loop():
    while True:
        q, peer = udp.recvfrom(4096)
        try:
            qid = struct.unpack("!H", q[:2])[0]
            i, labels = 12, []
            while q[i]:
                labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace")); i += 1 + q[i]
            qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
            qend = i + 5
        except Exception as e:
            log("udp bad datagram of %d bytes from %s:%d: %s" % (len(q), peer[0], peer[1], e)); continue
        name = ".".join(labels)
        log("udp %s (type %d, %d bytes from %s:%d)" % (name, qtype, len(q), peer[0], peer[1]))
        ans, an = b"", 0
        if qtype == 16:
            txt = ("echo " + name).encode()[:255]
            ans = struct.pack("!HHHIH", 0xC00C, 16, 1, 0, len(txt) + 1) + bytes([len(txt)]) + txt; an = 1
        udp.sendto(struct.pack("!HHHHHH", qid, 0x8180, 1, an, 0, 0) + q[12:qend] + ans, peer)

# A bound TCP port that never listens: connections to it are refused.
closed = socket.socket()
closed.bind(("127.0.0.1", 0))

for f in (httpd.serve_forever, sink_loop, udp_loop):
    threading.Thread(target=f, daemon=True).start()
log("http=%d sink=%d udp=%d closed=%d" % (httpd.server_address[1], sink.getsockname()[1],
                                          udp.getsockname()[1], closed.getsockname()[1]))
threading.Event().wait()
PY
python3 -u "$TMP/peers.py" "$TMP/www" >"$TMP/peers.out" 2>"$TMP/peers.err" </dev/null &
PEERS_PID=$!
PORTS=""
for _ in $(seq 1 100); do
  PORTS=$(grep -m1 '^http=' "$TMP/peers.out" 2>/dev/null || true)
  [ -n "$PORTS" ] && break
  kill -0 "$PEERS_PID" 2>/dev/null || die "host peers exited: $(cat "$TMP/peers.err")"
  sleep 0.1
done
[ -n "$PORTS" ] || die "host peers did not start within 10 s"
port_of() { echo "$PORTS" | tr ' ' '\n' | sed -n "s/^$1=\([0-9][0-9]*\)\$/\1/p"; }
P_http=$(port_of http) P_sink=$(port_of sink) P_udp=$(port_of udp) P_closed=$(port_of closed)
if [ -z "$P_http" ] || [ -z "$P_sink" ] || [ -z "$P_udp" ] || [ -z "$P_closed" ]; then die "bad host peers line: $PORTS"; fi
say "host peers: $PORTS (file ${MB} MB, sha256 $WANT)"

# --- server -----------------------------------------------------------------
# `berth: link 0 is qemu unix:PATH (waiting for a guest)` (also accepted: bare PATH, no note).
link_line() {
  awk -v p="$QSOCK" '$1 == "berth:" && $2 == "link" && $3 == "0" && $4 == "is" && $5 == "qemu" &&
                     ($6 == p || $6 == "unix:" p) { found = 1 } END { exit !found }' "$1" 2>/dev/null
}
# stdbuf: berth's stdout is a file here; make sure its lines arrive promptly.
stdbuf -oL -eL "$BERTH" serve --link "qemu:$QSOCK" --9p "unix:$SOCK" --log-level "$LOGLEVEL" \
  >"$TMP/server.out" 2>"$TMP/server.err" </dev/null &
SERVER_PID=$!
for _ in $(seq 1 200); do   # up to 20 s
  link_line "$TMP/server.out" \
    && grep -qxF "berth: listening on unix:$SOCK" "$TMP/server.out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "berth serve exited before listening"
  sleep 0.1
done
link_line "$TMP/server.out" || die "no 'berth: link 0 is qemu [unix:]$QSOCK' line on berth's stdout within 20 s"
grep -qxF "berth: listening on unix:$SOCK" "$TMP/server.out" || die "no 'berth: listening on unix:$SOCK' line on berth's stdout within 20 s"
[ -S "$QSOCK" ] || die "$QSOCK is not a socket"
say "berth serving: link qemu:$QSOCK, 9P unix:$SOCK (pid $SERVER_PID)"

# --- host-side watch while the guest runs -----------------------------------
# Snapshots of /net/flows during the download and of /links/0 once the guest
# has talked (after the guest powers off, QEMU's end of the link is gone).
watcher() {
  local log n=0
  while :; do
    log=$(tr -d '\r' <"$TMP/console.log" 2>/dev/null || true)
    if echo "$log" | grep -qa 'BERTH-GUEST: wget start' && ! echo "$log" | grep -qa 'BERTH-GUEST: upload start'; then
      n=$((n + 1))   # the download (and its TIME_WAIT) runs: look often
      { echo "# snapshot $n"; CTL cat /net/flows 2>&1; } >>"$TMP/flows.during" || true
      sleep 0.2
      continue
    fi
    if echo "$log" | grep -qaE 'BERTH-GUEST: (not )?ok ping host alias' && [ ! -s "$TMP/links0.during" ]; then
      if CTL cat /links/0 >"$TMP/links0.tmp" 2>&1; then mv "$TMP/links0.tmp" "$TMP/links0.during"; fi
    fi
    sleep 0.5
  done
}
: >"$TMP/console.log"
watcher &
WATCH_PID=$!

# --- guest ----------------------------------------------------------------
WATCHDOG=$(( TIMEOUT > 40 ? TIMEOUT - 20 : TIMEOUT ))
APPEND="console=ttyS0 panic=-1 loglevel=4 berth.test=net berth.watchdog=$WATCHDOG"
APPEND+=" berth.ip=192.168.65.3/24 berth.gw=192.168.65.1 berth.alias=192.168.65.2"
APPEND+=" berth.http=$P_http berth.file=big berth.sha=$WANT berth.sink=$P_sink"
APPEND+=" berth.udp=$P_udp berth.token=$TOKEN berth.closed=$P_closed berth.gport=564"
say "booting guest ($(cut -d' ' -f1,2 "$GUEST_DIR/kernel-package" 2>/dev/null || echo kernel)) under QEMU TCG, timeout ${TIMEOUT}s"
start=$(date +%s.%N)
qrc=0
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg -m 512 -smp 1 \
  -nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot \
  -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" \
  -append "$APPEND${BERTH_GUEST_APPEND:+ $BERTH_GUEST_APPEND}" \
  -netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$QSOCK" \
  -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 \
  </dev/null >"$TMP/console.log" 2>&1 &
QEMU_PID=$!
wait "$QEMU_PID" || qrc=$?   # in the background so that signals reach our traps at once
QEMU_PID=""
elapsed=$(echo "$start $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')
stop "$WATCH_PID"; WATCH_PID=""

log=$(tr -d '\r' <"$TMP/console.log")
echo "$log" | grep -a 'BERTH-GUEST[:|]' | sed 's/^/  /'
if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
  die "QEMU did not finish within ${TIMEOUT}s"
fi

# --- guest verdict ------------------------------------------------------------
if echo "$log" | grep -qa 'BERTH-GUEST: FAIL'; then
  bad "guest reported: $(echo "$log" | grep -a -m1 'BERTH-GUEST: FAIL' | sed 's/.*BERTH-GUEST: //')"
elif ! echo "$log" | grep -qa 'BERTH-GUEST: PASS'; then
  bad "no BERTH-GUEST: PASS marker (QEMU exit $qrc)"
fi
for m in 'net up: eth0 192.168.65.3/24 gw 192.168.65.1' 'ok ping gateway' 'ok ping host alias' 'ok wget' \
         'ok upload' 'ok udp echo' 'ok refused: .*Connection refused' 'ok 9p mount' \
         'ok net/config: subnet 192.168.65.0/24' 'ok net/flows' 'ok links: ' \
         'ok readonly write refused: .*Permission denied' 'umount ok'; do
  echo "$log" | grep -qa "BERTH-GUEST: $m" || bad "missing guest marker: BERTH-GUEST: $m"
done

# --- host-side checks ---------------------------------------------------------
if grep -qx "sink $WANT $((MB * 1000000))" "$TMP/peers.out"; then ok "host sink received the upload intact"
else bad "host sink: $(grep '^sink' "$TMP/peers.out" || echo 'no upload seen')"; fi

if grep -q "^udp berth-udp-echo-$TOKEN\..* from 127\.0\.0\.1:" "$TMP/peers.out"; then
  ok "host UDP echo saw the guest's datagram: $(grep -m1 "^udp berth-udp-echo-$TOKEN" "$TMP/peers.out")"
else bad "host UDP echo: no datagram with token $TOKEN"; fi

if grep -qE "^tcp .*192\.168\.65\.3:[0-9]+ .*:$P_http( |$)" "$TMP/flows.during" 2>/dev/null; then
  ok "/net/flows listed the download: $(grep -m1 -E "^tcp .*:$P_http( |$)" "$TMP/flows.during")"
else
  bad "/net/flows did not list the download (192.168.65.3 -> port $P_http) in $(grep -c '^# snapshot' "$TMP/flows.during" 2>/dev/null || echo 0) snapshot(s)"
  sed 's/^/    /' "$TMP/flows.during" 2>/dev/null | tail -n 20 || true
fi

if [ -s "$TMP/links0.during" ] && grep -qx 'type qemu' "$TMP/links0.during" \
   && grep -qx 'ip 192.168.65.3' "$TMP/links0.during"; then
  ok "/links/0 while the guest ran: $(grep -E '^(type|peer|mac|ip) ' "$TMP/links0.during" | tr '\n' ' ')"
else
  bad "/links/0 while the guest ran lacks 'type qemu' and 'ip 192.168.65.3'"
  sed 's/^/    /' "$TMP/links0.during" 2>/dev/null || true
fi

if kill -0 "$SERVER_PID" 2>/dev/null && CTL cat /links/0 >"$TMP/links0.after" 2>&1; then
  if grep -qx 'type qemu' "$TMP/links0.after"; then
    ok "berth still serving after the guest left; /links/0: $(grep -E '^(type|peer|ip|disconnects) ' "$TMP/links0.after" | tr '\n' ' ')"
  else
    bad "/links/0 after the guest left: $(tr '\n' ' ' <"$TMP/links0.after")"
  fi
else
  bad "berth serve is no longer running (or not answering) after the guest test"
fi
if CTL cat /net/stats >"$TMP/stats" 2>&1 && grep -q '^frames_in [1-9]' "$TMP/stats"; then
  ok "/net/stats: $(grep -E '^(frames_in|frames_out|bytes_in|bytes_out) ' "$TMP/stats" | tr '\n' ' ')"
else
  bad "/net/stats: $(tr '\n' ' ' <"$TMP/stats")"
fi

if [ "$FAILS" -ne 0 ]; then
  dump
  say "FAILED: $FAILS check(s) (guest run ${elapsed}s wall)"
  exit 1
fi
say "PASS (guest run ${elapsed}s wall)"
exit 0
