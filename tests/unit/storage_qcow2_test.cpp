// The qcow2 engine (storage/qcow2.h) against an in-memory model: round
// trips over cluster sizes and refcount widths, caches too small for the
// working set, refcount table growth, backing files and copy-on-write, v2,
// lazy refcounts and crash snapshots, discard and write-zeroes, check and
// repair, compaction, discard-zeroes, map, resize, and hostile images.
// Interoperability with qemu-img/qemu-io is in storage_qcow2_qemu_test.cpp.
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <algorithm>
#include <functional>
#include <map>
#include <random>

#include "storage/qcow2.h"
#include "storage/raw.h"
#include "storage_qcow2_util.h"

using namespace berth;
using namespace berth::storage;
using namespace storage_test;
namespace q = berth::storage::qcow2;

namespace {

struct Model {
  std::vector<uint8_t> data;
  uint64_t cs = 65536;
};

// Reads the whole disk through the backend and compares it with the model.
void require_same(Qcow2Backend& b, const Model& m) {
  std::vector<uint8_t> got(m.data.size());
  const uint64_t step = 1 << 20;
  for (uint64_t off = 0; off < got.size(); off += step) {
    const uint64_t n = std::min<uint64_t>(step, got.size() - off);
    auto r = b.read(off, std::span<uint8_t>(got.data() + off, n));
    REQUIRE(r.ok());
  }
  if (got != m.data) {
    size_t i = 0;
    while (got[i] == m.data[i]) i++;
    FAIL("first difference at byte " << i << " (cluster " << i / m.cs << "): got " << int(got[i]) << " want "
                                     << int(m.data[i]));
  }
}

// Random writes, discards, write-zeroes, flushes and reads, mirrored in the model.
void random_ops(BlockBackend& b, Model& m, std::mt19937& rng, int count, bool discard_zeroes_full_clusters = true) {
  const uint64_t size = m.data.size();
  for (int i = 0; i < count; i++) {
    const int op = int(rng() % 12);
    uint64_t off = rng() % size;
    if (rng() % 3 == 0) off -= off % m.cs;
    uint64_t len = 1 + rng() % (3 * m.cs);
    if (rng() % 3 == 0) len = m.cs * (1 + rng() % 3);
    len = std::min(len, size - off);
    if (op <= 5) {
      auto p = pattern(len, uint32_t(rng()));
      REQUIRE(b.write(off, p).ok());
      std::memcpy(&m.data[off], p.data(), len);
    } else if (op == 6 && discard_zeroes_full_clusters) {
      REQUIRE(b.discard(off, len).ok());
      const uint64_t a = (off + m.cs - 1) / m.cs * m.cs;
      const uint64_t z = (off + len) / m.cs * m.cs;
      if (a < z) std::memset(&m.data[a], 0, z - a);
    } else if (op == 7) {
      REQUIRE(b.write_zeroes(off, len, rng() % 2 == 0).ok());
      std::memset(&m.data[off], 0, len);
    } else if (op == 8) {
      REQUIRE(b.flush().ok());
    } else {
      std::vector<uint8_t> got(len);
      REQUIRE(b.read(off, got).ok());
      REQUIRE(std::memcmp(got.data(), &m.data[off], len) == 0);
    }
  }
}

void require_clean(Qcow2Backend& b) {
  auto c = b.check(false);
  REQUIRE(c.ok());
  if (!c->clean()) {
    for (const auto& msg : c->messages) UNSCOPED_INFO(msg);
    FAIL("check: " << c->summary());
  }
}

std::unique_ptr<Qcow2Backend> open_rw(const std::string& path, Qcow2OpenOptions o = {}) {
  auto b = Qcow2Backend::open(path, o);
  if (!b) FAIL("open " << path << ": " << b.error().message);
  return std::move(*b);
}

}  // namespace

TEST_CASE("qcow2: create, random I/O, reopen, check clean, across cluster sizes and refcount widths",
          "[storage][qcow2]") {
  struct Case {
    uint64_t cs;
    uint32_t refbits;
    uint64_t size;
  };
  const Case cases[] = {
      {512, 16, 2 << 20},    {512, 1, 1 << 20},     {4096, 16, 16 << 20}, {4096, 64, 8 << 20},
      {65536, 16, 64 << 20}, {65536, 2, 32 << 20},  {65536, 4, 32 << 20}, {65536, 8, 32 << 20},
      {65536, 32, 32 << 20}, {2 << 20, 16, 64 << 20}, {16384, 16, (16 << 20) + 12345},
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION("cluster " << c.cs << " refcount bits " << c.refbits) {
      TempDir d;
      const std::string img = d / "a.qcow2";
      Qcow2CreateOptions co;
      co.cluster_size = c.cs;
      co.refcount_bits = c.refbits;
      auto cr = Qcow2Backend::create(img, c.size, co);
      REQUIRE(cr.ok());
      auto& b = **cr;
      REQUIRE(b.size() == c.size);
      Model m;
      m.cs = c.cs;
      m.data.assign(c.size, 0);
      std::mt19937 rng(uint32_t(c.cs * 31 + c.refbits));
      random_ops(b, m, rng, c.cs >= (1 << 20) ? 60 : 250);
      require_same(b, m);
      REQUIRE(b.flush().ok());
      require_clean(b);
      REQUIRE(b.close().ok());
      auto re = open_rw(img);
      require_same(*re, m);
      random_ops(*re, m, rng, 50);
      require_same(*re, m);
      require_clean(*re);
      REQUIRE(re->close().ok());
      auto ro = Qcow2Backend::open(img, ro_opts());
      REQUIRE(ro.ok());
      require_same(**ro, m);
      require_clean(**ro);
      REQUIRE(!(*ro)->write(0, pattern(10, 1)).ok());
    }
  }
}

