#!/usr/bin/env bash
# Build (and cache) the guests of Berth's VMM test (`berth run`), which runs
# nested: an L1 Linux under QEMU TCG (-cpu max) loads kvm-amd and runs berth,
# which boots the same Debian kernel as L2.
#
# Usage: scripts/guest/build-vm-guest.sh [--force]
#        scripts/guest/build-vm-guest.sh --sysroot DIR PATH...
#
# The kernel is the one scripts/guest/build-guest.sh picked (it is run first;
# its cache and package pin are reused). The kernel package (.deb) is kept in
# the output directory, so module lists can change without fetching again.
#
# Output goes to $BERTH_VM_GUEST_DIR (default: vm-guest next to build-guest's
# directory, i.e. ~/.cache/berth/vm-guest):
#   vmlinuz                the kernel (L1 and L2)
#   l2-initrd.cpio.gz      the L2 initramfs (virtio-mmio devices only)
#   l1-initrd.cpio.gz      the L1 initramfs (virtio-pci, 9p share, kvm-amd)
#   kernel-package         name, version and release of the kernel package
# Progress goes to stderr; the only line on stdout is the output directory.
# Exit status: 0 built or cached, 77 prerequisites unavailable, else an error.
#
# --sysroot DIR PATH...: copy programs and files into DIR for the L1 (whose
# /init copies the share's sysroot/ onto /): an executable goes to
# DIR/usr/bin/NAME, together with every library `ldd` lists (at its own path);
# any other file goes to DIR/PATH.
#
# ---- L2 (the guest of berth run; devices announced as ACPI LNRO0005) ----
# Modules (dependencies first): virtio_ring virtio virtio_mmio failover
# net_failover virtio_net virtio_blk 9pnet 9pnet_virtio netfs fscache 9p
# virtio-rng. /init prints, on the console (ttyS0), lines starting "BERTH-L2: ":
#   init <uptime>          the very first line (boot-time benchmark)
#   modules <uptime>, dhcp ok <ip> (udhcpc on eth0; resolv.conf from the lease)
#   dns ok host.berth.internal <addr>   (through the gateway's resolver)
#   9p ok                  mount -t 9p -o trans=virtio,version=9p2000.L berth /mnt
#   leases ok <line>       /mnt/dhcp/leases has a line with its own address
#   disk ok <sha256>       4 MiB pattern written to /dev/vda at offset 0, synced,
#                          caches dropped, read back and compared; the pattern is
#                          awk 'BEGIN{for(i=0;i<1024;i++)printf "%-4095s\n","berth-l2 block " i}'
#   rng ok <hex>           16 bytes from /dev/hwrng
#   forward ready <port> id <id> ip <ip>   after httpd (port 8080, serving the
#                          token as index.html) and a forward
#                          tcp:127.0.0.1:<port>:tcp:<ip>:8080 written into /mnt/ports/ctl
#   forward used <stats> | forward removed   it then waits until /mnt/ports/<id>
#                          disappears (the L1 side removes it with "rm <id>"), or
#                          /mnt/l2-done exists, or berth.wait seconds pass
#   result PASS | result FAIL <steps>, then poweroff (and `poweroff -f`)
# Any failed step prints "<step> FAIL <why>" and the guest goes on.
# Kernel command line: berth.fwd=PORT (default 18080), berth.token=WORD
# (default berth-l2), berth.wait=S (default 120), berth.watchdog=S (default
# 300: poweroff regardless), berth.bench=1 (print the init line, power off at
# once), berth.skip="disk rng 9p fwd dns" (steps to skip), berth.up=1 (`berth up`:
# DHCP, mount the tree, serve a page on port 80, forward 127.0.0.1:FWD to it,
# then stay up).
#
# ---- L1 (the nested host, under QEMU TCG -cpu max) ----
# Modules: the virtio-pci and 9p stack, virtio_blk, then irqbypass ccp kvm
# kvm-amd. /init mounts the QEMU share `-virtfs local,path=DIR,mount_tag=host,
# security_model=none` on /share, copies /share/sysroot/. onto / if present,
# loads kvm, reports /dev/kvm, runs `sh /share/$berth.l1` (default run.sh)
# with a timeout berth.l1timeout (default 420 s) and powers off. Console lines
# start with "BERTH-L1: ": init, modules, share ok|FAIL, kvm ok|FAIL,
# script start, script exit <rc>, poweroff.
set -euo pipefail

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT_PATH")
log() { echo "build-vm-guest: $*" >&2; }
unavailable() { log "UNAVAILABLE: $*"; exit 77; }

