#!/usr/bin/env bash
# Real peers: tshark and tcpdump read Berth's capture rings, and a tcpdump
# inside the guest's network namespace counts the same DNS packets.
#
#   tests/peers/netns_pcap.sh BERTH_BINARY
#
# The guest is the Linux stack of namespace berth-pc-$$ behind
# `berth serve --link tap:bt0@NS`, with berth's DNS forwarder pointed at a
# dnsmasq on 127.0.0.1 started here (never at any other resolver). It makes
# DHCP (busybox udhcpc), ARP, ICMP (ping), DNS (busybox nslookup via the
# gateway) and TCP (wget of a python http.server on the host's 127.0.0.1 via
# 192.168.65.2) traffic, and checks:
#   - `berth ctl cat /pcap/all.pcap | tshark -r -` shows DHCP, DNS, ARP, ICMP
#     and TCP; tcpdump -r reads the same file (nanosecond timestamps), and
#     the .pcapng one, whose packets carry both directions and the link's
#     interface name;
#   - the dns rule holds exactly as many packets as `tcpdump -i bt0 port 53`
#     in the namespace saw over the same time;
#   - `berth ctl tail /pcap/all.live` shows packets while traffic runs and
#     ends cleanly when stopped (a signal, or its reader tshark -c exiting),
#     and berth keeps serving;
#   - /audit lists the opens and reads with client and byte counts, and
#     berth logs them;
#   - a filter that does not compile is refused with libpcap's message;
#   - the namespace is always deleted.
# Exit: 0 pass, 1 fail, 77 skipped (not root, no /dev/net/tun, no netns,
# a tool missing).
set -euo pipefail
BERTH=$(readlink -f "${1:?usage: $0 BERTH_BINARY}")
NS=berth-pc-$$
TMP=$(mktemp -d /tmp/berth-pcap.XXXXXX)
PIDS=()
FAILS=0
say() { echo "netns_pcap: $*"; }
skip() { say "SKIP: $*"; exit 77; }
ok() { say "ok: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
show() { sed 's/^/    /' "${1:--}" | head -n "${2:-40}"; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces and TAP"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
for t in tshark tcpdump dnsmasq busybox python3 ip; do command -v $t >/dev/null || skip "$t is missing"; done
"$BERTH" serve --help 2>&1 | grep -q -- '--dns-upstream' || skip "berth serve has no --dns-upstream"
ip netns add "$NS" 2>/dev/null || skip "cannot create a network namespace"
N() { timeout "${T:-60}" ip netns exec "$NS" "$@"; }
wait_for() {  # TENTHS COMMAND...: retry until it succeeds
  local n=$1
  shift
  for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done
  return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- the DNS upstream: dnsmasq on loopback only ------------------------------------
DNSPORT=$(free_port)
dnsmasq --no-daemon --conf-file=/dev/null --user=root --pid-file= --port="$DNSPORT" --listen-address=127.0.0.1 \
  --bind-interfaces --no-resolv --no-hosts --address=/pcap.test/10.9.8.7 --log-facility="$TMP/dnsmasq.log" \
  >"$TMP/dnsmasq.out" 2>&1 &
PIDS+=($!)
wait_for 50 grep -q "started" "$TMP/dnsmasq.log" 2>/dev/null || { show "$TMP/dnsmasq.out"; skip "dnsmasq did not start"; }

# --- berth ------------------------------------------------------------------------------
SOCK=$TMP/b.sock
"$BERTH" serve --link "tap:bt0@$NS" --9p "unix:$SOCK" --dns-upstream "127.0.0.1:$DNSPORT" --log-level info \
  >"$TMP/serve.out" 2>"$TMP/serve.err" &
SERVER=$!
PIDS+=($SERVER)
wait_for 100 test -S "$SOCK" || { show "$TMP/serve.err"; say "FAIL: berth serve did not start"; exit 1; }
CTL() { timeout 30 "$BERTH" ctl --9p "unix:$SOCK" "$@"; }
if ! CTL stat /pcap/ctl >/dev/null 2>&1; then
  say "FAIL: this berth has no /pcap (tools/serve.cpp must wrap links with pcap::wrap_link and mount the tree)"
  exit 1
fi
rule() { CTL cat /pcap/rules | awk -v r="$1" -v k="$2" '$1 == r { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }'; }

N ip link set lo up
N ip link set bt0 up
# tcpdump inside the namespace: the independent count of DNS packets.
N tcpdump -i bt0 -U -n -w "$TMP/ref-dns.pcap" port 53 >"$TMP/tcpdump.out" 2>&1 &
TCPDUMP=$!
PIDS+=($TCPDUMP)
wait_for 100 grep -q "listening on" "$TMP/tcpdump.out" || { show "$TMP/tcpdump.out"; fail "tcpdump in the namespace did not start"; }
CTL write /pcap/ctl "clear dns" >/dev/null  # the same start for both counts

# --- traffic ------------------------------------------------------------------------------
# busybox udhcpc's event script: apply the lease.
{
  echo '#!/bin/sh'
  echo 'case "$1" in'
  echo '  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;'
  echo '  bound|renew)'
  echo '    ip addr replace "$ip/$subnet" dev "$interface"'
  echo '    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done'
  echo "    echo \"\$ip\" >\"$TMP/leased\" ;;"
  echo 'esac'
  echo 'exit 0'
} >"$TMP/udhcpc.sh"
chmod +x "$TMP/udhcpc.sh"
if T=30 N busybox udhcpc -f -q -n -i bt0 -t 5 -T 1 -A 1 -s "$TMP/udhcpc.sh" >"$TMP/udhcpc.out" 2>&1 && [ -s "$TMP/leased" ]; then
  ok "DHCP: udhcpc got $(cat "$TMP/leased")"
else
  fail "udhcpc got no lease"
  show "$TMP/udhcpc.out"
  N ip addr add 192.168.65.3/24 dev bt0 2>/dev/null || true
  N ip route replace default via 192.168.65.1 || true
fi
if N busybox ping -c 3 -W 3 192.168.65.1 >"$TMP/ping.out" 2>&1; then ok "ping gateway"; else fail "ping gateway"; show "$TMP/ping.out"; fi
got=$(N busybox nslookup pcap.test 192.168.65.1 2>&1 | awk '/^Name:/ {n=1; next} n && /^Address/ {print $NF}' | head -1) || true
if [ "$got" = 10.9.8.7 ]; then ok "nslookup pcap.test via the gateway -> $got"; else fail "nslookup pcap.test -> '$got'"; fi
N busybox nslookup nosuch.pcap.test 192.168.65.1 >/dev/null 2>&1 || true  # NXDOMAIN: more DNS packets
mkdir -p "$TMP/www"
head -c 200000 /dev/urandom >"$TMP/www/blob"
python3 -m http.server 0 --bind 127.0.0.1 --directory "$TMP/www" >"$TMP/http.out" 2>&1 &
PIDS+=($!)
wait_for 50 grep -q "port" "$TMP/http.out" 2>/dev/null || true
HPORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$TMP/http.out" | head -1)
if [ -n "$HPORT" ] && N busybox wget -q -O "$TMP/blob.got" "http://192.168.65.2:$HPORT/blob" && cmp -s "$TMP/www/blob" "$TMP/blob.got"; then
  ok "TCP: wget of 200 kB via the host alias"
else
  fail "wget via the host alias"
fi
sleep 0.5

# --- the dns rule against tcpdump in the namespace --------------------------------------
kill -INT "$TCPDUMP" 2>/dev/null || true
wait "$TCPDUMP" 2>/dev/null || true
CTL cat /pcap/dns.pcap >"$TMP/dns.pcap"
ref=$( (tcpdump -r "$TMP/ref-dns.pcap" -n 2>/dev/null || true) | wc -l)
ours=$( (tcpdump -r "$TMP/dns.pcap" -n 2>/dev/null || true) | wc -l)
ring=$(rule dns ring_packets)
if [ "$ref" -gt 0 ] && [ "$ours" = "$ref" ] && [ "$ring" = "$ref" ]; then
  ok "dns rule: $ours packets; tcpdump -i bt0 port 53 in the namespace: $ref"
else
  fail "dns rule has $ours packets (ring_packets $ring), tcpdump in the namespace saw $ref"
  tcpdump -r "$TMP/ref-dns.pcap" -n 2>&1 | show
  tcpdump -r "$TMP/dns.pcap" -n 2>&1 | show
fi

# --- tshark and tcpdump read /pcap/all.pcap and .pcapng --------------------------------
CTL cat /pcap/all.pcap | tshark -r - -T fields -e frame.protocols >"$TMP/all.protos" 2>"$TMP/tshark.err" || true
for p in arp dhcp dns icmp tcp; do
  if grep -Eq "(^|:)$p(:|$)" "$TMP/all.protos"; then
    ok "tshark -r - of /pcap/all.pcap shows $p ($(grep -Ec "(^|:)$p(:|$)" "$TMP/all.protos") packets)"
  else
    fail "tshark shows no $p in /pcap/all.pcap"
    show "$TMP/tshark.err"
    sort "$TMP/all.protos" | uniq -c | show
  fi
done
CTL cat /pcap/all.pcap >"$TMP/all.pcap"
if tcpdump -r "$TMP/all.pcap" -n --time-stamp-precision=nano >"$TMP/all.tcpdump" 2>"$TMP/all.tcpdump.err"; then
  n=$(wc -l <"$TMP/all.tcpdump")
  if [ "$n" -gt 0 ] && grep -Eq '^[0-9:]+\.[0-9]{9} ' "$TMP/all.tcpdump"; then
    ok "tcpdump -r all.pcap: $n packets, nanosecond timestamps"
  else
    fail "tcpdump -r all.pcap: $n packets"
    show "$TMP/all.tcpdump" 5
  fi
else
  fail "tcpdump -r all.pcap"
  show "$TMP/all.tcpdump.err"
fi
CTL cat /pcap/all.pcapng >"$TMP/all.pcapng"
if tcpdump -r "$TMP/all.pcapng" -n >"$TMP/ng.tcpdump" 2>"$TMP/ng.err" && [ -s "$TMP/ng.tcpdump" ]; then
  ok "tcpdump -r all.pcapng: $(wc -l <"$TMP/ng.tcpdump") packets"
else
  fail "tcpdump -r all.pcapng"
  show "$TMP/ng.err"
fi
dirs=$( (tshark -r "$TMP/all.pcapng" -T fields -e frame.packet_flags_direction 2>/dev/null || true) | sort | uniq -c | tr -s ' \n' ' ')
names=$( (tshark -r "$TMP/all.pcapng" -T fields -e frame.interface_name 2>/dev/null || true) | sort -u | tr '\n' ';')
if grep -q "0x00000001" <<<"$dirs" && grep -q "0x00000002" <<<"$dirs" && grep -q "tap" <<<"$names"; then
  ok "pcapng: directions (count, value):$dirs; interface: $names"
else
  fail "pcapng directions '$dirs', interfaces '$names'"
fi

# --- live following ----------------------------------------------------------------------
"$BERTH" ctl --9p "unix:$SOCK" tail /pcap/all.live >"$TMP/live.pcap" 2>"$TMP/live.err" &
TAIL=$!
PIDS+=($TAIL)
sleep 0.5
N busybox ping -c 3 -i 0.2 192.168.65.1 >/dev/null 2>&1 || true
sleep 0.5
# (SIGTERM: a background job of a script ignores SIGINT.)
kill -TERM "$TAIL" 2>/dev/null || true
wait "$TAIL" 2>/dev/null || true
n=$( (tshark -r "$TMP/live.pcap" -Y icmp 2>/dev/null || true) | wc -l)
if [ "$n" -ge 6 ]; then
  ok "berth ctl tail /pcap/all.live: $n ICMP packets while ping ran; tail stopped by a signal"
else
  fail "live stream: $n ICMP packets"
  show "$TMP/live.err"
  tshark -r "$TMP/live.pcap" 2>&1 | show
fi
# A reader that stops: tshark -c 4 exits, and tail ends on its next write.
(N busybox ping -c 20 -i 0.2 192.168.65.1 >/dev/null 2>&1 || true) &
PING=$!
PIDS+=($PING)
start=$(date +%s)
set +o pipefail
timeout 20 "$BERTH" ctl --9p "unix:$SOCK" tail /pcap/icmp.live | timeout 20 tshark -r - -l -c 4 >"$TMP/live2.out" 2>"$TMP/live2.err"
rc=${PIPESTATUS[0]}
set -o pipefail
took=$(($(date +%s) - start))
lines=$(wc -l <"$TMP/live2.out")
if [ "$lines" -eq 4 ] && [ "$rc" != 124 ]; then
  ok "tail /pcap/icmp.live | tshark -c 4: 4 packets; tail ended after ${took}s (exit $rc)"
else
  fail "tail | tshark -c 4: $lines packets, tail exit $rc"
  show "$TMP/live2.out"
  show "$TMP/live2.err"
fi
wait "$PING" 2>/dev/null || true
if kill -0 "$SERVER" 2>/dev/null && CTL cat /pcap/rules >/dev/null; then
  ok "berth still serving; rule icmp live_readers=$(rule icmp live_readers)"
else
  fail "berth died"
fi

# --- audit -------------------------------------------------------------------------------
CTL cat /audit >"$TMP/audit"
for pat in " open /pcap/all.pcap size=" " read /pcap/all.pcap bytes=" " close /pcap/all.pcap bytes=" \
  " open /pcap/all.live size=0" " close /pcap/all.live bytes=" " open /pcap/dns.pcap "; do
  if grep -q -- "$pat.* peer=unix:.* uname=" "$TMP/audit"; then ok "/audit has '$pat'"; else
    fail "/audit lacks '$pat'"
    show "$TMP/audit"
  fi
done
if grep -q "audit: .* open /pcap/all.pcap " "$TMP/serve.err"; then ok "audit lines are logged at info level"; else fail "no audit lines in berth's log"; fi

# --- bad rules -------------------------------------------------------------------------
if out=$(CTL write /pcap/ctl "add bad port 99999" 2>&1); then
  fail "a bad filter was accepted: $out"
elif grep -q "ERROR bad filter 'port 99999': .*99999" <<<"$out"; then
  ok "bad filter refused: $out"
else
  fail "bad filter message: $out"
fi
if CTL write /pcap/ctl "add web tcp port ${HPORT:-80} limit=64k snaplen=128" >/dev/null && [ "$(rule web snaplen)" = 128 ]; then
  ok "add web; /pcap/rules: $(CTL cat /pcap/rules | grep '^web ')"
else
  fail "add web rule"
fi

kill "$SERVER" 2>/dev/null || true
wait "$SERVER" 2>/dev/null || true
if [ "$FAILS" -ne 0 ]; then
  say "$FAILS check(s) failed"
  echo "--- berth stderr (tail)"
  tail -n 30 "$TMP/serve.err"
  exit 1
fi
say "all checks passed"