TEST_CASE("qcow2: caches smaller than the working set evict in order", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  Qcow2CreateOptions co;
  co.cluster_size = 4096;
  REQUIRE(Qcow2Backend::create(img, 64 << 20, co).ok());
  Qcow2OpenOptions o;
  o.l2_cache_bytes = 4 * 4096;
  o.refcount_cache_bytes = 4 * 4096;
  auto b = open_rw(img, o);
  Model m;
  m.cs = 4096;
  m.data.assign(64 << 20, 0);
  std::mt19937 rng(7);
  random_ops(*b, m, rng, 600);
  require_same(*b, m);
  const auto s = b->stats();
  CHECK(s.l2_misses > 0);
  CHECK(s.l2_hits > 0);
  CHECK(s.refcount_hits + s.refcount_misses > 0);
  REQUIRE(b->flush().ok());
  require_clean(*b);
  REQUIRE(b->close().ok());
  auto re = open_rw(img);
  require_same(*re, m);
}

TEST_CASE("qcow2: the refcount table grows when the file outgrows it", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  Qcow2CreateOptions co;
  co.cluster_size = 512;
  co.refcount_bits = 64;  // 64 clusters per block, 4096 per table cluster: 2 MiB
  REQUIRE(Qcow2Backend::create(img, 8 << 20, co).ok());
  auto b = open_rw(img, cache_opts(8 * 512, 4 * 512));
  const uint32_t before = b->header().refcount_table_clusters;
  Model m;
  m.cs = 512;
  m.data.assign(8 << 20, 0);
  auto p = pattern(6 << 20, 99);
  REQUIRE(b->write(1 << 20, p).ok());
  std::memcpy(&m.data[1 << 20], p.data(), p.size());
  std::mt19937 rng(3);
  random_ops(*b, m, rng, 200);
  CHECK(b->header().refcount_table_clusters > before);
  require_same(*b, m);
  REQUIRE(b->flush().ok());
  require_clean(*b);
  REQUIRE(b->close().ok());
  auto re = open_rw(img);
  require_same(*re, m);
  require_clean(*re);
}

TEST_CASE("qcow2: backing files: reads fall through, partial writes copy on write", "[storage][qcow2]") {
  TempDir d;
  const uint64_t size = 8 << 20;
  Model m;
  m.cs = 65536;
  m.data = pattern(size, 5);
  for (const char* fmt : {"raw", "qcow2"}) {
    DYNAMIC_SECTION("backing format " << fmt) {
      const std::string base = d / (std::string("base.") + fmt);
      if (std::string(fmt) == "raw") {
        auto r = RawBackend::create(base, size - 65536 - 100);  // shorter than the overlay
        REQUIRE(r.ok());
        REQUIRE((*r)->write(0, Bytes(m.data.data(), size - 65536 - 100)).ok());
      } else {
        auto q = Qcow2Backend::create(base, size - 65536 - 100);
        REQUIRE(q.ok());
        REQUIRE((*q)->write(0, Bytes(m.data.data(), size - 65536 - 100)).ok());
        REQUIRE((*q)->close().ok());
      }
      std::memset(&m.data[size - 65536 - 100], 0, 65536 + 100);
      Qcow2CreateOptions co;
      co.backing_file = std::string("base.") + fmt;  // relative: resolved against the image's directory
      auto ov = Qcow2Backend::create(d / "overlay.qcow2", size, co);
      REQUIRE(ov.ok());
      require_same(**ov, m);
      std::mt19937 rng(11);
      // v3 discards turn clusters into zero clusters, hiding the backing data.
      random_ops(**ov, m, rng, 300);
      require_same(**ov, m);
      REQUIRE((*ov)->flush().ok());
      require_clean(**ov);
      REQUIRE((*ov)->close().ok());
      auto re = open_rw(d / "overlay.qcow2");
      CHECK(re->info().backing_format == fmt);
      require_same(*re, m);
      auto mp = re->map();
      REQUIRE(mp.ok());
      bool saw_backing = false;
      for (const auto& e : *mp) saw_backing |= e.depth == 1;
      CHECK(saw_backing);
    }
  }
}

TEST_CASE("qcow2: backing chains are bounded and loop-free", "[storage][qcow2]") {
  TempDir d;
  REQUIRE(Qcow2Backend::create(d / "0.qcow2", 1 << 20).ok());
  for (int i = 1; i <= 5; i++) {
    Qcow2CreateOptions co;
    co.backing_file = std::to_string(i - 1) + ".qcow2";
    REQUIRE(Qcow2Backend::create(d / (std::to_string(i) + ".qcow2"), 1 << 20, co).ok());
  }
  CHECK(Qcow2Backend::open(d / "5.qcow2").ok());
  Qcow2OpenOptions shallow;
  shallow.max_backing_depth = 3;
  auto deep = Qcow2Backend::open(d / "5.qcow2", shallow);
  REQUIRE(!deep.ok());
  CHECK(deep.error().code == ELOOP);
  // a.qcow2 -> b.qcow2 -> a.qcow2
  REQUIRE(Qcow2Backend::create(d / "a.qcow2", 1 << 20).ok());
  Qcow2CreateOptions co;
  co.backing_file = "a.qcow2";
  REQUIRE(Qcow2Backend::create(d / "b.qcow2", 1 << 20, co).ok());
  co.backing_file = "b.qcow2";
  co.backing_format = "qcow2";
  REQUIRE(Qcow2Backend::create(d / "a2.qcow2", 1 << 20, co).ok());
  REQUIRE(std::rename((d / "a2.qcow2").c_str(), (d / "a.qcow2").c_str()) == 0);
  auto loop = Qcow2Backend::open(d / "a.qcow2");
  REQUIRE(!loop.ok());
  CHECK(loop.error().code == ELOOP);
  auto missing = Qcow2Backend::open(d / "3.qcow2");
  REQUIRE(missing.ok());
  REQUIRE(std::remove((d / "2.qcow2").c_str()) == 0);
  auto gone = Qcow2Backend::open(d / "3.qcow2");
  REQUIRE(!gone.ok());
  CHECK(gone.error().message.find("backing") != std::string::npos);
}

