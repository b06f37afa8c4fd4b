#!/usr/bin/env bash
# Real-peer test: QEMU's NBD client (qemu-img, qemu-io) and fio's nbd engine
# against `berth serve --disk`, and QEMU reading the qcow2 image Berth wrote.
#
# Usage: tests/peers/nbd_qemu.sh BERTH_BINARY
#   (BERTH_SERVE=PROGRAM runs `PROGRAM serve ...` in place of `berth serve`.)
#
# A qcow2 disk d0 (made by qemu-img, 64 MiB, 64 KiB clusters) is exported on
# a unix socket and on TCP; a raw disk d1 on a unix socket. Checks, in order:
#   - qemu-img info through NBD (unix and TCP) reports the virtual size; an
#     unknown export name is refused;
#   - fio's nbd engine writes with verify (when fio has the engine);
#   - four qemu-io clients at once, each on its own 16 MiB region, run a
#     seeded random mix of writes (aligned and unaligned, some FUA),
#     write-zeroes (with and without unmap), discards and flushes; the same
#     commands are applied to a raw reference file;
#   - qemu-img compare through NBD says identical; qemu-img convert from NBD
#     gives the same bytes;
#   - the raw disk d1 round-trips the same way;
#   - hostile bytes on the NBD socket close only that connection;
#   - /disks/d0/{info,stats} and /metrics show the disk;
#   - after SIGTERM (exit 0): `qemu-img check` of the image is clean and
#     `qemu-img compare` of the image against the reference is identical;
#     `berth qcow check` agrees and `berth qcow info --json` parses.
# Exit status: 0 pass, 1 fail, 77 skipped (qemu-utils unavailable, or no --disk).
set -euo pipefail
NAME=nbd_qemu
if [ $# -ne 1 ]; then
  echo "usage: $0 BERTH_BINARY" >&2
  exit 2
fi
BERTH=$(readlink -f "$1" || true)
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/peers/nbd_common.sh
. "$HERE/nbd_common.sh"
need_qemu_utils

IMG="$TMP/d0.qcow2"
REF="$TMP/ref.raw"
RAW="$TMP/d1.raw"
qemu-img create -q -f qcow2 -o cluster_size=65536 "$IMG" 64M
truncate -s 16M "$RAW"
start_berth --disk "d0=$IMG,nbd=unix:$TMP/d0.nbd,nbd=tcp:127.0.0.1:0" --disk "d1=$RAW,format=raw,nbd=unix:$TMP/d1.nbd"
U0=$(nbd_uri d0)
U1=$(nbd_uri d1)

# --- negotiation -------------------------------------------------------------
qemu-img info --output=json -f raw "$U0" >"$TMP/info.json" || fail "qemu-img info over unix failed"
grep -q '"virtual-size": 67108864' "$TMP/info.json" || fail "qemu-img info: wrong size: $(cat "$TMP/info.json")"
PORT=$(sed -n 's/^berth: disk d0 nbd on tcp:127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/berth.out")
[ -n "$PORT" ] || fail "no TCP address announced: $(cat "$TMP/berth.out")"
qemu-img info --output=json -f raw "nbd://127.0.0.1:$PORT/d0" | grep -q '"virtual-size": 67108864' ||
  fail "qemu-img info over TCP failed"
if qemu-img info -f raw "nbd+unix:///nope?socket=$TMP/d0.nbd" >/dev/null 2>&1; then
  fail "an unknown export name was accepted"
fi
say "qemu-img info over unix and TCP: ok"

# --- fio --------------------------------------------------------------------
if command -v fio >/dev/null 2>&1 && fio --enghelp=nbd 2>/dev/null | grep -q uri; then
  fio --name=verify --ioengine=nbd --uri="$U0" --rw=randwrite --bs=4k --offset=0 --size=8m --iodepth=16 \
    --verify=crc32c --do_verify=1 --randseed=7 --output="$TMP/fio.out" >/dev/null 2>&1 ||
    fail "fio randwrite+verify over NBD failed: $(tail -n 20 "$TMP/fio.out")"
  grep -q "err= 0" "$TMP/fio.out" || fail "fio reported errors: $(grep err= "$TMP/fio.out")"
  say "fio nbd engine: randwrite with crc32c verify: ok"
else
  say "fio without the nbd engine: skipping that part"
fi
# The reference starts as whatever the disk holds now.
qemu-img convert -f raw -O raw "$U0" "$REF" || fail "qemu-img convert from NBD failed"
[ "$(stat -c %s "$REF")" = 67108864 ] || fail "converted reference has the wrong size"

# --- random workload, four clients at once -------------------------------------
python3 - "$TMP" <<'EOF'
import random, sys
tmp = sys.argv[1]
region = 16 << 20
for k in range(4):
    rng = random.Random(1000 + k)
    base = k * region
    cmds = []
    for i in range(150):
        r = rng.random()
        if r < 0.55:
            if rng.random() < 0.5:
                off, ln = rng.randrange(0, region // 512) * 512, rng.randrange(1, 257) * 512
            else:
                off, ln = rng.randrange(0, region - 1), rng.randrange(1, 200000)
            ln = min(ln, region - off)
            fua = " -f" if rng.random() < 0.1 else ""
            cmds.append("write%s -P %d %d %d" % (fua, rng.randrange(1, 256), base + off, ln))
        elif r < 0.7:
            off = rng.randrange(0, region - 1)
            ln = min(rng.randrange(1, 300000), region - off)
            unmap = " -u" if rng.random() < 0.5 else ""
            cmds.append("write -z%s %d %d" % (unmap, base + off, ln))
        elif r < 0.85:
            # Discards on cluster boundaries: the qcow2 engine frees whole
            # clusters, the raw reference punches the same range.
            off = rng.randrange(0, region // 65536) * 65536
            ln = min(rng.randrange(1, 17) * 65536, region - off)
            cmds.append("discard %d %d" % (base + off, ln))
        else:
            cmds.append("flush")
    cmds.append("flush")
    open("%s/cmds.%d" % (tmp, k), "w").write("\n".join(cmds) + "\n")
EOF
run_qemu_io() {  # run_qemu_io TARGET CMDFILE LOG
  local args=() line
  while IFS= read -r line; do args+=(-c "$line"); done <"$2"
  qemu-io -f raw "$1" "${args[@]}" >"$3" 2>&1
}
pids=()
for k in 0 1 2 3; do
  run_qemu_io "$U0" "$TMP/cmds.$k" "$TMP/qemu-io.$k.log" &
  pids+=($!)
done
for k in 0 1 2 3; do
  wait "${pids[$k]}" || fail "qemu-io client $k failed: $(tail -n 5 "$TMP/qemu-io.$k.log")"
  if grep -qiE "error|failed|Input/output" "$TMP/qemu-io.$k.log"; then
    fail "qemu-io client $k: $(grep -iE 'error|failed' "$TMP/qemu-io.$k.log" | head -n 3)"
  fi
done
for k in 0 1 2 3; do run_qemu_io "$REF" "$TMP/cmds.$k" "$TMP/ref.$k.log" || fail "qemu-io on the reference failed"; done
say "4 concurrent qemu-io clients: $(grep -c . "$TMP/cmds.0") requests each: ok"

qemu-img compare -f raw -F raw "$U0" "$REF" >"$TMP/compare.log" 2>&1 ||
  fail "qemu-img compare through NBD: $(cat "$TMP/compare.log")"
qemu-img convert -f raw -O raw "$U0" "$TMP/conv.raw" || fail "qemu-img convert from NBD failed"
cmp -s "$TMP/conv.raw" "$REF" || fail "qemu-img convert from NBD differs from the reference"
say "qemu-img compare and convert through NBD: identical"

# --- the raw disk -------------------------------------------------------------
qemu-io -f raw "$U1" -c "write -P 0x5a 4096 1M" -c "write -z 8192 4096" -c "discard 1048576 65536" -c flush \
  >"$TMP/raw.log" 2>&1 || fail "qemu-io on the raw disk: $(cat "$TMP/raw.log")"
truncate -s 16M "$TMP/ref1.raw"
qemu-io -f raw "$TMP/ref1.raw" -c "write -P 0x5a 4096 1M" -c "write -z 8192 4096" -c "discard 1048576 65536" \
  >/dev/null 2>&1
qemu-img compare -f raw -F raw "$U1" "$TMP/ref1.raw" >/dev/null 2>&1 || fail "raw disk differs from its reference"
say "raw disk over NBD: ok"

# --- hostile input ------------------------------------------------------------
python3 - "$TMP/d0.nbd" <<'EOF' || fail "hostile-input client failed"
import socket, struct, sys
def conn():
    s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); s.recv(18); return s
def closed(s):
    try:
        while True:
            d = s.recv(4096)
            if not d: return True
    except socket.timeout:
        return False
# unknown client flags
s = conn(); s.sendall(struct.pack(">I", 0xff)); assert closed(s), "unknown flags"
# garbage instead of an option
s = conn(); s.sendall(struct.pack(">I", 1) + b"X" * 64); assert closed(s), "bad option magic"
# a huge option length
s = conn(); s.sendall(struct.pack(">IQII", 1, 0x49484156454F5054, 7, 0x7fffffff)); assert closed(s), "huge option"
# transmission: bad request magic
s = conn(); name = b"d0"
s.sendall(struct.pack(">I", 1) + struct.pack(">QII", 0x49484156454F5054, 7, 4 + len(name) + 2) + struct.pack(">I", len(name)) + name + b"\0\0")
buf = b""
while True:
    h = s.recv(20, socket.MSG_WAITALL); typ, ln = struct.unpack(">II", h[12:20])
    if ln: s.recv(ln, socket.MSG_WAITALL)
    if typ == 1: break
s.sendall(struct.pack(">IHHQQI", 0x12345678, 0, 0, 1, 0, 512)); assert closed(s), "bad request magic"
EOF
qemu-img info -f raw "$U0" >/dev/null 2>&1 || fail "the export stopped working after hostile input"
say "hostile input closes only its own connection: ok"

# --- the tree -------------------------------------------------------------------
ctl cat /disks/d0/info >"$TMP/tree-info" || fail "cannot read /disks/d0/info"
grep -qx "format qcow2" "$TMP/tree-info" || fail "/disks/d0/info: $(cat "$TMP/tree-info")"
grep -qx "virtual_size 67108864" "$TMP/tree-info" || fail "/disks/d0/info has no virtual size"
grep -qx "cluster_size 65536" "$TMP/tree-info" || fail "/disks/d0/info has no cluster size"
grep -qx "format raw" <(ctl cat /disks/d1/info) || fail "/disks/d1/info is not raw"
ctl cat /disks/d0/stats >"$TMP/tree-stats"
w=$(sed -n 's/^writes //p' "$TMP/tree-stats")
[ "${w:-0}" -gt 0 ] || fail "/disks/d0/stats counts no writes: $(cat "$TMP/tree-stats")"
ctl cat /metrics | grep -q 'berth_nbd_requests_total{disk="d0",command="write"}' || fail "/metrics has no NBD counters"
say "/disks/d0/info, stats and /metrics: ok ($w writes)"

# --- offline: QEMU reads what Berth wrote -----------------------------------------
stop_berth TERM
qemu-img check -f qcow2 "$IMG" >"$TMP/check.log" 2>&1 || fail "qemu-img check: $(cat "$TMP/check.log")"
grep -q "No errors were found" "$TMP/check.log" || fail "qemu-img check: $(cat "$TMP/check.log")"
qemu-img compare -f qcow2 -F raw "$IMG" "$REF" >"$TMP/compare2.log" 2>&1 ||
  fail "qemu-img compare image vs reference: $(cat "$TMP/compare2.log")"
"$BERTH" qcow check "$IMG" >"$TMP/bcheck.log" 2>&1 || fail "berth qcow check: $(cat "$TMP/bcheck.log")"
"$BERTH" qcow info --json "$IMG" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["virtual-size"]==64<<20 and d["format"]=="qcow2", d' ||
  fail "berth qcow info --json"
say "after shutdown: qemu-img check clean, compare identical, berth qcow check clean"
say "PASS"
