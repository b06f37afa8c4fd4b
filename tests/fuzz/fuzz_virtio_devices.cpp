// libFuzzer target for the in-process virtio devices' request parsers
// (vmm/virtio_blk.h, virtio_net.h, virtio_9p.h, virtio_rng.h): a hostile
// guest's requests, laid out in well-formed rings so the fuzzer's bytes reach
// the device parsers (the rings themselves are fuzz_virtqueue's job).
//
// Input:
//   [0]  device: % 4 -> 0 blk, 1 net, 2 9p, 3 rng
//   [1]  flags:
//          bit 0  blk: read-only disk
//          bit 1  EVENT_IDX negotiated
//          bit 2  INDIRECT_DESC negotiated
//          bit 3  reset the device while work may be in flight (blk: before
//                 the IoThread drains; net: before the loop runs; 9p: before
//                 the stream gets data); from then on guest RAM must not change
//          bit 4  kick after each chain (else once at the end)
//          bit 5  publish the chains before activation (activation must
//                 pick them up without a kick)
//          bit 6  blk: an IoThread of capacity 2 (backpressure);
//                 net: each receive-queue chain's readable bytes are also
//                 sent toward the guest as a frame;
//                 9p: append bytes to the tree's stream after the kicks
//   [2]  queue size 1 << ([2] % 7) (1..64); ([2] >> 3) * 4: a config
//        space offset to read (16 bytes) and write back
//   then chains until the input ends:
//     h: bits 0-2 readable buffers, bits 3-5 writable buffers, bit 6
//        through an indirect table (when negotiated), bit 7 queue 1 (net:
//        the transmit queue; ignored by one-queue devices)
//     per readable buffer: u16 LE length, then that many bytes of content
//     per writable buffer: u16 LE length (poisoned with 0xCC)
// Guest RAM is a 64 KiB buffer at kBase: per queue a descriptor table,
// avail and used ring, then buffers and indirect tables (bump-allocated,
// lengths truncated to what is left).
//
// Invariants checked for every input:
//  - every used element names an outstanding head of that queue, once, with
//    a length no larger than the chain's writable part;
//  - the device writes nothing outside the writable buffers and used rings
//    (readable buffers, descriptor tables and avail rings are unchanged);
//  - after reset() the device writes nothing at all, even when ops complete
//    afterwards;
//  - blk: every chain is answered (no reset); a chain with writable room
//    gets a status byte 0..2 and a length of at least 1, one without gets 0;
//  - net: every transmit chain comes back with length 0 and exactly the
//    frames of the right length reach the link, in order, header stripped;
//    every receive chain gets either nothing (too small) or the header and
//    the next accepted frame;
//  - 9p: every reply is one whole message (size field == used length) for
//    the request's tag, an R-message;
//  - rng: every chain is answered with min(writable, 64 KiB) bytes.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "server9p/metrics.h"
#include "server9p/proto.h"
#include "server9p/tree.h"
#include "storage/io_thread.h"
#include "storage/raw.h"
#include "vmm/guest_memory.h"
#include "vmm/virtio.h"
#include "vmm/virtio_9p.h"
#include "vmm/virtio_blk.h"
#include "vmm/virtio_net.h"
#include "vmm/virtio_rng.h"
#include "vmm/virtqueue.h"

using namespace berth;
using namespace berth::vmm;

