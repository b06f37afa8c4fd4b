#!/usr/bin/env bash
# Build (and cache) a small Linux guest for Berth's real-peer tests:
#   - Debian's generic 6.1 kernel (linux-image-6.1.0-N-amd64, fetched with
#     `apt-get download` and unpacked with `dpkg -x`; the cloud kernel lacks 9p)
#   - a busybox-static initramfs whose /init brings up virtio-net (QEMU's
#     `-netdev user`, or berth's qemu link with `-netdev stream`; static
#     addressing) and runs a test chosen on the kernel command line (the disk
#     test needs no network: it uses the virtio-blk disk /dev/vda).
#
# Usage: scripts/guest/build-guest.sh [--force]
#
# Output goes to $BERTH_GUEST_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/berth/guest):
#   vmlinuz             the kernel
#   initramfs.cpio.gz   the initramfs
#   kernel-package      name and version of the kernel package used
# Things that already exist are reused; the initramfs is rebuilt when this
# script changes. --force (or BERTH_GUEST_FORCE=1) rebuilds everything.
# BERTH_GUEST_KERNEL_PKG=linux-image-6.1.0-N-amd64 pins the kernel package.
#
# Progress goes to stderr; the only line on stdout is the output directory.
# Exit status: 0 built or cached, 77 prerequisites unavailable (cannot install
# packages or fetch the kernel), anything else is a real error.
#
# Guest kernel command line understood by /init:
#   berth.test=9p|net|services|disk|boot  test to run (default 9p)
#   berth.port=N         9P server port on the host (default 564)
#   berth.host=A.B.C.D   9P server address (default 10.0.2.2, the host under -netdev user)
#   berth.watchdog=S     guest-side timeout in seconds (default 150)
#   berth.aname=PATH     9P attach name (default none, i.e. the server's root)
#   berth.ip=A.B.C.D/N   eth0's address (default 10.0.2.15/24; 192.168.65.3/24 for net)
#   berth.gw=A.B.C.D     default route (default 10.0.2.2; 192.168.65.1 for net)
# The net test (guest of `berth serve --link qemu:PATH`, static addressing) also reads:
#   berth.alias=A.B.C.D  the host alias (default 192.168.65.2, the host's 127.0.0.1)
#   berth.http=PORT      HTTP server on the host alias serving berth.file
#   berth.file=NAME      file to fetch (default big)
#   berth.sha=HEX        its expected sha256 (required)
#   berth.sink=PORT      TCP sink on the host alias: reads to EOF, answers "SHA256 BYTES"
#   berth.udp=PORT       UDP echo on the host alias, DNS-shaped: a TXT query for NAME
#                        is answered with the text "echo NAME" (busybox has no nc -u,
#                        so the guest sends with `nslookup -type=txt NAME ALIAS:PORT`)
#   berth.token=WORD     word put in the UDP query name (default berth)
# The services test (DHCP at boot instead of a static address) also reads:
#   berth.fport=PORT     host port of the forward it creates from inside, through
#                        the tree it mounts from the gateway; it serves berth.token
#                        on its port 8080 and waits for the host to fetch it
#   berth.closed=PORT    a port on the host alias with no listener (must be refused)
#   berth.gport=N        port of the control tree on the gateway (default 564)
# The disk test (no network; /dev/vda, e.g. QEMU's -drive driver=nbd on
# berth's NBD export) also reads:
#   berth.seed=WORD      word stamped into the written data (default berth)
#   It writes regions (stamped: each 512-byte sector is the line
#   "berth-disk SEED NAME sector N" padded with spaces to 511 bytes plus a
#   newline, N the absolute sector; const: bytes 0xa5; rand: /dev/urandom) at
#   4 KiB-aligned offsets, one past the first GiB and one at the disk's end
#   when the disk is big enough; checks a region to be written reads as
#   zeros first; then sync, drop_caches, reads back and compares sha256.
#   With blkdiscard and a disk that takes discards it then discards the
#   region "discard" (whole MiBs), and checks it reads back as zeros.
# Console markers (all start with "BERTH-GUEST: "):
#   all tests: init started, modules loaded, net up, PASS | FAIL <reason>
#   9p: mount ok, ls ok, version ok: ..., readme ok ..., readonly write
#       refused: <shell message>, reread ok, umount ok
#   net: ok|not ok <check>: <detail>, one line per check: ping gateway,
#       ping host alias, wget, upload, udp echo, refused, 9p mount, net/config,
#       net/flows, links, readonly write refused; then umount ok. Each failed
#       check is reported and the test goes on; FAIL names the failed checks.
#   disk: disk /dev/vda: SIZE bytes; region NAME KIND OFFSET LENGTH sha256 HEX
#       (one per region, byte offsets); ok|not ok <check>: <detail> for
#       zeros before write, written, readback NAME, discard (or
#       "discard skipped: <why>"); FAIL names the failed checks.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
GUEST_DIR=${BERTH_GUEST_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/berth/guest}
FORCE=${BERTH_GUEST_FORCE:-0}
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-guest: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# Modules the guest loads, in this order. Dependencies found by depmod are
# added before each module; modules that are built in or absent are skipped.
MODULES=(virtio_ring virtio virtio_mmio virtio_pci_modern_dev virtio_pci_legacy_dev
         virtio_pci failover net_failover virtio_net virtio_blk 9pnet 9pnet_fd netfs fscache 9p
         af_packet)  # af_packet: udhcpc's raw socket (services test); virtio_blk: disk test

