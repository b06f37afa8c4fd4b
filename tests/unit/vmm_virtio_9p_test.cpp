// virtio-9p (vmm/virtio_9p.h) against the fake driver: each chain carries
// one T-message built with the codec (server9p/proto.h) and gets its reply
// in its own writable part. Covers a mount-like sequence (version, attach,
// walk, open, read), msize capping, reads parked on a stream and answered
// later, Tflush of a parked read, replies that do not fit, malformed
// messages (framing and fields), reused tags, and reset.
#include <catch2/catch.hpp>

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "server9p/metrics.h"
#include "server9p/proto.h"
#include "server9p/tree.h"
#include "vmm/virtio_9p.h"
#include "vmm_fake_driver.h"

using namespace berth;
using namespace berth::p9;
using namespace berth::vmm;
using namespace berth::vmm::testing;

namespace {

constexpr Dialect L = Dialect::P9_2000L;
const std::string kHello = "hello from the tree\n";

struct Reply {
  Fcall f;
  std::vector<uint8_t> raw;  // f.data points in here
  uint32_t len = 0;
};

struct Rig {
  FakeClock clock;
  ServerStats stats;
  Tree tree;
  std::shared_ptr<ByteStream> stream = std::make_shared<ByteStream>(4096);
  FakeVirtio v{1, 64};
  std::unique_ptr<Virtio9p> dev;

  explicit Rig(bool activate = true) {
    tree.mount("/", std::make_shared<StateFile>("hello", "a file", [] { return kHello; }));
    tree.mount("/dir", std::make_shared<StreamFile>("stream", "a stream", stream, /*replay=*/false));
    dev = std::make_unique<Virtio9p>(tree, stats, clock, "berth");
    if (activate) dev->activate(v.ctx);
  }

  // Queues one message in a chain with `wlen` writable bytes and kicks.
  Chain send(const Fcall& f, uint32_t wlen = 8192) { return send_raw(encode(f, L), wlen); }
  Chain send_raw(const std::vector<uint8_t>& msg, uint32_t wlen = 8192) {
    Chain c = v.add_chain(0, {msg}, {wlen});
    dev->notify(0);
    return c;
  }
  // The next used chain, which must be `c`, parsed.
  Reply reply(const Chain& c) {
    auto u = v.next_used(0);
    REQUIRE(u);
    REQUIRE(u->id == c.head);
    Reply r;
    r.len = u->len;
    r.raw = v.written(c, u->len);
    if (u->len > 0) {
      ParseResult pr = parse(r.raw, L, r.f);
      REQUIRE(pr.ok);
    }
    return r;
  }
  Reply rpc(const Fcall& f, uint32_t wlen = 8192) {
    Chain c = send(f, wlen);
    return reply(c);
  }

  void mount() {
    Fcall v9;
    v9.type = Tversion;
    v9.tag = kNoTag;
    v9.msize = 65536;
    v9.version = "9P2000.L";
    Reply r = rpc(v9);
    REQUIRE(r.f.type == Rversion);
    REQUIRE(r.f.msize == 65536);
    Fcall a;
    a.type = Tattach;
    a.tag = 1;
    a.fid = 1;
    a.afid = kNoFid;
    a.uname = "root";
    a.n_uname = 0;
    REQUIRE(rpc(a).f.type == Rattach);
  }
  void walk_open(uint32_t newfid, std::vector<std::string> path, uint16_t tag = 2) {
    Fcall w;
    w.type = Twalk;
    w.tag = tag;
    w.fid = 1;
    w.newfid = newfid;
    w.wnames = std::move(path);
    REQUIRE(rpc(w).f.type == Rwalk);
    Fcall o;
    o.type = Tlopen;
    o.tag = tag;
    o.fid = newfid;
    o.flags = 0;
    REQUIRE(rpc(o).f.type == Rlopen);
  }
};

Fcall tread(uint16_t tag, uint32_t fid, uint64_t offset, uint32_t count) {
  Fcall f;
  f.type = Tread;
  f.tag = tag;
  f.fid = fid;
  f.offset = offset;
  f.count = count;
  return f;
}

std::string text(const Reply& r) { return std::string(as_chars(r.f.data)); }

}  // namespace

TEST_CASE("virtio-9p config space holds the mount tag", "[vmm][virtio-9p]") {
  Rig r(false);
  CHECK(r.dev->device_type() == kVirtio9p);
  CHECK(r.dev->device_features() == k9pFMountTag);
  CHECK(r.dev->num_queues() == 1);
  std::vector<uint8_t> cfg(10, 0xee);
  r.dev->read_config(0, cfg);
  CHECK(load_le16(cfg.data()) == 5);
  CHECK(std::string(cfg.begin() + 2, cfg.begin() + 7) == "berth");
  CHECK(cfg[7] == 0);
  Virtio9p custom(r.tree, r.stats, r.clock, std::string(300, 'x'));
  std::vector<uint8_t> c2(2);
  custom.read_config(0, c2);
  CHECK(load_le16(c2.data()) == Virtio9p::kMaxTagLen);
}