TEST_CASE("qcow2: version 2 images are written without zero clusters", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "v2.qcow2";
  Qcow2CreateOptions co;
  co.version = 2;
  co.cluster_size = 4096;
  auto b = Qcow2Backend::create(img, 16 << 20, co);
  REQUIRE(b.ok());
  CHECK((*b)->info().compat == "0.10");
  Model m;
  m.cs = 4096;
  m.data.assign(16 << 20, 0);
  std::mt19937 rng(21);
  random_ops(**b, m, rng, 300);
  require_same(**b, m);
  REQUIRE((*b)->flush().ok());
  require_clean(**b);
  // No entry may carry the zero flag: scan the L2 tables.
  auto mp = (*b)->map();
  REQUIRE(mp.ok());
  for (const auto& e : *mp) CHECK(!(e.present && e.zero));
  REQUIRE((*b)->close().ok());
  auto re = open_rw(img);
  require_same(*re, m);
}

TEST_CASE("qcow2: discard punches holes and write-zeroes makes zero clusters", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  auto b = Qcow2Backend::create(img, 32 << 20);
  REQUIRE(b.ok());
  auto& q = **b;
  auto p = pattern(32 << 20, 1);
  REQUIRE(q.write(0, p).ok());
  REQUIRE(q.flush().ok());
  const uint64_t full = file_blocks_bytes(img);
  const uint64_t allocated = q.stats().allocated_clusters;
  REQUIRE(q.discard(0, 16 << 20).ok());
  REQUIRE(q.flush().ok());
  CHECK(file_blocks_bytes(img) < full - (15 << 20));
  CHECK(q.stats().allocated_clusters == allocated - 256);
  std::vector<uint8_t> got(1 << 20);
  REQUIRE(q.read(0, got).ok());
  CHECK(std::all_of(got.begin(), got.end(), [](uint8_t v) { return v == 0; }));
  // write-zeroes without unmap keeps the clusters allocated (preallocated zero)
  const uint64_t before = q.stats().allocated_clusters;
  REQUIRE(q.write_zeroes(16 << 20, 4 << 20, false).ok());
  REQUIRE(q.flush().ok());
  CHECK(q.stats().allocated_clusters == before);
  REQUIRE(q.read(16 << 20, got).ok());
  CHECK(std::all_of(got.begin(), got.end(), [](uint8_t v) { return v == 0; }));
  // ... and writing into a preallocated zero cluster keeps the rest zero
  REQUIRE(q.write((16 << 20) + 100, Bytes(p.data(), 10)).ok());
  std::vector<uint8_t> c(65536);
  REQUIRE(q.read(16 << 20, c).ok());
  CHECK(std::memcmp(c.data() + 100, p.data(), 10) == 0);
  CHECK(std::count(c.begin(), c.end(), 0) >= 65536 - 10);
  // with unmap they are freed
  REQUIRE(q.write_zeroes(20 << 20, 4 << 20, true).ok());
  REQUIRE(q.flush().ok());
  CHECK(q.stats().allocated_clusters == before - 64);
  // partial clusters get real zeros
  REQUIRE(q.write_zeroes((28 << 20) + 10, 100, true).ok());
  REQUIRE(q.read(28 << 20, c).ok());
  CHECK(std::memcmp(c.data(), p.data() + (28 << 20), 10) == 0);
  CHECK(std::all_of(c.begin() + 10, c.begin() + 110, [](uint8_t v) { return v == 0; }));
  CHECK(std::memcmp(c.data() + 110, p.data() + (28 << 20) + 110, 65536 - 110) == 0);
  const auto s = q.stats();
  CHECK(s.discards == 1);
  CHECK(s.write_zeroes == 3);
  CHECK(s.bytes_discarded == (16u << 20));
  require_clean(q);
}

TEST_CASE("qcow2: requests past the end of the disk are refused", "[storage][qcow2]") {
  TempDir d;
  auto b = Qcow2Backend::create(d / "a.qcow2", 1 << 20);
  REQUIRE(b.ok());
  std::vector<uint8_t> buf(10);
  CHECK((*b)->read((1 << 20) - 5, buf).error().code == EINVAL);
  CHECK((*b)->write(UINT64_MAX - 3, buf).error().code == EINVAL);
  CHECK((*b)->discard(1 << 20, 1).error().code == EINVAL);
  CHECK((*b)->write_zeroes(0, (1 << 20) + 1, true).error().code == EINVAL);
  CHECK((*b)->stats().errors == 4);
}

