// libFuzzer target for the split virtqueue (vmm/virtqueue.h): a hostile
// guest's rings and descriptor chains.
//
// Input: a 16-byte header, then guest RAM contents.
//   [0]     queue size: bit 7 set -> the low 7 bits as is (often invalid),
//           else 1 << ([0] % 9) (1..256)
//   [1]     bit 0 INDIRECT_DESC, bit 1 EVENT_IDX negotiated; bit 2 turn
//           notifications off first; bit 3 ask should_interrupt() after each
//           push; bit 4 fill writable parts completely (else a prefix)
//   [2..7]  descriptor table, avail ring, used ring: u16 LE offsets from the
//           start of RAM
//   [8..15] unused
// RAM is a heap buffer of exactly the remaining bytes at kBase, followed
// directly by a second 64-byte region, so ASan reports any byte touched
// outside guest RAM and a buffer straddling the two regions must be refused.
//
// The target pops chains until none remain (bounded), reads and writes
// through each one, pushes it back, and checks: every buffer lies in RAM,
// readable/writable totals match their buffers and stay under
// kMaxChainBytes, no zero-length buffers, the used index counts every chain
// returned (valid or refused), and when nothing we write can reach the
// avail ring, no more chains come out than the driver made available.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vmm/virtqueue.h"

using namespace berth;
using namespace berth::vmm;

namespace {

constexpr uint64_t kBase = 0x10000;
constexpr size_t kHeader = 16;
constexpr size_t kIoCap = 64 * 1024;  // bytes read/written per chain

// An invariant of the queue failed: say which, then crash for libFuzzer.
#define check(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "fuzz_virtqueue: invariant failed (line %d): %s\n", __LINE__, #cond); \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) { return a < b + blen && b < a + alen; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader + 1) return 0;
  const uint8_t* h = data;
  std::vector<uint8_t> ram(data + kHeader, data + size);
  std::vector<uint8_t> tail(64, 0);
  GuestMemory mem;
  check(mem.add_region(kBase, ram).ok());
  check(mem.add_region(kBase + ram.size(), tail).ok());

  uint16_t qsize = (h[0] & 0x80) ? uint16_t(h[0] & 0x7f) : uint16_t(1u << (h[0] % 9));
  uint8_t mode = h[1];
  uint64_t desc = kBase + load_le16(h + 2), avail = kBase + load_le16(h + 4), used = kBase + load_le16(h + 6);

  Virtqueue q(mem, 256);
  q.set_size(qsize);
  q.set_addresses(desc, avail, used);
  q.set_features(mode & 1, mode & 2);
  if (!q.activate()) return 0;
  check(q.ready());
  if (mode & 4) q.enable_notifications(false);

  const uint64_t avail_len = 4 + 2 * uint64_t(qsize) + 2;
  const uint64_t used_len = 4 + 8 * uint64_t(qsize) + 2;
  bool dirty = overlaps(avail, avail_len, used, used_len);
  uint16_t first_avail = 0;
  if (auto v = mem.read_obj<uint16_t>(avail + 2)) first_avail = *v;
  uint64_t pending = first_avail <= qsize ? first_avail : 0;

  std::vector<uint8_t> io;
  uint64_t popped = 0;
  // Bounded: each pop consumes one avail entry, but our own writes may move
  // the guest's avail index (rings overlapping buffers), so cap the loop.
  for (int i = 0; i < 4 * 256 + 8; i++) {
    auto c = q.pop();
    if (!c) break;
    popped++;
    uint64_t rsum = 0, wsum = 0;
    for (auto& b : c->readable) {
      check(b.len > 0 && mem.contains(b.gpa, b.len));
      rsum += b.len;
    }
    for (auto& b : c->writable) {
      check(b.len > 0 && mem.contains(b.gpa, b.len));
      wsum += b.len;
      if (overlaps(b.gpa, b.len, avail, avail_len)) dirty = true;
    }
    check(rsum == c->readable_len && wsum == c->writable_len);
    check(rsum <= kMaxChainBytes && wsum <= kMaxChainBytes);
    check(c->readable.size() + c->writable.size() <= size_t(qsize) + 1024);

    size_t rn = size_t(std::min<uint64_t>(rsum, kIoCap));
    io.assign(rn, 0);
    check(q.read_from(*c, 0, io) == rn);
    if (rsum > 3) check(q.read_from(*c, rsum - 3, std::span<uint8_t>(io.data(), std::min<size_t>(rn, 8))) == std::min<size_t>(rn, 3));

    size_t wn = size_t(std::min<uint64_t>((mode & 16) ? wsum : wsum / 2, kIoCap));
    io.assign(wn, uint8_t(0x5a ^ i));
    check(q.write_to(*c, 0, io) == wn);
    check(q.write_to(*c, wsum, io) == 0);
    q.push(c->head, uint32_t(wn));
    if (mode & 8) (void)q.should_interrupt();
  }
  (void)q.should_interrupt();
  q.enable_notifications(true);
  (void)q.has_available();

  const QueueStats& st = q.stats();
  check(st.chains == popped);
  uint64_t returned = st.chains + st.refused();
  // The device's used index starts at 0 whatever the ring held; the last
  // store to it is the last push.
  if (returned > 0) check(mem.read_obj<uint16_t>(used + 2) == uint16_t(returned));
  if (!dirty) {
    // Nothing we wrote reached the avail ring: at most what was offered came
    // out, and all of it did unless the ring was broken to begin with.
    check(returned <= pending);
    if (!st.broken) check(returned == pending);
  }
  return 0;
}