log() { echo "build-guest: $*" >&2; }
unavailable() { log "UNAVAILABLE: $*"; exit 77; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); fi
fi
APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" = 1 ] && return 0
  APT_UPDATED=1
  log "apt-get update"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get update -qq >&2 || true
}
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    unavailable "missing packages ${missing[*]} and not root (no passwordless sudo)"
  fi
  command -v apt-get >/dev/null 2>&1 || unavailable "missing packages ${missing[*]} and no apt-get"
  log "installing ${missing[*]}"
  local inst=(env DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends)
  if ! "${inst[@]}" "${missing[@]}" >&2; then
    apt_update
    "${inst[@]}" "${missing[@]}" >&2 || unavailable "apt-get install ${missing[*]} failed"
  fi
}

mkdir -p "$GUEST_DIR"
# One builder at a time per cache directory.
exec 9>"$GUEST_DIR/.lock"
flock 9

if [ "$FORCE" = 1 ]; then
  rm -rf "$GUEST_DIR/vmlinuz" "$GUEST_DIR/modules" "$GUEST_DIR/initramfs.cpio.gz" \
         "$GUEST_DIR/initramfs.stamp" "$GUEST_DIR/kernel-package"
fi

WORK=$(mktemp -d "$GUEST_DIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- kernel ---
pick_kernel_candidates() {
  # Newest first: exact names linux-image-6.1.0-N-amd64 (not -cloud, -rt, -dbg, -unsigned).
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null \
    | awk '{print $1}' | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -rV || true
}

fetch_kernel() {
  command -v apt-get >/dev/null 2>&1 || unavailable "no apt-get to fetch the kernel"
  ensure_pkgs kmod
  local candidates pkg deb="" tries=0
  if [ -n "${BERTH_GUEST_KERNEL_PKG:-}" ]; then
    candidates=$BERTH_GUEST_KERNEL_PKG
  else
    candidates=$(pick_kernel_candidates)
    if [ -z "$candidates" ]; then apt_update; candidates=$(pick_kernel_candidates); fi
    [ -n "$candidates" ] || unavailable "no linux-image-6.1.0-*-amd64 package known to apt"
  fi
  mkdir -p "$WORK/deb"
  local apt_opts=()
  [ "$(id -u)" -eq 0 ] && apt_opts=(-o APT::Sandbox::User=root)
  download() {
    local f
    (cd "$WORK/deb" && apt-get "${apt_opts[@]}" download -qq "$1" >&2) || return 1
    for f in "$WORK/deb/$1"_*.deb; do [ -f "$f" ] && deb=$f && return 0; done
    return 1
  }
  for pkg in $candidates; do
    tries=$((tries + 1)); [ $tries -le 3 ] || break
    log "fetching $pkg"
    if download "$pkg"; then break; fi
    if [ "$APT_UPDATED" = 0 ]; then
      apt_update
      if download "$pkg"; then break; fi
    fi
  done
  [ -n "$deb" ] || unavailable "could not download a linux-image-6.1.0-*-amd64 package"

  log "unpacking $(basename "$deb")"
  dpkg -x "$deb" "$WORK/kroot"
  local kver
  kver=$(find "$WORK/kroot/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)
  if [ -z "$kver" ] || [ ! -f "$WORK/kroot/boot/vmlinuz-$kver" ]; then
    log "unexpected package layout in $deb"; exit 1
  fi
  local mdir="$WORK/kroot/lib/modules/$kver"
  # The package ships no modules.dep (postinst makes it); make one.
  depmod -b "$WORK/kroot" "$kver"

  # Resolve load order: dependencies first, each module once.
  declare -A seen=()
  local order=()
  resolve() {
    local m=$1 line path deps d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    line=$(grep -E "(^|/)${m}\.ko(\.xz|\.zst|\.gz)?:" "$mdir/modules.dep" | head -n1 || true)
    if [ -z "$line" ]; then
      if grep -qE "(^|/)${m}\.ko$" "$mdir/modules.builtin" 2>/dev/null; then
        log "module $m is built in"
      else
        log "module $m not in this kernel; skipped"
      fi
      return 0
    fi
    path=${line%%:*}
    deps=${line#*:}
    for d in $deps; do
      d=$(basename "$d"); d=${d%%.ko*}
      resolve "$d"
    done
    order+=("$path")
  }
  local m
  for m in "${MODULES[@]}"; do
    # depmod names files with '-' or '_' as they are; try both spellings.
    if grep -qE "(^|/)${m//_/-}\.ko" "$mdir/modules.dep" && ! grep -qE "(^|/)${m}\.ko" "$mdir/modules.dep"; then
      resolve "${m//_/-}"
    else
      resolve "$m"
    fi
  done

  mkdir -p "$WORK/modules"
  : >"$WORK/modules/load.list"
  local p name n=0
  for p in "${order[@]}"; do
    n=$((n + 1))
    name=$(basename "$p")
    local out
    out=$(printf '%02d-%s' "$n" "${name%%.ko*}.ko")
    case "$name" in
      *.ko.xz)  ensure_pkgs xz-utils; xz -dc "$mdir/$p" >"$WORK/modules/$out" ;;
      *.ko.zst) ensure_pkgs zstd;     zstd -qdc "$mdir/$p" >"$WORK/modules/$out" ;;
      *.ko.gz)  gzip -dc "$mdir/$p" >"$WORK/modules/$out" ;;
      *.ko)     cp "$mdir/$p" "$WORK/modules/$out" ;;
    esac
    echo "$out" >>"$WORK/modules/load.list"
  done
  log "modules: $(tr '\n' ' ' <"$WORK/modules/load.list")"

  local version
  version=$(dpkg-deb -f "$deb" Version)
  echo "${MODULES[*]}" >"$WORK/modules/want"
  rm -rf "$GUEST_DIR/modules"
  mv "$WORK/modules" "$GUEST_DIR/modules"
  echo "$(dpkg-deb -f "$deb" Package) $version $kver" >"$GUEST_DIR/kernel-package"
  cp "$WORK/kroot/boot/vmlinuz-$kver" "$WORK/vmlinuz"
  mv "$WORK/vmlinuz" "$GUEST_DIR/vmlinuz"    # last: its presence means the kernel is complete
  rm -rf "$WORK/kroot" "$WORK/deb"
  log "kernel: $(cat "$GUEST_DIR/kernel-package")"
}

