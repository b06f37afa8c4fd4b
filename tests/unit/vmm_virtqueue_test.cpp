// Split virtqueue (vmm/virtqueue.h) against a fake guest driver: the driver
// lays out rings and descriptor chains in a GuestMemory backed by a plain
// buffer, as Linux's virtio_ring would, and also builds the malicious chains
// a hostile guest could (loops, bad indices, nested indirect tables, buffers
// outside RAM). Each bad chain must be refused, counted under its reason,
// returned with length 0, and leave the queue working.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vmm/virtqueue.h"

using namespace berth;
using namespace berth::vmm;

namespace {

constexpr uint64_t kBase = 0x10000;
constexpr uint64_t kRamSize = 2u << 20;  // room for a chain over kMaxChainBytes via repeats

// The guest's side of one queue. Rings at the start of RAM, data after.
struct FakeDriver {
  std::vector<uint8_t> ram = std::vector<uint8_t>(kRamSize, 0);
  GuestMemory mem;
  uint16_t size;
  uint64_t desc = kBase, avail = kBase + 0x1000, used = kBase + 0x3000;
  uint64_t data = kBase + 0x10000;  // buffers from here
  uint16_t avail_idx = 0;
  Virtqueue q;

  explicit FakeDriver(uint16_t n, bool indirect = true, bool event_idx = false, uint16_t max = 256)
      : size(n), q(mem, max) {
    REQUIRE(mem.add_region(kBase, ram));
    q.set_size(n);
    q.set_addresses(desc, avail, used);
    q.set_features(indirect, event_idx);
    REQUIRE(q.activate());
  }

  uint8_t* at(uint64_t gpa) { return ram.data() + (gpa - kBase); }
  void put_desc(uint64_t table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags = 0, uint16_t next = 0) {
    uint8_t* p = at(table + 16 * uint64_t(i));
    store_le32(p, uint32_t(addr));
    store_le32(p + 4, uint32_t(addr >> 32));
    store_le32(p + 8, len);
    store_le16(p + 12, flags);
    store_le16(p + 14, next);
  }
  void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags = 0, uint16_t next = 0) {
    put_desc(desc, i, addr, len, flags, next);
  }
  void publish(uint16_t head) {
    store_le16(at(avail + 4 + 2 * (avail_idx % size)), head);
    avail_idx++;
    store_le16(at(avail + 2), avail_idx);
  }
  void set_avail_idx(uint16_t v) {
    avail_idx = v;
    store_le16(at(avail + 2), v);
  }
  void set_avail_flags(uint16_t f) { store_le16(at(avail), f); }
  void set_used_event(uint16_t v) { store_le16(at(avail + 4 + 2 * size), v); }
  uint16_t used_flags() { return load_le16(at(used)); }
  uint16_t used_idx() { return load_le16(at(used + 2)); }
  uint16_t avail_event() { return load_le16(at(used + 4 + 8 * size)); }
  std::pair<uint32_t, uint32_t> used_elem(uint16_t i) {
    uint8_t* p = at(used + 4 + 8 * (i % size));
    return {load_le32(p), load_le32(p + 4)};
  }

  // A good one-buffer readable chain at `head`, used to show the queue works.
  void check_still_works(uint16_t head) {
    set_desc(head, data + 0x100, 8);
    publish(head);
    auto c = q.pop();
    REQUIRE(c);
    CHECK(c->head == head);
    CHECK(c->readable_len == 8);
    q.push(c->head, 0);
    CHECK(!q.pop());
  }
};

// Publishes chain `head`, expects pop() to refuse it (nothing returned) and
// put (head, 0) on the used ring.
void expect_refused(FakeDriver& d, uint16_t head) {
  uint16_t before = d.used_idx();
  d.publish(head);
  CHECK(!d.q.pop());
  REQUIRE(d.used_idx() == uint16_t(before + 1));
  auto [id, len] = d.used_elem(before);
  CHECK(id == head);
  CHECK(len == 0);
  CHECK(d.q.ready());
}

}  // namespace