# ------------------------------------------------------------- sysroot ---
if [ "${1:-}" = --sysroot ]; then
  [ $# -ge 3 ] || { echo "usage: $0 --sysroot DIR PATH..." >&2; exit 2; }
  DEST=$2; shift 2
  mkdir -p "$DEST/usr/bin"
  for p in "$@"; do
    [ -e "$p" ] || { log "no such file: $p"; exit 1; }
    if [ -f "$p" ] && [ -x "$p" ] && head -c 4 "$p" | grep -q ELF; then
      cp -L "$p" "$DEST/usr/bin/$(basename "$p")"
      # Libraries at the paths ldd names (the loader too).
      ldd "$p" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | while read -r lib; do
        [ -e "$DEST$lib" ] && continue
        mkdir -p "$DEST$(dirname "$lib")"
        cp -L "$lib" "$DEST$lib"
      done
    else
      mkdir -p "$DEST$(dirname "$p")"
      cp -rL "$p" "$DEST$p"
    fi
  done
  exit 0
fi

FORCE=${BERTH_GUEST_FORCE:-0}
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-vm-guest: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# build-guest.sh fetches (or reuses) the kernel and installs busybox-static,
# cpio and kmod; its 77 is ours.
rc=0
GUEST_DIR=$("$SCRIPT_DIR/build-guest.sh") || rc=$?
[ $rc -ne 77 ] || unavailable "build-guest.sh could not get the kernel"
[ $rc -eq 0 ] || { log "build-guest.sh failed (exit $rc)"; exit 1; }
VM_DIR=${BERTH_VM_GUEST_DIR:-$(dirname "$GUEST_DIR")/vm-guest}
read -r KPKG KVERSION KREL <"$GUEST_DIR/kernel-package"

L2_MODULES=(virtio_ring virtio virtio_mmio failover net_failover virtio_net virtio_blk
            9pnet 9pnet_virtio netfs fscache 9p virtio-rng)
L1_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
            virtio_blk 9pnet 9pnet_virtio netfs fscache 9p)
L1_KVM=(irqbypass ccp kvm kvm-amd)