if [ ! -s "$GUEST_DIR/vmlinuz" ] || [ ! -s "$GUEST_DIR/modules/load.list" ] ||
   [ "$(cat "$GUEST_DIR/modules/want" 2>/dev/null)" != "${MODULES[*]}" ]; then
  rm -f "$GUEST_DIR/initramfs.cpio.gz"
  fetch_kernel
fi

# ------------------------------------------------------------- initramfs ---
write_init() {
cat >"$1" <<'INIT'
#!/bin/sh
# Berth test guest /init (generated by scripts/guest/build-guest.sh).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

up() { read -r u _ </proc/uptime; echo "$u"; }
say() { echo "BERTH-GUEST: $*"; }
finish() { sync; poweroff -f; sleep 10; }
fail() { say "FAIL $*"; finish; }
pass() { say "PASS (uptime $(up)s)"; finish; }

say "init started (uptime $(up)s)"

TEST=9p PORT=564 HOST=10.0.2.2 WATCHDOG=150 ANAME='' IP='' GW=''
ALIAS=192.168.65.2 HTTP='' FILE=big SHA='' SINK='' UDP='' TOKEN=berth CLOSED='' GPORT=564 FPORT= SEED=berth
for w in $(cat /proc/cmdline); do
  case "$w" in
    berth.test=*) TEST=${w#*=} ;;
    berth.port=*) PORT=${w#*=} ;;
    berth.host=*) HOST=${w#*=} ;;
    berth.watchdog=*) WATCHDOG=${w#*=} ;;
    berth.aname=*) ANAME=${w#*=} ;;
    berth.ip=*) IP=${w#*=} ;;
    berth.gw=*) GW=${w#*=} ;;
    berth.alias=*) ALIAS=${w#*=} ;;
    berth.http=*) HTTP=${w#*=} ;;
    berth.file=*) FILE=${w#*=} ;;
    berth.sha=*) SHA=${w#*=} ;;
    berth.sink=*) SINK=${w#*=} ;;
    berth.udp=*) UDP=${w#*=} ;;
    berth.token=*) TOKEN=${w#*=} ;;
    berth.closed=*) CLOSED=${w#*=} ;;
    berth.gport=*) GPORT=${w#*=} ;;
    berth.fport=*) FPORT=${w#*=} ;;
    berth.seed=*) SEED=${w#*=} ;;
  esac
done
if [ "$TEST" = net ]; then
  : "${IP:=192.168.65.3/24}" "${GW:=192.168.65.1}"
else
  : "${IP:=10.0.2.15/24}" "${GW:=10.0.2.2}"
fi
( sleep "$WATCHDOG"; say "FAIL guest watchdog: no result after ${WATCHDOG}s"; poweroff -f ) &

while read -r ko; do
  [ -n "$ko" ] || continue
  insmod "/lib/modules/berth/$ko" || say "warning: insmod $ko failed"
done </lib/modules/berth/load.list
say "modules loaded (uptime $(up)s)"

if [ "$TEST" != disk ]; then
i=0
while [ ! -e /sys/class/net/eth0 ]; do
  i=$((i + 1))
  [ $i -le 600 ] || fail "eth0 did not appear"
  usleep 50000
done
ip link set lo up
ip link set eth0 up || fail "ip link set eth0 up"
if [ "$TEST" != services ]; then
  ip addr add "$IP" dev eth0 || fail "ip addr add $IP"
  ip route add default via "$GW" || fail "ip route add default via $GW"
  say "net up: eth0 $IP gw $GW (uptime $(up)s)"
fi
fi

test_9p() {
  opts="trans=tcp,port=$PORT,version=9p2000.L${ANAME:+,aname=$ANAME}"
  if ! err=$(mount -t 9p -o "$opts" "$HOST" /mnt 2>&1); then
    fail "mount -t 9p $HOST port $PORT: $err"
  fi
  say "mount ok ($HOST port $PORT)"

  out=$(ls -la /mnt 2>&1) || fail "ls /mnt: $out"
  echo "$out"
  names=$(ls -1 /mnt 2>&1) || fail "ls -1 /mnt: $names"
  echo "$names" | grep -qx README || fail "ls /mnt: no README"
  echo "$names" | grep -qx debug || fail "ls /mnt: no debug"
  say "ls ok: $(echo $names)"

  v=$(cat /mnt/debug/version 2>&1) || fail "cat /mnt/debug/version: $v"
  [ -n "$v" ] || fail "/mnt/debug/version is empty"
  say "version ok: $(echo "$v" | head -n1)"

  r=$(cat /mnt/README 2>&1) || fail "cat /mnt/README: $r"
  [ -n "$r" ] || fail "/mnt/README is empty"
  say "readme ok ($(cat /mnt/README | wc -c) bytes): $(echo "$r" | head -n1)"

  if werr=$( (echo hi >/mnt/debug/version) 2>&1 ); then
    fail "readonly write succeeded: 'echo hi > /mnt/debug/version' was accepted"
  fi
  werr=$(echo "$werr" | head -n1)
  say "readonly write refused: ${werr:-<no message>}"
  case "$werr" in
    *"Permission denied"*) ;;
    *) fail "readonly write refused with an unexpected error (want EACCES, Permission denied): $werr" ;;
  esac

  v2=$(cat /mnt/debug/version 2>&1) || fail "cat /mnt/debug/version after refused write: $v2"
  [ "$v2" = "$v" ] || fail "/mnt/debug/version changed after refused write: $(echo "$v2" | head -n1)"
  say "reread ok: $(echo "$v2" | head -n1)"

  err=$(umount /mnt 2>&1) || fail "umount /mnt: $err"
  say "umount ok"
}