TEST_CASE("virtqueue: activate refuses bad configurations", "[vmm][virtqueue]") {
  std::vector<uint8_t> ram(64 * 1024);
  GuestMemory mem;
  REQUIRE(mem.add_region(0x1000, ram));
  Virtqueue q(mem, 256);
  auto try_cfg = [&](uint16_t n, uint64_t d, uint64_t a, uint64_t u) {
    q.set_size(n);
    q.set_addresses(d, a, u);
    q.set_features(true, true);
    auto r = q.activate();
    CHECK(q.ready() == r.ok());
    return r.ok();
  };
  CHECK(!try_cfg(0, 0x1000, 0x3000, 0x4000));
  CHECK(!try_cfg(3, 0x1000, 0x3000, 0x4000));
  CHECK(!try_cfg(512, 0x1000, 0x3000, 0x4000));     // above max_size
  CHECK(!try_cfg(16, 0x1008, 0x3000, 0x4000));      // desc not 16-aligned
  CHECK(!try_cfg(16, 0x1000, 0x3001, 0x4000));      // avail not 2-aligned
  CHECK(!try_cfg(16, 0x1000, 0x3000, 0x4002));      // used not 4-aligned
  CHECK(!try_cfg(16, 0x0, 0x3000, 0x4000));         // desc below RAM
  CHECK(!try_cfg(256, 0x1000, 0x3000, 0x11000 - 8));  // used ring runs off the end
  CHECK(!try_cfg(16, 0x1000, 0x3000, ~uint64_t(0) - 3));  // wrapping address
  CHECK(try_cfg(256, 0x1000, 0x3000, 0x4000));
  CHECK(try_cfg(1, 0x1000, 0x3000, 0x4000));
  q.reset();
  CHECK(!q.ready());
  CHECK(q.size() == 0);
  CHECK(!q.pop());
}

TEST_CASE("virtqueue: a chain across several buffers reads, writes and completes", "[vmm][virtqueue]") {
  FakeDriver d(8);
  // Readable "hello " + "world", writable 4 + 6 bytes.
  std::memcpy(d.at(d.data), "hello ", 6);
  std::memcpy(d.at(d.data + 0x100), "world", 5);
  std::memset(d.at(d.data + 0x200), 0xa5, 4);
  std::memset(d.at(d.data + 0x300), 0xa5, 6);
  d.set_desc(2, d.data, 6, kDescFNext, 5);
  d.set_desc(5, d.data + 0x100, 5, kDescFNext, 0);
  d.set_desc(0, d.data + 0x200, 4, kDescFWrite | kDescFNext, 7);
  d.set_desc(7, d.data + 0x300, 6, kDescFWrite, 0);
  CHECK(!d.q.has_available());
  d.publish(2);
  CHECK(d.q.has_available());
  auto c = d.q.pop();
  REQUIRE(c);
  CHECK(c->head == 2);
  REQUIRE(c->readable.size() == 2);
  REQUIRE(c->writable.size() == 2);
  CHECK(c->readable_len == 11);
  CHECK(c->writable_len == 10);
  CHECK(!d.q.has_available());

  uint8_t buf[16] = {};
  CHECK(d.q.read_from(*c, 0, std::span<uint8_t>(buf, 16)) == 11);
  CHECK(std::memcmp(buf, "hello world", 11) == 0);
  CHECK(d.q.read_from(*c, 4, std::span<uint8_t>(buf, 4)) == 4);
  CHECK(std::memcmp(buf, "o wo", 4) == 0);
  CHECK(d.q.read_from(*c, 11, std::span<uint8_t>(buf, 4)) == 0);

  const uint8_t msg[] = {'0', '1', '2', '3', '4', '5', '6', '7', '8'};
  CHECK(d.q.write_to(*c, 1, Bytes(msg, 9)) == 9);  // 3 in the first buffer, 6 in the second
  CHECK(d.at(d.data + 0x200)[0] == 0xa5);
  CHECK(std::memcmp(d.at(d.data + 0x201), "012", 3) == 0);
  CHECK(std::memcmp(d.at(d.data + 0x300), "345678", 6) == 0);
  CHECK(d.q.write_to(*c, 8, Bytes(msg, 9)) == 2);  // short: only 2 bytes left

  d.q.push(c->head, 10);
  CHECK(d.used_idx() == 1);
  CHECK(d.used_elem(0) == std::pair<uint32_t, uint32_t>{2, 10});
  CHECK(d.q.stats().chains == 1);
  CHECK(d.q.stats().refused() == 0);
  CHECK(!d.q.pop());
}

