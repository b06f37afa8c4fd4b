#!/usr/bin/env python3
"""Regenerate the fuzz seed corpora (python3, stdlib only).

    tests/fuzz/make_corpus.py   # rewrites tests/fuzz/corpus/{9p_codec,9p_session}/
                                # and (re)writes the reproducers in tests/fuzz/crashes/

corpus/9p_codec/    one 9P message per file (T- and R-messages, all dialects)
corpus/9p_session/  a flags byte, a seed byte, then the bytes a client sends;
                    see the header of fuzz_9p_session.cpp for the layout.
Files are named after what they contain; the directories are cleared first so
the output is exactly what this script describes.
"""
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# Message types (server9p/proto.h).
Tstatfs, Rstatfs, Tlopen, Rlopen, Tlcreate = 8, 9, 12, 13, 14
Tgetattr, Rgetattr, Tsetattr, Txattrwalk = 24, 25, 26, 30
Treaddir, Rreaddir, Tfsync, Tmkdir, Rmkdir, Tunlinkat = 40, 41, 50, 72, 73, 76
Tversion, Rversion, Tauth, Tattach, Rattach, Rerror, Rlerror = 100, 101, 102, 104, 105, 107, 7
Tflush, Rflush, Twalk, Rwalk, Topen, Ropen, Tcreate = 108, 109, 110, 111, 112, 113, 114
Tread, Rread, Twrite, Rwrite, Tclunk, Rclunk, Tremove = 116, 117, 118, 119, 120, 121, 122
Tstat, Rstat, Twstat = 124, 125, 126

NOFID = 0xFFFFFFFF
NOTAG = 0xFFFF
L, U, P = "L", "u", "9P2000"  # dialects

O_RDONLY, O_WRONLY, O_RDWR, O_TRUNC = 0, 1, 2, 0o1000
OREAD, OWRITE, ORDWR, OTRUNC = 0, 1, 2, 0x10