TEST_CASE("qcow2: lazy refcounts set the dirty bit; a crash copy is repaired at open", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  Qcow2CreateOptions co;
  co.lazy_refcounts = true;
  REQUIRE(Qcow2Backend::create(img, 32 << 20, co).ok());
  auto b = open_rw(img);
  CHECK(b->info().lazy_refcounts);
  Model m;
  m.data.assign(32 << 20, 0);
  std::mt19937 rng(5);
  random_ops(*b, m, rng, 200);
  REQUIRE(b->flush().ok());
  CHECK((peek_be64(img, 72) & q::kIncompatDirty) != 0);
  // "Crash": copy the file as it is now, without closing.
  REQUIRE(write_file(d / "crash.qcow2", read_file(img)));
  REQUIRE(b->close().ok());
  CHECK((peek_be64(img, 72) & q::kIncompatDirty) == 0);
  require_clean(*open_rw(img));

  // Read-only, the dirty copy is read as it is.
  {
    auto ro = Qcow2Backend::open(d / "crash.qcow2", ro_opts());
    REQUIRE(ro.ok());
    CHECK((*ro)->info().dirty);
    require_same(**ro, m);
  }
  // Writable, its refcounts are rebuilt first.
  Qcow2OpenOptions eager;
  eager.lazy_refcounts = false;
  auto c = open_rw(d / "crash.qcow2", eager);
  CHECK(!c->info().dirty);
  require_same(*c, m);
  require_clean(*c);
}

TEST_CASE("qcow2: snapshots of the file taken at any moment are consistent", "[storage][qcow2]") {
  // A process crash leaves the file as the last pwrite left it: every such
  // moment must be an image without corruption (leaks are allowed), holding
  // at least what the last flush made durable.
  TempDir d;
  const std::string img = d / "a.qcow2";
  Qcow2CreateOptions co;
  co.cluster_size = 4096;
  REQUIRE(Qcow2Backend::create(img, 8 << 20, co).ok());
  auto b = open_rw(img, cache_opts(8 * 4096, 4 * 4096));
  Model m;
  m.cs = 4096;
  m.data.assign(8 << 20, 0);
  std::mt19937 rng(9);
  for (int round = 0; round < 30; round++) {
    random_ops(*b, m, rng, 20);
    const std::string snap = d / "snap.qcow2";
    REQUIRE(write_file(snap, read_file(img)));
    auto c = Qcow2Backend::check_file(snap, false);
    REQUIRE(c.ok());
    if (c->corruptions) {
      for (const auto& msg : c->messages) UNSCOPED_INFO(msg);
      FAIL("round " << round << ": " << c->summary());
    }
    auto fixed = Qcow2Backend::check_file(snap, true);
    REQUIRE(fixed.ok());
    CHECK(fixed->clean());
  }
  REQUIRE(b->flush().ok());
  const std::string snap = d / "final.qcow2";
  REQUIRE(write_file(snap, read_file(img)));
  auto c = Qcow2Backend::open(snap, ro_opts());
  REQUIRE(c.ok());
  require_same(**c, m);
}

TEST_CASE("qcow2: check finds leaks and refcount errors; repair fixes them", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  {
    auto b = Qcow2Backend::create(img, 16 << 20);
    REQUIRE(b.ok());
    REQUIRE((*b)->write(0, pattern(4 << 20, 2)).ok());
    REQUIRE((*b)->close().ok());
  }
  const uint64_t cs = 65536;
  const uint64_t rt = peek_be64(img, 48);
  const uint64_t rb = peek_be64(img, rt);  // refcount block 0, 16-bit entries
  const uint64_t fsize = file_size(img);
  const uint64_t end_cluster = (fsize + cs - 1) / cs;
  // A leak: a cluster past the used ones gets refcount 1.
  {
    const int fd = ::open(img.c_str(), O_RDWR);
    uint8_t one[2] = {0, 1};
    REQUIRE(::pwrite(fd, one, 2, off_t(rb + 2 * (end_cluster + 3))) == 2);
    ::close(fd);
  }
  auto c = Qcow2Backend::check_file(img, false);
  REQUIRE(c.ok());
  CHECK(c->leaks == 1);
  CHECK(c->corruptions == 0);
  CHECK(c->summary().find("leaked") != std::string::npos);
  CHECK(c->to_json(img).find("\"leaks\": 1") != std::string::npos);
  // A refcount too low: the first data cluster drops to 0.
  const uint64_t l1 = peek_be64(img, 40);
  const uint64_t l2 = peek_be64(img, l1) & q::kL1OffsetMask;
  const uint64_t data0 = peek_be64(img, l2) & q::kL2OffsetMask;
  {
    const int fd = ::open(img.c_str(), O_RDWR);
    uint8_t zero[2] = {0, 0};
    REQUIRE(::pwrite(fd, zero, 2, off_t(rb + 2 * (data0 / cs))) == 2);
    ::close(fd);
  }
  c = Qcow2Backend::check_file(img, false);
  REQUIRE(c.ok());
  CHECK(c->corruptions >= 1);
  CHECK(c->leaks == 1);
  auto fixed = Qcow2Backend::check_file(img, true);
  REQUIRE(fixed.ok());
  CHECK(fixed->repaired);
  CHECK(fixed->clean());
  CHECK(fixed->leaks_fixed == 1);
  CHECK(fixed->corruptions_fixed >= 1);
  c = Qcow2Backend::check_file(img, false);
  REQUIRE(c.ok());
  CHECK(c->clean());
  auto b = open_rw(img);
  std::vector<uint8_t> got(4 << 20);
  REQUIRE(b->read(0, got).ok());
  CHECK(got == pattern(4 << 20, 2));
  CHECK(b->stats().last_check == "never");
  require_clean(*b);
  CHECK(b->stats().last_check == "No errors were found on the image.");
}