namespace {

#define check(cond)                                                                                     \
  do {                                                                                                  \
    if (!(cond)) {                                                                                      \
      std::fprintf(stderr, "fuzz_virtio_devices: invariant failed (line %d): %s\n", __LINE__, #cond); \
      std::abort();                                                                                     \
    }                                                                                                   \
  } while (0)

constexpr uint64_t kBase = 0x100000;
constexpr size_t kRam = 64 * 1024;
constexpr size_t kQueueArea = 0x1000;  // per queue: desc 0x000, avail 0x400, used 0x600
constexpr size_t kBufStart = 2 * kQueueArea;
constexpr uint64_t kDiskSize = 256 * 1024;
constexpr uint8_t kPoison = 0xCC;

// Long-lived: the loop, the disk and its IoThreads.
struct Env {
  uv_loop_t loop;
  std::unique_ptr<storage::RawBackend> backend;
  std::unique_ptr<storage::IoThread> io_big, io_small;

  Env() {
    check(uv_loop_init(&loop) == 0);
    std::string dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    std::string path = dir + "/berth-fuzz-vblk-" + std::to_string(getpid());
    auto b = storage::RawBackend::create(path, kDiskSize);
    check(b.ok());
    ::unlink(path.c_str());  // the fd keeps it
    backend = std::move(b.value());
    io_big = std::make_unique<storage::IoThread>(&loop, *backend, 1024);
    io_small = std::make_unique<storage::IoThread>(&loop, *backend, 2);
  }
};

Env& env() {
  static Env* e = new Env;  // never destroyed: the threads live as long as the process
  return *e;
}

class Ctx final : public VirtioContext {
 public:
  explicit Ctx(const GuestMemory& mem) : mem_(mem) {}
  Virtqueue& queue(size_t index) override { return *queues.at(index); }
  size_t num_queues() const override { return queues.size(); }
  const GuestMemory& memory() const override { return mem_; }
  uint64_t features() const override { return features_; }
  void signal_used(size_t index) override { (void)queues.at(index)->should_interrupt(); }
  void signal_config_change() override {}

  std::vector<std::unique_ptr<Virtqueue>> queues;
  uint64_t features_ = kFeatureVersion1;

 private:
  const GuestMemory& mem_;
};

struct ChainRec {
  uint16_t queue = 0, head = 0;
  std::vector<uint8_t> readable;                        // the whole readable part
  std::vector<std::pair<uint64_t, uint32_t>> writable;  // gpa, len
  uint64_t wlen = 0;
  bool returned = false;
  uint32_t used_len = 0;
};

class Input {
 public:
  Input(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  bool empty() const { return pos_ >= n_; }
  uint8_t u8() { return pos_ < n_ ? d_[pos_++] : 0; }
  uint16_t u16() {
    uint16_t lo = u8();
    return uint16_t(lo | (uint16_t(u8()) << 8));
  }
  // Up to `len` bytes (fewer at the end of the input).
  std::vector<uint8_t> bytes(size_t len) {
    size_t k = std::min(len, n_ - std::min(pos_, n_));
    std::vector<uint8_t> v(d_ + pos_, d_ + pos_ + k);
    pos_ += k;
    return v;
  }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
};

struct Rig {
  std::vector<uint8_t> ram = std::vector<uint8_t>(kRam, 0);
  std::vector<uint8_t> shadow = std::vector<uint8_t>(kRam, 0);  // what the driver wrote
  GuestMemory mem;
  Ctx ctx{mem};
  uint16_t qsize = 1;
  std::vector<uint16_t> next_desc, avail_idx;
  std::vector<uint16_t> used_seen;
  std::vector<ChainRec> chains;
  std::vector<size_t> order;  // chains indices, in the order the device returned them
  std::vector<std::map<uint16_t, size_t>> outstanding;  // per queue: head -> chains index
  size_t bump = kBufStart;

  uint8_t* host(uint64_t gpa) { return ram.data() + (gpa - kBase); }
  // A driver write: into RAM and its shadow.
  void poke(uint64_t gpa, const uint8_t* p, size_t len) {
    std::memcpy(host(gpa), p, len);
    std::memcpy(shadow.data() + (gpa - kBase), p, len);
  }
  uint64_t desc(size_t q) const { return kBase + q * kQueueArea; }
  uint64_t avail(size_t q) const { return desc(q) + 0x400; }
  uint64_t used(size_t q) const { return desc(q) + 0x600; }
  uint64_t used_bytes() const { return 4 + 8 * uint64_t(qsize) + 2; }

  void setup(size_t nq, uint16_t size, bool event_idx, bool indirect) {
    check(mem.add_region(kBase, std::span<uint8_t>(ram.data(), ram.size())).ok());
    qsize = size;
    for (size_t q = 0; q < nq; q++) {
      auto vq = std::make_unique<Virtqueue>(mem, 256);
      vq->set_size(size);
      vq->set_addresses(desc(q), avail(q), used(q));
      vq->set_features(indirect, event_idx);
      check(vq->activate().ok());
      ctx.queues.push_back(std::move(vq));
    }
    if (indirect) ctx.features_ |= kFeatureRingIndirectDesc;
    if (event_idx) ctx.features_ |= kFeatureRingEventIdx;
    next_desc.assign(nq, 0);
    avail_idx.assign(nq, 0);
    used_seen.assign(nq, 0);
    outstanding.resize(nq);
  }

  // Bump-allocates up to `len` bytes (16-aligned start); returns the length got.
  uint32_t alloc(uint32_t len, uint64_t& gpa) {
    bump = (bump + 15) & ~size_t(15);
    size_t left = bump < kRam ? kRam - bump : 0;
    uint32_t got = uint32_t(std::min<size_t>(len, left));
    gpa = kBase + bump;
    bump += got;
    return got;
  }

  void put_desc(uint64_t table, uint16_t idx, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next) {
    uint8_t d[16];
    store_le32(d, uint32_t(gpa));
    store_le32(d + 4, uint32_t(gpa >> 32));
    store_le32(d + 8, len);
    store_le16(d + 12, flags);
    store_le16(d + 14, next);
    poke(table + 16 * uint64_t(idx), d, 16);
  }

  // Lays out one chain from the input and makes it available. False when
  // the queue has no descriptors left.
  bool add_chain(Input& in, size_t q, size_t nr, size_t nw, bool want_indirect) {
    bool indirect = want_indirect && ctx.queues[q]->size() > 0 && (ctx.features_ & kFeatureRingIndirectDesc);
    size_t n = nr + nw;
    if (n == 0) {
      nr = 1;  // a chain has at least one descriptor: an empty readable one
      n = 1;
    }
    if (!indirect && next_desc[q] + n > qsize) indirect = (ctx.features_ & kFeatureRingIndirectDesc) != 0;
    if (next_desc[q] + (indirect ? 1 : n) > qsize) return false;

    ChainRec c;
    c.queue = uint16_t(q);
    std::vector<std::array<uint64_t, 3>> bufs;  // gpa, len, flags
    for (size_t i = 0; i < n; i++) {
      bool w = i >= nr;
      uint16_t want = in.u16();
      std::vector<uint8_t> content;
      if (!w) content = in.bytes(want);
      else
        content.assign(want, kPoison);
      uint64_t gpa;
      uint32_t len = alloc(uint32_t(content.size()), gpa);
      if (len) poke(gpa, content.data(), len);
      if (w) {
        if (len) c.writable.emplace_back(gpa, len);
        c.wlen += len;
      } else {
        c.readable.insert(c.readable.end(), content.begin(), content.begin() + len);
      }
      bufs.push_back({gpa, len, w ? kDescFWrite : 0u});
    }
    uint64_t table = desc(q);
    if (indirect) {
      uint64_t tgpa;
      uint32_t tlen = alloc(uint32_t(16 * n), tgpa);
      if (tlen < 16 * n) return false;  // out of RAM for the table
      for (size_t i = 0; i < n; i++)
        put_desc(tgpa, uint16_t(i), bufs[i][0], uint32_t(bufs[i][1]),
                 uint16_t(bufs[i][2] | (i + 1 < n ? kDescFNext : 0)), uint16_t(i + 1 < n ? i + 1 : 0));
      c.head = next_desc[q]++;
      put_desc(table, c.head, tgpa, tlen, kDescFIndirect, 0);
    } else {
      c.head = next_desc[q];
      for (size_t i = 0; i < n; i++) {
        uint16_t idx = next_desc[q]++;
        put_desc(table, idx, bufs[i][0], uint32_t(bufs[i][1]), uint16_t(bufs[i][2] | (i + 1 < n ? kDescFNext : 0)),
                 uint16_t(i + 1 < n ? idx + 1 : 0));
      }
    }
    uint8_t le[2];
    store_le16(le, c.head);
    poke(avail(q) + 4 + 2 * uint64_t(avail_idx[q] % qsize), le, 2);
    avail_idx[q]++;
    store_le16(le, avail_idx[q]);
    poke(avail(q) + 2, le, 2);
    outstanding[q][c.head] = chains.size();
    chains.push_back(std::move(c));
    return true;
  }

  // Collects the used elements the device pushed since the last call and
  // checks each against its chain. Returns the indices of the new ones.
  std::vector<size_t> collect(size_t q) {
    std::vector<size_t> out;
    uint16_t idx = load_le16(host(used(q) + 2));
    while (used_seen[q] != idx) {
      const uint8_t* e = host(used(q) + 4 + 8 * size_t(used_seen[q] % qsize));
      used_seen[q]++;
      uint32_t id = load_le32(e), len = load_le32(e + 4);
      auto it = outstanding[q].find(uint16_t(id));
      check(id < qsize && it != outstanding[q].end());  // a head we made available, not yet returned
      ChainRec& c = chains[it->second];
      outstanding[q].erase(it);
      check(!c.returned);
      check(len <= c.wlen);
      c.returned = true;
      c.used_len = len;
      out.push_back(size_t(&c - chains.data()));
      order.push_back(out.back());
    }
    return out;
  }

  // Copies what the device wrote into the chain's writable part.
  std::vector<uint8_t> written(const ChainRec& c, uint64_t len) {
    std::vector<uint8_t> out;
    for (auto& [gpa, blen] : c.writable) {
      if (out.size() >= len) break;
      uint64_t n = std::min<uint64_t>(blen, len - out.size());
      out.insert(out.end(), host(gpa), host(gpa) + n);
    }
    return out;
  }
  uint8_t last_writable(const ChainRec& c) {
    auto& [gpa, blen] = c.writable.back();
    return *host(gpa + blen - 1);
  }

  // Guest RAM (or its shadow) with what the device may write masked out.
  std::vector<uint8_t> masked(const std::vector<uint8_t>& from) {
    std::vector<uint8_t> m = from;
    for (size_t q = 0; q < ctx.queues.size(); q++) std::memset(m.data() + (used(q) - kBase), 0, used_bytes());
    for (auto& c : chains)
      for (auto& [gpa, len] : c.writable) std::memset(m.data() + (gpa - kBase), 0, len);
    return m;
  }
};

// Runs the loop until the blk device has no ops out (bounded by libFuzzer's
// -timeout), then lets idle work run.
void drain_blk(VirtioBlk* blk) {
  uv_loop_t* loop = &env().loop;
  while (blk->ops_in_flight() > 0) uv_run(loop, UV_RUN_ONCE);
  for (int i = 0; i < 4; i++) uv_run(loop, UV_RUN_NOWAIT);
}

void run_loop(int n) {
  for (int i = 0; i < n; i++) uv_run(&env().loop, UV_RUN_NOWAIT);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  Env& e = env();
  Input in(data, size);
  const uint8_t dev_kind = in.u8() % 4;
  const uint8_t flags = in.u8();
  const uint16_t qsize = uint16_t(1u << (in.u8() % 7));
  const bool read_only = flags & 1, event_idx = flags & 2, indirect = flags & 4, do_reset = flags & 8,
             kick_each = flags & 16, publish_first = flags & 32, extra = flags & 64;

  Rig rig;
  const size_t nq = dev_kind == 1 ? 2 : 1;
  rig.setup(nq, qsize, event_idx, indirect);

  // The devices and what they need, fresh per input.
  std::unique_ptr<VirtioDevice> dev;
  VirtioBlk* blk = nullptr;
  VirtioNet* net = nullptr;
  std::vector<std::vector<uint8_t>> got_frames;  // net: frames the link received
  bool cb_action = false;                        // a callback reset or closed the device
  FakeClock clock;
  p9::ServerStats pstats;
  p9::Tree tree;
  auto stream = std::make_shared<p9::ByteStream>(4096);
  Virtio9p* p9dev = nullptr;

  switch (dev_kind) {
    case 0: {
      auto d = std::make_unique<VirtioBlk>(extra ? *e.io_small : *e.io_big, *e.backend, read_only, "fuzz-disk");
      blk = d.get();
      dev = std::move(d);
      break;
    }
    case 1: {
      auto d = std::make_unique<VirtioNet>(&e.loop, std::array<uint8_t, 6>{2, 0, 0, 0, 0, 1}, 1500);
      net = d.get();
      check(net->start([&](Bytes f) {
        got_frames.emplace_back(f.begin(), f.end());
        // A frame for these MACs makes the link reset the device or close
        // (what a translator callback may do).
        if (f.size() >= 1 && f[0] == 0xEE) {
          cb_action = true;
          net->reset();
        } else if (f.size() >= 1 && f[0] == 0xED) {
          cb_action = true;
          net->close();
        }
      }).ok());
      dev = std::move(d);
      break;
    }
    case 2: {
      tree.mount("/", std::make_shared<p9::StateFile>("hello", "a file", [] { return std::string("hello\n"); }));
      tree.mount("/dir", std::make_shared<p9::StreamFile>("stream", "a stream", stream, /*replay=*/false));
      tree.mount("/", std::make_shared<p9::CtlFile>("ctl", "control", [&](std::string_view cmd) -> Result<std::string> {
        if (cmd == "reset") {
          cb_action = true;
          p9dev->reset();
        }
        if (cmd == "bad") return make_error(EINVAL, "bad command");
        return std::string();
      }));
      auto d = std::make_unique<Virtio9p>(tree, pstats, clock, "berth");
      p9dev = d.get();
      dev = std::move(d);
      break;
    }
    default: dev = std::make_unique<VirtioRng>(); break;
  }
  check(dev->num_queues() == nq);
  {
    // Config space at an offset the input picks (byte 2's high bits): reads
    // past the end read zeros, never past the device's buffer.
    uint8_t cfg[16];
    dev->read_config(uint64_t(data[2] >> 3) * 4, cfg);
    dev->write_config(uint64_t(data[2] >> 3) * 4, Bytes(cfg, sizeof cfg));
    (void)dev->device_features();
  }

  bool active = false;
  auto activate = [&] {
    dev->activate(rig.ctx);
    active = true;
  };
  if (!publish_first) activate();

  std::vector<std::vector<uint8_t>> to_send;  // net: frames toward the guest
  while (!in.empty()) {
    uint8_t h = in.u8();
    size_t q = (h & 0x80) && nq > 1 ? 1 : 0;
    if (!rig.add_chain(in, q, h & 7, (h >> 3) & 7, h & 0x40)) break;
    if (net && extra && q == 0 && !rig.chains.back().readable.empty()) to_send.push_back(rig.chains.back().readable);
    if (kick_each && active) dev->notify(q);
  }
  if (!active) {
    activate();
  } else if (!kick_each) {
    for (size_t q = 0; q < nq; q++) dev->notify(q);
  }

  // net: frames toward the guest, accepted ones in order.
  std::vector<std::vector<uint8_t>> sent;
  if (net) {
    for (auto& f : to_send)
      if (net->send(f)) sent.push_back(f);
  }

  // Reset while work may be in flight: nothing may touch guest RAM afterwards.
  std::vector<uint8_t> at_reset;
  auto reset_now = [&] {
    for (size_t q = 0; q < nq; q++) (void)rig.collect(q);
    dev->reset();
    at_reset = rig.ram;
  };
  if (do_reset) reset_now();

  if (blk) drain_blk(blk);
  if (net) run_loop(4);
  if (p9dev && extra) {
    std::string s(64, 'x');
    stream->append(Bytes(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  }

  if (do_reset) {
    check(rig.ram == at_reset);
  }
  // Whatever happened, nothing outside the writable buffers and used rings moved.
  check(rig.masked(rig.ram) == rig.masked(rig.shadow));

  // Per-device checks on everything returned.
  for (size_t q = 0; q < nq; q++) (void)rig.collect(q);  // after a reset: none new (RAM unchanged)
  const bool whole = !do_reset && !cb_action;  // the device ran undisturbed

  for (auto& c : rig.chains) {
    if (!c.returned) {
      if (whole && (blk || (dev_kind == 3) || (net && c.queue == 1))) check(!"chain never returned");
      continue;
    }
    if (blk) {
      if (c.wlen == 0) {
        check(c.used_len == 0);
      } else {
        check(c.used_len >= 1);
        check(rig.last_writable(c) <= kBlkSUnsupp);
      }
    } else if (dev_kind == 3) {
      check(c.used_len == std::min<uint64_t>(c.wlen, VirtioRng::kMaxPerRequest));
    } else if (p9dev) {
      if (c.used_len > 0) {
        check(c.used_len >= p9::kHeaderSize && c.readable.size() >= p9::kHeaderSize);
        std::vector<uint8_t> r = rig.written(c, c.used_len);
        check(load_le32(r.data()) == c.used_len);
        check(load_le16(r.data() + 5) == load_le16(c.readable.data() + 5));  // the request's tag
        check(r[4] % 2 == 1);                                                  // an R-message
      }
    } else if (net && c.queue == 1) {
      check(c.used_len == 0);
    }
  }

  if (net) {
    // Transmit: the frames of the right length, in order, header stripped.
    std::vector<std::vector<uint8_t>> want;
    for (auto& c : rig.chains) {
      if (c.queue != 1 || !c.returned) continue;
      if (c.readable.size() < kNetHdrLen + 14 || c.readable.size() > kNetHdrLen + net->max_frame()) continue;
      want.emplace_back(c.readable.begin() + kNetHdrLen, c.readable.end());
    }
    if (!cb_action) {
      check(got_frames == want);
    } else {
      check(got_frames.size() <= want.size());
      check(std::equal(got_frames.begin(), got_frames.end(), want.begin()));
    }
    // Receive: the i-th receive chain returned carries the i-th sent frame
    // (or nothing, when too small).
    size_t i = 0;
    for (size_t k : rig.order) {
      const ChainRec& c = rig.chains[k];
      if (c.queue != 0) continue;
      check(i < sent.size());
      const auto& f = sent[i++];
      if (c.used_len == 0) {
        check(c.wlen < kNetHdrLen + f.size());
      } else {
        check(c.used_len == kNetHdrLen + f.size());
        std::vector<uint8_t> r = rig.written(c, c.used_len);
        uint8_t hdr[kNetHdrLen] = {};
        store_le16(&hdr[10], 1);
        check(std::memcmp(r.data(), hdr, kNetHdrLen) == 0);
        check(std::equal(f.begin(), f.end(), r.begin() + kNetHdrLen));
      }
    }
  }

  if (std::getenv("FUZZ_VIRTIO_DEVICES_DEBUG")) {  // what each chain got, to check the seeds
    for (auto& c : rig.chains) {
      std::fprintf(stderr, "q%u head %u: r %zu w %llu -> ", c.queue, c.head, c.readable.size(),
                   (unsigned long long)c.wlen);
      if (!c.returned) {
        std::fprintf(stderr, "not returned\n");
        continue;
      }
      std::vector<uint8_t> r = rig.written(c, c.used_len);
      std::fprintf(stderr, "len %u", c.used_len);
      if (blk && c.wlen) std::fprintf(stderr, " status %u", rig.last_writable(c));
      if (p9dev && r.size() >= p9::kHeaderSize) std::fprintf(stderr, " %s", p9::msg_name(r[4]));
      std::fprintf(stderr, "\n");
    }
    std::fprintf(stderr, "frames: %zu got, %zu sent\n", got_frames.size(), sent.size());
  }

  // Tear down: reset (again), let ops come back, destroy, free handles.
  dev->reset();
  if (blk) drain_blk(blk);
  p9dev = nullptr;
  dev.reset();
  run_loop(2);
  return 0;
}
