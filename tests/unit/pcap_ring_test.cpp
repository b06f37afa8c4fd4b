// Ring: bounded by bytes, oldest evicted first and counted, records that
// wrap around the end of the buffer, growth on demand, cursors that detect
// being overtaken, clear. A seeded random run is checked against a model.
#include <catch2/catch.hpp>

#include <deque>
#include <random>
#include <vector>

#include "pcap-ring/ring.h"

using namespace berth;
using namespace berth::pcap;

namespace {

using V = std::vector<uint8_t>;

V frame(size_t n, uint8_t seed) {
  V f(n);
  for (size_t i = 0; i < n; i++) f[i] = uint8_t(seed + i);
  return f;
}

RecordMeta meta(uint64_t ts, uint32_t orig, uint32_t link = 0, Direction d = Direction::FromGuest) {
  RecordMeta m;
  m.ts_ns = ts;
  m.orig_len = orig;
  m.link = link;
  m.dir = d;
  return m;
}

V joined(const Ring::View& v) {
  V out(v.a.begin(), v.a.end());
  out.insert(out.end(), v.b.begin(), v.b.end());
  return out;
}

}  // namespace

TEST_CASE("record sizes include the 24-byte header and pad to 8", "[pcap][ring]") {
  CHECK(Ring::record_size(0) == 24);
  CHECK(Ring::record_size(1) == 32);
  CHECK(Ring::record_size(8) == 32);
  CHECK(Ring::record_size(60) == 88);
}

TEST_CASE("a ring keeps records in order with their metadata", "[pcap][ring]") {
  Ring r(4096);
  CHECK(r.allocated() == 0);  // nothing until the first record
  REQUIRE(r.push(meta(10, 60, 3, Direction::ToGuest), frame(60, 1)));
  REQUIRE(r.push(meta(20, 1500, 0, Direction::FromGuest), frame(100, 2)));
  CHECK(r.packets() == 2);
  CHECK(r.used() == Ring::record_size(60) + Ring::record_size(100));
  CHECK(r.data_bytes() == 160);
  CHECK(r.allocated() == 4096);  // min(16 KiB growth step, limit)
  Ring::Cursor c = r.begin();
  auto v = r.next(c);
  CHECK(v.meta.ts_ns == 10);
  CHECK(v.meta.orig_len == 60);
  CHECK(v.meta.link == 3);
  CHECK(v.meta.dir == Direction::ToGuest);
  CHECK(joined(v) == frame(60, 1));
  v = r.next(c);
  CHECK(v.meta.orig_len == 1500);
  CHECK(v.caplen == 100);
  CHECK(joined(v) == frame(100, 2));
  CHECK(c.seq == r.end_seq());
  CHECK(c.pos == r.end().pos);
}

TEST_CASE("a full ring evicts the oldest records first and counts them", "[pcap][ring]") {
  Ring r(1024);  // 11 records of 64 bytes (88 in the ring) fit
  for (int i = 0; i < 11; i++) REQUIRE(r.push(meta(uint64_t(i), 64), frame(64, uint8_t(i))));
  CHECK(r.packets() == 11);
  CHECK(r.evicted_packets() == 0);
  REQUIRE(r.push(meta(11, 64), frame(64, 11)));
  CHECK(r.packets() == 11);
  CHECK(r.first_seq() == 1);
  CHECK(r.evicted_packets() == 1);
  CHECK(r.evicted_bytes() == 64);
  // A large record evicts as many as it needs.
  REQUIRE(r.push(meta(12, 400), frame(400, 12)));
  CHECK(r.evicted_packets() == 1 + 5);
  CHECK(r.used() <= r.limit());
  Ring::Cursor c = r.begin();
  uint64_t expect = 6;
  while (c.seq < r.end_seq()) {
    auto v = r.next(c);
    CHECK(v.meta.ts_ns == expect);
    CHECK(joined(v) == frame(v.caplen, uint8_t(expect)));
    expect++;
  }
  CHECK(expect == 13);
}