TEST_CASE("qcow2: a reference past the end of the file marks the image corrupt", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  {
    auto b = Qcow2Backend::create(img, 16 << 20);
    REQUIRE(b.ok());
    REQUIRE((*b)->write(0, pattern(1 << 20, 2)).ok());
    REQUIRE((*b)->close().ok());
  }
  const uint64_t l1 = peek_be64(img, 40);
  const uint64_t l2 = peek_be64(img, l1) & q::kL1OffsetMask;
  poke_be64(img, l2 + 8 * 3, (1ull << 40) | q::kOflagCopied);  // cluster 3 -> 1 TiB
  {
    auto b = open_rw(img);
    std::vector<uint8_t> buf(65536);
    REQUIRE(b->read(0, buf).ok());
    auto r = b->read(3 * 65536, buf);
    REQUIRE(!r.ok());
    CHECK(r.error().code == EIO);
    CHECK(r.error().message.find("past the end") != std::string::npos);
    CHECK(b->info().corrupt);
    auto w = b->write(0, buf);
    REQUIRE(!w.ok());
    CHECK(w.error().code == EROFS);
  }
  CHECK((peek_be64(img, 72) & q::kIncompatCorrupt) != 0);
  auto rw = Qcow2Backend::open(img);
  REQUIRE(!rw.ok());
  CHECK(rw.error().code == EUCLEAN);
  CHECK(rw.error().message.find("corrupt") != std::string::npos);
  auto ro = Qcow2Backend::open(img, ro_opts());
  REQUIRE(ro.ok());
  ro->reset();
  auto fixed = Qcow2Backend::check_file(img, true);
  REQUIRE(fixed.ok());
  CHECK(fixed->clean());
  CHECK((peek_be64(img, 72) & q::kIncompatCorrupt) == 0);
  auto b = open_rw(img);
  std::vector<uint8_t> buf(65536);
  REQUIRE(b->read(3 * 65536, buf).ok());
  CHECK(std::all_of(buf.begin(), buf.end(), [](uint8_t v) { return v == 0; }));
}

TEST_CASE("qcow2: features this engine cannot handle are refused by name", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  REQUIRE(Qcow2Backend::create(img, 1 << 20).ok());
  const auto orig = read_file(img);
  SECTION("unknown incompatible bit") {
    poke_be64(img, 72, 1ull << 40);
    auto b = Qcow2Backend::open(img, ro_opts());
    REQUIRE(!b.ok());
    CHECK(b.error().code == ENOTSUP);
    CHECK(b.error().message.find("incompatible bit 40") != std::string::npos);
  }
  SECTION("extended L2 entries") {
    poke_be64(img, 72, q::kIncompatExtendedL2);
    auto b = Qcow2Backend::open(img, ro_opts());
    REQUIRE(!b.ok());
    CHECK(b.error().message.find("extended L2 entries") != std::string::npos);
  }
  SECTION("external data file") {
    poke_be64(img, 72, q::kIncompatDataFile);
    auto b = Qcow2Backend::open(img, ro_opts());
    REQUIRE(!b.ok());
    CHECK(b.error().message.find("external data file") != std::string::npos);
  }
  SECTION("encryption") {
    poke_be32(img, 32, 2);
    auto b = Qcow2Backend::open(img, ro_opts());
    REQUIRE(!b.ok());
    CHECK(b.error().message.find("encrypted") != std::string::npos);
  }
  SECTION("internal snapshots: read-only only") {
    poke_be32(img, 60, 1);
    poke_be64(img, 64, 5 * 65536);
    auto rw = Qcow2Backend::open(img);
    REQUIRE(!rw.ok());
    CHECK(rw.error().message.find("snapshots") != std::string::npos);
  }
  SECTION("unknown autoclear bits are cleared on a writable open") {
    poke_be64(img, 88, 0x6);
    CHECK(Qcow2Backend::open(img).ok());
    CHECK(peek_be64(img, 88) == 0);
  }
}

TEST_CASE("qcow2: compressed clusters are inflated", "[storage][qcow2]") {
  // Build one by hand: deflate a cluster (raw, as QEMU does), append it to
  // the file, and point an L2 entry at it with a compressed descriptor.
  TempDir d;
  const std::string img = d / "c.qcow2";
  for (uint64_t cs : {4096ull, 65536ull, 2ull << 20}) {
    DYNAMIC_SECTION("cluster size " << cs) {
      Qcow2CreateOptions co;
      co.cluster_size = cs;
      {
        auto b = Qcow2Backend::create(img, 8 * cs, co);
        REQUIRE(b.ok());
        REQUIRE((*b)->write(0, pattern(cs, 1)).ok());  // allocates the L2 table
        REQUIRE((*b)->close().ok());
      }
      std::vector<uint8_t> plain(cs);
      for (size_t i = 0; i < cs; i++) plain[i] = uint8_t((i / 100) * 7);
      z_stream z{};
      REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) == Z_OK);
      std::vector<uint8_t> comp(cs * 2);
      z.next_in = plain.data();
      z.avail_in = uInt(cs);
      z.next_out = comp.data();
      z.avail_out = uInt(comp.size());
      REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
      comp.resize(z.total_out);
      deflateEnd(&z);
      auto file = read_file(img);
      const uint64_t at = (file.size() + 511) / 512 * 512 + 100;  // deliberately not sector aligned
      file.resize(at, 0);
      file.insert(file.end(), comp.begin(), comp.end());
      file.resize((file.size() + cs - 1) / cs * cs, 0);
      REQUIRE(write_file(img, file));
      const uint64_t sectors = (at + comp.size() - 1) / 512 - at / 512 + 1;
      const uint32_t cb = uint32_t(__builtin_ctzll(cs));
      const uint64_t l1 = peek_be64(img, 40);
      const uint64_t l2 = peek_be64(img, l1) & q::kL1OffsetMask;
      poke_be64(img, l2 + 8 * 2, q::encode_compressed(at, sectors, cb));
      // Its refcounts: fix them with a repair, which counts the sectors.
      auto fixed = Qcow2Backend::check_file(img, true);
      REQUIRE(fixed.ok());
      CHECK(fixed->clean());
      auto b = open_rw(img);
      std::vector<uint8_t> got(cs);
      REQUIRE(b->read(2 * cs, got).ok());
      CHECK(got == plain);
      auto mp = b->map(2 * cs, cs);
      REQUIRE(mp.ok());
      REQUIRE(mp->size() == 1);
      CHECK((*mp)[0].compressed);
      auto c = b->check(false);
      REQUIRE(c.ok());
      CHECK(c->compressed_clusters == 1);
      // A partial write copies the inflated cluster, then frees the compressed one.
      REQUIRE(b->write(2 * cs + 10, Bytes(pattern(5, 3))).ok());
      std::memcpy(plain.data() + 10, pattern(5, 3).data(), 5);
      REQUIRE(b->read(2 * cs, got).ok());
      CHECK(got == plain);
      REQUIRE(b->flush().ok());
      require_clean(*b);
      // Garbage in place of the deflate stream is an error, not a crash.
      REQUIRE(b->close().ok());
      poke_be64(img, l2 + 8 * 4, q::encode_compressed(512, 2, cb));
      auto fixed2 = Qcow2Backend::check_file(img, true);
      REQUIRE(fixed2.ok());
      auto b2 = Qcow2Backend::open(img, ro_opts());
      REQUIRE(b2.ok());
      CHECK(!(*b2)->read(4 * cs, got).ok());
    }
  }
}

