// Test helpers for virtio devices: guest RAM in a plain buffer, a fake
// VirtioContext (the transport's side) and a fake driver that lays out split
// rings and chains the way a guest would.
//
//   FakeVirtio v(2);                      // two queues of 64 entries
//   auto c = v.add_chain(0, {hdr, data}, {1});  // readable parts, writable lengths
//   dev.activate(v.ctx); dev.notify(0);
//   auto u = v.next_used(0);              // {id, len}, or nullopt
//   auto bytes = v.written(c, u->len);    // what the device wrote
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "vmm/guest_memory.h"
#include "vmm/virtio.h"
#include "vmm/virtqueue.h"

namespace berth::vmm::testing {

// The transport's side, over queues the test set up.
class FakeContext final : public VirtioContext {
 public:
  explicit FakeContext(const GuestMemory& mem) : mem_(mem) {}
  Virtqueue& queue(size_t index) override { return *queues_.at(index); }
  size_t num_queues() const override { return queues_.size(); }
  const GuestMemory& memory() const override { return mem_; }
  uint64_t features() const override { return features_; }
  void signal_used(size_t index) override {
    signal_calls.at(index)++;
    if (queues_.at(index)->should_interrupt()) interrupts.at(index)++;
  }
  void signal_config_change() override { config_changes++; }

  std::vector<std::unique_ptr<Virtqueue>> queues_;
  uint64_t features_ = kFeatureVersion1;
  std::vector<uint64_t> signal_calls, interrupts;
  uint64_t config_changes = 0;

 private:
  const GuestMemory& mem_;
};

struct Used {
  uint32_t id = 0, len = 0;
};

// A chain the driver made available: its head and where its buffers are.
struct Chain {
  uint16_t queue = 0;
  uint16_t head = 0;
  std::vector<uint16_t> descs;
  std::vector<std::pair<uint64_t, uint32_t>> writable;  // gpa, len
};

class FakeVirtio {
 public:
  static constexpr uint64_t kRamBase = 0x10000;
  static constexpr uint64_t kRamSize = 32u << 20;
  static constexpr uint64_t kRingArea = 0x4000;     // per queue: desc, avail, used
  static constexpr uint64_t kBufBase = kRamBase + 0x100000;

  explicit FakeVirtio(size_t num_queues, uint16_t qsize = 64) : ram_(kRamSize, 0), ctx(mem) {
    REQUIRE(mem.add_region(kRamBase, std::span<uint8_t>(ram_.data(), ram_.size())));
    for (size_t i = 0; i < num_queues; i++) {
      QueueState s;
      s.size = qsize;
      s.desc = kRamBase + i * kRingArea;
      s.avail = s.desc + 0x1000;
      s.used = s.desc + 0x2000;
      for (uint16_t d = 0; d < qsize; d++) s.free.push_back(uint16_t(qsize - 1 - d));
      qs_.push_back(std::move(s));
      auto q = std::make_unique<Virtqueue>(mem, 256);
      q->set_size(qsize);
      q->set_addresses(qs_[i].desc, qs_[i].avail, qs_[i].used);
      REQUIRE(q->activate());
      ctx.queues_.push_back(std::move(q));
      ctx.signal_calls.push_back(0);
      ctx.interrupts.push_back(0);
    }
  }

  // Guest RAM for a buffer of `len` bytes (16-aligned), filled with `fill`.
  uint64_t alloc(uint64_t len, uint8_t fill = 0xa5) {
    uint64_t gpa = next_buf_;
    next_buf_ += (len + 15) & ~uint64_t(15);
    REQUIRE(next_buf_ <= kRamBase + kRamSize);
    std::memset(host(gpa), fill, len);
    return gpa;
  }
  uint8_t* host(uint64_t gpa) { return ram_.data() + (gpa - kRamBase); }

