// RawBackend and open_image(): a plain file behind BlockBackend.
#include <catch2/catch.hpp>
#include <cstring>

#include "storage/qcow2.h"
#include "storage/raw.h"
#include "storage_qcow2_util.h"

using namespace berth;
using namespace berth::storage;
using namespace storage_test;

TEST_CASE("raw: read, write, discard and write-zeroes on a sparse file", "[storage][raw]") {
  TempDir d;
  const std::string img = d / "a.raw";
  auto cr = RawBackend::create(img, 8 << 20);
  REQUIRE(cr.ok());
  auto& b = **cr;
  CHECK(b.size() == (8u << 20));
  CHECK(b.format() == "raw");
  auto p = pattern(4 << 20, 1);
  REQUIRE(b.write(1 << 20, p, true).ok());
  std::vector<uint8_t> got(4 << 20);
  REQUIRE(b.read(1 << 20, got).ok());
  CHECK(got == p);
  const uint64_t used = file_blocks_bytes(img);
  CHECK(used >= (4u << 20));
  REQUIRE(b.discard(1 << 20, 2 << 20).ok());
  CHECK(file_blocks_bytes(img) < used);
  REQUIRE(b.write_zeroes(3 << 20, 4096, false).ok());
  REQUIRE(b.read(3 << 20, std::span<uint8_t>(got.data(), 4096)).ok());
  CHECK(std::all_of(got.begin(), got.begin() + 4096, [](uint8_t v) { return v == 0; }));
  REQUIRE(b.flush().ok());
  CHECK(b.read((8 << 20) - 1, std::span<uint8_t>(got.data(), 2)).error().code == EINVAL);
  const auto s = b.stats();
  CHECK(s.writes == 1);
  CHECK(s.reads == 2);
  CHECK(s.errors == 1);
  CHECK(s.allocated_clusters > 0);
  auto ro = RawBackend::open(img, true);
  REQUIRE(ro.ok());
  CHECK((*ro)->write(0, p).error().code == EROFS);
}

TEST_CASE("open_image probes the format", "[storage][raw]") {
  TempDir d;
  REQUIRE(RawBackend::create(d / "a.img", 1 << 20).ok());
  REQUIRE(Qcow2Backend::create(d / "b.img", 1 << 20).ok());
  auto a = open_image(d / "a.img");
  REQUIRE(a.ok());
  CHECK((*a)->format() == "raw");
  ImageOptions ro;
  ro.read_only = true;
  auto b = open_image(d / "b.img", ro);
  REQUIRE(b.ok());
  CHECK((*b)->format() == "qcow2");
  CHECK((*b)->read_only());
  CHECK(!open_image(d / "nope.img").ok());
  ImageOptions vmdk;
  vmdk.format = "vmdk";
  CHECK(!open_image(d / "a.img", vmdk).ok());
}