TEST_CASE("qcow2: compaction moves clusters into holes and shrinks the file", "[storage][qcow2]") {
  for (uint64_t cs : {4096ull, 65536ull}) {
    DYNAMIC_SECTION("cluster size " << cs) {
      TempDir d;
      const std::string img = d / "a.qcow2";
      const uint64_t size = 64 << 20;
      Qcow2CreateOptions co;
      co.cluster_size = cs;
      auto cr = Qcow2Backend::create(img, size, co);
      REQUIRE(cr.ok());
      auto& b = **cr;
      Model m;
      m.cs = cs;
      m.data = pattern(size, 4);
      REQUIRE(b.write(0, m.data).ok());
      REQUIRE(b.flush().ok());
      const uint64_t full = b.file_size();
      // Discard every other run of 8 clusters: 50% of the data.
      for (uint64_t c = 0; c < size / cs; c += 16) {
        REQUIRE(b.discard(c * cs, 8 * cs).ok());
        std::memset(&m.data[c * cs], 0, 8 * cs);
      }
      REQUIRE(b.flush().ok());
      CHECK(b.file_size() == full);  // holes, same length
      auto job = b.start_compaction();
      REQUIRE(job.ok());
      CHECK(!b.start_compaction().ok());  // one job at a time
      std::mt19937 rng(1);
      unsigned last = 0;
      int steps = 0;
      while (!(*job)->done()) {
        auto r = (*job)->step(64);
        REQUIRE(r.ok());
        CHECK((*job)->percent() >= last);
        last = (*job)->percent();
        // The guest keeps going: reads and some writes between slices.
        if (++steps % 3 == 0) {
          uint64_t off = rng() % size;
          uint64_t len = std::min<uint64_t>(1 + rng() % (2 * cs), size - off);
          std::vector<uint8_t> got(len);
          REQUIRE(b.read(off, got).ok());
          REQUIRE(std::memcmp(got.data(), &m.data[off], len) == 0);
          if (steps % 9 == 0) {
            auto p = pattern(len, uint32_t(steps));
            REQUIRE(b.write(off, p).ok());
            std::memcpy(&m.data[off], p.data(), len);
          }
        }
      }
      CHECK((*job)->percent() == 100);
      INFO((*job)->summary());
      CHECK((*job)->summary().find("compacted") == 0);
      const uint64_t live = b.stats().allocated_clusters * cs;
      CHECK(b.file_size() < full * 6 / 10);
      CHECK(b.file_size() <= live + 4 * cs);
      require_same(b, m);
      require_clean(b);
      job->reset();
      REQUIRE(b.close().ok());
      CHECK(file_size(img) < full * 6 / 10);
      auto re = open_rw(img);
      require_same(*re, m);
      require_clean(*re);
    }
  }
}

TEST_CASE("qcow2: compaction moves L2 tables and refcount blocks too", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  Qcow2CreateOptions co;
  co.cluster_size = 512;
  co.refcount_bits = 16;  // 256 clusters per refcount block, 64 entries per L2 table
  const uint64_t size = 4 << 20;
  auto cr = Qcow2Backend::create(img, size, co);
  REQUIRE(cr.ok());
  auto& b = **cr;
  Model m;
  m.cs = 512;
  m.data = pattern(size, 8);
  REQUIRE(b.write(0, m.data).ok());
  REQUIRE(b.discard(0, size / 2).ok());
  std::memset(m.data.data(), 0, size / 2);
  REQUIRE(b.flush().ok());
  const uint64_t before = b.file_size();
  auto job = b.start_compaction();
  REQUIRE(job.ok());
  while (!(*job)->done()) REQUIRE((*job)->step(100).ok());
  INFO((*job)->summary());
  CHECK(b.file_size() < before * 7 / 10);
  require_same(b, m);
  require_clean(b);
}

