// virtio-blk (vmm/virtio_blk.h) against the fake driver, a RawBackend on a
// temporary file and a real IoThread; the test runs the uv loop until the
// device has answered. Covers the request types, every refusal path
// (range, alignment, read-only, bad header, no status byte, bad segments,
// unknown type), backpressure from a small IoThread, and a reset with ops
// in flight (their completions must not touch guest memory).
#include <catch2/catch.hpp>

#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "storage/io_thread.h"
#include "storage/raw.h"
#include "vmm/virtio_blk.h"
#include "vmm_fake_driver.h"

using namespace berth;
using namespace berth::vmm;
using namespace berth::vmm::testing;

namespace {

constexpr uint64_t kDiskSize = 1u << 20;  // 2048 sectors

std::vector<uint8_t> header(uint32_t type, uint64_t sector) {
  std::vector<uint8_t> h(16, 0);
  store_le32(h.data(), type);
  store_le32(h.data() + 8, uint32_t(sector));
  store_le32(h.data() + 12, uint32_t(sector >> 32));
  return h;
}

std::vector<uint8_t> segment(uint64_t sector, uint32_t num, uint32_t flags) {
  std::vector<uint8_t> s(16, 0);
  store_le32(s.data(), uint32_t(sector));
  store_le32(s.data() + 4, uint32_t(sector >> 32));
  store_le32(s.data() + 8, num);
  store_le32(s.data() + 12, flags);
  return s;
}

std::vector<uint8_t> pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> p(len);
  for (size_t i = 0; i < len; i++) p[i] = uint8_t(seed * 31 + i * 7);
  return p;
}

struct Rig {
  std::string path;
  uv_loop_t loop;
  std::unique_ptr<storage::RawBackend> backend;
  std::unique_ptr<storage::IoThread> io;
  FakeVirtio v{1, 64};
  std::unique_ptr<VirtioBlk> blk;

  explicit Rig(bool read_only = false, size_t capacity = 1024) {
    char tmpl[] = "/tmp/berth-vblk-XXXXXX";
    int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = tmpl;
    auto b = storage::RawBackend::create(path, kDiskSize);
    REQUIRE(b);
    backend = std::move(b.value());
    REQUIRE(uv_loop_init(&loop) == 0);
    io = std::make_unique<storage::IoThread>(&loop, *backend, capacity);
    blk = std::make_unique<VirtioBlk>(*io, *backend, read_only, "berth-disk-0");
    blk->activate(v.ctx);
  }
  ~Rig() {
    io->stop();
    blk.reset();
    io.reset();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
    backend.reset();
    ::unlink(path.c_str());
  }

  // Runs the loop until `n` used elements are there (or 5 s pass).
  std::vector<Used> wait_used(size_t n) {
    std::vector<Used> out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
      while (auto u = v.next_used(0)) out.push_back(*u);
      if (out.size() >= n) break;
      uv_run(&loop, UV_RUN_NOWAIT);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    REQUIRE(out.size() == n);
    return out;
  }
  Used request(const Chain& c) {
    (void)c;
    blk->notify(0);
    return wait_used(1)[0];
  }
  // The status byte: the last writable byte.
  uint8_t status(const Chain& c) { return v.writable_bytes(c).back(); }

  void write(uint64_t sector, const std::vector<uint8_t>& data) {
    Chain c = v.add_chain(0, {header(kBlkTOut, sector), data}, {1});
    Used u = request(c);
    REQUIRE(u.len == 1);
    REQUIRE(status(c) == kBlkSOk);
  }
  std::vector<uint8_t> read(uint64_t sector, uint32_t len) {
    Chain c = v.add_chain(0, {header(kBlkTIn, sector)}, {len, 1});
    Used u = request(c);
    REQUIRE(status(c) == kBlkSOk);
    REQUIRE(u.len == len + 1);
    return v.written(c, len);
  }
};

}  // namespace

