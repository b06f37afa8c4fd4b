#!/usr/bin/env python3
"""Seed corpus for fuzz_dns (see tests/fuzz/fuzz_dns.cpp).

Two kinds of seeds:
  msg_*     one DNS message each: queries and upstream responses, with
            compression pointers, EDNS, negative answers, truncation, and a
            few broken ones (pointer loop, truncated record).
  script_*  forwarder scripts: records op[1] len[2 LE] data[len]; op & 7 is
            0 guest UDP query, 1 upstream UDP reply (0x80: id patched in),
            2 upstream TCP reply, 3 TCP session bytes, 4 time passes
            (data[0] * 50 ms), 5 upstream error, 6 /dns/hosts text,
            7 TCP session FIN.
Run from the repository root:
    python3 tests/fuzz/make_dns_corpus.py
"""
import os
import struct

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, OPT, ANY = 1, 2, 5, 6, 12, 15, 16, 28, 41, 255


def name(text):
    out = b""
    for label in text.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(ident, flags, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def question(qname, qtype, qclass=1):
    return name(qname) + struct.pack("!HH", qtype, qclass)


def rr(owner, rtype, ttl, rdata, rclass=1):
    # `owner` is already wire bytes (a name or a compression pointer).
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def ptr(offset):
    return struct.pack("!H", 0xC000 | offset)


def opt(size=1232, do=False):
    return rr(b"\0", OPT, 0x8000 if do else 0, b"", rclass=size)


def query(qname, qtype, ident=0x1234, edns=None):
    m = header(ident, 0x0100, ar=1 if edns else 0) + question(qname, qtype)
    if edns:
        m += opt(edns)
    return m


def soa_rdata(zone, minimum):
    return name("ns." + zone) + name("hostmaster." + zone) + struct.pack("!IIIII", 1, 7200, 900, 1209600, minimum)


def response(qname, qtype, answers=b"", an=0, authority=b"", ns=0, rcode=0, tc=False, ident=0x1234):
    flags = 0x8180 | rcode | (0x0200 if tc else 0)
    return header(ident, flags, 1, an, ns) + question(qname, qtype) + answers + authority


def record(op, data):
    return bytes([op]) + struct.pack("<H", len(data)) + data


def framed(msg):
    return struct.pack("!H", len(msg)) + msg


seeds = {}

# ---- Messages.
seeds["msg_query_example_a"] = query("example.com", A)
seeds["msg_query_edns"] = query("example.com", AAAA, edns=4096)
seeds["msg_query_local"] = query("host.berth.internal", A)
seeds["msg_query_ptr"] = query("1.65.168.192.in-addr.arpa", PTR)
seeds["msg_query_any"] = query("gateway.berth.internal", ANY)
# www.example.com A: a CNAME whose target is compressed against the
# question, then an A record whose owner points into that CNAME's RDATA.
q = question("www.example.com", A)  # offsets 12..32
cname = rr(ptr(12), CNAME, 3600, b"\x04edge" + ptr(16))  # at 33, RDATA at 45
arec = rr(ptr(45), A, 300, bytes([93, 184, 216, 34]))
seeds["msg_response_compressed"] = header(0xABCD, 0x8180, 1, 2) + q + cname + arec
seeds["msg_response_mx_txt"] = response(
    "example.com", MX,
    rr(ptr(12), MX, 600, struct.pack("!H", 10) + b"\x04mail" + ptr(12))
    + rr(ptr(12), TXT, 600, b"\x0bhello world\x03foo"),
    an=2)
seeds["msg_response_aaaa"] = response(
    "example.com", AAAA, rr(ptr(12), AAAA, 60, bytes.fromhex("20010db8000000000000000000000001")), an=1)
seeds["msg_nxdomain_soa"] = response(
    "nosuch.example", A, authority=rr(name("example"), SOA, 3600, soa_rdata("example", 60)), ns=1, rcode=3)
seeds["msg_tc"] = response("big.example", TXT, tc=True)
seeds["msg_pointer_loop"] = header(1, 0x0100) + ptr(12) + struct.pack("!HH", A, 1)
seeds["msg_pointer_chain_loop"] = header(1, 0x0100) + b"\x01a" + ptr(12) + struct.pack("!HH", A, 1)
full = seeds["msg_response_compressed"]
seeds["msg_truncated_record"] = full[: len(full) - 3]

# ---- Forwarder scripts.
ex_reply = response("example.com", A, rr(ptr(12), A, 300, bytes([1, 2, 3, 4])), an=1)
seeds["script_forward_and_cache"] = (
    record(0, query("example.com", A, 0x1111))
    + record(0x81, ex_reply)
    + record(4, bytes([40]))  # 2 s later
    + record(0, query("EXAMPLE.com", A, 0x2222)))
seeds["script_mismatch_then_answer"] = (
    record(0, query("example.com", A, 0x1111))
    + record(1, ex_reply)          # id not patched: mismatched
    + record(0xC1, ex_reply)       # patched, but from the wrong source
    + record(0x81, ex_reply))
big = b"".join(rr(ptr(12), TXT, 600, bytes([200]) + bytes([0x61 + i]) * 200) for i in range(4))
seeds["script_tc_then_tcp"] = (
    record(0, query("big.example", TXT, 0x3333))
    + record(0x81, response("big.example", TXT, tc=True))
    + record(0x82, response("big.example", TXT, big, an=4)))
seeds["script_timeouts"] = (
    record(0, query("slow.example", A, 0x4444))
    + record(4, bytes([41])) + record(4, bytes([41])) + record(4, bytes([41])))
seeds["script_upstream_errors"] = (
    record(0, query("err.example", A, 0x5555))
    + record(5, b"")
    + record(0x81, response("err.example", A, rcode=2)))
seeds["script_negative"] = (
    record(0, query("nosuch.example", A, 0x6666))
    + record(0x81, seeds["msg_nxdomain_soa"])
    + record(0, query("nosuch.example", A, 0x6667)))
seeds["script_tcp_session"] = (
    record(3, framed(query("host.berth.internal", A, 1)) + framed(query("example.com", A, 2)))
    + record(3, framed(query("gateway.berth.internal", AAAA, 3))[:5])
    + record(3, framed(query("gateway.berth.internal", AAAA, 3))[5:])
    + record(0x82, ex_reply)
    + record(0x81, ex_reply)
    + record(7, b""))
seeds["script_hosts"] = (
    record(6, b"# extra\n10.0.0.5 db db.example.com\n2001:db8::5 db\n")
    + record(0, query("db.berth.internal", A, 7))
    + record(0, query("db", AAAA, 8))
    + record(0, query("5.0.0.10.in-addr.arpa", PTR, 9))
    + record(6, b"10.0.0.300 broken\n"))
seeds["script_local"] = (
    record(0, query("host.berth.internal", AAAA, 1))
    + record(0, query("nosuch.berth.internal", A, 2))
    + record(0, query("berth.internal", SOA, 3, edns=1232))
    + record(0, query("99.65.168.192.in-addr.arpa", PTR, 4)))

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "dns")
os.makedirs(out, exist_ok=True)
for old in os.listdir(out):
    os.remove(os.path.join(out, old))
for seed_name, data in sorted(seeds.items()):
    with open(os.path.join(out, seed_name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {out}")