TEST_CASE("virtio-9p serves version, attach, walk, open and read", "[vmm][virtio-9p]") {
  Rig r;
  r.mount();
  r.walk_open(2, {"hello"});
  Reply rd = r.rpc(tread(3, 2, 0, 4096));
  REQUIRE(rd.f.type == Rread);
  CHECK(text(rd) == kHello);
  CHECK(rd.len == 11 + kHello.size());
  // The reply may span several writable descriptors.
  Chain split = r.v.add_chain(0, {encode(tread(4, 2, 6, 4096), L)}, {5, 8, 100});
  r.dev->notify(0);
  Reply s = r.reply(split);
  REQUIRE(s.f.type == Rread);
  CHECK(text(s) == kHello.substr(6));
  CHECK(r.dev->stats().requests == 6);
  CHECK(r.dev->stats().replies == 6);
  CHECK(r.v.ctx.interrupts[0] >= 1);
  CHECK(r.dev->waiting() == 0);
}

TEST_CASE("virtio-9p caps msize", "[vmm][virtio-9p]") {
  Rig r;
  Fcall v9;
  v9.type = Tversion;
  v9.tag = kNoTag;
  v9.msize = 64u << 20;
  v9.version = "9P2000.L";
  Reply rep = r.rpc(v9);
  REQUIRE(rep.f.type == Rversion);
  CHECK(rep.f.msize == Virtio9p::kMaxMsize);
  REQUIRE(r.dev->session());
  CHECK(r.dev->session()->msize() == Virtio9p::kMaxMsize);
  // A message larger than the cap is refused before the session sees it.
  std::vector<uint8_t> big(Virtio9p::kMaxMsize + 16, 0);
  store_le32(big.data(), uint32_t(big.size()));
  big[4] = Twrite;
  store_le16(&big[5], 9);
  Chain c = r.send_raw(big, 64);
  Reply e = r.reply(c);
  CHECK(e.f.type == Rlerror);
  CHECK(e.f.tag == 9);
  CHECK(e.f.ecode == EMSGSIZE);
  CHECK(r.dev->stats().bad_frames == 1);
}

TEST_CASE("virtio-9p answers a reply that does not fit its chain with an error", "[vmm][virtio-9p]") {
  Rig r;
  r.mount();
  r.walk_open(2, {"hello"});
  Reply small = r.rpc(tread(3, 2, 0, 4096), 20);  // Rread would be 31 bytes
  CHECK(small.f.type == Rlerror);
  CHECK(small.f.ecode == EMSGSIZE);
  CHECK(small.f.tag == 3);
  Chain tiny = r.send(tread(3, 2, 0, 4096), 5);  // not even an Rlerror fits
  auto u = r.v.next_used(0);
  REQUIRE(u);
  CHECK(u->id == tiny.head);
  CHECK(u->len == 0);
  CHECK(r.dev->stats().reply_too_big == 2);
  // The session is fine afterwards.
  CHECK(text(r.rpc(tread(3, 2, 0, 4096))) == kHello);
}

TEST_CASE("virtio-9p parks a read on a stream and answers it when data arrives", "[vmm][virtio-9p]") {
  Rig r;
  r.mount();
  r.walk_open(2, {"dir", "stream"});
  Chain parked = r.send(tread(7, 2, 0, 100));
  CHECK(r.v.next_used(0) == std::nullopt);
  CHECK(r.dev->waiting() == 1);
  uint64_t irq = r.v.ctx.interrupts[0];
  r.stream->append(as_bytes("tick\n"));
  Reply rep = r.reply(parked);
  CHECK(rep.f.type == Rread);
  CHECK(rep.f.tag == 7);
  CHECK(text(rep) == "tick\n");
  CHECK(r.v.ctx.interrupts[0] == irq + 1);  // signalled outside a kick
  CHECK(r.dev->waiting() == 0);
}

TEST_CASE("virtio-9p Tflush of a parked read returns its chain before the Rflush", "[vmm][virtio-9p]") {
  Rig r;
  r.mount();
  r.walk_open(2, {"dir", "stream"});
  Chain parked = r.send(tread(7, 2, 0, 100));
  Fcall fl;
  fl.type = Tflush;
  fl.tag = 8;
  fl.oldtag = 7;
  Chain flush = r.send(fl);
  Reply first = r.reply(parked);
  CHECK(first.f.type == Rlerror);
  CHECK(first.f.tag == 7);
  CHECK(first.f.ecode == EINTR);
  Reply second = r.reply(flush);
  CHECK(second.f.type == Rflush);
  CHECK(second.f.tag == 8);
  CHECK(r.dev->waiting() == 0);
  // Data arriving later goes nowhere.
  r.stream->append(as_bytes("late\n"));
  CHECK(r.v.next_used(0) == std::nullopt);
  CHECK(r.dev->stats().orphan_replies == 0);
}