  // Makes a chain available: one descriptor per readable part (copied into
  // fresh buffers), then one writable descriptor per length.
  Chain add_chain(uint16_t qi, const std::vector<std::vector<uint8_t>>& readable,
                  const std::vector<uint32_t>& writable) {
    QueueState& s = qs_.at(qi);
    Chain c;
    c.queue = qi;
    size_t n = readable.size() + writable.size();
    REQUIRE(n > 0);
    REQUIRE(s.free.size() >= n);
    for (size_t i = 0; i < n; i++) {
      c.descs.push_back(s.free.back());
      s.free.pop_back();
    }
    for (size_t i = 0; i < n; i++) {
      uint64_t gpa;
      uint32_t len;
      uint16_t flags = 0;
      if (i < readable.size()) {
        len = uint32_t(readable[i].size());
        gpa = alloc(len);
        if (len) std::memcpy(host(gpa), readable[i].data(), len);
      } else {
        len = writable[i - readable.size()];
        gpa = alloc(len);
        flags |= kDescFWrite;
        c.writable.emplace_back(gpa, len);
      }
      if (i + 1 < n) flags |= kDescFNext;
      write_desc(s, c.descs[i], gpa, len, flags, i + 1 < n ? c.descs[i + 1] : 0);
    }
    c.head = c.descs[0];
    s.chains[c.head] = c.descs;
    publish(s, c.head);
    return c;
  }

  // Raw descriptor access, for malformed chains.
  void write_desc(uint16_t qi, uint16_t idx, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next) {
    write_desc(qs_.at(qi), idx, gpa, len, flags, next);
  }
  void publish(uint16_t qi, uint16_t head) { publish(qs_.at(qi), head); }

  // The next used element of queue `qi`, if the device pushed one.
  std::optional<Used> next_used(uint16_t qi) {
    QueueState& s = qs_.at(qi);
    uint16_t idx = load_le16(host(s.used + 2));
    if (idx == s.used_seen) return std::nullopt;
    const uint8_t* e = host(s.used + 4 + 8 * (s.used_seen % s.size));
    s.used_seen++;
    Used u{load_le32(e), load_le32(e + 4)};
    auto it = s.chains.find(uint16_t(u.id));
    REQUIRE(it != s.chains.end());
    for (uint16_t d : it->second) s.free.push_back(d);
    s.chains.erase(it);
    return u;
  }
  size_t outstanding(uint16_t qi) const { return qs_.at(qi).chains.size(); }

  // The first `len` bytes of the chain's writable part.
  std::vector<uint8_t> written(const Chain& c, uint64_t len) {
    std::vector<uint8_t> out;
    for (auto& [gpa, blen] : c.writable) {
      uint64_t n = std::min<uint64_t>(blen, len - out.size());
      out.insert(out.end(), host(gpa), host(gpa) + n);
      if (out.size() == len) break;
    }
    return out;
  }
  // The whole writable part.
  std::vector<uint8_t> writable_bytes(const Chain& c) {
    uint64_t total = 0;
    for (auto& w : c.writable) total += w.second;
    return written(c, total);
  }

  GuestMemory mem;

 private:
  struct QueueState {
    uint16_t size = 0;
    uint64_t desc = 0, avail = 0, used = 0;
    uint16_t avail_idx = 0, used_seen = 0;
    std::vector<uint16_t> free;
    std::map<uint16_t, std::vector<uint16_t>> chains;
  };
  void write_desc(QueueState& s, uint16_t idx, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next) {
    uint8_t* d = host(s.desc + 16 * uint64_t(idx));
    store_le32(d, uint32_t(gpa));
    store_le32(d + 4, uint32_t(gpa >> 32));
    store_le32(d + 8, len);
    store_le16(d + 12, flags);
    store_le16(d + 14, next);
  }
  void publish(QueueState& s, uint16_t head) {
    store_le16(host(s.avail + 4 + 2 * (s.avail_idx % s.size)), head);
    s.avail_idx++;
    store_le16(host(s.avail + 2), s.avail_idx);
  }

  std::vector<uint8_t> ram_;
  std::vector<QueueState> qs_;
  uint64_t next_buf_ = kBufBase;

 public:
  FakeContext ctx;
};

}  // namespace berth::vmm::testing