mkdir -p "$VM_DIR"
exec 9>"$VM_DIR/.lock"
flock 9
if [ "$FORCE" = 1 ]; then rm -rf "$VM_DIR"/*.cpio.gz "$VM_DIR"/*.stamp "$VM_DIR/kernel.deb"; fi
WORK=$(mktemp -d "$VM_DIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- kernel ---
if [ "$(cat "$VM_DIR/kernel-package" 2>/dev/null)" != "$KPKG $KVERSION $KREL" ] || [ ! -s "$VM_DIR/kernel.deb" ]; then
  rm -f "$VM_DIR/kernel.deb" "$VM_DIR"/*.cpio.gz
  log "fetching $KPKG=$KVERSION"
  apt_opts=()
  [ "$(id -u)" -eq 0 ] && apt_opts=(-o APT::Sandbox::User=root)
  (cd "$WORK" && apt-get "${apt_opts[@]}" download -qq "$KPKG=$KVERSION" >&2) ||
    unavailable "apt-get download $KPKG=$KVERSION failed"
  mv "$WORK"/"$KPKG"_*.deb "$VM_DIR/kernel.deb"
  echo "$KPKG $KVERSION $KREL" >"$VM_DIR/kernel-package"
fi
cp "$GUEST_DIR/vmlinuz" "$WORK/vmlinuz" && mv "$WORK/vmlinuz" "$VM_DIR/vmlinuz"

KROOT=""
kroot() {  # unpack the package once per run, on demand
  [ -n "$KROOT" ] && return 0
  KROOT=$WORK/kroot
  log "unpacking the kernel package"
  dpkg -x "$VM_DIR/kernel.deb" "$KROOT"
  depmod -b "$KROOT" "$KREL"
}

# copy_modules DEST NAME...: the modules and their dependencies, in load
# order, as DEST/NN-name.ko, listed in DEST/load.list.
copy_modules() {
  local dest=$1; shift
  local mdir=$KROOT/lib/modules/$KREL
  declare -A seen=()
  local order=()
  resolve() {
    local m=$1 line d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    line=$(grep -E "(^|/)${m}\.ko(\.xz|\.zst|\.gz)?:" "$mdir/modules.dep" | head -n1 || true)
    if [ -z "$line" ]; then
      local alt=${m//_/-}; [ "$alt" = "$m" ] && alt=${m//-/_}
      if [ "$alt" != "$m" ] && grep -qE "(^|/)${alt}\.ko(\.xz|\.zst|\.gz)?:" "$mdir/modules.dep"; then
        resolve "$alt"; return 0
      fi
      if grep -qE "(^|/)(${m}|${alt})\.ko$" "$mdir/modules.builtin" 2>/dev/null; then log "module $m is built in"
      else log "module $m not in this kernel; skipped"; fi
      return 0
    fi
    for d in ${line#*:}; do d=$(basename "$d"); resolve "${d%%.ko*}"; done
    order+=("${line%%:*}")
  }
  local m p name n=0 out
  for m in "$@"; do resolve "$m"; done
  mkdir -p "$dest"; : >"$dest/load.list"
  for p in "${order[@]}"; do
    n=$((n + 1)); name=$(basename "$p"); out=$(printf '%02d-%s.ko' "$n" "${name%%.ko*}")
    case "$name" in
      *.ko.xz)  xz -dc "$mdir/$p" >"$dest/$out" ;;
      *.ko.zst) zstd -qdc "$mdir/$p" >"$dest/$out" ;;
      *.ko.gz)  gzip -dc "$mdir/$p" >"$dest/$out" ;;
      *)        cp "$mdir/$p" "$dest/$out" ;;
    esac
    echo "$out" >>"$dest/load.list"
  done
}

# base_root DIR: busybox with its applets in /bin, real /usr directories.
base_root() {
  local r=$1 bb=/bin/busybox a
  [ -x "$bb" ] || bb=$(command -v busybox)
  "$bb" --list | grep -qx udhcpc || unavailable "busybox without udhcpc"
  mkdir -p "$r"/{bin,dev,proc,sys,mnt,tmp,etc,root,lib/modules,usr/bin,usr/sbin,usr/lib,usr/share,var/run,www}
  cp "$bb" "$r/bin/busybox"
  for a in $("$bb" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
  ln -s bin "$r/sbin"
  mknod -m 600 "$r/dev/console" c 5 1 2>/dev/null || true
}

pack() {  # pack DIR OUT
  (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --reproducible --quiet) \
    | gzip -6n >"$2.tmp"
  mv "$2.tmp" "$2"
}

# ------------------------------------------------------------------- L2 ---
write_l2_init() {
cat >"$1" <<'INIT'
#!/bin/sh
# Berth VMM test guest (L2) /init, generated by scripts/guest/build-vm-guest.sh.
export PATH=/bin:/usr/bin
mount -t proc proc /proc
read -r U _ </proc/uptime
echo "BERTH-L2: init $U"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

up() { read -r u _ </proc/uptime; echo "$u"; }
say() { echo "BERTH-L2: $*"; }
show() { while IFS= read -r l; do echo "BERTH-L2| $1: $l"; done; }
FAILED=
bad() { say "$1 FAIL $2"; FAILED="$FAILED $1"; }
off() { say "poweroff (uptime $(up))"; umount /mnt 2>/dev/null; sync; poweroff -f; sleep 30; }

FWD=18080 TOKEN=berth-l2 WAIT=120 WATCHDOG=300 BENCH=0 SKIP= UP=0
for w in $(cat /proc/cmdline); do
  case "$w" in
    berth.fwd=*) FWD=${w#*=} ;;
    berth.token=*) TOKEN=${w#*=} ;;
    berth.wait=*) WAIT=${w#*=} ;;
    berth.watchdog=*) WATCHDOG=${w#*=} ;;
    berth.bench=*) BENCH=${w#*=} ;;
    berth.up=*) UP=${w#*=} ;;
    berth.skip=*) SKIP=$(echo "${w#*=}" | tr , ' ') ;;
  esac
done
[ "$BENCH" = 1 ] && off
skip() { case " $SKIP " in *" $1 "*) say "$1 skipped"; return 0 ;; esac; return 1; }
# berth.up=1 (`berth up`'s default guest) stays up: no watchdog, no tests.
[ "$UP" = 1 ] && SKIP="$SKIP dns disk rng fwd"
[ "$UP" = 1 ] || ( sleep "$WATCHDOG"; say "watchdog: ${WATCHDOG}s passed"; say "result FAIL watchdog"; off ) &

while read -r ko; do
  [ -n "$ko" ] && { insmod "/lib/modules/berth/$ko" || say "insmod $ko failed"; }
done </lib/modules/berth/load.list
say "modules (uptime $(up))"

# ---- network: DHCP on eth0 ----
IP=
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do i=$((i + 1)); usleep 100000; done
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up
  ip link set eth0 up
  cat >/bin/dhcp.sh <<'DHCP'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    ip route add default via "$router" 2>/dev/null
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
    echo "$ip" >/tmp/ip
    echo "ip=$ip router=$router dns=$dns domain=$domain lease=$lease" >/tmp/lease ;;
esac
DHCP
  chmod +x /bin/dhcp.sh
  if out=$(timeout 60 udhcpc -i eth0 -n -q -t 10 -T 2 -x hostname:berth-l2 -O search -s /bin/dhcp.sh 2>&1) && [ -s /tmp/ip ]; then
    IP=$(cat /tmp/ip)
    say "dhcp ok $IP ($(cat /tmp/lease)) (uptime $(up))"
  else
    echo "$out" | show udhcpc; bad dhcp "no lease"
  fi
else
  bad dhcp "eth0 did not appear in 20 s"
fi

if [ -n "$IP" ] && ! skip dns; then
  out=$(timeout 20 nslookup host.berth.internal 2>&1)
  a=$(echo "$out" | sed -n 's/^Address: *\(192\.168\.[0-9.]*\)$/\1/p' | head -n1)
  if [ -n "$a" ]; then say "dns ok host.berth.internal $a"; else echo "$out" | show nslookup; bad dns "host.berth.internal not resolved"; fi
fi

# ---- 9p: the control tree ----
M9=0
if ! skip 9p; then
  if out=$(timeout 30 mount -t 9p -o trans=virtio,version=9p2000.L berth /mnt 2>&1); then
    M9=1; say "9p ok"
    i=0 line=
    while [ $i -lt 20 ]; do
      if [ -n "$IP" ]; then line=$(grep -F " $IP " /mnt/dhcp/leases 2>/dev/null | head -n1); else line=$(head -n1 /mnt/dhcp/leases 2>/dev/null); fi
      [ -n "$line" ] && break
      i=$((i + 1)); sleep 0.5
    done
    cat /mnt/dhcp/leases 2>&1 | show leases
    if [ -n "$line" ]; then say "leases ok $line"; else bad leases "no line for ${IP:-<no ip>} in /mnt/dhcp/leases"; fi
  else
    echo "$out" | show mount; bad 9p "mount failed"
  fi
fi

# ---- berth up: a web server reachable from the host, then stay up ----
if [ "$UP" = 1 ]; then
  mkdir -p /www
  { echo "Hello from Berth's default guest ($IP)."
    echo "Its control tree is mounted at /mnt; this page came through a port forward."; } >/www/index.html
  httpd -p 80 -h /www
  if [ "$M9" = 1 ] && [ -n "$IP" ] && (echo "tcp:127.0.0.1:$FWD:tcp:$IP:80" >/mnt/ports/ctl) 2>/dev/null; then
    say "up: ip $IP; http://127.0.0.1:$FWD/ on the host reaches this guest's web server"
  else
    say "up: ip ${IP:-none}; no forward (the 9p mount or DHCP failed)"
  fi
  # A shell on the console (berth run --console stdout on a terminal, or
  # writes into /vm/console), respawned when it exits.
  say "up: a shell is on the console"
  while :; do setsid cttyhack sh; sleep 1; done
fi

# ---- disk ----
if ! skip disk; then
  i=0
  while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do i=$((i + 1)); usleep 100000; done
  if [ -b /dev/vda ]; then
    awk 'BEGIN { for (i = 0; i < 1024; i++) printf "%-4095s\n", "berth-l2 block " i }' >/tmp/pattern
    want=$(sha256sum </tmp/pattern | cut -d' ' -f1)
    if ! out=$(timeout 60 dd if=/tmp/pattern of=/dev/vda bs=65536 conv=fsync 2>&1); then
      echo "$out" | show dd; bad disk "write failed"
    else
      sync; blockdev --flushbufs /dev/vda 2>/dev/null; echo 3 >/proc/sys/vm/drop_caches
      got=$(timeout 60 dd if=/dev/vda bs=65536 count=64 2>/dev/null | sha256sum | cut -d' ' -f1)
      if [ "$got" = "$want" ]; then say "disk ok $got ($(cat /sys/block/vda/size) sectors)"
      else bad disk "read back $got, wrote $want"; fi
    fi
    rm -f /tmp/pattern
  else
    bad disk "/dev/vda did not appear in 10 s"
  fi
fi

# ---- rng ----
if ! skip rng; then
  if [ -c /dev/hwrng ] && hex=$(timeout 20 dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n') && [ ${#hex} -eq 32 ]; then
    say "rng ok $hex ($(cat /sys/class/misc/hw_random/rng_current 2>/dev/null))"
  else
    bad rng "no 16 bytes from /dev/hwrng"
  fi
fi

# ---- forward from the VMM's host to this guest ----
if ! skip fwd; then
  if [ "$M9" = 1 ] && [ -n "$IP" ]; then
    echo "$TOKEN" >/www/index.html
    httpd -p 8080 -h /www
    spec="tcp:127.0.0.1:$FWD:tcp:$IP:8080"
    if err=$( (echo "$spec" >/mnt/ports/ctl) 2>&1 ); then
      id='' i=0
      while [ -z "$id" ] && [ $i -lt 20 ]; do
        for f in /mnt/ports/[0-9]*; do grep -qF ":$FWD:tcp:$IP:8080" "$f" 2>/dev/null && id=${f##*/}; done
        [ -n "$id" ] || { i=$((i + 1)); sleep 0.5; }
      done
      if [ -n "$id" ]; then
        say "forward ready $FWD id $id ip $IP (uptime $(up))"
        i=0 t=$((WAIT * 2)) used=
        while [ -e "/mnt/ports/$id" ] && [ ! -e /mnt/l2-done ] && [ $i -lt $t ]; do
          grep -q '^total [1-9]' "/mnt/ports/$id" 2>/dev/null && [ -z "$used" ] && used=$(tr '\n' ' ' <"/mnt/ports/$id")
          i=$((i + 1)); sleep 0.5
        done
        [ -n "$used" ] && say "forward used: $used"
        if [ ! -e "/mnt/ports/$id" ]; then say "forward removed (uptime $(up))"
        elif [ -e /mnt/l2-done ]; then say "done signal (uptime $(up))"
        else bad fwd "the forward was not removed within ${WAIT}s"; fi
      else
        bad fwd "no /mnt/ports/N for $spec"
      fi
    else
      bad fwd "echo $spec > /mnt/ports/ctl: $err"
    fi
  else
    bad fwd "needs the 9p mount and an address"
  fi