TEST_CASE("virtqueue: indirect table after direct descriptors", "[vmm][virtqueue]") {
  FakeDriver d(4);
  uint64_t table = d.data + 0x1000;
  std::memcpy(d.at(d.data), "hdr", 3);
  std::memcpy(d.at(d.data + 0x10), "body", 4);
  d.set_desc(1, d.data, 3, kDescFNext, 3);
  // The WRITE flag on the descriptor naming the table is ignored.
  d.set_desc(3, table, 3 * 16, kDescFIndirect | kDescFWrite);
  d.put_desc(table, 0, d.data + 0x10, 4, kDescFNext, 2);
  d.put_desc(table, 2, d.data + 0x20, 100, kDescFWrite | kDescFNext, 1);
  d.put_desc(table, 1, d.data + 0x100, 50, kDescFWrite, 0);
  d.publish(1);
  auto c = d.q.pop();
  REQUIRE(c);
  CHECK(c->readable.size() == 2);
  CHECK(c->writable.size() == 2);
  CHECK(c->readable_len == 7);
  CHECK(c->writable_len == 150);
  uint8_t buf[7];
  CHECK(d.q.read_from(*c, 0, buf) == 7);
  CHECK(std::memcmp(buf, "hdrbody", 7) == 0);
  // The guest rewriting the table after pop() changes nothing we hold.
  d.put_desc(table, 2, 0xdead0000, 100, kDescFWrite, 0);
  CHECK(c->writable[0].gpa == d.data + 0x20);
  d.q.push(c->head, 0);
}