TEST_CASE("qcow2: discard-zeroes releases clusters that hold only zeros", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  auto cr = Qcow2Backend::create(img, 16 << 20);
  REQUIRE(cr.ok());
  auto& b = **cr;
  Model m;
  m.data = pattern(16 << 20, 6);
  for (uint64_t c = 0; c < 256; c += 4) std::memset(&m.data[c * 65536], 0, 65536);
  REQUIRE(b.write(0, m.data).ok());
  REQUIRE(b.flush().ok());
  const uint64_t allocated = b.stats().allocated_clusters;
  auto job = b.start_discard_zeroes();
  REQUIRE(job.ok());
  while (!(*job)->done()) REQUIRE((*job)->step(10).ok());
  CHECK((*job)->summary().find("released 64 zero clusters") != std::string::npos);
  CHECK(b.stats().allocated_clusters == allocated - 64);
  require_same(b, m);
  require_clean(b);
}

TEST_CASE("qcow2: map reports data, zero and unallocated extents", "[storage][qcow2]") {
  TempDir d;
  auto cr = Qcow2Backend::create(d / "a.qcow2", 1 << 20);
  REQUIRE(cr.ok());
  auto& b = **cr;
  REQUIRE(b.write(0, pattern(2 * 65536, 1)).ok());
  REQUIRE(b.write_zeroes(4 * 65536, 65536, true).ok());  // unallocated already: stays unallocated
  REQUIRE(b.write(6 * 65536, pattern(65536, 1)).ok());
  REQUIRE(b.write_zeroes(6 * 65536, 65536, true).ok());
  auto mp = b.map();
  REQUIRE(mp.ok());
  REQUIRE(mp->size() == 4);
  CHECK((*mp)[0].start == 0);
  CHECK((*mp)[0].length == 2 * 65536);
  CHECK((*mp)[0].data);
  CHECK((*mp)[0].offset.has_value());
  CHECK(!(*mp)[1].present);
  CHECK((*mp)[1].zero);
  CHECK((*mp)[2].start == 6 * 65536);
  CHECK((*mp)[2].present);
  CHECK((*mp)[2].zero);
  CHECK(!(*mp)[2].data);
  CHECK((*mp)[3].start == 7 * 65536);
  CHECK((*mp)[3].length == (1 << 20) - 7 * 65536);
  const auto js = map_to_json(*mp);
  CHECK(js.find("\"start\": 0, \"length\": 131072, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true") !=
        std::string::npos);
}

TEST_CASE("qcow2: resize grows the disk and the L1 table, never shrinks", "[storage][qcow2]") {
  TempDir d;
  const std::string img = d / "a.qcow2";
  Qcow2CreateOptions co;
  co.cluster_size = 4096;  // 2 MiB per L2 table
  auto cr = Qcow2Backend::create(img, 3 << 20, co);
  REQUIRE(cr.ok());
  auto& b = **cr;
  REQUIRE(b.header().l1_size == 2);
  auto p = pattern(3 << 20, 1);
  REQUIRE(b.write(0, p).ok());
  CHECK(b.resize(1 << 20).error().code == EINVAL);
  REQUIRE(b.resize(100 << 20).ok());
  CHECK(b.size() == (100u << 20));
  CHECK(b.header().l1_size >= 50);
  auto q2 = pattern(1 << 20, 2);
  REQUIRE(b.write(99 << 20, q2).ok());
  std::vector<uint8_t> got(3 << 20);
  REQUIRE(b.read(0, got).ok());
  CHECK(got == p);
  REQUIRE(b.flush().ok());
  require_clean(b);
  REQUIRE(b.close().ok());
  auto re = open_rw(img);
  CHECK(re->size() == (100u << 20));
  got.resize(1 << 20);
  REQUIRE(re->read(99 << 20, got).ok());
  CHECK(got == q2);
  require_clean(*re);
}