# ---- net: the guest of `berth serve --link qemu:PATH` -----------------------
NOTOK=
ok() { say "ok $*"; }
notok() { c=$1; shift; say "not ok $c: $*"; NOTOK="${NOTOK:+$NOTOK, }$c"; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }'; }
# Prefix each line of stdin so that it can be told apart in the console log.
show() { awk -v p="$1" '{ print "BERTH-GUEST| " p ": " $0 }'; }

test_net() {
  for v in HTTP SHA SINK UDP CLOSED; do
    eval "[ -n \"\$$v\" ]" || fail "net test needs berth.$(echo $v | tr A-Z a-z)="
  done

  for t in "gateway $GW" "host alias $ALIAS"; do
    name=${t% *} addr=${t##* }
    if out=$(ping -c 2 -W 5 "$addr" 2>&1); then
      ok "ping $name: $addr: $(echo "$out" | grep 'packets transmitted')"
    else
      echo "$out" | show ping; notok "ping $name" "$addr: $(echo "$out" | grep 'packets transmitted' || echo "$out" | tail -n1)"
    fi
  done

  url="http://$ALIAS:$HTTP/$FILE"
  say "wget start: $url (uptime $(up)s)"
  t0=$(up)
  if err=$(timeout 200 wget -q -O /tmp/file "$url" 2>&1); then
    secs=$(since "$t0")
    n=$(wc -c </tmp/file)
    got=$(sha256sum /tmp/file | cut -d' ' -f1)
    rate=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.1f", (s > 0 ? n / s / 1048576 : 0) }')
    if [ "$got" = "$SHA" ]; then
      ok "wget: $n bytes in ${secs}s (${rate} MiB/s), sha256 $got"
    else
      notok wget "$n bytes in ${secs}s, sha256 $got, want $SHA"
    fi
  else
    notok wget "$url failed after $(since "$t0")s: $(echo "$err" | tail -n1)"
  fi

  if [ -s /tmp/file ]; then
    say "upload start: nc $ALIAS $SINK < $(wc -c </tmp/file)-byte file (uptime $(up)s)"
    t0=$(up)
    reply=$(timeout 200 nc "$ALIAS" "$SINK" </tmp/file 2>&1)
    secs=$(since "$t0")
    want="$(sha256sum /tmp/file | cut -d' ' -f1) $(wc -c </tmp/file)"
    if [ "$reply" = "$want" ]; then
      ok "upload: sink got sha256 and size $reply in ${secs}s"
    else
      notok upload "sink replied '$(echo $reply)' after ${secs}s, want '$want'"
    fi
  else
    notok upload "nothing to send (the download failed)"
  fi
  rm -f /tmp/file

  qname="berth-udp-echo-$TOKEN.0123456789abcdefghijklmnopqrstuvwxyz.berth.test"
  t0=$(up)
  out=$(timeout 30 nslookup -type=txt "$qname" "$ALIAS:$UDP" 2>&1)
  if echo "$out" | grep -qF "\"echo $qname\""; then
    ok "udp echo: $ALIAS:$UDP echoed $qname in $(since "$t0")s"
  else
    echo "$out" | show nslookup; notok "udp echo" "no echo of $qname from $ALIAS:$UDP after $(since "$t0")s"
  fi

  t0=$(up)
  if out=$(timeout 30 nc -w 10 "$ALIAS" "$CLOSED" </dev/null 2>&1); then
    notok refused "nc $ALIAS $CLOSED connected (after $(since "$t0")s): $out"
  else
    secs=$(since "$t0")
    out=$(echo "$out" | tail -n1)
    case "$out" in
      *"Connection refused"*)
        if awk -v s="$secs" 'BEGIN { exit !(s < 5) }'; then ok "refused: $out in ${secs}s"
        else notok refused "took ${secs}s: $out"; fi ;;
      *) notok refused "nc $ALIAS $CLOSED after ${secs}s: ${out:-<no message>} (want Connection refused)" ;;
    esac
  fi

  opts="trans=tcp,port=$GPORT,version=9p2000.L"
  if err=$(timeout 60 mount -t 9p -o "$opts" "$GW" /mnt 2>&1); then
    ok "9p mount: $GW port $GPORT"
    if out=$(cat /mnt/net/config 2>&1); then
      echo "$out" | show net/config
      if echo "$out" | grep -q "subnet 192.168.65.0/24"; then ok "net/config: $(echo "$out" | grep subnet | head -n1)"
      else notok net/config "no 'subnet 192.168.65.0/24' line"; fi
    else
      notok net/config "cat: $out"
    fi
    if out=$(cat /mnt/net/flows 2>&1); then
      echo "$out" | show net/flows
      ok "net/flows: $(echo -n "$out" | grep -c '') line(s)"
    else
      notok net/flows "cat: $out"
    fi
    if out=$(ls /mnt/links 2>&1); then
      if echo "$out" | grep -qx 0; then
        l0=$(cat /mnt/links/0 2>&1); echo "$l0" | show links/0
        ok "links: $(echo $out); 0: $(echo "$l0" | grep -E '^(type|ip) ' | tr '\n' ' ')"
      else
        notok links "ls /mnt/links: no 0: $(echo $out)"
      fi
    else
      notok links "ls: $out"
    fi
    if werr=$( (echo x >/mnt/debug/version) 2>&1 ); then
      notok "readonly write refused" "'echo x > /mnt/debug/version' was accepted"
    else
      werr=$(echo "$werr" | head -n1)
      case "$werr" in
        *"Permission denied"*) ok "readonly write refused: $werr" ;;
        *) notok "readonly write refused" "unexpected error (want Permission denied): ${werr:-<no message>}" ;;
      esac
    fi
    if err=$(umount /mnt 2>&1); then say "umount ok"; else notok umount "$err"; fi
  else
    notok "9p mount" "mount -t 9p -o $opts $GW /mnt: $err"
  fi

  [ -z "$NOTOK" ] || fail "net checks failed: $NOTOK"
}