def u8(v): return struct.pack("<B", v)
def u16(v): return struct.pack("<H", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return u16(len(b)) + b


def qid(t=0, ver=0, path=1): return u8(t) + u32(ver) + u64(path)


def msg(mtype, tag, body=b""):
    return u32(7 + len(body)) + u8(mtype) + u16(tag) + body


def stat(d, name="f", mode=0o644, length=0, ext="", qpath=1):
    body = (u16(0) + u32(0) + qid(0x80 if mode & 0x80000000 else 0, 0, qpath) + u32(mode) + u32(1700000000) +
            u32(1700000000) + u64(length) + s(name) + s("user") + s("user") + s("user"))
    if d == U:
        body += s(ext) + u32(1000) + u32(1000) + u32(1000)
    return u16(len(body)) + body


def dont_touch_stat(d):
    body = (u16(0xFFFF) + u32(NOFID) + qid(0xFF, NOFID, 2**64 - 1) + u32(NOFID) + u32(NOFID) + u32(NOFID) +
            u64(2**64 - 1) + s("") + s("") + s("") + s(""))
    if d == U:
        body += s("") + u32(NOFID) + u32(NOFID) + u32(NOFID)
    return u16(len(body)) + body


def readdir_entry(name, off, dtype=8, qpath=1):
    return qid(0x80 if dtype == 4 else 0, 0, qpath) + u64(off) + u8(dtype) + s(name)


# ---- T-messages -------------------------------------------------------------

def Tver(tag=NOTAG, msize=8192, version="9P2000.L"): return msg(Tversion, tag, u32(msize) + s(version))


def Tatt(d, tag, fid, aname="", uname="fuzz", afid=NOFID):
    body = u32(fid) + u32(afid) + s(uname) + s(aname)
    if d != P:
        body += u32(0)
    return msg(Tattach, tag, body)


def Tau(d, tag, afid):
    body = u32(afid) + s("fuzz") + s("")
    if d != P:
        body += u32(0)
    return msg(Tauth, tag, body)


def Twlk(tag, fid, newfid, *names):
    return msg(Twalk, tag, u32(fid) + u32(newfid) + u16(len(names)) + b"".join(s(n) for n in names))


def Tlop(tag, fid, flags): return msg(Tlopen, tag, u32(fid) + u32(flags))
def Top(tag, fid, mode): return msg(Topen, tag, u32(fid) + u8(mode))
def Trd(tag, fid, off=0, count=4096): return msg(Tread, tag, u32(fid) + u64(off) + u32(count))
def Twr(tag, fid, data, off=0): return msg(Twrite, tag, u32(fid) + u64(off) + u32(len(data)) + data)
def Tclk(tag, fid): return msg(Tclunk, tag, u32(fid))
def Trm(tag, fid): return msg(Tremove, tag, u32(fid))
def Trdd(tag, fid, off=0, count=4096): return msg(Treaddir, tag, u32(fid) + u64(off) + u32(count))
def Tgeta(tag, fid, mask=0x3FFF): return msg(Tgetattr, tag, u32(fid) + u64(mask))


def Tseta(tag, fid, valid, size=0, mode=0):
    return msg(Tsetattr, tag, u32(fid) + u32(valid) + u32(mode) + u32(0) + u32(0) + u64(size) + u64(0) * 4)


def Tfl(tag, oldtag): return msg(Tflush, tag, u16(oldtag))
def Tst(tag, fid): return msg(Tstat, tag, u32(fid))
def Twst(d, tag, fid, st=None): return msg(Twstat, tag, u32(fid) + u16(len(st or dont_touch_stat(d))) + (st or dont_touch_stat(d)))
def Tmkd(tag, dfid, name, mode=0o755): return msg(Tmkdir, tag, u32(dfid) + s(name) + u32(mode) + u32(0))
def Tunl(tag, dfid, name, flags=0): return msg(Tunlinkat, tag, u32(dfid) + s(name) + u32(flags))
def Tlcr(tag, fid, name, flags=O_RDWR, mode=0o644): return msg(Tlcreate, tag, u32(fid) + s(name) + u32(flags) + u32(mode) + u32(0))


def Tcr(d, tag, fid, name, perm=0o644, mode=ORDWR):
    body = u32(fid) + s(name) + u32(perm) + u8(mode)
    if d == U:
        body += s("")
    return msg(Tcreate, tag, body)


def Tsfs(tag, fid): return msg(Tstatfs, tag, u32(fid))
def Tfs(tag, fid, datasync=None): return msg(Tfsync, tag, u32(fid) + (b"" if datasync is None else u32(datasync)))
def Txw(tag, fid, newfid, name): return msg(Txattrwalk, tag, u32(fid) + u32(newfid) + s(name))


# ---- codec corpus ----------------------------------------------------------

def codec_corpus():
    c = {}
    c["tversion_L"] = Tver()
    c["tversion_u"] = Tver(version="9P2000.u")
    c["rversion"] = msg(Rversion, NOTAG, u32(8192) + s("9P2000.L"))
    c["tauth_L"] = Tau(L, 1, 5)
    c["tattach_L"] = Tatt(L, 1, 0, "ctl")
    c["tattach_9p2000"] = Tatt(P, 1, 0)
    c["rattach"] = msg(Rattach, 1, qid(0x80, 0, 1))
    c["twalk"] = Twlk(2, 0, 1, "debug", "version")
    c["rwalk"] = msg(Rwalk, 2, u16(2) + qid(0x80, 0, 5) + qid(0, 0, 6))
    c["tlopen"] = Tlop(3, 1, O_RDWR | O_TRUNC)
    c["rlopen"] = msg(Rlopen, 3, qid(0, 0, 6) + u32(8168))
    c["topen"] = Top(3, 1, OREAD)
    c["tread"] = Trd(4, 1, 0, 8181)
    c["rread"] = msg(Rread, 4, u32(5) + b"hello")
    c["twrite"] = Twr(5, 1, b"append x\n")
    c["rwrite"] = msg(Rwrite, 5, u32(9))
    c["tclunk"] = Tclk(6, 1)
    c["rclunk"] = msg(Rclunk, 6)
    c["treaddir"] = Trdd(7, 1, 2, 8181)
    dirents = readdir_entry(".", 1, 4, 1) + readdir_entry("..", 2, 4, 1) + readdir_entry("README", 3, 8, 2)
    c["rreaddir"] = msg(Rreaddir, 7, u32(len(dirents)) + dirents)
    c["tgetattr"] = Tgeta(8, 1)
    c["rgetattr"] = msg(Rgetattr, 8, u64(0x7FF) + qid(0, 0, 6) + u32(0o100644) + u32(0) + u32(0) + u64(1) +
                        u64(0) * 2 + u64(4096) + u64(0) + u64(0) * 10)
    c["tsetattr"] = Tseta(9, 1, 0x8, 0)
    c["tflush"] = Tfl(10, 4)
    c["rflush"] = msg(Rflush, 10)
    c["rlerror"] = msg(Rlerror, 11, u32(2))
    c["rerror_u"] = msg(Rerror, 11, s("no such file") + u32(2))
    c["tstat"] = Tst(12, 1)
    st = stat(U, "README", 0o444, 100, "")
    c["rstat_u"] = msg(Rstat, 12, u16(len(st)) + st)
    c["twstat_9p2000"] = Twst(P, 13, 1)
    dirstats = stat(P, "a", 0x80000000 | 0o555, 0, qpath=3) + stat(P, "b", 0o644, 7, qpath=4)
    c["rread_dir_9p2000"] = msg(Rread, 14, u32(len(dirstats)) + dirstats)
    c["tmkdir"] = Tmkd(15, 1, "d")
    c["tunlinkat"] = Tunl(16, 1, "d")
    c["tlcreate"] = Tlcr(17, 1, "f")
    c["tcreate_u"] = Tcr(U, 18, 1, "f")
    c["tstatfs"] = Tsfs(19, 1)
    c["rstatfs"] = msg(Rstatfs, 19, u32(0x01021997) + u32(4096) + u64(0) * 6 + u32(255))
    c["tfsync"] = Tfs(20, 1, 0)
    c["tfsync_short"] = Tfs(20, 1)
    c["txattrwalk"] = Txw(21, 1, 2, "user.x")
    c["tremove"] = Trm(22, 1)
    return c


# ---- session corpus --------------------------------------------------------

# flags byte (fuzz_9p_session.cpp): bits 0-1 dialect, 4 prepend Tversion,
# 8 prepend Tattach fid 0, bits 4-5 chunking, 0x40 stream appends, 0x80 close.
DL, DU, DP = 0, 1, 2
VER, ATT = 4, 8
WHOLE, BYTES, SMALL, LARGE = 0x00, 0x10, 0x20, 0x30
APPEND, CLOSE = 0x40, 0x80


def sess(flags, seed, *msgs):
    return u8(flags) + u8(seed) + b"".join(msgs)


RECORDS = 4  # seed bit: the rest is len[2] type[1] tag[2] body records
SLOW = 8     # seed bit: slow reader (output gate); bits 4-6 set its limit


def rec(*msgs):
    """Frames -> record mode: the harness recomputes each size[4]."""
    out = b""
    for m in msgs:
        out += u16(len(m) - 7) + m[4:]
    return out


def session_corpus():
    c = {}
    c["L_state_rw"] = sess(VER | ATT | DL, 0,
                           Twlk(2, 0, 1, "state"), Tlop(3, 1, O_RDWR), Twr(4, 1, b"new text\n"), Trd(5, 1),
                           Tfs(6, 1, 0), Tclk(7, 1), Twlk(8, 0, 2, "state"), Tlop(9, 2, O_RDONLY), Trd(10, 2),
                           Tclk(11, 2))
    c["L_readdir"] = sess(VER | ATT | DL, 0,
                          Twlk(2, 0, 1), Tlop(3, 1, O_RDONLY), Trdd(4, 1, 0, 200), Trdd(5, 1, 3, 8000),
                          Tgeta(6, 1), Tsfs(7, 1), Tclk(8, 1))
    c["L_stream_flush"] = sess(VER | ATT | DL, 0,
                               Twlk(2, 0, 1, "stream"), Tlop(3, 1, O_RDONLY), Trd(5, 1), Trd(6, 1), Tfl(7, 5),
                               Tclk(8, 1))
    c["L_stream_append"] = sess(VER | ATT | DL | APPEND | SMALL, 3,
                                Twlk(2, 0, 1, "stream"), Tlop(3, 1, O_RDONLY), Trd(5, 1, 0, 8),
                                Twlk(6, 0, 2, "ctl"), Tlop(7, 2, O_RDWR), Twr(8, 2, b"append hello\n"),
                                Trd(9, 1, 0, 3), Trd(10, 1, 0, 100), Tclk(11, 1))
    c["L_stream_close"] = sess(VER | ATT | DL | CLOSE, 0,
                               Twlk(2, 0, 1, "stream"), Tlop(3, 1, O_RDONLY), Trd(5, 1), Trd(6, 1, 0, 1))
    c["L_parked_limit"] = sess(VER | ATT | DL, 0,
                               Twlk(2, 0, 1, "stream"), Tlop(3, 1, O_RDONLY),
                               *[Trd(10 + i, 1) for i in range(10)], Twlk(30, 1, 1), Tclk(31, 1))
    c["L_ctl"] = sess(VER | ATT | DL, 0,
                      Twlk(2, 0, 1, "ctl"), Tlop(3, 1, O_RDWR), Trd(4, 1), Twr(5, 1, b"echo hi\n  append x  \n"),
                      Trd(6, 1), Twr(7, 1, b"fail\n"), Trd(8, 1), Twr(9, 1, b"\n\n"), Twr(10, 1, b"close"),
                      Tclk(11, 1))
    c["L_mkdir_unlink"] = sess(VER | ATT | DL, 0,
                               Twlk(2, 0, 1, "work"), Tmkd(3, 1, "d1"), Tmkd(4, 1, "d1"), Twlk(5, 1, 2, "d1"),
                               Tgeta(6, 2), Tunl(7, 1, "d1"), Twlk(8, 2, 3, ".."), Tgeta(9, 2), Tlcr(10, 1, "f"),
                               Twlk(11, 1, 4), Trm(12, 4), Tmkd(13, 1, "../x"), Tclk(14, 2))
    c["L_setattr_trunc"] = sess(VER | ATT | DL, 0,
                                Twlk(2, 0, 1, "state"), Tseta(3, 1, 0x8, 0), Tseta(4, 1, 0x8, 5), Tseta(5, 1, 0x1),
                                Tlop(6, 1, O_WRONLY | O_TRUNC), Tseta(7, 1, 0x8 | 0x10 | 0x20, 0),
                                Twr(8, 1, b"reject"), Tclk(9, 1))
    c["L_walks"] = sess(VER | ATT | DL, 0,
                        Twlk(2, 0, 1, "debug", "..", "..", "debug", "zero"), Twlk(3, 0, 2, "nope"),
                        Twlk(4, 0, 3, "debug", "nope"), Twlk(5, 0, 4, "README", "x"), Twlk(6, 1, 1),
                        Tlop(7, 1, O_RDONLY), Trd(8, 1, 0, 65536), Twlk(9, 0, 0, "debug"),
                        Tatt(L, 10, 9, "ctl"), Tatt(L, 11, 10, "nope"), Tatt(L, 12, 11, "/debug/null"),
                        Tclk(13, 9))
    c["L_misc"] = sess(VER | ATT | DL, 0,
                       Tau(L, 2, 7), Txw(3, 0, 1, "user.x"), msg(200, 4, b"xyz"), Tst(5, 0), Top(6, 0, OREAD),
                       Tfs(7, 0), Tatt(L, 8, 0), Tatt(L, 9, 5, "", "u", 3))
    c["L_fid_table"] = sess(VER | ATT | DL, 0, *[Twlk(100 + i, 0, 1 + i) for i in range(66)])
    c["L_bytewise"] = sess(VER | ATT | DL | BYTES, 0,
                           Twlk(2, 0, 1, "debug", "version"), Tlop(3, 1, O_RDONLY), Trd(4, 1), Tclk(5, 1))
    c["L_large_chunks"] = sess(VER | ATT | DL | LARGE, 3,
                               Twlk(2, 0, 1, "metrics"), Tlop(3, 1, O_RDONLY), Trd(4, 1, 0, 100),
                               Trd(5, 1, 100, 100), Tclk(6, 1))
    c["L_small_msize"] = sess(VER | ATT | DL, 1,
                              Twlk(2, 0, 1, "README"), Tlop(3, 1, O_RDONLY), Trd(4, 1, 0, 4096), Tclk(5, 1))
    c["L_reversion"] = sess(VER | ATT | DL, 0,
                            Twlk(2, 0, 1, "stream"), Tlop(3, 1, O_RDONLY), Trd(4, 1), Tver(NOTAG, 4096, "9P2000.u"),
                            Tatt(U, 5, 0), Tst(6, 0), Tver(NOTAG, 100, "9P2000.L"), Tatt(L, 7, 0))
    c["u_stat_dirread"] = sess(VER | ATT | DU, 0,
                               Twlk(2, 0, 1, "debug"), Top(3, 1, OREAD), Trd(4, 1, 0, 300), Trd(5, 1, 1, 300),
                               Tst(6, 1), Twlk(7, 0, 2, "debug", "version"), Top(8, 2, OREAD), Trd(9, 2),
                               Tst(10, 2), Twst(U, 11, 2), Tclk(12, 2), Tclk(13, 1), Tlop(14, 0, 0))
    c["u_wstat_trunc"] = sess(VER | ATT | DU, 0,
                              Twlk(2, 0, 1, "state"), Top(3, 1, OWRITE | OTRUNC), Twr(4, 1, b"x"),
                              Twst(U, 5, 1, stat(U, "", 0xFFFFFFFF, 0)), Twst(U, 6, 1, stat(U, "new", 0o600, 0)),
                              Tcr(U, 7, 0, "f"), Trm(8, 1))
    c["9p2000_basic"] = sess(VER | ATT | DP, 0,
                             Twlk(2, 0, 1), Top(3, 1, OREAD), Trd(4, 1, 0, 8000), Trd(5, 1, 7, 10),
                             Twlk(6, 0, 2, "work"), Tcr(P, 7, 2, "d", 0x80000000 | 0o755, OREAD),
                             Twlk(8, 0, 3, "ctl"), Top(9, 3, ORDWR), Twr(10, 3, b"echo x\n"), Trd(11, 3),
                             Trm(12, 3), Tclk(13, 1))
    # Record mode (the harness writes size[4]), at the smallest msize.
    c["rec_u_small_msize"] = sess(VER | ATT | DU, RECORDS | 1,
                                  rec(Twlk(2, 0, 1, "nothere"), Tatt(U, 3, 5, "nope"), Twlk(4, 0, 1, "work"),
                                      Tcr(U, 5, 1, "newdir", 0x80000000 | 0o755, OREAD), Tst(6, 1),
                                      Twlk(7, 0, 2, "debug"), Top(8, 2, OREAD), Trd(9, 2, 0, 100)))
    c["rec_L_walk_read"] = sess(VER | ATT | DL, RECORDS,
                                rec(Twlk(2, 0, 1, "ctl"), Tlop(3, 1, O_RDWR), Twr(4, 1, b"echo abc\n"), Trd(5, 1),
                                    Twlk(6, 0, 2, "work"), Tmkd(7, 2, "x"), Tlop(8, 2, 0), Trdd(9, 2, 0, 60)))
    # A client that reads late: the session's output gate pauses it.
    c["L_slow_reader"] = sess(VER | ATT | DL | SMALL, SLOW | 0x10,
                              *[Twlk(10 + i, 0, 1 + i, "debug") for i in range(8)],
                              Twlk(30, 0, 20, "README"), Tlop(31, 20, O_RDONLY), Trd(32, 20, 0, 2000),
                              Trd(33, 20, 2000, 2000), Tclk(34, 20))
    c["u_slow_reader_records"] = sess(VER | ATT | DU | SMALL, SLOW | RECORDS,
                                      rec(Twlk(2, 0, 1, "debug"), Top(3, 1, OREAD), Trd(4, 1, 0, 1000),
                                          Twlk(5, 0, 2, "stream"), Top(6, 2, OREAD), Trd(7, 2),
                                          Tst(8, 1), Tst(9, 0), Tclk(10, 2)))
    # Without the prologue: the fuzzer sees raw Tversion handling.
    c["raw_version"] = sess(0, 0, Tver(NOTAG, 8192, "9P2000.L"), Tatt(L, 1, 0), Tclk(2, 0))
    c["raw_version_bad"] = sess(0, 0, Tver(NOTAG, 8192, "9P3000"), Tver(NOTAG, 100, "9P2000"),
                                Tver(NOTAG, 8192, "9P2000.u.extra"), Tatt(U, 1, 0))
    c["raw_no_version"] = sess(0, 0, Tatt(L, 1, 0))
    c["raw_bad_size"] = sess(VER | DL, 0, u32(3) + b"\x00\x00\x00")
    c["raw_too_big"] = sess(VER | DL, 0, u32(70000) + u8(Tread) + u16(1))
    c["raw_truncated"] = sess(VER | ATT | DL, 0, msg(Twalk, 2, u32(0) + u32(1) + u16(1) + u16(5) + b"ab"))
    c["raw_17_wnames"] = sess(VER | ATT | DL, 0, Twlk(2, 0, 1, *(["debug", ".."] * 8 + ["x"])))
    c["raw_rmsg"] = sess(VER | ATT | DL, 0, msg(Rclunk, 2))
    c["raw_tag_in_use"] = sess(VER | ATT | DL, 0, Twlk(2, 0, 1, "stream"), Tlop(3, 1, 0), Trd(4, 1), Tclk(4, 0))
    return c


# ---- reproducers of bugs found by fuzzing (tests/fuzz/crashes/) ------------
# Kept by hand so they can be regenerated; never cleared (libFuzzer
# artifacts copied there stay). Replay: build/fuzz/fuzz_9p_session FILE

def session_crashes():
    c = {}
    # Rerror echoes a client-chosen walk name: 270-byte reply with msize 256.
    c["9p_session-rerror-exceeds-msize"] = sess(VER | ATT | DU, 1, Twlk(2, 0, 1, "x" * 230))
    # Same with a 65517-byte name at msize 65536: ename is 65544 bytes, its
    # u16 length prefix wraps to 8 and the reply no longer parses.
    c["9p_session-rerror-ename-u16-overflow"] = sess(VER | ATT | DU, 2, Twlk(2, 0, 1, "z" * 65517))
    # Rstat of a node whose client-chosen name is 236 bytes: 306-byte reply with msize 256.
    c["9p_session-rstat-exceeds-msize"] = sess(VER | ATT | DP, 1, Twlk(2, 0, 1, "work"),
                                                Tcr(P, 3, 1, "d" * 236, 0x80000000 | 0o755, OREAD), Tst(4, 1))
    # A request of unknown type reusing the tag of a parked read is answered
    # (Rlerror) instead of closing the connection as TagInUse; the parked read
    # is then answered too: two replies for tag 12.
    c["9p_session-unknown-type-reuses-parked-tag"] = sess(VER | ATT | DL | CLOSE, 0,
                                                           Twlk(2, 0, 1, "stream"), Tlop(3, 1, O_RDONLY),
                                                           Trd(12, 1), msg(84, 12))
    return c


def write(dirname, files, clear=True):
    path = os.path.join(HERE, dirname)
    if clear:
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    for name, data in sorted(files.items()):
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    print(f"{path}: {len(files)} files, {sum(len(d) for d in files.values())} bytes")


if __name__ == "__main__":
    write("corpus/9p_codec", codec_corpus())
    write("corpus/9p_session", session_corpus())
    write("crashes", session_crashes(), clear=False)
