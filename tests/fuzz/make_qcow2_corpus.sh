#!/usr/bin/env bash
# Regenerates the seed corpus of fuzz_qcow2 (tests/fuzz/corpus/qcow2/) with
# qemu-img and qemu-io: small images (512-byte clusters, under 4 KiB) whose
# metadata mutations reach every table: v2 and v3, data, zero and compressed
# clusters, refcount widths 1 and 64, lazy refcounts left dirty, a backing
# file name with its format.
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/corpus/qcow2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
cd "$tmp"
mk() { qemu-img create -q -f qcow2 -o "cluster_size=512,$1" "$2" 64K; }
io() { local img=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done; qemu-io -f qcow2 "${a[@]}" "$img" >/dev/null; }

mk compat=1.1 empty_v3.qcow2
mk compat=0.10 v2.qcow2 && io v2.qcow2 'write -P 0x11 0 512' 'write -P 0x22 4096 1024'
mk compat=1.1 data.qcow2 && io data.qcow2 'write -P 0xab 0 1024' 'write -P 0xcd 16384 512'
mk compat=1.1 zero.qcow2 && io zero.qcow2 'write -P 0x5a 0 512' 'write -z 0 512' 'write -z 1024 512'
mk compat=1.1,refcount_bits=1 rc1.qcow2 && io rc1.qcow2 'write -P 0x01 512 512'
mk compat=1.1,refcount_bits=64 rc64.qcow2 && io rc64.qcow2 'write -P 0x02 512 512'
mk compat=1.1,lazy_refcounts=on dirty.qcow2 && { io dirty.qcow2 'write -P 0x03 0 1024' 'abort' 2>/dev/null || true; }
head -c 65536 /dev/zero > base.raw
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw backing.qcow2 64K
io backing.qcow2 'write -P 0x04 100 200'
python3 - <<'PY'
with open("comp.raw", "wb") as f:
    f.write(bytes((i // 16) % 256 for i in range(2048)) + bytes(65536 - 2048))
PY
qemu-img convert -c -O qcow2 -o cluster_size=512 comp.raw compressed.qcow2
for f in *.qcow2; do
  [ "$(stat -c %s "$f")" -le 4096 ] || { echo "$f is over 4 KiB" >&2; exit 1; }
  cp "$f" "$out/$f"
done
ls -l "$out"