TEST_CASE("qcow2: hostile images fail with an error, never a crash", "[storage][qcow2]") {
  TempDir d;
  const std::string good = d / "good.qcow2";
  Qcow2CreateOptions co;
  co.cluster_size = 4096;
  {
    auto b = Qcow2Backend::create(good, 8 << 20, co);
    REQUIRE(b.ok());
    REQUIRE((*b)->write(0, pattern(1 << 20, 1)).ok());
    REQUIRE((*b)->close().ok());
  }
  const auto orig = read_file(good);
  const uint64_t l1 = peek_be64(good, 40);
  const uint64_t rt = peek_be64(good, 48);
  const uint64_t l2 = peek_be64(good, l1) & q::kL1OffsetMask;
  struct Mutation {
    const char* name;
    std::function<void(const std::string&)> apply;
  };
  const std::vector<Mutation> muts = {
      {"truncated to the header", [](const std::string& p) { (void)!truncate(p.c_str(), 50); }},
      {"truncated tables", [&](const std::string& p) { (void)!truncate(p.c_str(), off_t(l1 + 4)); }},
      {"huge L1", [](const std::string& p) { poke_be32(p, 36, 0x7fffffff); }},
      {"huge size", [](const std::string& p) { poke_be64(p, 24, ~0ull >> 1); }},
      {"cluster bits 30", [](const std::string& p) { poke_be32(p, 20, 30); }},
      {"refcount order 7", [](const std::string& p) { poke_be32(p, 96, 7); }},
      {"refcount table huge", [](const std::string& p) { poke_be32(p, 56, 1u << 20); }},
      {"L1 past EOF", [](const std::string& p) { poke_be64(p, 40, 1ull << 40); }},
      {"L1 unaligned", [](const std::string& p) { poke_be64(p, 40, 4096 * 3 + 8); }},
      {"L2 is the header", [&](const std::string& p) { poke_be64(p, l1, q::kOflagCopied | 0); }},
      {"L2 is the L1 table", [&](const std::string& p) { poke_be64(p, l1, q::kOflagCopied | l1); }},
      {"L2 is the refcount table", [&](const std::string& p) { poke_be64(p, l1, q::kOflagCopied | rt); }},
      {"L2 entry points at its own table", [&](const std::string& p) { poke_be64(p, l2, q::kOflagCopied | l2); }},
      {"L2 entry points at the header", [&](const std::string& p) { poke_be64(p, l2 + 8, q::kOflagCopied | 0x1000 * 0); }},
      {"L2 entry unaligned", [&](const std::string& p) { poke_be64(p, l2, q::kOflagCopied | 0x1200); }},
      {"refcount block is the header", [&](const std::string& p) { poke_be64(p, rt, 0); poke_be64(p, rt, 512); }},
      {"refcount block past EOF", [&](const std::string& p) { poke_be64(p, rt, 1ull << 40); }},
      {"compressed past EOF", [&](const std::string& p) { poke_be64(p, l2 + 16, q::encode_compressed(1ull << 40, 4, 12)); }},
      {"backing name outside the cluster", [](const std::string& p) { poke_be64(p, 8, 4090); poke_be32(p, 16, 100); }},
      {"header extension too long", [](const std::string& p) { poke_be32(p, 112 + 4, 0xffffff); }},
      {"header_length odd", [](const std::string& p) { poke_be32(p, 100, 105); }},
      {"snapshot table garbage", [](const std::string& p) { poke_be32(p, 60, 5); poke_be64(p, 64, 4096); }},
      {"bad magic", [](const std::string& p) { poke_be32(p, 0, 0x12345678); }},
  };
  for (const auto& mut : muts) {
    DYNAMIC_SECTION(mut.name) {
      const std::string img = d / "bad.qcow2";
      REQUIRE(write_file(img, orig));
      mut.apply(img);
      for (bool ro : {true, false}) {
        auto b = Qcow2Backend::open(img, ro_opts(ro));
        if (!b) {
          CHECK(!b.error().message.empty());
          continue;
        }
        std::vector<uint8_t> buf(1 << 20);
        for (uint64_t off = 0; off + buf.size() <= (*b)->size(); off += buf.size()) (void)(*b)->read(off, buf);
        (void)(*b)->map();
        (void)(*b)->check(false);
        if (!ro) {
          (void)(*b)->write(4096, Bytes(pattern(8192, 3)));
          (void)(*b)->discard(0, 8192);
          (void)(*b)->flush();
        }
      }
      // check never crashes, and repair leaves something that opens or is refused cleanly
      auto c = Qcow2Backend::check_file(img, false);
      if (c) (void)c->summary();
      auto f = Qcow2Backend::check_file(img, true);
      if (f) (void)f->summary();
    }
  }
}

TEST_CASE("qcow2: compaction moves the L1 and refcount tables when they sit at the end", "[storage][qcow2]") {
  // A resize puts the grown L1 table at the end of the file, and a repair
  // puts the rebuilt refcount table and blocks there too.
  TempDir d;
  const std::string img = d / "a.qcow2";
  Qcow2CreateOptions co;
  co.cluster_size = 4096;
  const uint64_t size = 16 << 20;
  Model m;
  m.cs = 4096;
  m.data = pattern(size, 12);
  {
    auto b = Qcow2Backend::create(img, size, co);
    REQUIRE(b.ok());
    REQUIRE((*b)->write(0, m.data).ok());
    for (uint64_t off = 0; off < size; off += 32 * 4096) {
      REQUIRE((*b)->discard(off, 16 * 4096).ok());
      std::memset(&m.data[off], 0, 16 * 4096);
    }
    REQUIRE((*b)->resize(size + (1ull << 30)).ok());  // 513 L1 entries: two clusters, at the end
    REQUIRE((*b)->close().ok());
  }
  m.data.resize(size + (1ull << 30), 0);
  // Leak a cluster past the end so that repair rebuilds the refcounts.
  const uint64_t rt = peek_be64(img, 48);
  const uint64_t rb = peek_be64(img, rt);
  const uint64_t end_cluster = (file_size(img) + 4095) / 4096;
  {
    const int fd = ::open(img.c_str(), O_RDWR);
    uint8_t one[2] = {0, 1};
    REQUIRE(::pwrite(fd, one, 2, off_t(rb + 2 * (end_cluster + 1))) == 2);
    ::close(fd);
  }
  auto fixed = Qcow2Backend::check_file(img, true);
  REQUIRE(fixed.ok());
  REQUIRE(fixed->clean());
  const uint64_t before = file_size(img);
  auto b = open_rw(img);
  CHECK(b->header().refcount_table_offset >= before - 4 * 4096);
  auto job = b->start_compaction();
  REQUIRE(job.ok());
  while (!(*job)->done()) REQUIRE((*job)->step(128).ok());
  INFO((*job)->summary());
  CHECK((*job)->summary().find("stopped early") == std::string::npos);
  CHECK(b->file_size() < before * 6 / 10);
  CHECK(b->header().refcount_table_offset < b->file_size() / 2);
  CHECK(b->header().l1_table_offset < b->file_size() / 2);
  std::vector<uint8_t> got(size);
  REQUIRE(b->read(0, got).ok());
  CHECK(std::memcmp(got.data(), m.data.data(), size) == 0);
  require_clean(*b);
  REQUIRE(b->close().ok());
  auto re = open_rw(img);
  REQUIRE(re->read(0, got).ok());
  CHECK(std::memcmp(got.data(), m.data.data(), size) == 0);
  require_clean(*re);
  REQUIRE(re->close().ok());
  if (have_tool("qemu-img")) CHECK(sh("qemu-img check -q '" + img + "'") == 0);
}
