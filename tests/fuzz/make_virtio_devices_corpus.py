#!/usr/bin/env python3
"""Seed corpus for fuzz_virtio_devices (see tests/fuzz/fuzz_virtio_devices.cpp).

Each seed: device byte (0 blk, 1 net, 2 9p, 3 rng), flags byte, queue size
code (1 << code), then chains: a header byte (bits 0-2 readable buffers,
3-5 writable buffers, 6 indirect, 7 queue 1), each readable buffer as
u16 LE length + bytes, each writable buffer as u16 LE length.
Run from the repository root:
    python3 tests/fuzz/make_virtio_devices_corpus.py
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "virtio_devices")
BLK, NET, P9, RNG = 0, 1, 2, 3
# flags
RO, EVENT_IDX, INDIRECT, RESET, KICK_EACH, PUBLISH_FIRST, EXTRA = 1, 2, 4, 8, 16, 32, 64


def chain(readable=(), writable=(), indirect=False, queue=0):
    h = len(readable) | (len(writable) << 3) | (0x40 if indirect else 0) | (0x80 if queue else 0)
    out = bytes([h])
    for r in readable:
        out += struct.pack("<H", len(r)) + bytes(r)
    for w in writable:
        out += struct.pack("<H", w)
    return out


def seed(dev, flags, chains, qcode=6):
    return bytes([dev, flags, qcode]) + b"".join(chains)


# ---- virtio-blk ------------------------------------------------------------
def blk_hdr(t, sector=0):
    return struct.pack("<IIQ", t, 0, sector)


def seg(sector, num, flags=0):
    return struct.pack("<QII", sector, num, flags)


def pattern(n, s=1):
    return bytes((s * 31 + i * 7) & 0xFF for i in range(n))


blk_read = chain([blk_hdr(0, 8)], [512, 1])
blk_write = chain([blk_hdr(1, 8), pattern(1024)], [1])
blk_flush = chain([blk_hdr(4)], [1])
blk_getid = chain([blk_hdr(8)], [20, 1])
blk_discard = chain([blk_hdr(11), seg(16, 8)], [1])
blk_wzeroes = chain([blk_hdr(13), seg(32, 8, 1) + seg(64, 16, 0)], [1])

# ---- virtio-net ------------------------------------------------------------
NET_HDR = bytes(12)
frame = bytes.fromhex("020000000001" "525400123456" "0800") + pattern(46, 3)
net_tx = chain([NET_HDR + frame], queue=1)
net_tx_split = chain([NET_HDR, frame[:14], frame[14:]], queue=1, indirect=True)
net_rx = chain([frame], [2048])  # with EXTRA: the readable bytes are sent toward the guest


# ---- virtio-9p (9P2000.L) ---------------------------------------------------
def s9(x):
    x = x.encode()
    return struct.pack("<H", len(x)) + x


def msg(t, tag, body):
    return struct.pack("<IBH", 7 + len(body), t, tag) + body


Tversion = msg(100, 0xFFFF, struct.pack("<I", 65536) + s9("9P2000.L"))
Tattach = msg(104, 1, struct.pack("<II", 1, 0xFFFFFFFF) + s9("root") + s9("") + struct.pack("<I", 0))
Twalk_stream = msg(110, 2, struct.pack("<IIH", 1, 2, 2) + s9("dir") + s9("stream"))
Tlopen = msg(12, 3, struct.pack("<II", 2, 0))
Tread = msg(116, 4, struct.pack("<IQI", 2, 0, 512))
Tflush = msg(108, 5, struct.pack("<H", 4))
Twalk_ctl = msg(110, 6, struct.pack("<IIH", 1, 3, 1) + s9("ctl"))
Tlopen_ctl = msg(12, 7, struct.pack("<II", 3, 1))
Twrite_ctl = msg(118, 8, struct.pack("<IQI", 3, 0, 6) + b"reset\n")


def p9(m, w=8192):
    return chain([m], [w])


SEEDS = {
    "blk-read": seed(BLK, 0, [blk_read]),
    "blk-write": seed(BLK, 0, [blk_write]),
    "blk-flush": seed(BLK, 0, [blk_flush]),
    "blk-discard": seed(BLK, 0, [blk_discard]),
    "blk-write-zeroes": seed(BLK, 0, [blk_wzeroes]),
    "blk-get-id": seed(BLK, 0, [blk_getid]),
    "blk-mixed": seed(BLK, EVENT_IDX | INDIRECT | KICK_EACH, [blk_write, blk_read, blk_flush, blk_discard,
                                                                blk_wzeroes, blk_getid]),
    "blk-backpressure-reset": seed(BLK, EXTRA | RESET, [blk_write, blk_read, blk_read, blk_flush, blk_read]),
    "blk-read-only": seed(BLK, RO | PUBLISH_FIRST, [blk_write, blk_read, blk_discard]),
    "net-tx": seed(NET, 0, [net_tx]),
    "net-tx-indirect": seed(NET, INDIRECT | EVENT_IDX, [net_tx_split, net_tx]),
    "net-rx": seed(NET, EXTRA, [net_rx, net_rx, net_tx]),
    "net-publish-first": seed(NET, PUBLISH_FIRST | EXTRA, [net_rx, net_tx]),
    "9p-version": seed(P9, 0, [p9(Tversion)]),
    "9p-mount-read-flush": seed(P9, KICK_EACH, [p9(Tversion), p9(Tattach), p9(Twalk_stream), p9(Tlopen),
                                                p9(Tread), p9(Tflush)]),
    "9p-mount-read-data": seed(P9, EXTRA, [p9(Tversion), p9(Tattach), p9(Twalk_stream), p9(Tlopen), p9(Tread)]),
    "9p-ctl-reset": seed(P9, KICK_EACH, [p9(Tversion), p9(Tattach), p9(Twalk_ctl), p9(Tlopen_ctl),
                                         p9(Twrite_ctl)]),
    "rng": seed(RNG, 0, [chain([], [64])]),
    "rng-multi": seed(RNG, INDIRECT, [chain([], [16, 4096], indirect=True), chain([b"ignored"], [32])]),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {OUT}")


if __name__ == "__main__":
    main()