TEST_CASE("virtio-blk config space and features", "[vmm][virtio-blk]") {
  Rig r;
  CHECK(r.blk->device_type() == kVirtioBlock);
  uint64_t f = r.blk->device_features();
  CHECK((f & kBlkFFlush) != 0);
  CHECK((f & kBlkFBlkSize) != 0);
  CHECK((f & kBlkFSegMax) != 0);
  CHECK((f & kBlkFDiscard) != 0);
  CHECK((f & kBlkFWriteZeroes) != 0);
  CHECK((f & kBlkFRo) == 0);
  std::vector<uint8_t> cfg(64, 0xee);
  r.blk->read_config(0, cfg);
  CHECK(load_le64(&cfg[0]) == kDiskSize / 512);
  CHECK(load_le32(&cfg[8]) == VirtioBlk::kSizeMax);
  CHECK(load_le32(&cfg[12]) == VirtioBlk::kSegMax);
  CHECK(load_le32(&cfg[20]) == 512);
  CHECK(load_le16(&cfg[34]) == 1);
  CHECK(load_le32(&cfg[36]) == VirtioBlk::kMaxDiscardSectors);
  CHECK(load_le32(&cfg[40]) == VirtioBlk::kMaxDiscardSeg);
  CHECK(load_le32(&cfg[48]) == VirtioBlk::kMaxDiscardSectors);
  CHECK(cfg[56] == 1);
  CHECK(cfg[60] == 0);  // past the end
}

TEST_CASE("virtio-blk write then read round trip, split across descriptors", "[vmm][virtio-blk]") {
  Rig r;
  auto data = pattern(4096, 1);
  r.write(8, data);
  CHECK(r.read(8, 4096) == data);
  // The header and the data in one descriptor; the data and status split
  // unevenly over two writable descriptors.
  auto data2 = pattern(1024, 2);
  std::vector<uint8_t> joined = header(kBlkTOut, 100);
  joined.insert(joined.end(), data2.begin(), data2.end());
  Chain w = r.v.add_chain(0, {joined}, {1});
  CHECK(r.request(w).len == 1);
  CHECK(r.status(w) == kBlkSOk);
  Chain rd = r.v.add_chain(0, {header(kBlkTIn, 100)}, {700, 325});
  Used u = r.request(rd);
  CHECK(u.len == 1025);
  auto all = r.v.writable_bytes(rd);
  CHECK(all.back() == kBlkSOk);
  CHECK(std::vector<uint8_t>(all.begin(), all.begin() + 1024) == data2);
  const auto& s = r.blk->stats();
  CHECK(s.writes == 2);
  CHECK(s.reads == 2);
  CHECK(s.bytes_written == 4096 + 1024);
  CHECK(s.bytes_read == 4096 + 1024);
  CHECK(r.v.ctx.interrupts[0] >= 1);
}

TEST_CASE("virtio-blk flush, GET_ID and unknown types", "[vmm][virtio-blk]") {
  Rig r;
  Chain f = r.v.add_chain(0, {header(kBlkTFlush, 0)}, {1});
  CHECK(r.request(f).len == 1);
  CHECK(r.status(f) == kBlkSOk);
  CHECK(r.blk->stats().flushes == 1);

  Chain id = r.v.add_chain(0, {header(kBlkTGetId, 0)}, {20, 1});
  Used u = r.request(id);
  CHECK(u.len == 21);
  auto got = r.v.writable_bytes(id);
  std::vector<uint8_t> want(20, 0);
  std::string serial = "berth-disk-0";
  std::copy(serial.begin(), serial.end(), want.begin());
  CHECK(std::vector<uint8_t>(got.begin(), got.begin() + 20) == want);
  CHECK(got.back() == kBlkSOk);

  Chain unk = r.v.add_chain(0, {header(99, 0)}, {1});
  CHECK(r.request(unk).len == 1);
  CHECK(r.status(unk) == kBlkSUnsupp);
  CHECK(r.blk->stats().unsupported == 1);
}

