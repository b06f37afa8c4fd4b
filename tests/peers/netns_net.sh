#!/usr/bin/env bash
# Real peer: the Linux kernel's own TCP/IP stack, in a network namespace,
# as Berth's guest over a TAP link.
#
#   tests/peers/netns_net.sh BERTH_BINARY
#
# Creates namespace berth-nt-$$ with berth serve --link tap:bt0@NS, gives the
# namespace 192.168.65.3/24 with the gateway as default route, and checks:
#   - ping of the gateway (.1) and of the host alias (.2);
#   - wget of a 100 MB file from an HTTP server on the host's 127.0.0.1 via
#     .2, with a matching sha256; an upload of 100 MB with a matching sha256;
#   - UDP echo through socat; 1000 concurrent TCP connections;
#   - a refused port answers with "connection refused" at once;
#   - /net/flows lists live flows during a transfer; /net/stats and /links;
#   - the server survives and cleans up; the namespace is always deleted.
# Exit: 0 pass, 1 fail, 77 skipped (not root, no /dev/net/tun, no netns).
set -euo pipefail
BERTH=$(readlink -f "${1:?usage: $0 BERTH_BINARY}")
NS=berth-nt-$$
TMP=$(mktemp -d /tmp/berth-netns.XXXXXX)
PIDS=()
FAILS=0
say() { echo "netns_net: $*"; }
skip() { say "SKIP: $*"; exit 77; }
ok() { say "ok: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces and TAP"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
ip netns add "$NS" 2>/dev/null || skip "cannot create a network namespace"
for t in wget socat python3 sha256sum; do command -v $t >/dev/null || skip "$t is missing"; done
N() { timeout "${T:-60}" ip netns exec "$NS" "$@"; }

SOCK=$TMP/b.sock
"$BERTH" serve --link "tap:bt0@$NS" --9p "unix:$SOCK" --log-level warn >"$TMP/serve.out" 2>"$TMP/serve.err" &
PIDS+=($!)
SERVER=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { cat "$TMP/serve.err"; say "FAIL: berth serve did not start"; exit 1; }
CTL() { "$BERTH" ctl --9p "unix:$SOCK" "$@"; }

N ip link set lo up
N ip addr add 192.168.65.3/24 dev bt0
N ip link set bt0 up
N ip route add default via 192.168.65.1

# --- ICMP ---------------------------------------------------------------------
PING=(ping)
command -v ping >/dev/null || PING=(busybox ping)
if N "${PING[@]}" -c 2 -W 3 192.168.65.1 >"$TMP/ping1" 2>&1; then ok "ping gateway"; else fail "ping gateway"; cat "$TMP/ping1"; fi
if N "${PING[@]}" -c 2 -W 3 192.168.65.2 >"$TMP/ping2" 2>&1; then ok "ping host alias"; else fail "ping host alias"; cat "$TMP/ping2"; fi

# --- TCP download and upload with checksums ------------------------------------
mkdir -p "$TMP/www"
head -c 100000000 /dev/urandom >"$TMP/www/big"
want=$(sha256sum <"$TMP/www/big" | cut -d' ' -f1)
python3 -m http.server 0 --bind 127.0.0.1 --directory "$TMP/www" >"$TMP/http.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q "port" "$TMP/http.out" 2>/dev/null && break; sleep 0.1; done
HPORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$TMP/http.out" | head -1)
[ -n "$HPORT" ] || { fail "http server did not start"; HPORT=1; }

# While the download runs, /net/flows must show it.
(sleep 1; CTL cat /net/flows >"$TMP/flows" 2>&1) &
got=$(T=300 N wget -qO- "http://192.168.65.2:$HPORT/big" | sha256sum | cut -d' ' -f1) || true
wait $! 2>/dev/null || true
if [ "$got" = "$want" ]; then ok "wget 100 MB via the host alias, sha256 matches"; else fail "wget sha256 $got != $want"; fi
if grep -q "^tcp .*192.168.65.3:[0-9]* .*:$HPORT " "$TMP/flows"; then ok "/net/flows listed the download: $(grep ":$HPORT " "$TMP/flows" | head -1)"
else fail "/net/flows did not list the download"; cat "$TMP/flows"; fi

cat >"$TMP/sink.py" <<'PY'
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
c.close()
print("%s %d" % (h.hexdigest(), n), flush=True)
PY
coproc SINK { exec python3 "$TMP/sink.py"; }
read -r SPORT <&"${SINK[0]}"
PIDS+=("$SINK_PID")
T=300 N socat -u "FILE:$TMP/www/big" "TCP:192.168.65.2:$SPORT,shut-down" >"$TMP/up.err" 2>&1 || true
up=""
read -r -t 30 up <&"${SINK[0]}" || true
if [ "$up" = "$want 100000000" ]; then ok "upload 100 MB, sha256 matches"; else fail "upload: sink got '$up'"; cat "$TMP/up.err"; fi

# --- UDP echo -----------------------------------------------------------------
socat -T 10 UDP4-RECVFROM:0,bind=127.0.0.1,fork EXEC:cat 2>/dev/null &
PIDS+=($!)
sleep 0.3
UPORT=$(ss -ulpn 2>/dev/null | awk -v pid=$! '$0 ~ "pid="pid"," {split($4,a,":"); print a[2]}' | head -1)
if [ -n "$UPORT" ]; then
  r=$(echo "hello-udp" | N socat -T 3 - "UDP4:192.168.65.2:$UPORT" 2>&1) || true
  if [ "$r" = "hello-udp" ]; then ok "UDP echo through socat"; else fail "UDP echo got '$r'"; fi
else
  fail "could not find the UDP echo server's port"
fi

# --- a UDP flow flood fills the table; it is counted and existing flows work ---
cat >"$TMP/udpflood.py" <<'PY'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(40000, 41500):  # 1500 destinations > the 1024-flow table
    s.sendto(b"flood", ("192.168.65.2", port))
PY
N python3 "$TMP/udpflood.py" || true
sleep 1
full=$(CTL cat /net/stats | awk '$1 == "drop_flow_table_full" {print $2}')
if [ "${full:-0}" -gt 0 ]; then ok "UDP flow flood: drop_flow_table_full $full"; else fail "UDP flow flood not counted"; CTL cat /net/stats; fi
if [ -n "$UPORT" ]; then
  r=$(echo "still-here" | N socat -T 3 - "UDP4:192.168.65.2:$UPORT" 2>&1) || true
  # A new flow may be refused while the table is full; TCP still works.
  if [ "$r" = "still-here" ]; then ok "UDP echo during the flood (an existing or new flow)"
  else say "note: a new UDP flow is refused while the table is full ('$r'), as designed"; fi
fi

# --- 1000 concurrent connections ---------------------------------------------------
cat >"$TMP/echo.py" <<'PY'
import selectors, socket
sel = selectors.DefaultSelector()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(2048); s.setblocking(False)
print(s.getsockname()[1], flush=True)
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            c, _ = s.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:
            try: b = key.fileobj.recv(4096)
            except OSError: b = b""
            if b: key.fileobj.send(b)
            else: sel.unregister(key.fileobj); key.fileobj.close()
PY
cat >"$TMP/many.py" <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.create_connection(("192.168.65.2", port), timeout=30)
    socks.append(s)
for i, s in enumerate(socks): s.sendall(b"conn-%d\n" % i)
good = 0
for i, s in enumerate(socks):
    want = b"conn-%d\n" % i; got = b""
    while len(got) < len(want):
        b = s.recv(64)
        if not b: break
        got += b
    good += got == want
for s in socks: s.close()
print(good)
PY
coproc ECHO { exec python3 "$TMP/echo.py"; }
read -r EPORT <&"${ECHO[0]}"
PIDS+=("$ECHO_PID")
good=$(T=180 N bash -c "ulimit -n 4096; python3 $TMP/many.py $EPORT 1000" 2>&1 | tail -1) || true
if [ "$good" = "1000" ]; then ok "1000 concurrent connections echoed"; else fail "1000 connections: $good"; fi

# --- a SYN flood from raw sockets: survived and counted -------------------------
cat >"$TMP/synflood.py" <<'PY'
import random, socket, struct, sys
port = int(sys.argv[1])
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
src, dst = socket.inet_aton("192.168.65.3"), socket.inet_aton("192.168.65.2")
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
for i in range(5000):
    sport = 20000 + i
    t = struct.pack("!HHIIBBHHH", sport, port, random.getrandbits(32), 0, 5 << 4, 0x02, 65535, 0, 0)
    c = csum(src + dst + struct.pack("!BBH", 0, 6, len(t)) + t)
    s.sendto(t[:16] + struct.pack("!H", c) + t[18:], ("192.168.65.2", 0))
PY
opened_before=$(CTL cat /net/stats | awk '$1 == "tcp_opened" {print $2}')
N python3 "$TMP/synflood.py" "$EPORT" || fail "SYN flood sender failed"
sleep 2
opened_after=$(CTL cat /net/stats | awk '$1 == "tcp_opened" {print $2}')
kill -0 "$SERVER" 2>/dev/null && ok "SYN flood of 5000: server alive, tcp_opened ${opened_before:-?} -> ${opened_after:-?}" \
  || fail "server died under a SYN flood"
good=$(T=60 N python3 "$TMP/many.py" "$EPORT" 50 2>&1 | tail -1) || true
[ "$good" = "50" ] && ok "connections work after the SYN flood" || fail "after the SYN flood: $good"

# --- refused port ------------------------------------------------------------------
cat >"$TMP/refused.py" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(10)
try:
    s.connect(("192.168.65.2", int(sys.argv[1]))); print("connected")
except ConnectionRefusedError: print("refused")
except Exception as e: print(type(e).__name__)
PY
closed=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
r=$(N python3 "$TMP/refused.py" "$closed")
if [ "$r" = "refused" ]; then ok "a closed port is refused"; else fail "closed port: $r"; fi

# --- the tree -----------------------------------------------------------------------
CTL cat /net/stats >"$TMP/stats" && grep -q "^frames_in [1-9]" "$TMP/stats" && ok "/net/stats counts frames" || fail "/net/stats"
CTL cat /links/0 >"$TMP/link0" && grep -q "^type tap" "$TMP/link0" && grep -q "^ip 192.168.65.3" "$TMP/link0" \
  && ok "/links/0 shows the tap link and the guest's address" || { fail "/links/0"; cat "$TMP/link0"; }
kill -0 "$SERVER" 2>/dev/null && ok "server still running" || fail "server died"; 

if [ "$FAILS" -ne 0 ]; then
  say "--- server stderr"; tail -30 "$TMP/serve.err"
  say "FAILED: $FAILS check(s)"; exit 1
fi
say PASS