TEST_CASE("virtqueue: malicious chains are refused, counted and completed with length 0", "[vmm][virtqueue]") {
  FakeDriver d(16);
  auto& st = d.q.stats();
  uint64_t table = d.data + 0x4000;

  SECTION("self loop") {
    d.set_desc(0, d.data, 8, kDescFNext, 0);
    expect_refused(d, 0);
    CHECK(st.bad_loop == 1);
  }
  SECTION("longer cycle") {
    d.set_desc(0, d.data, 8, kDescFNext, 1);
    d.set_desc(1, d.data, 8, kDescFNext, 2);
    d.set_desc(2, d.data, 8, kDescFNext, 0);
    expect_refused(d, 0);
    CHECK(st.bad_loop == 1);
  }
  SECTION("a chain of exactly size descriptors is fine, one more loops") {
    for (uint16_t i = 0; i < 16; i++) d.set_desc(i, d.data, 8, i < 15 ? kDescFNext : 0, uint16_t(i + 1));
    d.publish(0);
    auto c = d.q.pop();
    REQUIRE(c);
    CHECK(c->readable.size() == 16);
    d.q.push(c->head, 0);
    d.set_desc(15, d.data, 8, kDescFNext, 3);
    expect_refused(d, 0);
    CHECK(st.bad_loop == 1);
  }
  SECTION("next index out of range") {
    d.set_desc(0, d.data, 8, kDescFNext, 16);
    expect_refused(d, 0);
    CHECK(st.bad_index == 1);
  }
  SECTION("head index out of range") {
    expect_refused(d, 0xffff);
    CHECK(st.bad_index == 1);
  }
  SECTION("indirect inside indirect") {
    d.set_desc(0, table, 32, kDescFIndirect);
    d.put_desc(table, 0, d.data, 8, kDescFNext, 1);
    d.put_desc(table, 1, table, 32, kDescFIndirect, 0);
    expect_refused(d, 0);
    CHECK(st.bad_indirect == 1);
  }
  SECTION("INDIRECT with NEXT") {
    d.set_desc(0, table, 16, kDescFIndirect | kDescFNext, 1);
    d.set_desc(1, d.data, 8);
    d.put_desc(table, 0, d.data, 8, 0, 0);
    expect_refused(d, 0);
    CHECK(st.bad_indirect == 1);
  }
  SECTION("indirect table of a length not a multiple of 16") {
    d.set_desc(0, table, 24, kDescFIndirect);
    expect_refused(d, 0);
    CHECK(st.bad_indirect == 1);
  }
  SECTION("indirect table of length 0") {
    d.set_desc(0, table, 0, kDescFIndirect);
    expect_refused(d, 0);
    CHECK(st.bad_length == 1);
  }
  SECTION("indirect table too long") {
    d.set_desc(0, table, 16 * 4096, kDescFIndirect);
    expect_refused(d, 0);
    CHECK(st.bad_indirect == 1);
  }
  SECTION("indirect table outside RAM") {
    d.set_desc(0, kBase + kRamSize - 16, 32, kDescFIndirect);
    expect_refused(d, 0);
    CHECK(st.bad_address == 1);
  }
  SECTION("loop inside an indirect table") {
    d.set_desc(0, table, 48, kDescFIndirect);
    d.put_desc(table, 0, d.data, 8, kDescFNext, 1);
    d.put_desc(table, 1, d.data, 8, kDescFNext, 2);
    d.put_desc(table, 2, d.data, 8, kDescFNext, 1);
    expect_refused(d, 0);
    CHECK(st.bad_loop == 1);
  }
  SECTION("next index past the indirect table") {
    d.set_desc(0, table, 32, kDescFIndirect);
    d.put_desc(table, 0, d.data, 8, kDescFNext, 2);  // the table has 2 entries
    expect_refused(d, 0);
    CHECK(st.bad_index == 1);
  }
  SECTION("buffer outside RAM") {
    d.set_desc(0, 0x1000, 8);
    expect_refused(d, 0);
    CHECK(st.bad_address == 1);
  }
  SECTION("buffer straddling the end of RAM") {
    d.set_desc(0, d.data, 8, kDescFNext, 1);
    d.set_desc(1, kBase + kRamSize - 4, 8, kDescFWrite);
    expect_refused(d, 0);
    CHECK(st.bad_address == 1);
  }
  SECTION("buffer whose end wraps the address space") {
    d.set_desc(0, ~uint64_t(0) - 3, 0x100);
    expect_refused(d, 0);
    CHECK(st.bad_address == 1);
  }
  SECTION("writable before readable") {
    d.set_desc(0, d.data, 8, kDescFWrite | kDescFNext, 1);
    d.set_desc(1, d.data + 8, 8, 0);
    expect_refused(d, 0);
    CHECK(st.bad_order == 1);
  }
  SECTION("writable before readable across the indirect boundary") {
    d.set_desc(0, d.data, 8, kDescFWrite | kDescFNext, 1);
    d.set_desc(1, table, 16, kDescFIndirect);
    d.put_desc(table, 0, d.data + 8, 8, 0, 0);
    expect_refused(d, 0);
    CHECK(st.bad_order == 1);
  }
  SECTION("huge lengths: a part over kMaxChainBytes") {
    // 65 x 1 MiB readable buffers, all over the same RAM, through a table.
    uint32_t mib = 1u << 20;
    d.set_desc(0, table, 65 * 16, kDescFIndirect);
    for (uint16_t i = 0; i < 65; i++) d.put_desc(table, i, kBase + 0x40000, mib, i < 64 ? kDescFNext : 0, uint16_t(i + 1));
    expect_refused(d, 0);
    CHECK(st.bad_length == 1);
  }
  SECTION("a single buffer of 4 GiB - 1 bytes") {
    d.set_desc(0, d.data, 0xffffffffu, kDescFWrite);
    expect_refused(d, 0);
    CHECK(st.bad_address + st.bad_length == 1);
  }
  SECTION("indirect without the feature") {
    FakeDriver e(16, /*indirect=*/false);
    e.set_desc(0, e.data + 0x4000, 16, kDescFIndirect);
    e.put_desc(e.data + 0x4000, 0, e.data, 8, 0, 0);
    expect_refused(e, 0);
    CHECK(e.q.stats().bad_indirect == 1);
    e.check_still_works(3);
  }
  CHECK(st.refused() <= 1);
  CHECK(d.q.stats().broken == 0);
  d.check_still_works(9);
  CHECK(st.chains >= 1);
}