# DHCP at boot, DNS through the gateway, and a port forward made from inside
# the guest through the control tree.
test_services() {
  NOTOK=''
  ok() { say "ok $*"; }
  notok() { say "not ok $1: $2"; NOTOK="$NOTOK $1"; }
  mkdir -p /etc
  cat >/tmp/dhcp.sh <<'DHCP'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    ip route add default via "$router" 2>/dev/null
    { echo "nameserver $dns"; echo "search $domain"; } >/etc/resolv.conf
    echo "ip=$ip router=$router dns=$dns domain=$domain mtu=$mtu lease=$lease" >/tmp/lease ;;
esac
DHCP
  chmod +x /tmp/dhcp.sh
  if out=$(timeout 60 udhcpc -i eth0 -n -q -t 10 -T 2 -x hostname:bguest -O mtu -O search -s /tmp/dhcp.sh 2>&1); then
    lease=$(cat /tmp/lease)
    ok "dhcp: $lease"
  else
    echo "$out"; fail "udhcpc got no lease"
  fi
  ip=$(sed -n 's/.*ip=\([0-9.]*\).*/\1/p' /tmp/lease)
  case "$lease" in *"router=192.168.65.1 dns=192.168.65.1 domain=berth.internal"*) ok "dhcp options" ;;
    *) notok "dhcp options" "$lease" ;; esac
  say "net up: eth0 $ip by DHCP (uptime $(up)s)"

  for q in "host.berth.internal 192.168.65.2" "gateway.berth.internal 192.168.65.1" \
           "bguest.berth.internal $ip" "upstream.test 10.9.8.7"; do
    set -- $q
    out=$(timeout 20 nslookup "$1" 2>&1)
    if echo "$out" | grep -q "Address: $2\$"; then ok "dns $1 is $2"; else echo "$out"; notok "dns $1" "want $2"; fi
  done
  out=$(timeout 20 nslookup nothing-here.berth.internal 2>&1)
  case "$out" in *NXDOMAIN*) ok "dns nxdomain" ;; *) echo "$out"; notok "dns nxdomain" "no NXDOMAIN" ;; esac

  mkdir -p /www
  echo "$TOKEN" >/www/index.html
  httpd -p 8080 -h /www || fail "httpd"
  opts="trans=tcp,port=564,version=9p2000.L"
  err=$(timeout 60 mount -t 9p -o "$opts" 192.168.65.1 /mnt 2>&1) || fail "9p mount of the gateway: $err"
  if err=$( (echo "tcp:127.0.0.1:$FPORT:tcp:$ip:8080" >/mnt/ports/ctl) 2>&1 ); then ok "forward written"
  else fail "echo spec > /mnt/ports/ctl: $err"; fi
  if err=$( (echo "tcp:nonsense" >/mnt/ports/ctl) 2>&1 ); then notok "bad spec refused" "it was accepted"
  else
    case "$err" in *"Invalid argument"*) ok "bad spec refused: $err" ;; *) notok "bad spec refused" "$err" ;; esac
  fi
  id=''
  for f in /mnt/ports/[0-9]*; do grep -q ":$FPORT:tcp:$ip:8080" "$f" 2>/dev/null && id=${f##*/}; done
  [ -n "$id" ] || fail "no /mnt/ports/N for the forward"
  say "FORWARD-READY $FPORT id $id"
  i=0
  until grep -q '^total [1-9]' "/mnt/ports/$id"; do
    i=$((i + 1)); [ $i -le 120 ] || break; sleep 0.5
  done
  if grep -q '^total [1-9]' "/mnt/ports/$id"; then ok "forward used: $(tr '\n' ' ' <"/mnt/ports/$id")"
  else notok "forward used" "the host did not connect within 60 s"; fi
  if err=$( (echo "rm $id" >/mnt/ports/ctl) 2>&1 ); then ok "forward removed"; else notok "forward removed" "$err"; fi
  umount /mnt || notok umount "failed"
  [ -z "$NOTOK" ] || fail "services checks failed: $NOTOK"
}