fi

if [ -z "$FAILED" ]; then say "result PASS"; else say "result FAIL$FAILED"; fi
off
INIT
}

L2_STAMP=$( { sha256sum "$SCRIPT_PATH"; cat "$VM_DIR/kernel-package"; } | sha256sum | cut -d' ' -f1)
if [ ! -s "$VM_DIR/l2-initrd.cpio.gz" ] || [ "$(cat "$VM_DIR/l2.stamp" 2>/dev/null)" != "$L2_STAMP" ]; then
  kroot
  R=$WORK/l2
  base_root "$R"
  copy_modules "$R/lib/modules/berth" "${L2_MODULES[@]}"
  log "L2 modules: $(tr '\n' ' ' <"$R/lib/modules/berth/load.list")"
  write_l2_init "$R/init"; chmod 0755 "$R/init"
  pack "$R" "$VM_DIR/l2-initrd.cpio.gz"
  echo "$L2_STAMP" >"$VM_DIR/l2.stamp"
  log "L2 initramfs: $(du -h "$VM_DIR/l2-initrd.cpio.gz" | cut -f1)"
fi

# ------------------------------------------------------------------- L1 ---
write_l1_init() {
cat >"$1" <<'INIT'
#!/bin/sh
# Berth VMM test nested host (L1) /init, generated by scripts/guest/build-vm-guest.sh.
export PATH=/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
up() { read -r u _ </proc/uptime; echo "$u"; }
say() { echo "BERTH-L1: $*"; }
off() { say "poweroff (uptime $(up))"; sync; umount /share 2>/dev/null; poweroff -f; sleep 30; }
say "init (uptime $(up))"
SCRIPT=run.sh T=420
for w in $(cat /proc/cmdline); do
  case "$w" in
    berth.l1=*) SCRIPT=${w#*=} ;;
    berth.l1timeout=*) T=${w#*=} ;;
  esac
done
( sleep $((T + 30)); say "watchdog"; off ) &
ip link set lo up
load() {
  while read -r ko; do
    [ -n "$ko" ] && { insmod "/lib/modules/$1/$ko" || say "insmod $ko failed"; }
  done </lib/modules/$1/load.list
}
load base
say "modules (uptime $(up))"
mkdir -p /share
i=0
until out=$(mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /share 2>&1); do
  i=$((i + 1)); [ $i -lt 20 ] || break; sleep 0.5
done
if grep -q " /share 9p " /proc/mounts; then say "share ok"; else say "share FAIL $out"; off; fi
if [ -d /share/sysroot ]; then cp -a /share/sysroot/. / && say "sysroot copied (uptime $(up))"; fi
load kvm
if [ -c /dev/kvm ]; then say "kvm ok ($(dmesg | grep -i -m1 -E 'kvm|svm' | sed 's/^\[[^]]*\] //'))"
else say "kvm FAIL"; dmesg | grep -i -E 'kvm|svm|ccp' | sed 's/^/BERTH-L1| dmesg: /'; fi
say "script start $SCRIPT (uptime $(up))"
cd /tmp
timeout "$T" sh "/share/$SCRIPT"
say "script exit $?"
off
INIT
}

L1_STAMP=$( { sha256sum "$SCRIPT_PATH"; cat "$VM_DIR/kernel-package"; } | sha256sum | cut -d' ' -f1)
if [ ! -s "$VM_DIR/l1-initrd.cpio.gz" ] || [ "$(cat "$VM_DIR/l1.stamp" 2>/dev/null)" != "$L1_STAMP" ]; then
  kroot
  R=$WORK/l1
  base_root "$R"
  copy_modules "$R/lib/modules/base" "${L1_MODULES[@]}"
  copy_modules "$R/lib/modules/kvm" "${L1_KVM[@]}"
  log "L1 modules: $(cat "$R/lib/modules/base/load.list" "$R/lib/modules/kvm/load.list" | tr '\n' ' ')"
  write_l1_init "$R/init"; chmod 0755 "$R/init"
  pack "$R" "$VM_DIR/l1-initrd.cpio.gz"
  echo "$L1_STAMP" >"$VM_DIR/l1.stamp"
  log "L1 initramfs: $(du -h "$VM_DIR/l1-initrd.cpio.gz" | cut -f1)"
fi

echo "$VM_DIR"