TEST_CASE("virtio-blk discard and write-zeroes", "[vmm][virtio-blk]") {
  Rig r;
  auto data = pattern(16384, 3);
  r.write(0, data);
  // Discard sectors 0..7, write-zeroes 8..15 (may unmap) and 16..23 (may not).
  std::vector<uint8_t> seg = segment(0, 8, 0);
  Chain d = r.v.add_chain(0, {header(kBlkTDiscard, 0), seg}, {1});
  CHECK(r.request(d).len == 1);
  CHECK(r.status(d) == kBlkSOk);
  std::vector<uint8_t> segs = segment(8, 8, kBlkWriteZeroesUnmap);
  auto s2 = segment(16, 8, 0);
  segs.insert(segs.end(), s2.begin(), s2.end());
  Chain z = r.v.add_chain(0, {header(kBlkTWriteZeroes, 0), segs}, {1});
  CHECK(r.request(z).len == 1);
  CHECK(r.status(z) == kBlkSOk);
  auto back = r.read(0, 16384);
  CHECK(std::all_of(back.begin(), back.begin() + 12288, [](uint8_t b) { return b == 0; }));
  CHECK(std::vector<uint8_t>(back.begin() + 12288, back.end()) ==
        std::vector<uint8_t>(data.begin() + 12288, data.end()));
  CHECK(r.blk->stats().discards == 1);
  CHECK(r.blk->stats().write_zeroes == 1);
  CHECK(r.blk->stats().bytes_zeroed == 8192);

  // UNMAP on a discard and unknown flags are UNSUPP; a ragged table is IOERR.
  Chain bad1 = r.v.add_chain(0, {header(kBlkTDiscard, 0), segment(0, 8, kBlkWriteZeroesUnmap)}, {1});
  r.request(bad1);
  CHECK(r.status(bad1) == kBlkSUnsupp);
  Chain bad2 = r.v.add_chain(0, {header(kBlkTWriteZeroes, 0), segment(0, 8, 0x80)}, {1});
  r.request(bad2);
  CHECK(r.status(bad2) == kBlkSUnsupp);
  Chain bad3 = r.v.add_chain(0, {header(kBlkTDiscard, 0), std::vector<uint8_t>(10, 0)}, {1});
  r.request(bad3);
  CHECK(r.status(bad3) == kBlkSIoErr);
  Chain bad4 = r.v.add_chain(0, {header(kBlkTDiscard, 0), segment(2040, 9, 0)}, {1});
  r.request(bad4);
  CHECK(r.status(bad4) == kBlkSIoErr);
  CHECK(r.blk->stats().bad_segment == 2);
  CHECK(r.blk->stats().bad_length == 1);
  CHECK(r.blk->stats().out_of_range == 1);
}

TEST_CASE("virtio-blk refuses sector ranges beyond the capacity", "[vmm][virtio-blk]") {
  Rig r;
  const uint64_t cap = kDiskSize / 512;
  struct Case {
    uint32_t type;
    uint64_t sector;
    uint32_t len;
  } cases[] = {
      {kBlkTIn, cap, 512},                  // starts at the end
      {kBlkTIn, cap - 1, 1024},             // runs past the end
      {kBlkTOut, cap - 1, 1024},
      {kBlkTIn, ~uint64_t(0) - 1, 1024},    // sector + count overflows
      {kBlkTIn, uint64_t(1) << 55, 512},    // sector * 512 overflows
  };
  for (const auto& c : cases) {
    Chain ch = c.type == kBlkTIn ? r.v.add_chain(0, {header(c.type, c.sector)}, {c.len, 1})
                                 : r.v.add_chain(0, {header(c.type, c.sector), pattern(c.len, 1)}, {1});
    r.request(ch);
    CHECK(r.status(ch) == kBlkSIoErr);
  }
  CHECK(r.blk->stats().out_of_range == 5);
  // The last sector itself is fine.
  auto data = pattern(512, 9);
  r.write(cap - 1, data);
  CHECK(r.read(cap - 1, 512) == data);
}