TEST_CASE("virtqueue: several bad chains in a row, then good ones", "[vmm][virtqueue]") {
  FakeDriver d(8);
  d.set_desc(0, d.data, 8, kDescFNext, 0);   // loop
  d.set_desc(1, 0x10, 8);                    // outside RAM
  d.set_desc(2, d.data, 8, kDescFNext, 99);  // bad index
  d.set_desc(3, d.data, 16);                 // good
  d.publish(0);
  d.publish(1);
  d.publish(2);
  d.publish(3);
  auto c = d.q.pop();
  REQUIRE(c);
  CHECK(c->head == 3);
  CHECK(d.used_idx() == 3);
  CHECK(d.q.stats().refused() == 3);
  d.q.push(3, 0);
  CHECK(d.used_idx() == 4);
  CHECK(!d.q.pop());
}

TEST_CASE("virtqueue: an avail index running more than size ahead breaks the queue", "[vmm][virtqueue]") {
  FakeDriver d(8);
  d.set_desc(0, d.data, 8);
  d.set_avail_idx(8);  // exactly size ahead is legal
  for (int i = 0; i < 8; i++) {
    auto c = d.q.pop();
    REQUIRE(c);
    d.q.push(c->head, 0);
  }
  CHECK(!d.q.pop());
  d.set_avail_idx(uint16_t(8 + 9));  // 9 ahead of our 8
  CHECK(!d.q.pop());
  CHECK(d.q.broken());
  CHECK(!d.q.ready());
  CHECK(d.q.stats().broken == 1);
  CHECK(!d.q.pop());
  d.q.push(0, 0);  // ignored while broken
  CHECK(d.used_idx() == 8);
  // A reset and a fresh activation bring it back.
  d.q.reset();
  d.q.set_size(8);
  d.q.set_addresses(d.desc, d.avail, d.used);
  d.q.set_features(true, false);
  REQUIRE(d.q.activate());
  d.set_avail_idx(0);
  d.check_still_works(1);
}

TEST_CASE("virtqueue: NO_INTERRUPT and NO_NOTIFY without EVENT_IDX", "[vmm][virtqueue]") {
  FakeDriver d(4, true, false);
  d.set_desc(0, d.data, 8);
  CHECK(!d.q.should_interrupt());  // nothing pushed
  d.publish(0);
  auto c = d.q.pop();
  d.q.push(c->head, 0);
  CHECK(d.q.should_interrupt());
  CHECK(!d.q.should_interrupt());  // pending state cleared
  d.set_avail_flags(kAvailFNoInterrupt);
  d.publish(0);
  c = d.q.pop();
  d.q.push(c->head, 0);
  CHECK(!d.q.should_interrupt());
  CHECK(d.q.stats().interrupts == 1);
  d.q.enable_notifications(false);
  CHECK(d.used_flags() == kUsedFNoNotify);
  d.q.enable_notifications(true);
  CHECK(d.used_flags() == 0);
}