TEST_CASE("virtio-9p refuses a reused outstanding tag", "[vmm][virtio-9p]") {
  Rig r;
  r.mount();
  r.walk_open(2, {"dir", "stream"});
  Chain parked = r.send(tread(7, 2, 0, 100));
  Chain dup = r.send(tread(7, 2, 0, 100));
  auto u = r.v.next_used(0);
  REQUIRE(u);
  CHECK(u->id == dup.head);
  CHECK(u->len == 0);
  CHECK(r.dev->stats().tag_in_use == 1);
  r.stream->append(as_bytes("x"));
  CHECK(text(r.reply(parked)) == "x");
}

TEST_CASE("virtio-9p survives malformed messages", "[vmm][virtio-9p]") {
  Rig r;
  r.mount();
  // Too short for a header, and no writable part: returned with length 0.
  Chain a = r.send_raw({1, 2, 3});
  CHECK(r.reply(a).len == 0);
  Chain b = r.v.add_chain(0, {encode(tread(3, 2, 0, 10), L)}, {});
  r.dev->notify(0);
  CHECK(r.reply(b).len == 0);
  // A size field larger than the chain: EMSGSIZE for that tag.
  auto m = encode(tread(3, 2, 0, 10), L);
  store_le32(m.data(), uint32_t(m.size() + 100));
  Chain mc = r.send_raw(m);
  Reply e = r.reply(mc);
  CHECK(e.f.type == Rlerror);
  CHECK(e.f.tag == 3);
  CHECK(r.dev->stats().bad_frames == 3);
  CHECK(r.dev->stats().session_closed == 0);

  // Well framed but the body is truncated: the session drops, as it would a
  // socket; the chain gets EIO and a fresh session follows.
  std::vector<uint8_t> trunc = {0, 0, 0, 0, Twalk, 5, 0, 1, 0, 0};
  store_le32(trunc.data(), uint32_t(trunc.size()));
  Chain t = r.send_raw(trunc);
  Reply te = r.reply(t);
  CHECK(te.f.type == Rlerror);
  CHECK(te.f.tag == 5);
  CHECK(te.f.ecode == EIO);
  CHECK(r.dev->stats().session_closed == 1);
  CHECK(r.stats.dropped[size_t(ProtoDrop::Malformed)] == 1);
  // A new mount works on the fresh session.
  r.mount();
  r.walk_open(2, {"hello"});
  CHECK(text(r.rpc(tread(3, 2, 0, 4096))) == kHello);
}

TEST_CASE("virtio-9p reset forgets waiting chains and the session", "[vmm][virtio-9p]") {
  Rig r;
  r.mount();
  r.walk_open(2, {"dir", "stream"});
  Chain parked = r.send(tread(7, 2, 0, 100));
  (void)parked;
  CHECK(r.dev->waiting() == 1);
  uint64_t active = r.stats.connections_active;
  r.dev->reset();
  CHECK(r.dev->waiting() == 0);
  CHECK(r.dev->session() == nullptr);
  CHECK(r.stats.connections_active == active - 1);
  r.stream->append(as_bytes("after reset\n"));
  CHECK(r.v.next_used(0) == std::nullopt);
  // Kicks after reset do nothing until the next activation.
  r.dev->notify(0);
  CHECK(r.v.next_used(0) == std::nullopt);
}

TEST_CASE("virtio-9p reset from inside the session (a ctl write) is safe", "[vmm][virtio-9p]") {
  Rig r;
  Virtio9p* dev = r.dev.get();
  r.tree.mount("/", std::make_shared<CtlFile>("ctl", "resets the device", [dev](std::string_view) -> Result<std::string> {
    dev->reset();
    return std::string("reset");
  }));
  r.mount();
  Fcall w;
  w.type = Twalk;
  w.tag = 2;
  w.fid = 1;
  w.newfid = 2;
  w.wnames = {"ctl"};
  REQUIRE(r.rpc(w).f.type == Rwalk);
  Fcall o;
  o.type = Tlopen;
  o.tag = 2;
  o.fid = 2;
  o.flags = 1;  // O_WRONLY
  REQUIRE(r.rpc(o).f.type == Rlopen);
  const std::string cmd = "reset\n";
  Fcall wr;
  wr.type = Twrite;
  wr.tag = 3;
  wr.fid = 2;
  wr.offset = 0;
  wr.data = as_bytes(cmd);
  r.send(wr);
  // The device was reset during the request: its chain is forgotten.
  CHECK(r.v.next_used(0) == std::nullopt);
  CHECK(r.dev->session() == nullptr);
  CHECK(r.dev->waiting() == 0);
}