# ---- disk: the virtio-blk disk /dev/vda (e.g. QEMU's NBD client on berth) ----
# Region data goes to /tmp (the initramfs, in RAM); offsets and lengths are in
# 4 KiB units for dd, reported in bytes.
region_data() {  # region_data NAME KIND OFF4K LEN4K > file
  case "$2" in
    stamp) awk -v s="$SEED" -v n="$1" -v b=$(($3 * 8)) -v c=$(($4 * 8)) \
             'BEGIN { for (i = 0; i < c; i++) printf "%-511s\n", "berth-disk " s " " n " sector " (b + i) }' ;;
    const) dd if=/dev/zero bs=4096 count="$4" 2>/dev/null | tr '\0' '\245' ;;
    rand)  dd if=/dev/urandom bs=4096 count="$4" 2>/dev/null ;;
  esac
}
read_sha() {  # read_sha OFF4K LEN4K: sha256 of that range of /dev/vda
  dd if=/dev/vda bs=4096 skip="$1" count="$2" 2>/dev/null | sha256sum | cut -d' ' -f1
}
zero_sha() { dd if=/dev/zero bs=4096 count="$1" 2>/dev/null | sha256sum | cut -d' ' -f1; }

test_disk() {
  NOTOK=''
  i=0
  while [ ! -b /dev/vda ]; do
    i=$((i + 1))
    [ $i -le 600 ] || fail "/dev/vda did not appear"
    usleep 50000
  done
  sectors=$(cat /sys/block/vda/size)
  size4k=$((sectors / 8))
  mib=$((size4k / 256))
  say "disk /dev/vda: $((size4k * 4096)) bytes (uptime $(up)s)"
  [ "$mib" -ge 16 ] || fail "/dev/vda is too small: $mib MiB"
  # NAME KIND OFF4K LEN4K; 256 units are 1 MiB.
  R="start stamp 0 1024
const const $((mib / 32 * 256 + 3)) 768
rand rand $((mib / 3 * 256 + 9)) 512"
  [ "$mib" -ge 1040 ] && R="$R
pastgib stamp $((262144 + 257)) 1024"
  R="$R
discard stamp $((mib * 3 / 4 * 256)) 1024
end stamp $((size4k - 512)) 512"
  echo "$R" >/tmp/regions

  zs=$(zero_sha 1024)
  got=$(read_sha $((mib * 3 / 4 * 256)) 1024)
  if [ "$got" = "$zs" ]; then ok "zeros before write: discard region of the fresh disk"
  else notok "zeros before write" "discard region reads $got"; fi

  t0=$(up)
  total=0
  while read -r n k o l; do
    region_data "$n" "$k" "$o" "$l" >/tmp/r.$n || fail "making region $n"
    sha=$(sha256sum </tmp/r.$n | cut -d' ' -f1)
    echo "$sha" >/tmp/r.$n.sha
    say "region $n $k $((o * 4096)) $((l * 4096)) sha256 $sha"
    dd if=/tmp/r.$n of=/dev/vda bs=4096 seek="$o" conv=notrunc 2>/tmp/dd.err || { cat /tmp/dd.err; notok "write $n" "dd failed"; }
    rm -f /tmp/r.$n
    total=$((total + l * 4096))
  done </tmp/regions
  sync
  echo 3 >/proc/sys/vm/drop_caches
  ok "written: $total bytes in $(since "$t0")s, synced, caches dropped"

  while read -r n k o l; do
    got=$(read_sha "$o" "$l")
    if [ "$got" = "$(cat /tmp/r.$n.sha)" ]; then ok "readback $n: sha256 $got"
    else notok "readback $n" "sha256 $got, wrote $(cat /tmp/r.$n.sha)"; fi
  done </tmp/regions

  set -- $(grep '^discard ' /tmp/regions)
  dmax=$(cat /sys/block/vda/queue/discard_max_bytes 2>/dev/null || echo 0)
  if ! command -v blkdiscard >/dev/null 2>&1; then
    say "discard skipped: no blkdiscard"
  elif [ "${dmax:-0}" = 0 ]; then
    say "discard skipped: /dev/vda takes no discards (discard_max_bytes 0)"
  elif err=$(blkdiscard -o $(($3 * 4096)) -l $(($4 * 4096)) /dev/vda 2>&1); then
    sync
    echo 3 >/proc/sys/vm/drop_caches
    got=$(read_sha "$3" "$4")
    if [ "$got" = "$zs" ]; then ok "discard: $(($4 * 4096)) bytes at $(($3 * 4096)) read back as zeros"
    else notok discard "after blkdiscard the region reads sha256 $got, not zeros"; fi
    # The neighbours are untouched.
    for n in rand end; do
      set -- $(grep "^$n " /tmp/regions)
      got=$(read_sha "$3" "$4")
      [ "$got" = "$(cat /tmp/r.$n.sha)" ] || notok "after discard $n" "sha256 $got"
    done
  else
    notok discard "blkdiscard: $err"
  fi
  [ -z "$NOTOK" ] || fail "disk checks failed: $NOTOK"
}

