#!/usr/bin/env python3
"""Seed corpus for fuzz_virtqueue (see tests/fuzz/fuzz_virtqueue.cpp).

Each seed: a 16-byte header (size code, mode, desc/avail/used offsets) and
guest RAM. RAM sits at gpa 0x10000 (kBase); offsets below are from there.
Layout used by the seeds: descriptor table at 0x000, avail ring at 0x400,
used ring at 0x600, buffers from 0x800, indirect tables at 0xc00.
Run from the repository root:
    python3 tests/fuzz/make_virtqueue_corpus.py
"""
import os
import struct

BASE = 0x10000
DESC, AVAIL, USED, BUF, TABLE = 0x000, 0x400, 0x600, 0x800, 0xC00
RAM = 0xE00
NEXT, WRITE, INDIRECT = 1, 2, 4
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "virtqueue")


def size_code(n):
    return n.bit_length() - 1  # 1 << code == n


def seed(qsize, mode, descs, heads, avail_idx=None, tables=(), ram=RAM, avail_flags=0, used_event=0):
    mem = bytearray(ram)
    for i, (addr, ln, fl, nx) in enumerate(descs):
        struct.pack_into("<QIHH", mem, DESC + 16 * i, addr, ln, fl, nx)
    for off, entries in tables:
        for i, (addr, ln, fl, nx) in enumerate(entries):
            struct.pack_into("<QIHH", mem, off + 16 * i, addr, ln, fl, nx)
    for k, h in enumerate(heads):
        struct.pack_into("<H", mem, AVAIL + 4 + 2 * (k % qsize), h)
    idx = len(heads) if avail_idx is None else avail_idx
    struct.pack_into("<HH", mem, AVAIL, avail_flags, idx & 0xFFFF)
    struct.pack_into("<H", mem, AVAIL + 4 + 2 * qsize, used_event)
    for i in range(BUF, min(ram, TABLE)):
        mem[i] = i & 0xFF
    header = struct.pack("<BBHHH8x", size_code(qsize), mode, DESC, AVAIL, USED)
    return header + bytes(mem)


def buf(k):
    return BASE + BUF + 0x40 * k


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds = {
        # one readable + one writable buffer
        "simple": seed(8, 0x18, [(buf(0), 16, NEXT, 1), (buf(1), 32, WRITE, 0)], [0]),
        # three chains, EVENT_IDX, used_event asks for the second completion
        "three_event_idx": seed(
            8, 0x1A,
            [(buf(0), 8, 0, 0), (buf(1), 8, WRITE, 0), (buf(2), 8, NEXT, 3), (buf(3), 8, WRITE, 0)],
            [0, 1, 2], used_event=1),
        # direct readable header, then an indirect table of 3
        "indirect": seed(
            4, 0x19, [(buf(0), 4, NEXT, 1), (BASE + TABLE, 48, INDIRECT, 0)], [0],
            tables=[(TABLE, [(buf(1), 8, NEXT, 1), (buf(2), 16, WRITE | NEXT, 2), (buf(3), 16, WRITE, 0)])]),
        # malicious: self loop, then a valid chain
        "loop": seed(4, 0x08, [(buf(0), 8, NEXT, 0), (buf(1), 8, 0, 0)], [0, 1]),
        # malicious: nested indirect and INDIRECT|NEXT
        "nested_indirect": seed(
            4, 0x01, [(BASE + TABLE, 32, INDIRECT, 0), (BASE + TABLE, 16, INDIRECT | NEXT, 0)], [0, 1],
            tables=[(TABLE, [(buf(0), 8, NEXT, 1), (BASE + TABLE, 32, INDIRECT, 0)])]),
        # malicious: writable before readable, buffer straddling the end of RAM
        "order_and_bounds": seed(
            8, 0x10,
            [(buf(0), 8, WRITE | NEXT, 1), (buf(1), 8, 0, 0), (BASE + RAM - 8, 72, WRITE, 0)], [0, 2]),
        # malicious: avail idx far ahead of the ring
        "broken_idx": seed(2, 0x00, [(buf(0), 8, 0, 0)], [0, 0], avail_idx=0x1234),
        # size 1, NO_INTERRUPT
        "size1": seed(1, 0x0C, [(buf(0), 8, WRITE, 0)], [0], avail_flags=1),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