TEST_CASE("virtqueue: EVENT_IDX decisions across index wrap-around", "[vmm][virtqueue]") {
  FakeDriver d(4, true, true);
  d.set_desc(0, d.data, 8);
  d.set_desc(1, d.data, 8);
  d.set_desc(2, d.data, 8);
  // Run both indices up to 65533 with the driver never asking for interrupts
  // (used_event parked just behind us).
  for (uint32_t i = 0; i < 65533; i++) {
    d.publish(0);
    auto c = d.q.pop();
    REQUIRE(c);
    d.q.push(c->head, 0);
    d.set_used_event(uint16_t(i - 1));
    REQUIRE(!d.q.should_interrupt());
  }
  REQUIRE(d.used_idx() == 65533);
  CHECK(d.q.stats().interrupts == 0);
  // The empty pop() asked for a kick at the next entry.
  CHECK(!d.q.pop());
  CHECK(d.avail_event() == 65533);

  auto cycle = [&](int n) {
    for (int i = 0; i < n; i++) {
      d.publish(uint16_t(i % 3));
      auto c = d.q.pop();
      REQUIRE(c);
      d.q.push(c->head, 0);
    }
  };
  // used 65533 -> 65534: used_event 65535 not crossed.
  d.set_used_event(65535);
  cycle(1);
  CHECK(!d.q.should_interrupt());
  // 65534 -> 65535: still not (the driver wants to hear when 65535 is used,
  // i.e. when used->idx goes past it).
  cycle(1);
  CHECK(!d.q.should_interrupt());
  // 65535 -> 0: crossed.
  cycle(1);
  CHECK(d.q.should_interrupt());
  CHECK(d.used_idx() == 0);
  // A batch 0 -> 3 crossing used_event 1.
  d.set_used_event(1);
  cycle(3);
  CHECK(d.q.should_interrupt());
  // A batch 3 -> 6 with used_event 6 (at the new index, not yet used): no.
  d.set_used_event(6);
  cycle(3);
  CHECK(!d.q.should_interrupt());
  // A batch that wraps from behind: go to 65534, then push 4 -> 2, with used_event 65535.
  for (int i = 0; i < 65528; i++) {
    cycle(1);
    d.set_used_event(uint16_t(d.used_idx() - 2));
    REQUIRE(!d.q.should_interrupt());
  }
  REQUIRE(d.used_idx() == 65534);
  d.set_used_event(65535);
  cycle(4);
  CHECK(d.used_idx() == 2);
  CHECK(d.q.should_interrupt());
  d.set_used_event(0);  // already behind: 2 -> 4 does not cross it
  cycle(2);
  CHECK(!d.q.should_interrupt());
  CHECK(d.q.stats().interrupts == 3);

  // avail_event follows our avail index through the wrap too.
  d.q.enable_notifications(true);
  CHECK(d.avail_event() == 4);
  // Used flags are not used for suppression under EVENT_IDX.
  d.q.enable_notifications(false);
  CHECK(d.used_flags() == 0);
}

TEST_CASE("virtqueue: EVENT_IDX avail_event near 65535", "[vmm][virtqueue]") {
  FakeDriver d(2, true, true);
  d.set_desc(0, d.data, 8);
  d.set_desc(1, d.data, 8);
  d.q.enable_notifications(false);
  for (uint32_t i = 0; i < 65535; i++) {
    d.publish(uint16_t(i & 1));
    auto c = d.q.pop();
    REQUIRE(c);
    d.q.push(c->head, 0);
  }
  // Notifications off: pop() did not move avail_event.
  CHECK(d.avail_event() == 0);
  d.q.enable_notifications(true);
  CHECK(d.avail_event() == 65535);
  d.publish(1);
  d.publish(0);  // avail idx wraps to 1
  CHECK(d.q.pop());
  CHECK(d.q.pop());
  CHECK(!d.q.pop());
  CHECK(d.avail_event() == 1);
}
