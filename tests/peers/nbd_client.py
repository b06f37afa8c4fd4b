#!/usr/bin/env python3
"""A small NBD client for Berth's peer tests (fixed newstyle, NBD_OPT_GO,
simple replies), written from the protocol document, not from Berth.

Commands:
  crash-workload URI STATE SEED SECONDS
      Random 4 KiB-block writes, write-zeroes and trims with up to 16
      requests in flight, and a flush every few requests, until the
      connection dies (berth is killed) or SECONDS pass. Each block is
      written as (block, seq) repeated, so its content names the operation
      that wrote it. STATE (JSON) carries, per block, the content it had at
      the start ("base") plus every operation issued since, and which of
      them a completed flush covers. Written back when the run ends.
  verify STATE IMAGE_RAW
      Checks every block of IMAGE_RAW (the image converted to raw after
      the kill) against STATE: its content must be the last flushed
      operation on it or a later one that was issued (a write acknowledged
      before a completed flush is never lost; nothing is torn or invented).
      On success STATE's base becomes what was found, for the next round.
URI is nbd+unix:///EXPORT?socket=PATH.
"""
import json
import os
import random
import socket
import struct
import sys
import time
import urllib.parse

BLOCK = 4096
TRIM = 10 ** 12  # op ids: +seq a write, -seq write-zeroes, -(TRIM + seq) a trim
OPT_MAGIC = 0x49484156454F5054
REP_MAGIC = 0x3e889045565a9
REQ_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WZ = 0, 1, 2, 3, 4, 6
FLAG_FUA = 1


class Dead(Exception):
    pass


class Nbd:
    def __init__(self, uri):
        u = urllib.parse.urlparse(uri)
        q = urllib.parse.parse_qs(u.query)
        self.name = u.path.lstrip("/")
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The handshake must not hang a test: 20 s, then transmission blocks.
        self.s.settimeout(20)
        self.s.connect(q["socket"][0])
        self.buf = b""
        g = self.recv(18)
        assert g[:16] == b"NBDMAGICIHAVEOPT", g
        self.s.sendall(struct.pack(">I", 1))
        name = self.name.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.s.sendall(struct.pack(">QII", OPT_MAGIC, 7, len(data)) + data)
        self.size = None
        while True:
            magic, opt, typ, ln = struct.unpack(">QIII", self.recv(20))
            assert magic == REP_MAGIC
            d = self.recv(ln)
            if typ == 3 and struct.unpack(">H", d[:2])[0] == 0:
                self.size = struct.unpack(">Q", d[2:10])[0]
            elif typ == 1:
                break
            elif typ & 0x80000000:
                raise RuntimeError("NBD_OPT_GO refused: %x %r" % (typ, d))
        self.s.settimeout(None)

    def recv(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.s.recv(1 << 20)
            except OSError as e:
                raise Dead(str(e))
            if not chunk:
                raise Dead("EOF")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, typ, handle, off, length, flags=0, payload=b""):
        try:
            self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, handle, off, length) + payload)
        except OSError as e:
            raise Dead(str(e))

    def reply(self):
        magic, err, handle = struct.unpack(">IIQ", self.recv(16))
        assert magic == REPLY_MAGIC, hex(magic)
        return err, handle