TEST_CASE("records that wrap around the end of the buffer read back whole", "[pcap][ring]") {
  Ring r(1000);  // 1000 is a multiple of 8; records of 100 bytes (128 in the ring) straddle the end
  CHECK(r.limit() == 1000);
  for (int i = 0; i < 50; i++) {
    REQUIRE(r.push(meta(uint64_t(i), 100), frame(100, uint8_t(i))));
    Ring::Cursor c = r.begin();
    uint64_t seq = r.first_seq();
    bool wrapped = false;
    while (c.seq < r.end_seq()) {
      auto v = r.next(c);
      wrapped = wrapped || !v.b.empty();
      CHECK(joined(v) == frame(100, uint8_t(seq)));
      seq++;
    }
    if (i > 10) CHECK(r.packets() == 7);
    (void)wrapped;
  }
  // Some record had its bytes in two pieces.
  bool any_split = false;
  for (int i = 0; i < 20 && !any_split; i++) {
    REQUIRE(r.push(meta(0, 100), frame(100, 0)));
    Ring::Cursor c = r.begin();
    while (c.seq < r.end_seq()) {
      bool split = !r.next(c).b.empty();
      any_split = any_split || split;
    }
  }
  CHECK(any_split);
}

TEST_CASE("a record larger than the ring is refused and nothing is lost", "[pcap][ring]") {
  Ring r(4096);
  REQUIRE(r.push(meta(1, 10), frame(10, 0)));
  CHECK_FALSE(r.push(meta(2, 5000), frame(5000, 0)));
  CHECK(r.packets() == 1);
  CHECK(r.evicted_packets() == 0);
}

TEST_CASE("a cursor overtaken by the writer sees that it fell behind", "[pcap][ring]") {
  Ring r(1024);
  REQUIRE(r.push(meta(0, 64), frame(64, 0)));
  Ring::Cursor reader = r.begin();
  for (int i = 1; i < 30; i++) REQUIRE(r.push(meta(uint64_t(i), 64), frame(64, uint8_t(i))));
  CHECK(reader.seq < r.first_seq());  // the reader must skip r.first_seq() - reader.seq records
  CHECK(r.first_seq() - reader.seq == r.evicted_packets());
}

TEST_CASE("the buffer grows on demand and clear gives it back; seq numbers continue", "[pcap][ring]") {
  Ring r(1 << 20);
  REQUIRE(r.push(meta(0, 10), frame(10, 0)));
  CHECK(r.allocated() == 16 * 1024);
  for (int i = 0; i < 1000; i++) REQUIRE(r.push(meta(0, 100), frame(100, uint8_t(i))));
  CHECK(r.allocated() >= r.used());
  CHECK(r.allocated() <= r.limit());
  CHECK(r.evicted_packets() == 0);
  Ring::Cursor c = r.begin();
  r.next(c);
  for (int i = 0; i < 1000; i++) CHECK(joined(r.next(c)) == frame(100, uint8_t(i)));

  uint64_t end = r.end_seq();
  r.clear();
  CHECK(r.allocated() == 0);
  CHECK(r.packets() == 0);
  CHECK(r.used() == 0);
  CHECK(r.first_seq() == end);
  CHECK(r.cleared_seq() == end);
  REQUIRE(r.push(meta(7, 3), frame(3, 7)));
  c = r.begin();
  CHECK(c.seq == end);
  CHECK(joined(r.next(c)) == frame(3, 7));
}

TEST_CASE("random pushes match a model of a byte-bounded FIFO", "[pcap][ring]") {
  std::mt19937 rng(12345);
  for (size_t limit : {size_t(512), size_t(4000), size_t(65536)}) {
    Ring r(limit);
    std::deque<std::pair<uint64_t, V>> model;  // ts, data
    size_t model_used = 0;
    uint64_t evicted = 0;
    for (uint64_t i = 0; i < 3000; i++) {
      size_t n = std::uniform_int_distribution<size_t>(0, std::min<size_t>(limit - 24, 1600))(rng);
      V f = frame(n, uint8_t(rng()));
      REQUIRE(r.push(meta(i, uint32_t(n)), f));
      model.emplace_back(i, f);
      model_used += Ring::record_size(n);
      while (model_used > r.limit()) {
        model_used -= Ring::record_size(model.front().second.size());
        model.pop_front();
        evicted++;
      }
      if (i % 97 == 0) {
        Ring::Cursor c = r.begin();
        for (auto& [ts, data] : model) {
          REQUIRE(c.seq < r.end_seq());
          auto v = r.next(c);
          CHECK(v.meta.ts_ns == ts);
          CHECK(joined(v) == data);
        }
        CHECK(c.seq == r.end_seq());
      }
      if (i == 1500) {
        r.clear();
        model.clear();
        model_used = 0;
      }
    }
    CHECK(r.packets() == model.size());
    CHECK(r.used() == model_used);
    CHECK(r.evicted_packets() == evicted);
  }
}
