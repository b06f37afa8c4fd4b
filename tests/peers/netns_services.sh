#!/usr/bin/env bash
# Real peers for the gateway's services: the Linux kernel's TCP/IP stack in a
# network namespace (over tap:), curl, socat, busybox httpd and udhcpc, ISC
# dhclient, dnsmasq (as the DNS upstream), bind's nslookup and dig.
#
#   tests/peers/netns_services.sh BERTH_BINARY
#
# Creates namespace berth-ns-$$ and runs berth serve --link tap:bt0@NS with a
# state directory, then checks:
#   1. port forwards (/ports/ctl, /ports/<id>, the VPNKit /port tree): TCP
#      with 200 parallel curls and sha256s, UDP, unix sockets, removal, the
#      errors (malformed, in use, privileged, address not allowed) with their
#      errno, and persistence across a restart with the same --state-dir;
#   2. DHCP with busybox udhcpc and ISC dhclient: options, /dhcp/leases and
#      leases.json, renew, release, a --dhcp-static reservation;
#   3. DNS: local names, DHCP hostnames, /dns/hosts, --hosts FILE reloads,
#      forwarding to a dnsmasq on loopback, NXDOMAIN, TCP, AAAA NODATA,
#      /dns/stats.
# A section whose feature the binary lacks (per `berth serve --help`) is
# reported as SKIP lines. DNS only ever goes to the dnsmasq started here on
# 127.0.0.1 (--dns-upstream), and the namespace's resolv.conf names the
# gateway, so nothing is sent to any resolver outside this machine.
# Exit: 0 pass, 1 fail, 77 skipped (not root, no /dev/net/tun, no netns, a
# tool missing).
set -uo pipefail
PATH=$PATH:/usr/sbin:/sbin
say() { echo "netns_services: $*"; }

# The checks run in a child, in a process group of its own; this parent only
# waits for it and then cleans up (namespace, processes, files), also when
# interrupted. bash 5.2 can abort or hang when a trapped signal arrives in
# the middle of a $(...), which the checks are full of; a shell that only
# ever sits in `wait` handles its traps safely.
if [ -z "${NETNS_SERVICES_CHILD:-}" ]; then
  BERTH_IN=$(readlink -f "${1:?usage: $0 BERTH_BINARY}")
  NS=berth-ns-$$
  TMP=$(mktemp -d /tmp/berth-services.XXXXXX)
  CHILD=""
  parent_cleanup() {
    trap '' INT TERM
    local p
    if [ -n "$CHILD" ]; then
      kill -TERM -- "-$CHILD" 2>/dev/null
      for _ in $(seq 50); do kill -0 -- "-$CHILD" 2>/dev/null || break; sleep 0.1; done
      kill -KILL -- "-$CHILD" 2>/dev/null
    fi
    mountpoint -q "$TMP/mnt" 2>/dev/null && umount -l "$TMP/mnt"
    # The child's background processes went with its process group; daemons
    # inside the namespace (dhclient forks away) are found by namespace.
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null; done
    for _ in $(seq 30); do
      [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] && break; sleep 0.1
    done
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$NS" 2>/dev/null
    rm -rf "/etc/netns/$NS" "$TMP"
  }
  trap parent_cleanup EXIT
  trap 'say "interrupted"; exit 130' INT TERM
  NETNS_SERVICES_CHILD=1 NS=$NS TMP=$TMP BERTH_IN=$BERTH_IN setsid "$BASH" "$0" "$@" &
  CHILD=$!
  wait "$CHILD"
  exit $?
fi