case "$TEST" in
  9p) test_9p ;;
  disk) test_disk ;;
  services) test_services ;;
  net) test_net ;;
  boot) ;;
  *) fail "unknown berth.test=$TEST" ;;
esac
pass
INIT
}

STAMP=$( { sha256sum "$SCRIPT_PATH"; cat "$GUEST_DIR/kernel-package"; } | sha256sum | cut -d' ' -f1)
if [ ! -s "$GUEST_DIR/initramfs.cpio.gz" ] || [ "$(cat "$GUEST_DIR/initramfs.stamp" 2>/dev/null)" != "$STAMP" ]; then
  ensure_pkgs busybox-static cpio
  BUSYBOX=/bin/busybox
  [ -x "$BUSYBOX" ] || BUSYBOX=$(command -v busybox)
  R="$WORK/root"
  mkdir -p "$R"/{bin,dev,proc,sys,mnt,tmp,etc,root,lib/modules/berth,usr}
  cp "$BUSYBOX" "$R/bin/busybox"
  for a in $("$BUSYBOX" --list); do
    [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
  done
  ln -s bin "$R/sbin"; ln -s ../bin "$R/usr/bin"; ln -s ../bin "$R/usr/sbin"
  cp "$GUEST_DIR"/modules/* "$R/lib/modules/berth/"
  write_init "$R/init"
  chmod 0755 "$R/init"
  mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true   # init also copes without it
  log "packing initramfs"
  (cd "$R" && find . -print0 | LC_ALL=C sort -z \
     | cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -6n >"$WORK/initramfs.cpio.gz"
  mv "$WORK/initramfs.cpio.gz" "$GUEST_DIR/initramfs.cpio.gz"
  echo "$STAMP" >"$GUEST_DIR/initramfs.stamp"
  log "initramfs: $(du -h "$GUEST_DIR/initramfs.cpio.gz" | cut -f1)"
fi

echo "$GUEST_DIR"
