#!/usr/bin/env python3
"""Seed corpus for fuzz_dhcp: records op[1] arg[1] len[2 LE] data[len].

op & 3 is the guest link, op & 4 sends by unicast to the gateway (from the
link's leased address), op & 8 patches chaddr to the link's MAC, and
(op >> 4) & 3 picks the kind: 0 a DHCP message, 1 advance the clock, 2
set_statics(text), 3 add_static(text). arg is seconds to advance first.

The seeds are real client conversations: DORA with hostname and client id,
renewal, release, decline, inform, init-reboot, and reservations. Run from
the repository root:
    python3 tests/fuzz/make_dhcp_corpus.py
"""
import os
import struct

MACS = [bytes.fromhex("525400000001"), bytes.fromhex("525400000002"), bytes.fromhex("525400000003")]
GATEWAY = bytes([192, 168, 65, 1])

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)


def ip(s):
    return bytes(int(x) for x in s.split("."))


def opt(code, value):
    return bytes([code, len(value)]) + value


def dhcp(mtype, mac, xid=0x1234, ciaddr="0.0.0.0", flags=0, options=b"", pad=True):
    hdr = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 0, flags, ip(ciaddr), b"\0" * 4, b"\0" * 4, b"\0" * 4)
    hdr += mac + b"\0" * 10 + b"\0" * 64 + b"\0" * 128
    hdr += struct.pack("!I", 0x63825363)
    body = opt(53, bytes([mtype])) + options + b"\xff"
    msg = hdr + body
    return msg + b"\0" * max(0, 300 - len(msg)) if pad else msg


def rec(op, data, arg=0):
    return struct.pack("<BBH", op, arg, len(data)) + data


def msg(port, data, unicast=False, arg=0):
    return rec(port | (4 if unicast else 0) | 8, data, arg)


PRL = opt(55, bytes([1, 3, 6, 12, 15, 26, 28, 51, 54, 58, 59, 119]))


def dora(port, offered="192.168.65.3", hostname=b"guest", cid=None, xid=0x1000):
    mac = MACS[port]
    extra = opt(61, cid) if cid else b""
    d = dhcp(DISCOVER, mac, xid, flags=0x8000, options=PRL + opt(57, struct.pack("!H", 1500)) + extra)
    r = dhcp(REQUEST, mac, xid + 1, options=opt(54, GATEWAY) + opt(50, ip(offered)) + opt(12, hostname) + PRL + extra)
    return msg(port, d) + msg(port, r)


seeds = {
    "dora": dora(0),
    "dora_client_id": dora(1, cid=b"\x01" + MACS[1], hostname=b"two"),
    "renew": dora(0)
    + msg(0, dhcp(REQUEST, MACS[0], 0x2000, ciaddr="192.168.65.3", options=PRL), unicast=True, arg=200),
    "rebind_after_expiry": dora(0)
    + rec(0x10, b"", 120)
    + msg(0, dhcp(REQUEST, MACS[0], 0x2001, ciaddr="192.168.65.3", options=PRL)),
    "release": dora(0)
    + msg(0, dhcp(RELEASE, MACS[0], 0x3000, ciaddr="192.168.65.3", options=opt(54, GATEWAY)), unicast=True)
    + msg(0, dhcp(DISCOVER, MACS[0], 0x3001, options=PRL)),
    "decline": dora(0)
    + msg(0, dhcp(DECLINE, MACS[0], 0x4000, options=opt(54, GATEWAY) + opt(50, ip("192.168.65.3"))))
    + dora(0, offered="192.168.65.4"),
    "inform": msg(2, dhcp(INFORM, MACS[2], 0x5000, ciaddr="192.168.65.50", options=PRL)),
    "init_reboot": msg(1, dhcp(REQUEST, MACS[1], 0x6000, options=opt(50, ip("192.168.65.9")) + PRL))
    + msg(2, dhcp(REQUEST, MACS[2], 0x6001, options=opt(50, ip("192.168.65.9")) + PRL)),
    "statics": rec(0x20, b"52:54:00:00:00:01 192.168.65.100 web\n52:54:00:00:00:02 192.168.65.101\n")
    + dora(0, offered="192.168.65.100")
    + rec(0x30, b"52:54:00:00:00:03=192.168.65.102=db")
    + rec(0x30, b"web"),
    "exhaust": b"".join(
        msg(0, dhcp(DISCOVER, MACS[0], 0x7000 + i, options=opt(61, bytes([0xff, i, i, i])), pad=False)) for i in range(10)
    )
    + rec(0x10, b"", 2)
    + msg(1, dhcp(DISCOVER, MACS[1], 0x7100, options=PRL)),
    "search_option": msg(0, dhcp(DISCOVER, MACS[0], options=opt(119, b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"))),
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "dhcp")
os.makedirs(out, exist_ok=True)
for old in os.listdir(out):
    os.remove(os.path.join(out, old))
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