# --- the child: every check ------------------------------------------------------------
# A private copy of the binary: `--help` and every start then see the same
# binary, even while it is being rebuilt.
BERTH=$TMP/berth
cp "$BERTH_IN" "$BERTH" || { say "FAIL: cannot copy $BERTH_IN"; exit 1; }
PIDS=()
FAILS=0
SKIPS=0
MNT=""
SERVER=""
START=$SECONDS
skip() { say "SKIP: $*"; exit 77; }
ok() { say "ok: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
skipped() { say "SKIP: $*"; SKIPS=$((SKIPS + 1)); }
show() { sed 's/^/    | /' "$@" | head -40; }
track() { PIDS+=("$1"); }  # background processes stay in the child's group

[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces and TAP"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"
for t in curl socat python3 sha256sum busybox xargs setsid; do command -v $t >/dev/null || skip "$t is missing"; done
busybox httpd --help >/dev/null 2>&1 || busybox --list | grep -qx httpd || skip "busybox has no httpd"
ip netns add "$NS" 2>/dev/null || skip "cannot create a network namespace"

N() { timeout "${T:-30}" ip netns exec "$NS" "$@"; }
SOCK=$TMP/b.sock
STATE=$TMP/state
mkdir -p "$STATE"
CTL() { timeout 15 "$BERTH" ctl --9p "unix:$SOCK" "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { CTL cat /metrics 2>/dev/null | awk -v k="$1" '$1 == k {v=$2} END {print v+0}'; }
statval() { awk -v k="$2" '$1 == k {v=$2} END {print v+0}' "$1"; }

# --- features present in this binary --------------------------------------------
HELP=$("$BERTH" serve --help 2>&1)
has_flag() { grep -qE -- "$1( |\$)" <<<"$HELP"; }
HAVE_DHCP=0; HAVE_DNS=0; HAVE_HOSTS=0
has_flag --dhcp-static && HAVE_DHCP=1
has_flag --dns-upstream && HAVE_DNS=1
has_flag --hosts && HAVE_HOSTS=1
say "features: dhcp=$HAVE_DHCP dns=$HAVE_DNS hosts-file=$HAVE_HOSTS"
# Nothing in the namespace may resolve through the host's resolver (ip netns
# exec bind-mounts this over /etc/resolv.conf): the gateway when berth is
# told to forward to our dnsmasq, else the namespace's own closed loopback.
NETNS_ETC=/etc/netns/$NS
mkdir -p "$NETNS_ETC"
if [ $HAVE_DNS -eq 1 ]; then echo "nameserver 192.168.65.1"; else echo "nameserver 127.0.0.1"; fi >"$NETNS_ETC/resolv.conf"

STATIC_MAC=02:00:00:00:00:42
STATIC_IP=192.168.65.42
HOSTS=$TMP/hosts
printf '# test hosts file\n192.168.65.88 files.test\n' >"$HOSTS"
EXTRA=()
DNSPORT=""
if [ $HAVE_DNS -eq 1 ]; then
  DNSPORT=$(free_udp_port)
  # Always named, even when dnsmasq is missing: berth must never fall back
  # to /etc/resolv.conf here.
  EXTRA+=(--dns-upstream "127.0.0.1:$DNSPORT")
fi
[ $HAVE_HOSTS -eq 1 ] && EXTRA+=(--hosts "$HOSTS")
[ $HAVE_DHCP -eq 1 ] && EXTRA+=(--dhcp-static "$STATIC_MAC=$STATIC_IP")

RUN=0
start_berth() {
  RUN=$((RUN + 1))
  rm -f "$SOCK"
  for _ in $(seq 50); do N ip link show bt0 >/dev/null 2>&1 || break; sleep 0.1; done
  "$BERTH" serve --link "tap:bt0@$NS" --9p "unix:$SOCK" --state-dir "$STATE" "${EXTRA[@]}" --log-level info \
    >"$TMP/serve$RUN.out" 2>"$TMP/serve$RUN.err" &
  SERVER=$!
  track "$SERVER"
  for _ in $(seq 100); do [ -S "$SOCK" ] && break; kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
  if ! [ -S "$SOCK" ]; then
    say "FAIL: berth serve (run $RUN) did not start: $*"; show "$TMP/serve$RUN.err"; exit 1
  fi
  for _ in $(seq 50); do N ip link show bt0 >/dev/null 2>&1 && break; sleep 0.1; done
}
stop_berth() {
  kill -TERM "$SERVER" 2>/dev/null
  local gone=0
  for _ in $(seq 100); do kill -0 "$SERVER" 2>/dev/null || { gone=1; break; }; sleep 0.1; done
  if [ $gone -eq 1 ]; then
    wait "$SERVER" 2>/dev/null; local rc=$?
    ok "berth serve stopped on SIGTERM (exit $rc)"
  else
    fail "berth serve did not stop within 10 s of SIGTERM"; kill -9 "$SERVER" 2>/dev/null
  fi
  [ -e "$SOCK" ] && fail "the 9P socket was left behind"
}
# Static guest address: 192.168.65.3/24, default route via the gateway.
guest_static() {
  N ip link set lo up
  N ip link set bt0 up
  N ip -4 addr flush dev bt0
  N ip addr add 192.168.65.3/24 dev bt0
  N ip route replace default via 192.168.65.1
  for _ in $(seq 10); do N busybox ping -c 1 -W 1 192.168.65.1 >/dev/null 2>&1 && return 0; done
  return 1
}

start_berth "first start"
guest_static || fail "the namespace cannot ping the gateway"

# --- 1. port forwards -------------------------------------------------------------
mkdir -p "$TMP/www"
echo "hello from the namespace" >"$TMP/www/index.html"
head -c 102400 /dev/urandom >"$TMP/www/data"
WANT=$(sha256sum <"$TMP/www/data" | cut -d' ' -f1)
ip netns exec "$NS" busybox httpd -f -p 80 -h "$TMP/www" >"$TMP/httpd.log" 2>&1 &
track $!
for _ in $(seq 30); do N busybox wget -q -O /dev/null http://127.0.0.1/index.html 2>/dev/null && break; sleep 0.1; done
get() { curl -sS --max-time 10 "$@"; }

# A TCP forward on a free host port.
out=$(CTL write /ports/ctl "tcp:127.0.0.1:0:tcp:192.168.65.3:80" 2>&1); rc=$?
ID=""; P=""
if [ $rc -eq 0 ] && [[ "$out" =~ ^OK\ ([0-9]+)\ tcp:127\.0\.0\.1:([0-9]+):tcp:192\.168\.65\.3:80$ ]]; then
  ID=${BASH_REMATCH[1]}; P=${BASH_REMATCH[2]}
  ok "write /ports/ctl tcp forward: '$out'"
else
  fail "write /ports/ctl tcp forward: rc=$rc '$out'"
fi
if [ -n "$P" ]; then
  r=$(get "http://127.0.0.1:$P/index.html" 2>&1)
  [ "$r" = "hello from the namespace" ] && ok "curl through the forward" || fail "curl through the forward: '$r'"
  CTL ls /ports >"$TMP/ports.ls" 2>&1
  grep -qx "$ID" "$TMP/ports.ls" && ok "/ports lists $ID" || { fail "/ports does not list $ID"; show "$TMP/ports.ls"; }

  # 200 connections, 50 at a time, each checked by sha256. One curl with
  # --parallel when it has it ("Connection: close": a connection each).
  mkdir -p "$TMP/par"
  if curl --help all 2>/dev/null | grep -q -- --parallel-max; then
    timeout 120 curl -s --parallel --parallel-max 50 --max-time 60 -H "Connection: close" \
      "http://127.0.0.1:$P/data?n=[1-200]" -o "$TMP/par/#1" 2>"$TMP/par.err"
    (cd "$TMP/par" && sha256sum -- *) >"$TMP/par.sums" 2>/dev/null
  else
    seq 200 | timeout 120 xargs -P 50 -I{} sh -c \
      "curl -s --max-time 60 http://127.0.0.1:$P/data | sha256sum" >"$TMP/par.sums" 2>&1
  fi
  good=$(grep -c "^$WANT " "$TMP/par.sums")
  [ "$good" = 200 ] && ok "200 parallel curls (50 at a time) of 100 KB, sha256 matches" \
    || fail "parallel curls: $good of 200 matched"
  # Counters settle once the connections are closed.
  for _ in $(seq 30); do
    CTL cat "/ports/$ID" >"$TMP/port.stat" 2>&1
    [ "$(statval "$TMP/port.stat" active)" = 0 ] && break; sleep 0.1
  done
  tot=$(statval "$TMP/port.stat" total); tg=$(statval "$TMP/port.stat" bytes_to_guest); th=$(statval "$TMP/port.stat" bytes_to_host)
  if grep -qx "spec tcp:127.0.0.1:$P:tcp:192.168.65.3:80" "$TMP/port.stat" && grep -q "^active 0$" "$TMP/port.stat" \
     && [ "$tot" -ge 201 ] && [ "$th" -ge $((200 * 102400)) ] && [ "$tg" -gt 0 ]; then
    ok "/ports/$ID: spec, active 0, total $tot, bytes_to_guest $tg, bytes_to_host $th"
  else
    fail "/ports/$ID counters"; show "$TMP/port.stat"
  fi
  # rm /ports/ID
  if CTL rm "/ports/$ID" >"$TMP/rm.out" 2>&1; then
    get -o /dev/null "http://127.0.0.1:$P/" 2>/dev/null; rc=$?
    [ $rc -eq 7 ] && ok "rm /ports/$ID: the port is refused (curl exit 7)" || fail "after rm /ports/$ID curl exit $rc"
    CTL ls /ports | grep -qx "$ID" && fail "/ports still lists $ID"
  else
    fail "rm /ports/$ID: $(cat "$TMP/rm.out")"
  fi
fi
# The "rm ID" command.
out=$(CTL write /ports/ctl "tcp:127.0.0.1:0:tcp:192.168.65.3:80" 2>&1)
if [[ "$out" =~ ^OK\ ([0-9]+)\ tcp:127\.0\.0\.1:([0-9]+): ]]; then
  ID2=${BASH_REMATCH[1]}; P2=${BASH_REMATCH[2]}
  get -o /dev/null "http://127.0.0.1:$P2/index.html" || fail "second forward does not work"
  out=$(CTL write /ports/ctl "rm $ID2" 2>&1); rc=$?
  get -o /dev/null "http://127.0.0.1:$P2/" 2>/dev/null; crc=$?
  [ $rc -eq 0 ] && [ $crc -eq 7 ] && ok "write /ports/ctl 'rm $ID2': '$out', the port is refused" \
    || fail "write /ports/ctl 'rm $ID2': rc=$rc '$out', curl exit $crc"
else
  fail "second forward: '$out'"
fi

# UDP forward to a socat echo in the namespace.
ip netns exec "$NS" socat UDP4-RECVFROM:7777,fork EXEC:cat >/dev/null 2>&1 &
track $!
out=$(CTL write /ports/ctl "udp:127.0.0.1:0:udp:192.168.65.3:7777" 2>&1)
if [[ "$out" =~ ^OK\ ([0-9]+)\ udp:127\.0\.0\.1:([0-9]+):udp:192\.168\.65\.3:7777$ ]]; then
  UID_=${BASH_REMATCH[1]}; UP=${BASH_REMATCH[2]}
  r=""
  for _ in 1 2 3; do
    r=$(echo "hello-udp" | timeout 10 socat -T 3 - "UDP4:127.0.0.1:$UP" 2>&1) && [ "$r" = "hello-udp" ] && break
  done
  [ "$r" = "hello-udp" ] && ok "UDP forward: '$out', echo through socat" || fail "UDP forward echo got '$r'"
  CTL rm "/ports/$UID_" || fail "rm the UDP forward"
else
  fail "UDP forward: '$out'"
fi

# unix socket forward.
out=$(CTL write /ports/ctl "unix:$TMP/f.sock:tcp:192.168.65.3:80" 2>&1)
if [[ "$out" =~ ^OK\ ([0-9]+)\ unix:$TMP/f\.sock:tcp:192\.168\.65\.3:80$ ]]; then
  FID=${BASH_REMATCH[1]}
  r=$(get --unix-socket "$TMP/f.sock" http://localhost/index.html 2>&1)
  [ "$r" = "hello from the namespace" ] && ok "unix forward: '$out', curl --unix-socket" || fail "unix forward curl: '$r'"
  CTL rm "/ports/$FID" || fail "rm the unix forward"
  [ -e "$TMP/f.sock" ] && fail "rm of the unix forward left $TMP/f.sock behind" || ok "rm of the unix forward removed its socket"
else
  fail "unix forward: '$out'"
fi

# Errors: exit status 1 from berth ctl, the ERROR text, and the errno the
# server replied with (counted by errno name in /metrics).
expect_error() {  # NAME SPEC TEXT ERRNO
  local before after out rc key="berth_9p_errors_total{errno=\"$4\"}"
  before=$(metric "$key")
  out=$(CTL write /ports/ctl "$2" 2>&1); rc=$?
  after=$(metric "$key")
  if [ $rc -eq 1 ] && grep -q "ERROR" <<<"$out" && grep -q "$3" <<<"$out" && [ "$after" -gt "$before" ]; then
    ok "$1: exit 1, $4, '$out'"
  else
    fail "$1: rc=$rc, $key $before -> $after, '$out' (wanted '$3')"
  fi
}
expect_error "malformed spec" "tcp:127.0.0.1:notaport" "expected tcp:HOSTIP" EINVAL
coproc HOLD { exec python3 -c 'import socket,time
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(1); print(s.getsockname()[1], flush=True); time.sleep(300)'; }
track "$HOLD_PID"
read -r -t 10 HELD <&"${HOLD[0]}" || HELD=""
if [ -n "$HELD" ]; then
  expect_error "port in use" "tcp:127.0.0.1:$HELD:tcp:192.168.65.3:80" "already in use" EADDRINUSE
else
  fail "could not hold a port for the in-use check"
fi
expect_error "privileged port" "tcp:127.0.0.1:80:tcp:192.168.65.3:80" "privileged" EACCES
expect_error "host address not allowed" "tcp:10.1.2.3:8080:tcp:192.168.65.3:80" "not allowed" EACCES

# The same errors through the kernel's 9P client, where there is one.
if grep -qw 9p /proc/filesystems 2>/dev/null || modprobe 9p 2>/dev/null; then
  MNT=$TMP/mnt; mkdir -p "$MNT"
  if timeout 10 mount -t 9p -o trans=unix,version=9p2000.L "$SOCK" "$MNT" 2>"$TMP/mount.err"; then
    r=$( (echo "tcp:127.0.0.1:80:tcp:192.168.65.3:80" >"$MNT/ports/ctl") 2>&1); rc=$?
    [ $rc -ne 0 ] && grep -q "Permission denied" <<<"$r" && ok "v9fs: echo > ports/ctl fails: $r" || fail "v9fs privileged: rc=$rc '$r'"
    if [ -n "$HELD" ]; then
      r=$( (echo "tcp:127.0.0.1:$HELD:tcp:192.168.65.3:80" >"$MNT/ports/ctl") 2>&1); rc=$?
      [ $rc -ne 0 ] && grep -q "Address already in use" <<<"$r" && ok "v9fs: echo > ports/ctl fails: $r" || fail "v9fs in use: rc=$rc '$r'"
    fi
    umount "$MNT"; MNT=""
  else
    skipped "v9fs errno check: mount failed: $(head -1 "$TMP/mount.err")"; MNT=""
  fi
else
  skipped "v9fs errno check: this kernel has no 9p file system (checked through berth ctl and /metrics instead)"
fi
kill "$HOLD_PID" 2>/dev/null

# The VPNKit tree.
if CTL mkdir /port/web 2>"$TMP/mkdir.err"; then
  out=$(CTL write /port/web/ctl "tcp:127.0.0.1:0:tcp:192.168.65.3:80" 2>&1)
  if [[ "$out" =~ ^OK\ tcp:127\.0\.0\.1:([0-9]+):tcp:192\.168\.65\.3:80$ ]]; then
    VP=${BASH_REMATCH[1]}
    r=$(get "http://127.0.0.1:$VP/index.html" 2>&1)
    [ "$r" = "hello from the namespace" ] && ok "/port/web/ctl: '$out', curl works" || fail "/port/web curl: '$r'"
    CTL ls /port | grep -qx "web/" || fail "/port does not list web/"
    if CTL rm /port/web; then
      get -o /dev/null "http://127.0.0.1:$VP/" 2>/dev/null; rc=$?
      [ $rc -eq 7 ] && ok "rm /port/web: the port is refused" || fail "after rm /port/web curl exit $rc"
    else
      fail "rm /port/web"
    fi
  else
    fail "/port/web/ctl: '$out'"
  fi
else
  fail "mkdir /port/web: $(cat "$TMP/mkdir.err")"
fi

# A forward on a fixed port, to be restored after a restart.
FP=$(free_port)
out=$(CTL write /ports/ctl "tcp:127.0.0.1:$FP:tcp:192.168.65.3:80" 2>&1)
PID_FP=""
if [[ "$out" =~ ^OK\ ([0-9]+)\ tcp:127\.0\.0\.1:$FP:tcp:192\.168\.65\.3:80$ ]]; then
  PID_FP=${BASH_REMATCH[1]}
  r=$(get "http://127.0.0.1:$FP/index.html" 2>&1)
  [ "$r" = "hello from the namespace" ] && ok "forward on fixed port $FP works before the restart" || fail "fixed-port forward: '$r'"
else
  fail "fixed-port forward: '$out'"
fi

# --- 2. DHCP (udhcpc now; dhclient after the DNS checks) ----------------------------
MAC=$(N cat /sys/class/net/bt0/address)
GUEST_IP=192.168.65.3
LEASED=""
cat >"$TMP/udhcpc.sh" <<EOF
#!/bin/sh
# busybox udhcpc event script: record what the lease said, apply it.
echo "\$1 ip=\$ip subnet=\$subnet router=\$router dns=\$dns domain=\$domain mtu=\$mtu lease=\$lease" >>"$TMP/udhcpc.events"
case "\$1" in
  deconfig) ip -4 addr flush dev "\$interface"; ip link set "\$interface" up ;;
  bound|renew)
    cur=\$(ip -4 -o addr show dev "\$interface" | awk '{print \$4}' | cut -d/ -f1)
    [ "\$cur" = "\$ip" ] || ip -4 addr flush dev "\$interface"
    ip addr replace "\$ip/\$subnet" dev "\$interface"
    for r in \$router; do ip route replace default via "\$r" dev "\$interface"; break; done ;;
esac
exit 0
EOF
chmod +x "$TMP/udhcpc.sh"
ev() { grep "^$1 " "$TMP/udhcpc.events" 2>/dev/null | tail -1; }
evget() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
lease_line() { CTL cat /dhcp/leases 2>/dev/null | awk -v m="$1" 'tolower($1) == tolower(m)'; }
wait_for() {  # TENTHS COMMAND...: retry until it succeeds
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done
  return 1
}
in_pool() { [[ "$1" =~ ^192\.168\.65\.([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -ge 3 ] && [ "${BASH_REMATCH[1]}" -le 254 ]; }

UDHCPC_PID=""
HAVE_UDHCPC=0
busybox --list 2>/dev/null | grep -qx udhcpc && HAVE_UDHCPC=1
if [ $HAVE_DHCP -eq 0 ]; then
  skipped "DHCP: berth serve --help does not list --dhcp-static yet"
elif [ $HAVE_UDHCPC -eq 0 ]; then
  skipped "DHCP with udhcpc: busybox has no udhcpc"
else
  N ip -4 addr flush dev bt0
  : >"$TMP/udhcpc.events"
  ip netns exec "$NS" busybox udhcpc -f -i bt0 -t 5 -T 1 -A 1 -n -R -x hostname:guest1 -O mtu \
    -s "$TMP/udhcpc.sh" -p "$TMP/udhcpc.pid" >"$TMP/udhcpc.out" 2>&1 &
  UDHCPC_PID=$!
  track "$UDHCPC_PID"
  if wait_for 150 grep -q "^bound " "$TMP/udhcpc.events"; then
    b=$(ev bound)
    LEASED=$(evget "$b" ip)
    in_pool "$LEASED" && ok "udhcpc got $LEASED" || fail "udhcpc got '$LEASED', outside .3-.254"
    opts="subnet=$(evget "$b" subnet) router=$(evget "$b" router) dns=$(evget "$b" dns) domain=$(evget "$b" domain) mtu=$(evget "$b" mtu)"
    [ "$opts" = "subnet=255.255.255.0 router=192.168.65.1 dns=192.168.65.1 domain=berth.internal mtu=1500" ] \
      && ok "udhcpc options: $opts" || fail "udhcpc options: $opts"
    l=$(evget "$b" lease)
    [ "${l:-0}" -gt 0 ] 2>/dev/null && ok "lease time $l s" || fail "lease time '$l'"
    GUEST_IP=$LEASED
    line=$(lease_line "$MAC")
    if [[ "$line" =~ ^[0-9a-fA-F:]+\ $LEASED\ guest1\ [^\ ]+$ ]]; then ok "/dhcp/leases: $line"; else fail "/dhcp/leases for $MAC: '$line'"; CTL cat /dhcp/leases | show; fi
    if CTL cat /dhcp/leases.json >"$TMP/leases.json" 2>&1 && python3 - "$TMP/leases.json" "$MAC" "$LEASED" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ls = d["leases"] if isinstance(d, dict) else d
assert any(l["mac"].lower() == sys.argv[2].lower() and l["ip"] == sys.argv[3] and l["hostname"] == "guest1" for l in ls), ls
PY
    then ok "/dhcp/leases.json parses and has the lease"; else fail "/dhcp/leases.json"; show "$TMP/leases.json"; fi
    N busybox ping -c 1 -W 2 192.168.65.1 >/dev/null 2>&1 && ok "ping the gateway from the leased address" \
      || fail "cannot ping the gateway from $LEASED"
    # Renew: SIGUSR1 makes udhcpc send a unicast REQUEST.
    kill -USR1 "$UDHCPC_PID"
    if wait_for 100 grep -q "^renew " "$TMP/udhcpc.events"; then
      rip=$(evget "$(ev renew)" ip)
      [ "$rip" = "$LEASED" ] && ok "renew (SIGUSR1) keeps $LEASED" || fail "renew gave '$rip' instead of $LEASED"
    else
      fail "no renew event after SIGUSR1"; show "$TMP/udhcpc.out"
    fi
  else
    fail "udhcpc got no lease"; show "$TMP/udhcpc.out"; show "$TMP/udhcpc.events"
    N ip addr add 192.168.65.3/24 dev bt0 2>/dev/null
  fi
fi

# --- 3. DNS -------------------------------------------------------------------------
if [ $HAVE_DNS -eq 0 ]; then
  skipped "DNS: berth serve --help does not list --dns-upstream yet"
elif ! command -v dnsmasq >/dev/null || ! command -v nslookup >/dev/null; then
  skipped "DNS: dnsmasq or nslookup is missing"
else
  dnsmasq --no-daemon --conf-file=/dev/null --user=root --pid-file= --port="$DNSPORT" --listen-address=127.0.0.1 \
    --bind-interfaces --no-resolv --no-hosts --address=/upstream.test/10.9.8.7 --local-ttl=300 --log-queries \
    --log-facility="$TMP/dnsmasq.log" >"$TMP/dnsmasq.out" 2>&1 &
  track $!
  wait_for 50 grep -q "started" "$TMP/dnsmasq.log" 2>/dev/null
  lookup() { N nslookup -type=A -timeout=2 -retry=1 "$1" 192.168.65.1 2>&1 | awk '/^Name:/ {n=1; next} n && /^Address: / {print $2}' | sort | tr '\n' ' ' | sed 's/ $//'; }
  check_a() {  # NAME WANT
    local got; got=$(lookup "$1")
    [ "$got" = "$2" ] && ok "nslookup $1 -> $got" || { fail "nslookup $1 -> '$got', wanted $2"; N nslookup -type=A -timeout=2 -retry=1 "$1" 192.168.65.1 2>&1 | show; }
  }
  check_a host.berth.internal 192.168.65.2
  check_a gateway.berth.internal 192.168.65.1
  if [ -n "$LEASED" ]; then check_a guest1.berth.internal "$LEASED"; else skipped "guest1.berth.internal: no DHCP lease"; fi
  out=$(CTL write /dns/hosts "192.168.65.77 db.local" 2>&1) && ok "write /dns/hosts: '$out'" || fail "write /dns/hosts: '$out'"
  CTL cat /dns/hosts 2>&1 | grep -q "^192.168.65.77 *db.local" || fail "/dns/hosts does not show the record"
  check_a db.local 192.168.65.77
  if [ $HAVE_HOSTS -eq 1 ]; then
    check_a files.test 192.168.65.88
    printf '# changed\n192.168.65.89 files.test\n192.168.65.90 new.test other.test\n' >"$HOSTS.new" && mv "$HOSTS.new" "$HOSTS"
    t0=$SECONDS; got=""
    for _ in $(seq 16); do got=$(lookup files.test); [ "$got" = 192.168.65.89 ] && break; sleep 0.5; done
    [ "$got" = 192.168.65.89 ] && ok "--hosts file change picked up within $((SECONDS - t0)) s" || fail "--hosts change not picked up in 8 s: '$got'"
    check_a other.test 192.168.65.90
  else
    skipped "--hosts FILE: not in berth serve --help"
  fi
  CTL cat /dns/stats >"$TMP/dns1" 2>&1
  check_a upstream.test 10.9.8.7
  grep -q "query\[A\] upstream.test from 127.0.0.1" "$TMP/dnsmasq.log" && ok "dnsmasq's log shows the query from berth" \
    || { fail "dnsmasq's log lacks the query"; show "$TMP/dnsmasq.log"; }
  lookup upstream.test >/dev/null
  CTL cat /dns/stats >"$TMP/dns2" 2>&1
  q1=$(( $(statval "$TMP/dns1" queries_udp) + $(statval "$TMP/dns1" queries_tcp) ))
  q2=$(( $(statval "$TMP/dns2" queries_udp) + $(statval "$TMP/dns2" queries_tcp) ))
  h1=$(statval "$TMP/dns1" cache_hits); h2=$(statval "$TMP/dns2" cache_hits)
  [ "$q2" -gt "$q1" ] && [ "$h2" -gt "$h1" ] && ok "/dns/stats: queries $q1 -> $q2, cache_hits $h1 -> $h2" \
    || { fail "/dns/stats: queries $q1 -> $q2, cache_hits $h1 -> $h2"; show "$TMP/dns2"; }
  CTL cat /dns/upstreams >"$TMP/dns.up" 2>&1
  [ "$(awk '{print $1}' "$TMP/dns.up")" = "127.0.0.1:$DNSPORT" ] && ok "/dns/upstreams: $(cat "$TMP/dns.up")" \
    || { fail "/dns/upstreams is not just 127.0.0.1:$DNSPORT"; show "$TMP/dns.up"; }
  # Every try berth sent upstream reached the dnsmasq here.
  sent=$(statval "$TMP/dns2" upstream_queries)
  got=$(grep -c "query\[[A-Z0-9]*\] .* from 127.0.0.1" "$TMP/dnsmasq.log")
  [ "$sent" = "$got" ] && [ "$sent" -gt 0 ] && ok "berth sent $sent queries upstream, dnsmasq received $got" \
    || fail "berth sent $sent queries upstream, dnsmasq logged $got"
  out=$(CTL write /dns/hosts "not-an-address db.local" 2>&1); rc=$?
  [ $rc -eq 1 ] && grep -q "Invalid argument (EINVAL)" <<<"$out" && ok "a bad /dns/hosts write fails: '$out'" || fail "bad /dns/hosts write: rc=$rc '$out' (wanted exit 1 and EINVAL)"
  CTL cat /dns/hosts 2>&1 | grep -q "^192.168.65.77 *db.local" && ok "/dns/hosts unchanged after the bad write" \
    || { fail "/dns/hosts changed by a bad write"; CTL cat /dns/hosts | show; }
  if command -v dig >/dev/null; then
    DIG() { N dig +time=2 +tries=1 @192.168.65.1 "$@" 2>&1; }
    DIG nosuchname.berth.internal A >"$TMP/dig.nx"
    grep -q "status: NXDOMAIN" "$TMP/dig.nx" && ok "unknown name in berth.internal: NXDOMAIN" || { fail "unknown name"; show "$TMP/dig.nx"; }
    r=$(DIG +tcp +short host.berth.internal A)
    [ "$r" = 192.168.65.2 ] && ok "dig +tcp host.berth.internal -> $r" || fail "dig +tcp host.berth.internal -> '$r'"
    DIG host.berth.internal AAAA >"$TMP/dig.aaaa"
    grep -q "status: NOERROR" "$TMP/dig.aaaa" && grep -q "ANSWER: 0," "$TMP/dig.aaaa" \
      && ok "AAAA host.berth.internal: NOERROR, no answer" || { fail "AAAA host.berth.internal"; show "$TMP/dig.aaaa"; }
  else
    r=$(N nslookup -timeout=2 -retry=1 nosuchname.berth.internal 192.168.65.1 2>&1)
    grep -q NXDOMAIN <<<"$r" && ok "unknown name in berth.internal: NXDOMAIN" || fail "unknown name: $r"
    skipped "dig is missing: no TCP or AAAA checks"
  fi
fi

# --- 2b. DHCP release, then dhclient --------------------------------------------------
if [ -n "$UDHCPC_PID" ]; then
  kill -TERM "$UDHCPC_PID" 2>/dev/null   # -R: release on exit
  wait_for 50 eval '! kill -0 $UDHCPC_PID 2>/dev/null'
  if [ -n "$LEASED" ]; then
    if wait_for 30 eval '[ -z "$(lease_line "$MAC")" ]'; then ok "udhcpc release (-R on exit) removed the lease"
    else fail "after release /dhcp/leases still has: $(lease_line "$MAC")"; fi
  fi
fi
if [ $HAVE_DHCP -eq 1 ]; then
  if ! command -v dhclient >/dev/null; then
    skipped "dhclient is missing (isc-dhcp-client)"
  else
    cat >"$TMP/dhclient.conf" <<'EOF'
send host-name "guest2";
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, interface-mtu, dhcp-lease-time;
timeout 15;
retry 1;
EOF
    cat >"$TMP/dhclient.sh" <<EOF
#!/bin/sh
# dhclient script: record what the lease said, apply it.
echo "\$reason ip=\$new_ip_address mask=\$new_subnet_mask routers=\$new_routers dns=\$new_domain_name_servers domain=\$new_domain_name mtu=\$new_interface_mtu lease=\$new_dhcp_lease_time" >>"$TMP/dhclient.events"
case "\$reason" in
  PREINIT) ip link set "\$interface" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    [ "\$old_ip_address" = "\$new_ip_address" ] || ip -4 addr flush dev "\$interface"
    ip addr replace "\$new_ip_address/\$new_subnet_mask" dev "\$interface"
    for r in \$new_routers; do ip route replace default via "\$r" dev "\$interface"; break; done ;;
  EXPIRE|FAIL|RELEASE|STOP) ip -4 addr flush dev "\$interface" ;;
esac
exit 0
EOF
    chmod +x "$TMP/dhclient.sh"
    : >"$TMP/dhclient.events"
    DH=(dhclient -4 -cf "$TMP/dhclient.conf" -sf "$TMP/dhclient.sh" -pf "$TMP/dhclient.pid" -lf "$TMP/dhclient.leases")
    N ip -4 addr flush dev bt0
    T=40 N "${DH[@]}" -1 -v bt0 >"$TMP/dhclient1.out" 2>&1; rc=$?
    dip=$(sed -n 's/.*fixed-address \([0-9.]*\);.*/\1/p' "$TMP/dhclient.leases" 2>/dev/null | tail -1)
    b=$(grep -E "^(BOUND|REBOOT) " "$TMP/dhclient.events" | tail -1)
    if [ $rc -eq 0 ] && in_pool "$dip" && [ "$(evget "$b" ip)" = "$dip" ]; then
      ok "dhclient -1 got $dip (lease file $TMP/dhclient.leases)"
      opts="mask=$(evget "$b" mask) routers=$(evget "$b" routers) dns=$(evget "$b" dns) domain=$(evget "$b" domain) mtu=$(evget "$b" mtu)"
      [ "$opts" = "mask=255.255.255.0 routers=192.168.65.1 dns=192.168.65.1 domain=berth.internal mtu=1500" ] \
        && ok "dhclient options: $opts" || fail "dhclient options: $opts"
      line=$(lease_line "$MAC")
      [[ "$line" =~ ^[0-9a-fA-F:]+\ $dip\ guest2\ [^\ ]+$ ]] && ok "/dhcp/leases: $line" || { fail "/dhcp/leases for dhclient: '$line'"; CTL cat /dhcp/leases | show; }
      # Stop without releasing, start again: an INIT-REBOOT REQUEST for the same address.
      T=10 N "${DH[@]}" -x bt0 >"$TMP/dhclient2.out" 2>&1
      T=40 N "${DH[@]}" -1 -v bt0 >"$TMP/dhclient3.out" 2>&1; rc=$?
      dip2=$(sed -n 's/.*fixed-address \([0-9.]*\);.*/\1/p' "$TMP/dhclient.leases" | tail -1)
      [ $rc -eq 0 ] && [ "$dip2" = "$dip" ] && ok "dhclient again with its lease file keeps $dip ($(tail -1 "$TMP/dhclient.events" | cut -d' ' -f1))" \
        || { fail "dhclient again: rc=$rc got '$dip2' (was $dip)"; show "$TMP/dhclient3.out"; }
      T=20 N "${DH[@]}" -r -v bt0 >"$TMP/dhclient4.out" 2>&1
      if wait_for 30 eval '[ -z "$(lease_line "$MAC")" ]'; then ok "dhclient -r released the lease"
      else fail "after dhclient -r /dhcp/leases still has: $(lease_line "$MAC")"; show "$TMP/dhclient4.out"; fi
    else
      fail "dhclient -1: rc=$rc lease '$dip' event '$b'"; show "$TMP/dhclient1.out"
    fi
    [ -s "$TMP/dhclient.pid" ] && kill "$(cat "$TMP/dhclient.pid")" 2>/dev/null
  fi
  CTL cat /dhcp/stats >"$TMP/dhcp.stats" 2>&1 && say "dhcp stats: $(tr '\n' ' ' <"$TMP/dhcp.stats")"
fi

# --- restart with the same --state-dir ---------------------------------------------------
# berth brings the TAP up at once; without IPv6 the namespace then sends
# nothing until told, so the MAC can change before berth learns one.
N sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
stop_berth
start_berth "restart"
if [ $HAVE_DHCP -eq 1 ]; then
  # The new TAP, before it is up, gets the MAC that has a reservation.
  N ip link set bt0 address "$STATIC_MAC" || fail "cannot set the TAP's MAC"
  MAC=$STATIC_MAC
fi
guest_static || fail "after the restart the namespace cannot ping the gateway"
if [ -n "$PID_FP" ]; then
  r=$(get "http://127.0.0.1:$FP/index.html" 2>&1)
  [ "$r" = "hello from the namespace" ] && ok "after the restart the forward on port $FP works" || fail "after the restart port $FP: '$r'"
  CTL ls /ports 2>&1 | grep -qx "$PID_FP" && ok "after the restart /ports lists $PID_FP: $(CTL cat "/ports/$PID_FP" | head -1)" \
    || { fail "after the restart /ports lacks $PID_FP"; CTL ls /ports | show; }
  grep -i "restor" "$TMP/serve$RUN.err" | head -3 | show
fi

if [ $HAVE_DHCP -eq 1 ] && [ $HAVE_UDHCPC -eq 1 ]; then
  CTL cat /dhcp/static >"$TMP/static" 2>&1
  grep -qi "^$STATIC_MAC $STATIC_IP" "$TMP/static" && ok "/dhcp/static: $(head -1 "$TMP/static")" || { fail "/dhcp/static"; show "$TMP/static"; }
  N ip -4 addr flush dev bt0
  : >"$TMP/udhcpc.events"
  T=30 N busybox udhcpc -f -q -n -i bt0 -t 5 -T 1 -A 1 -s "$TMP/udhcpc.sh" >"$TMP/udhcpc2.out" 2>&1
  sip=$(evget "$(ev bound)" ip)
  [ "$sip" = "$STATIC_IP" ] && ok "the reservation $STATIC_MAC=$STATIC_IP is honoured" || { fail "reserved MAC got '$sip'"; show "$TMP/udhcpc2.out"; }
  line=$(lease_line "$STATIC_MAC")
  [[ "$line" =~ \ $STATIC_IP\  ]] && ok "/dhcp/leases: $line" || fail "/dhcp/leases for $STATIC_MAC: '$line'"
  N busybox ping -c 1 -W 2 192.168.65.1 >/dev/null 2>&1 && ok "ping the gateway from $STATIC_IP" || fail "cannot ping the gateway from $STATIC_IP"
  out=$(CTL write /dhcp/static $'02:00:00:00:00:42 192.168.65.42\n02:00:00:00:00:43 192.168.65.43 other' 2>&1)
  CTL cat /dhcp/static >"$TMP/static2" 2>&1
  [ $? -eq 0 ] && grep -qi "^02:00:00:00:00:43 192.168.65.43 other" "$TMP/static2" && ok "write /dhcp/static: '$out'" \
    || { fail "write /dhcp/static: '$out'"; show "$TMP/static2"; }
  out=$(CTL write /dhcp/static "nonsense" 2>&1); rc=$?
  [ $rc -eq 1 ] && grep -q "Invalid argument (EINVAL)" <<<"$out" && ok "a bad /dhcp/static write fails: '$out'" || fail "bad /dhcp/static write: rc=$rc '$out' (wanted exit 1 and EINVAL)"
  CTL cat /dhcp/static >"$TMP/static3" 2>&1
  cmp -s "$TMP/static2" "$TMP/static3" && ok "/dhcp/static unchanged after the bad write" || { fail "/dhcp/static changed by a bad write"; show "$TMP/static3"; }
fi

kill -0 "$SERVER" 2>/dev/null && ok "server still running" || fail "server died"
stop_berth

# Leases and reservations come back from the state directory too.
if [ $HAVE_DHCP -eq 1 ] && [ $HAVE_UDHCPC -eq 1 ]; then
  start_berth "second restart"
  CTL cat /dhcp/static >"$TMP/static4" 2>&1
  cmp -s "$TMP/static2" "$TMP/static4" && ok "after a restart /dhcp/static is as written" || { fail "after a restart /dhcp/static differs"; show "$TMP/static4"; }
  line=$(lease_line "$STATIC_MAC")
  [[ "$line" =~ \ $STATIC_IP\  ]] && ok "after a restart /dhcp/leases still has: $line" || { fail "after a restart the lease of $STATIC_MAC is gone"; CTL cat /dhcp/leases | show; }
  stop_berth
fi
say "took $((SECONDS - START)) s"
if [ "$FAILS" -ne 0 ]; then
  for f in "$TMP"/serve*.err; do say "--- $(basename "$f") (last 20 lines)"; tail -20 "$f"; done
  say "FAILED: $FAILS check(s), $SKIPS skipped"; exit 1
fi
say "PASS ($SKIPS skipped)"