TEST_CASE("virtio-blk refuses lengths that are not whole sectors", "[vmm][virtio-blk]") {
  Rig r;
  Chain w = r.v.add_chain(0, {header(kBlkTOut, 0), pattern(100, 1)}, {1});
  r.request(w);
  CHECK(r.status(w) == kBlkSIoErr);
  Chain rd = r.v.add_chain(0, {header(kBlkTIn, 0)}, {513, 1});
  r.request(rd);
  CHECK(r.status(rd) == kBlkSIoErr);
  CHECK(r.blk->stats().bad_length == 2);
}

TEST_CASE("virtio-blk on a read-only disk refuses writes, discards and write-zeroes", "[vmm][virtio-blk]") {
  Rig r(true);
  CHECK(r.blk->read_only());
  CHECK((r.blk->device_features() & kBlkFRo) != 0);
  CHECK((r.blk->device_features() & kBlkFDiscard) == 0);
  Chain w = r.v.add_chain(0, {header(kBlkTOut, 0), pattern(512, 1)}, {1});
  r.request(w);
  CHECK(r.status(w) == kBlkSIoErr);
  Chain d = r.v.add_chain(0, {header(kBlkTDiscard, 0), segment(0, 8, 0)}, {1});
  r.request(d);
  CHECK(r.status(d) == kBlkSIoErr);
  Chain z = r.v.add_chain(0, {header(kBlkTWriteZeroes, 0), segment(0, 8, 0)}, {1});
  r.request(z);
  CHECK(r.status(z) == kBlkSIoErr);
  CHECK(r.blk->stats().read_only_refused == 3);
  CHECK(r.backend->stats().writes == 0);
  // Reads still work.
  CHECK(r.read(0, 512) == std::vector<uint8_t>(512, 0));
}

TEST_CASE("virtio-blk answers a short header with IOERR and drops a chain without a status byte",
          "[vmm][virtio-blk]") {
  Rig r;
  Chain shorth = r.v.add_chain(0, {std::vector<uint8_t>(8, 0)}, {1});
  CHECK(r.request(shorth).len == 1);
  CHECK(r.status(shorth) == kBlkSIoErr);
  CHECK(r.blk->stats().bad_header == 1);

  Chain nostatus = r.v.add_chain(0, {header(kBlkTOut, 0), pattern(512, 1)}, {});
  Used u = r.request(nostatus);
  CHECK(u.id == nostatus.head);
  CHECK(u.len == 0);
  CHECK(r.blk->stats().no_status == 1);
  CHECK(r.backend->stats().writes == 0);
  // The device keeps working.
  r.write(0, pattern(512, 2));
}

TEST_CASE("virtio-blk waits while the IoThread is full and resumes", "[vmm][virtio-blk]") {
  Rig r(false, 2);
  std::vector<Chain> chains;
  for (int i = 0; i < 6; i++) chains.push_back(r.v.add_chain(0, {header(kBlkTOut, uint64_t(i)), pattern(512, uint8_t(i))}, {1}));
  r.blk->notify(0);
  CHECK(r.blk->stats().deferred >= 1);
  auto used = r.wait_used(6);
  for (auto& c : chains) CHECK(r.status(c) == kBlkSOk);
  CHECK(r.blk->stats().writes == 6);
  for (int i = 0; i < 6; i++) CHECK(r.read(uint64_t(i), 512) == pattern(512, uint8_t(i)));
}

TEST_CASE("virtio-blk reset discards completions of ops in flight", "[vmm][virtio-blk]") {
  Rig r;
  r.write(0, pattern(4096, 5));
  Chain rd = r.v.add_chain(0, {header(kBlkTIn, 0)}, {4096, 1});
  r.blk->notify(0);
  CHECK(r.blk->requests_in_flight() == 1);
  r.blk->reset();
  CHECK(r.blk->requests_in_flight() == 0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (r.blk->ops_in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    uv_run(&r.loop, UV_RUN_NOWAIT);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  CHECK(r.blk->ops_in_flight() == 0);
  CHECK(r.blk->stats().stale_completions == 1);
  // Nothing was written into the buffers or the used ring.
  auto bytes = r.v.writable_bytes(rd);
  CHECK(std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0xa5; }));
  CHECK(r.v.next_used(0) == std::nullopt);
}
