#!/usr/bin/env bash
# Real-peer test: a Linux guest under QEMU (TCG) on berth's qemu link uses
# the gateway's services the way a booted VM does:
#   - DHCP at boot (busybox udhcpc, sending hostname "bguest"): a lease in
#     the pool with router, DNS server and domain berth.internal;
#   - DNS through the gateway (the resolv.conf DHCP gave it):
#     host.berth.internal, gateway.berth.internal, its own DHCP name
#     bguest.berth.internal, NXDOMAIN for an unknown local name, and
#     upstream.test forwarded to a dnsmasq on the host's loopback (berth serve
#     --dns-upstream 127.0.0.1:PORT; nothing leaves this machine);
#   - a port forward created from inside the guest: it mounts the control
#     tree from the gateway (9P on TCP 564), echoes a spec into ports/ctl
#     (and checks a bad spec fails with "Invalid argument"), serves a token
#     with busybox httpd, and waits; the host fetches the token through the
#     forward with curl; the guest then sees the connection counted and
#     removes the forward with "rm ID".
# The host also checks /dhcp/leases (bguest's lease), dnsmasq's log, and
# that the forward's port is closed after the guest removed it.
#
# Usage: tests/peers/guest_services.sh BERTH_BINARY
# Exit status: 0 pass, 1 fail, 77 skipped (no QEMU, guest kernel or dnsmasq).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 BERTH_BINARY" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BERTH=$(readlink -f "$1" || true)
TIMEOUT=${BERTH_GUEST_TIMEOUT:-300}
say() { echo "guest_services: $*"; }
skip() { echo "SKIP: guest_services: $*"; exit 77; }
[ -x "$BERTH" ] || { say "FAIL: $1 is not an executable"; exit 1; }
command -v qemu-system-x86_64 >/dev/null 2>&1 || skip "qemu-system-x86_64 is missing"
qemu-system-x86_64 -netdev help 2>/dev/null | grep -qx stream || skip "this QEMU has no -netdev stream"
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
[ -x "$DNSMASQ" ] || skip "dnsmasq is missing (apt-get install dnsmasq-base)"
command -v curl >/dev/null 2>&1 || skip "curl is missing"
command -v python3 >/dev/null 2>&1 || skip "python3 is missing"
rc=0
GUEST_DIR=$("$ROOT/scripts/guest/build-guest.sh") || rc=$?
[ $rc -ne 77 ] || skip "cannot build the guest (see build-guest messages above)"
[ $rc -eq 0 ] && [ -s "$GUEST_DIR/vmlinuz" ] || { say "FAIL: build-guest.sh failed (exit $rc)"; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/berth-guestsvc.XXXXXX")
SERVER_PID="" QEMU_PID="" DNS_PID="" WATCH_PID=""
stop() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  trap '' INT TERM
  stop "$WATCH_PID"; stop "$QEMU_PID"; stop "$SERVER_PID"; stop "$DNS_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FAILS=0
ok() { say "ok: $*"; }
bad() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
dump() {
  echo "----- guest console -----"; tr -d '\r' <"$TMP/console.log" 2>/dev/null || true
  echo "----- dnsmasq -----"; tail -n 30 "$TMP/dnsmasq.log" 2>/dev/null || true
  echo "----- berth stderr (last 100 lines) -----"; tail -n 100 "$TMP/server.err" 2>/dev/null || true
}
die() { say "FAIL: $*"; dump; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SOCK=$TMP/b.sock QSOCK=$TMP/q.sock
CTL() { timeout 20 "$BERTH" ctl --9p "unix:$SOCK" "$@"; }
DNS_PORT=$(free_port)
FPORT=$(free_port)
TOKEN=tok$$x$RANDOM

"$DNSMASQ" --no-daemon --port="$DNS_PORT" --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
  --address=/upstream.test/10.9.8.7 --log-queries --log-facility="$TMP/dnsmasq.log" --pid-file="$TMP/dnsmasq.pid" \
  >"$TMP/dnsmasq.out" 2>&1 &
DNS_PID=$!
stdbuf -oL -eL "$BERTH" serve --link "qemu:$QSOCK" --9p "unix:$SOCK" --dns-upstream "127.0.0.1:$DNS_PORT" \
  --log-level info >"$TMP/server.out" 2>"$TMP/server.err" </dev/null &
SERVER_PID=$!
for _ in $(seq 1 200); do
  grep -qxF "berth: listening on unix:$SOCK" "$TMP/server.out" 2>/dev/null && [ -S "$QSOCK" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "berth serve exited"
  sleep 0.1
done
[ -S "$QSOCK" ] || die "berth serve did not start within 20 s"

# The host's half of the forward test: once the guest says it is ready,
# fetch the token through the forward.
watcher() {
  for _ in $(seq 1 $((TIMEOUT * 2))); do
    if tr -d '\r' <"$TMP/console.log" | grep -qa "BERTH-GUEST: FORWARD-READY $FPORT"; then
      curl -s -m 20 "http://127.0.0.1:$FPORT/" >"$TMP/fetched" 2>"$TMP/curl.err" || echo "curl exit $?" >>"$TMP/curl.err"
      CTL cat /dhcp/leases >"$TMP/leases" 2>&1 || true
      return 0
    fi
    sleep 0.5
  done
}
: >"$TMP/console.log"
watcher &
WATCH_PID=$!

APPEND="console=ttyS0 panic=-1 loglevel=4 berth.test=services berth.watchdog=$((TIMEOUT - 20))"
APPEND+=" berth.token=$TOKEN berth.fport=$FPORT"
say "booting the guest under QEMU TCG (timeout ${TIMEOUT}s)"
qrc=0
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -accel tcg -m 512 -smp 1 \
  -nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot \
  -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" -append "$APPEND" \
  -netdev "stream,id=n0,server=off,addr.type=unix,addr.path=$QSOCK" \
  -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:57 \
  </dev/null >"$TMP/console.log" 2>&1 &
QEMU_PID=$!
wait "$QEMU_PID" || qrc=$?
QEMU_PID=""
wait "$WATCH_PID" 2>/dev/null || true
WATCH_PID=""
log=$(tr -d '\r' <"$TMP/console.log")
echo "$log" | grep -a 'BERTH-GUEST' | sed 's/^/  /'
[ $qrc -ne 124 ] && [ $qrc -ne 137 ] || die "QEMU did not finish within ${TIMEOUT}s"

if echo "$log" | grep -qa 'BERTH-GUEST: FAIL'; then bad "guest: $(echo "$log" | grep -a -m1 'BERTH-GUEST: FAIL')"
elif ! echo "$log" | grep -qa 'BERTH-GUEST: PASS'; then bad "no BERTH-GUEST: PASS marker (QEMU exit $qrc)"; fi
for m in 'ok dhcp: ip=192\.168\.65\.' 'ok dhcp options' 'ok dns host.berth.internal is 192.168.65.2' \
         'ok dns gateway.berth.internal is 192.168.65.1' 'ok dns bguest.berth.internal is 192\.168\.65\.' \
         'ok dns upstream.test is 10.9.8.7' 'ok dns nxdomain' 'ok forward written' \
         'ok bad spec refused: .*Invalid argument' 'ok forward used: ' 'ok forward removed'; do
  echo "$log" | grep -qa "BERTH-GUEST: $m" || bad "missing guest marker: $m"
done
if [ "$(cat "$TMP/fetched" 2>/dev/null)" = "$TOKEN" ]; then ok "host fetched the guest's token through the forward made inside it"
else bad "host fetch through 127.0.0.1:$FPORT: '$(cat "$TMP/fetched" 2>/dev/null)' $(cat "$TMP/curl.err" 2>/dev/null)"; fi
if grep -qE "^52:54:00:12:34:57 192\.168\.65\.[0-9]+ bguest " "$TMP/leases" 2>/dev/null; then ok "/dhcp/leases: $(head -n1 "$TMP/leases")"
else bad "/dhcp/leases lacks bguest: $(cat "$TMP/leases" 2>/dev/null)"; fi
if grep -q "query\[A\] upstream.test from 127.0.0.1" "$TMP/dnsmasq.log" 2>/dev/null; then ok "dnsmasq answered the forwarded query"
else bad "dnsmasq saw no query for upstream.test"; fi
if curl -s -m 5 "http://127.0.0.1:$FPORT/" >/dev/null 2>&1; then bad "port $FPORT still open after the guest removed the forward"
else ok "port $FPORT refused after the guest removed the forward"; fi
kill -0 "$SERVER_PID" 2>/dev/null && CTL cat /dns/stats >/dev/null || bad "berth serve is not serving after the test"

if [ "$FAILS" -ne 0 ]; then dump; say "FAILED: $FAILS check(s)"; exit 1; fi
say "PASS"
