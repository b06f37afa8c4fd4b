#!/usr/bin/env python3
"""Seed corpus for fuzz_net_switch: records port[1] advance[1] len[2 LE] frame.

Each seed starts with the guest announcing itself (ARP for the gateway), so
the fuzzer begins past MAC/IP learning. Run from the repository root:
    python3 tests/fuzz/make_net_corpus.py
"""
import os
import struct

GW_MAC = bytes.fromhex("02b5e7410001")
G1 = bytes.fromhex("525400123456")
G2 = bytes.fromhex("525400123457")
BCAST = b"\xff" * 6


def ip(s):
    return bytes(int(x) for x in s.split("."))


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, src, typ, payload):
    return dst + src + struct.pack("!H", typ) + payload


def arp(op, smac, sip, tmac, tip):
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + smac + ip(sip) + tmac + ip(tip)


def ipv4(src, dst, proto, payload, ident=1, ttl=64, frag=0, more=False):
    flags = (0x2000 if more else 0) | (frag // 8)
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags, ttl, proto, 0, ip(src), ip(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def icmp_echo(ident, seq, data):
    m = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def udp(src, dst, sp, dp, data):
    u = struct.pack("!HHHH", sp, dp, 8 + len(data), 0) + data
    ph = ip(src) + ip(dst) + struct.pack("!BBH", 0, 17, len(u))
    c = csum(ph + u) or 0xFFFF
    return u[:6] + struct.pack("!H", c) + u[8:]


def tcp_syn(src, dst, sp, dp):
    opts = struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02" + b"\x01\x03\x03\x07"
    t = struct.pack("!HHIIBBHHH", sp, dp, 1000, 0, (20 + len(opts)) // 4 << 4, 0x02, 64240, 0, 0) + opts
    ph = ip(src) + ip(dst) + struct.pack("!BBH", 0, 6, len(t))
    c = csum(ph + t)
    return t[:16] + struct.pack("!H", c) + t[18:]


def rec(frame, port=0, adv=0):
    return struct.pack("<BBH", port, adv, len(frame)) + frame


ANNOUNCE = rec(eth(BCAST, G1, 0x0806, arp(1, G1, "192.168.65.3", b"\0" * 6, "192.168.65.1")))
ANNOUNCE2 = rec(eth(BCAST, G2, 0x0806, arp(1, G2, "192.168.65.4", b"\0" * 6, "192.168.65.1")), port=1)
echo = icmp_echo(7, 1, bytes(range(56)))
big = icmp_echo(7, 2, bytes(i & 0xFF for i in range(1200)))
seeds = {
    "announce": ANNOUNCE,
    "ping_gateway": ANNOUNCE + rec(eth(GW_MAC, G1, 0x0800, ipv4("192.168.65.3", "192.168.65.1", 1, echo))),
    "ping_fragments": ANNOUNCE
    + rec(eth(GW_MAC, G1, 0x0800, ipv4("192.168.65.3", "192.168.65.1", 1, big[:600], ident=9, more=True)))
    + rec(eth(GW_MAC, G1, 0x0800, ipv4("192.168.65.3", "192.168.65.1", 1, big[600:], ident=9, frag=600))),
    "udp_host_alias": ANNOUNCE
    + rec(eth(GW_MAC, G1, 0x0800, ipv4("192.168.65.3", "192.168.65.2", 17, udp("192.168.65.3", "192.168.65.2", 5000, 53, b"q" * 30)))),
    "tcp_syn_outside": ANNOUNCE
    + rec(eth(GW_MAC, G1, 0x0800, ipv4("192.168.65.3", "203.0.113.9", 6, tcp_syn("192.168.65.3", "203.0.113.9", 40000, 80)))),
    "ttl_expired": ANNOUNCE
    + rec(eth(GW_MAC, G1, 0x0800, ipv4("192.168.65.3", "203.0.113.9", 17, udp("192.168.65.3", "203.0.113.9", 1, 2, b"x" * 9), ttl=1))),
    "two_guests": ANNOUNCE + ANNOUNCE2
    + rec(eth(G2, G1, 0x0800, ipv4("192.168.65.3", "192.168.65.4", 17, udp("192.168.65.3", "192.168.65.4", 1, 2, b"hi")))),
    "reassembly_timeout": ANNOUNCE
    + rec(eth(GW_MAC, G1, 0x0800, ipv4("192.168.65.3", "192.168.65.1", 1, big[:600], ident=3, more=True)))
    + rec(b"", adv=255),
}
out = os.path.join(os.path.dirname(__file__), "corpus", "net_switch")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print("wrote %d seeds to %s" % (len(seeds), out))