def block_data(block, seq):
    return struct.pack("<QQ", block, seq) * (BLOCK // 16)


def crash_workload(uri, state_path, seed, seconds):
    st = json.load(open(state_path)) if os.path.exists(state_path) else None
    print("connecting", flush=True)
    c = Nbd(uri)
    print("ready", flush=True)
    nblocks = c.size // BLOCK
    if st is None:
        st = {"nblocks": nblocks, "seq": 0, "base": {}, "ops": {}, "flushed": {}}
    rng = random.Random(seed)
    ops = {}       # block -> [seq, ...] issued this round (seq 0 means zeros)
    flushed = {}   # block -> seq covered by a completed flush
    acked = {}     # block -> last acknowledged seq
    busy = set()   # blocks with a request in flight
    inflight = {}  # handle -> (kind, [(block, seq)])
    pending_flush = {}  # flush handle -> snapshot of acked
    handle = 1
    seq = st["seq"]
    deadline = time.time() + seconds
    sent = 0

    def save():
        st["seq"] = seq
        st["ops"] = {str(b): v for b, v in ops.items()}
        st["flushed"] = {str(b): v for b, v in flushed.items()}
        with open(state_path + ".tmp", "w") as f:
            json.dump(st, f)
        os.replace(state_path + ".tmp", state_path)

    try:
        while time.time() < deadline:
            while len(inflight) < 16:
                r = rng.random()
                if r < 0.08 and not pending_flush:
                    inflight[handle] = ("flush", [])
                    pending_flush[handle] = dict(acked)
                    c.send(CMD_FLUSH, handle, 0, 0)
                    handle += 1
                    continue
                n = rng.choice([1, 1, 1, 2, 4, 8])
                b0 = rng.randrange(0, nblocks - n + 1)
                blocks = list(range(b0, b0 + n))
                if any(b in busy for b in blocks):
                    break
                kind = "write" if r < 0.8 else ("zero" if r < 0.9 else "trim")
                items = []
                payload = b""
                for b in blocks:
                    # Every op on a block gets a unique id: +seq writes
                    # (b, seq) blocks, -seq writes zeros.
                    seq += 1
                    if kind == "write":
                        s = seq
                        payload += block_data(b, s)
                    elif kind == "zero":
                        s = -seq
                    else:
                        s = -TRIM - seq
                    items.append((b, s))
                    ops.setdefault(b, []).append(s)
                    busy.add(b)
                flags = FLAG_FUA if rng.random() < 0.05 else 0
                if kind == "write":
                    c.send(CMD_WRITE, handle, b0 * BLOCK, n * BLOCK, flags, payload)
                elif kind == "zero":
                    c.send(CMD_WZ, handle, b0 * BLOCK, n * BLOCK, flags)
                else:
                    c.send(CMD_TRIM, handle, b0 * BLOCK, n * BLOCK, flags)
                inflight[handle] = (kind, items, flags)
                handle += 1
                sent += 1
            err, h = c.reply()
            if err:
                raise RuntimeError("request %d failed with NBD error %d" % (h, err))
            entry = inflight.pop(h)
            if entry[0] == "flush":
                for b, s in pending_flush.pop(h).items():
                    if abs(s) > abs(flushed.get(b, 0)):
                        flushed[b] = s
            else:
                for b, s in entry[1]:
                    acked[b] = s
                    busy.discard(b)
                    if entry[2] & FLAG_FUA and abs(s) > abs(flushed.get(b, 0)):
                        flushed[b] = s
            if not inflight:
                save()
        # A clean end: flush everything so the next round starts settled.
        c.send(CMD_FLUSH, handle, 0, 0)
        for _ in range(len(inflight) + 1):
            err, h = c.reply()
            entry = inflight.pop(h, None)
            if entry and entry[0] != "flush":
                for b, s in entry[1]:
                    acked[b] = s
        flushed.update(acked)
        save()
        print("workload: %d requests, ended by time" % sent)
    except Dead as e:
        save()
        print("workload: %d requests, connection ended (%s)" % (sent, e))


def verify(state_path, image):
    st = json.load(open(state_path))
    base = st["base"]
    ops = st["ops"]
    flushed = st["flushed"]
    bad = 0
    new_base = {}
    with open(image, "rb") as f:
        for b in range(st["nblocks"]):
            data = f.read(BLOCK)
            key = str(b)
            if len(data) < BLOCK:
                data = data + bytes(BLOCK - len(data))
            # What the block may hold: the base (content at the round's
            # start), or any op issued this round, except that once a flush
            # covered op k, only op k and later ones are allowed.
            # Ids are unique per block. The block holds the state after some
            # prefix of its history that reaches at least the last op a
            # flush covered. A write leaves its data, write-zeroes zeros, and
            # a trim zeros or whatever was there before (NBD_CMD_TRIM: "may
            # read back as anything", in practice old data or zeros).
            history = [base.get(key, 0)] + ops.get(key, [])
            start = 0
            if key in flushed:
                fl = flushed[key]
                if fl not in history[1:]:
                    print("block %d: flushed op %d not in its history" % (b, fl))
                    bad += 1
                    continue
                start = history.index(fl, 1)
            states = []  # possible contents after each op: sets of ids (<= 0: zeros)
            for k, op in enumerate(history):
                if op <= -TRIM:
                    states.append(states[-1] | {0} if states else {0})
                else:
                    states.append({op})
            allowed = set().union(*states[start:])
            if data == bytes(BLOCK):
                ok = any(a <= 0 for a in allowed)
                found = 0
            else:
                blk, s = struct.unpack("<QQ", data[:16])
                if blk != b or data != block_data(b, s):
                    print("block %d: garbage (header block=%d seq=%d)" % (b, blk, s))
                    bad += 1
                    continue
                ok = s in allowed
                found = s
            if not ok:
                print("block %d: holds %d, allowed %s (history %s)" % (b, found, sorted(allowed)[-5:], history[-5:]))
                bad += 1
                continue
            if found:
                new_base[key] = found
    if bad:
        print("verify: %d bad blocks" % bad)
        sys.exit(1)
    lost = sum(1 for k, v in ops.items() if v and v[-1] > 0 and new_base.get(k, 0) != v[-1])
    st["base"] = new_base
    st["ops"] = {}
    st["flushed"] = {}
    json.dump(st, open(state_path, "w"))
    print("verify: ok (%d blocks hold data; %d blocks do not hold their last write)" % (len(new_base), lost))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "crash-workload" and len(sys.argv) == 6:
        crash_workload(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif cmd == "verify" and len(sys.argv) == 4:
        verify(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        sys.exit(2)
