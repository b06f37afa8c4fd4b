// qcow2 format codecs (storage/qcow2_format.h) from byte fixtures: headers
// (v2, v3, extensions, every refusal), L2 entries (standard, zero,
// compressed with the cluster_bits-dependent layout), refcount blocks of
// every width, snapshot tables and bitmap directories.
#include <catch2/catch.hpp>
#include <cstring>
#include <functional>

#include "storage/qcow2_format.h"

using namespace berth;
using namespace berth::storage::qcow2;

namespace {

struct Fixture {
  std::vector<uint8_t> b;
  explicit Fixture(size_t n) : b(n, 0) {}
  Fixture& u32(size_t at, uint32_t v) {
    store_be32(&b[at], v);
    return *this;
  }
  Fixture& u64(size_t at, uint64_t v) {
    store_be64(&b[at], v);
    return *this;
  }
  Fixture& bytes(size_t at, std::string_view s) {
    std::memcpy(&b[at], s.data(), s.size());
    return *this;
  }
};

// What `qemu-img create -f qcow2 -o compat=0.10,cluster_size=4096 x 100M` writes.
Fixture v2_header() {
  Fixture f(4096);
  f.u32(0, kMagic).u32(4, 2).u32(20, 12).u64(24, 100ull << 20).u32(36, 50).u64(40, 0x3000).u64(48, 0x1000).u32(56, 1);
  return f;
}

// A v3 header, 64 KiB clusters, with a backing file, its format and a
// feature name table.
Fixture v3_header() {
  Fixture f(65536);
  f.u32(0, kMagic).u32(4, 3).u32(20, 16).u64(24, 1ull << 30).u32(36, 2).u64(40, 0x30000).u64(48, 0x10000).u32(56, 1);
  f.u64(72, 0).u64(80, kCompatLazyRefcounts).u64(88, 0).u32(96, 4).u32(100, 112);
  size_t at = 112;
  f.u32(at, kExtBackingFormat).u32(at + 4, 5).bytes(at + 8, "qcow2");
  at += 16;
  f.u32(at, kExtFeatureTable).u32(at + 4, 96);
  f.b[at + 8] = 0;
  f.b[at + 9] = 0;
  f.bytes(at + 10, "dirty bit");
  f.b[at + 56] = 0;
  f.b[at + 57] = 9;
  f.bytes(at + 58, "frobnication");
  at += 8 + 96;
  f.u32(at, 0x12345678).u32(at + 4, 3).bytes(at + 8, "abc");  // unknown: kept
  at += 16;
  at += 8;  // end marker
  f.u64(8, at).u32(16, 9).bytes(at, "base.img2");
  return f;
}

}  // namespace

TEST_CASE("qcow2 format: v2 header", "[storage][qcow2][format]") {
  auto f = v2_header();
  auto h = Header::parse(f.b);
  REQUIRE(h.ok());
  CHECK(h->version == 2);
  CHECK(h->cluster_size() == 4096);
  CHECK(h->size == 100ull << 20);
  CHECK(h->l1_size == 50);
  CHECK(h->l1_table_offset == 0x3000);
  CHECK(h->refcount_table_offset == 0x1000);
  CHECK(h->refcount_order == 4);  // implied for v2
  CHECK(h->refcount_bits() == 16);
  CHECK(h->header_length == 72);
  CHECK(h->l2_entries() == 512);
  CHECK(h->refblock_entries() == 2048);
  CHECK(h->backing_file.empty());
  CHECK(check_open_features(*h).ok());
  auto want = Header::wanted_length(Bytes(f.b.data(), 104));
  REQUIRE(want.ok());
  CHECK(*want == 4096);
}

TEST_CASE("qcow2 format: v3 header with extensions, and emit round trip", "[storage][qcow2][format]") {
  auto f = v3_header();
  auto h = Header::parse(f.b);
  REQUIRE(h.ok());
  CHECK(h->version == 3);
  CHECK(h->header_length == 112);
  CHECK(h->compatible_features == kCompatLazyRefcounts);
  CHECK(h->backing_file == "base.img2");
  REQUIRE(h->backing_format.has_value());
  CHECK(*h->backing_format == "qcow2");
  REQUIRE(h->feature_names.size() == 2);
  CHECK(h->feature_names[1].name == "frobnication");
  CHECK(h->feature_names[1].bit == 9);
  REQUIRE(h->unknown_extensions.size() == 1);
  CHECK(h->unknown_extensions[0].type == 0x12345678);
  // Names for bits: ours first, then the image's table.
  CHECK(h->describe_features(FeatureType::Incompatible, 1ull << 9) == "frobnication (incompatible bit 9)");
  CHECK(h->describe_features(FeatureType::Incompatible, 1ull << 4) == "extended L2 entries (incompatible bit 4)");
  CHECK(h->describe_features(FeatureType::Incompatible, 1ull << 33) == "unknown feature (incompatible bit 33)");

  Header copy = *h;
  auto out = copy.emit();
  REQUIRE(out.ok());
  std::vector<uint8_t> cluster(65536, 0xa5);  // bytes never written would show
  std::memcpy(cluster.data(), out->data(), out->size());
  auto again = Header::parse(cluster);
  REQUIRE(again.ok());
  CHECK(again->size == h->size);
  CHECK(again->l1_table_offset == h->l1_table_offset);
  CHECK(again->compatible_features == h->compatible_features);
  CHECK(again->backing_file == "base.img2");
  CHECK(*again->backing_format == "qcow2");
  CHECK(again->unknown_extensions.size() == 1);
  CHECK(again->feature_names.size() == 2);
}

TEST_CASE("qcow2 format: emit of a new v3 header carries the feature name table", "[storage][qcow2][format]") {
  Header h;
  h.cluster_bits = 9;
  h.size = 1 << 20;
  h.l1_size = 32;
  h.l1_table_offset = 3 * 512;
  h.refcount_table_offset = 512;
  h.refcount_table_clusters = 1;
  auto out = h.emit();
  REQUIRE(out.ok());
  CHECK(out->size() <= 512);
  auto p = Header::parse(*out);
  REQUIRE(p.ok());
  CHECK(p->feature_names.size() == 8);
  h.backing_file = std::string(1000, 'x');
  CHECK(h.emit().error().code == EFBIG);  // does not fit in 512 bytes
}

TEST_CASE("qcow2 format: headers that are refused", "[storage][qcow2][format]") {
  struct Bad {
    const char* name;
    std::function<void(Fixture&)> apply;
    const char* msg;
  };
  const std::vector<Bad> bad = {
      {"magic", [](Fixture& f) { f.u32(0, 0x514649fa); }, "not a qcow2 image"},
      {"version 1", [](Fixture& f) { f.u32(4, 1); }, "unsupported version 1"},
      {"version 4", [](Fixture& f) { f.u32(4, 4); }, "unsupported version 4"},
      {"cluster bits 8", [](Fixture& f) { f.u32(20, 8); }, "cluster_bits 8"},
      {"cluster bits 22", [](Fixture& f) { f.u32(20, 22); }, "cluster_bits 22"},
      {"header_length 100", [](Fixture& f) { f.u32(100, 100); }, "header_length 100"},
      {"header_length 108", [](Fixture& f) { f.u32(100, 108); }, "header_length 108"},
      {"header_length past the cluster", [](Fixture& f) { f.u32(100, 65536 + 8); }, "exceeds the cluster size"},
      {"refcount order 7", [](Fixture& f) { f.u32(96, 7); }, "refcount_order 7"},
      {"size 2^62", [](Fixture& f) { f.u64(24, 1ull << 62); }, "too large"},
      {"L1 too small", [](Fixture& f) { f.u32(36, 1); }, "too small"},
      {"L1 over 32 MiB", [](Fixture& f) { f.u32(36, (32u << 20) / 8 + 1); }, "32 MiB"},
      {"L1 unaligned", [](Fixture& f) { f.u64(40, 0x30008); }, "not cluster aligned"},
      {"refcount table over 8 MiB", [](Fixture& f) { f.u32(56, 129); }, "8 MiB"},
      {"refcount table unaligned", [](Fixture& f) { f.u64(48, 0x10200); }, "not cluster aligned"},
      {"snapshots", [](Fixture& f) { f.u32(60, 70000); }, "too many snapshots"},
      {"backing name too long", [](Fixture& f) { f.u32(16, 1024); }, "longer than 1023"},
      {"backing name outside", [](Fixture& f) { f.u64(8, 65530); }, "outside the first cluster"},
      {"extension too long", [](Fixture& f) { f.u32(116, 70000); }, "runs past the header area"},
      {"bitmaps extension short", [](Fixture& f) { f.u32(112, kExtBitmaps).u32(116, 8); }, "bitmaps extension too short"},
  };
  for (const auto& c : bad) {
    DYNAMIC_SECTION(c.name) {
      auto f = v3_header();
      c.apply(f);
      auto h = Header::parse(f.b);
      REQUIRE(!h.ok());
      CHECK(h.error().code == EINVAL);
      CHECK(h.error().message.find(c.msg) != std::string::npos);
    }
  }
  SECTION("too short") {
    auto f = v3_header();
    CHECK(!Header::parse(Bytes(f.b.data(), 71)).ok());
    CHECK(!Header::parse(Bytes(f.b.data(), 100)).ok());  // v3 needs 104
    CHECK(!Header::wanted_length(Bytes(f.b.data(), 20)).ok());
  }
}

TEST_CASE("qcow2 format: features the engine refuses", "[storage][qcow2][format]") {
  auto h = *Header::parse(v3_header().b);
  CHECK(check_open_features(h).ok());
  h.incompatible_features = kIncompatDirty | kIncompatCorrupt;
  CHECK(check_open_features(h).ok());  // handled by the engine
  h.incompatible_features = kIncompatCompression;
  auto r = check_open_features(h);
  REQUIRE(!r.ok());
  CHECK(r.error().code == ENOTSUP);
  CHECK(r.error().message.find("compression type (incompatible bit 3)") != std::string::npos);
  h.incompatible_features = 1ull << 9;
  CHECK(check_open_features(h).error().message.find("frobnication") != std::string::npos);
  h.incompatible_features = 0;
  h.crypt_method = 1;
  CHECK(check_open_features(h).error().message.find("encrypted") != std::string::npos);
  h.crypt_method = 0;
  h.compression_type = 1;
  CHECK(check_open_features(h).error().code == EINVAL);
}

TEST_CASE("qcow2 format: L2 entries", "[storage][qcow2][format]") {
  SECTION("standard, zero, unallocated") {
    auto e = decode_l2(kOflagCopied | 0x50000, 16);
    CHECK(e.type == ClusterType::Normal);
    CHECK(e.copied);
    CHECK(e.host_offset == 0x50000);
    CHECK(decode_l2(0, 16).type == ClusterType::Unallocated);
    CHECK(decode_l2(kOflagZero, 16).type == ClusterType::ZeroPlain);
    auto za = decode_l2(kOflagCopied | 0x70000 | kOflagZero, 16);
    CHECK(za.type == ClusterType::ZeroAlloc);
    CHECK(za.host_offset == 0x70000);
    // Bits 56..61 are reserved, not part of the offset.
    CHECK(decode_l2((1ull << 57) | 0x10000, 16).host_offset == 0x10000);
  }
  SECTION("compressed layout depends on cluster_bits") {
    // x = 62 - (cluster_bits - 8): 64 KiB clusters -> offset in bits 0..53,
    // sectors in 54..61.
    const auto l16 = compressed_layout(16);
    CHECK(l16.offset_bits == 54);
    CHECK(l16.sectors_mask == 0xff);
    const uint64_t raw = kOflagCompressed | (uint64_t(3) << 54) | 0x123456;
    auto e = decode_l2(raw, 16);
    CHECK(e.type == ClusterType::Compressed);
    CHECK(e.compressed_offset == 0x123456);
    CHECK(e.compressed_sectors == 4);
    CHECK(e.compressed_bytes() == 4 * 512 - 0x56);
    CHECK(e.compressed_range_start() == 0x123400);
    CHECK(e.compressed_range_length() == 4 * 512);
    CHECK(encode_compressed(0x123456, 4, 16) == raw);
    // 512-byte clusters: one sector bit at 61; 2 MiB clusters: 13 bits at 49.
    CHECK(compressed_layout(9).offset_bits == 61);
    CHECK(compressed_layout(9).sectors_mask == 1);
    CHECK(compressed_layout(21).offset_bits == 49);
    CHECK(compressed_layout(21).sectors_mask == 0x1fff);
    auto big = decode_l2(encode_compressed((1ull << 48) + 7, 8192, 21), 21);
    CHECK(big.compressed_offset == (1ull << 48) + 7);
    CHECK(big.compressed_sectors == 8192);
  }
}

TEST_CASE("qcow2 format: refcount blocks of every width", "[storage][qcow2][format]") {
  for (uint32_t order = 0; order <= 6; order++) {
    DYNAMIC_SECTION("refcount_order " << order) {
      const uint64_t entries = (512 * 8) >> order;
      std::vector<uint8_t> blk(512, 0);
      const uint64_t max = refcount_max(order);
      CHECK(max == (order == 6 ? ~0ull : (1ull << (1u << order)) - 1));
      for (uint64_t i = 0; i < entries; i += 3) refcount_set(blk.data(), i, order, (i * 7 + 1) & max);
      for (uint64_t i = 0; i < entries; i++)
        CHECK(refcount_get(blk.data(), i, order) == (i % 3 == 0 ? (i * 7 + 1) & max : 0));
      refcount_set(blk.data(), 1, order, max);
      CHECK(refcount_get(blk.data(), 1, order) == max);
      CHECK(refcount_get(blk.data(), 0, order) == 1);
      CHECK(refcount_get(blk.data(), 2, order) == 0);
    }
  }
  SECTION("byte layout") {
    std::vector<uint8_t> b(8, 0);
    refcount_set(b.data(), 1, 0, 1);  // 1-bit: bit 1 of byte 0 (LSB first)
    CHECK(b[0] == 0x02);
    refcount_set(b.data(), 3, 1, 2);  // 2-bit: bits 6..7 of byte 0
    CHECK(b[0] == 0x82);
    std::fill(b.begin(), b.end(), 0);
    refcount_set(b.data(), 1, 2, 0xa);  // 4-bit: high nibble of byte 0
    CHECK(b[0] == 0xa0);
    refcount_set(b.data(), 1, 4, 0x1234);  // 16-bit big-endian at byte 2
    CHECK(b[2] == 0x12);
    CHECK(b[3] == 0x34);
  }
}

TEST_CASE("qcow2 format: snapshot table and bitmap directory", "[storage][qcow2][format]") {
  Fixture t(256);
  // Snapshot 1: L1 at 0x40000 (16 entries), extra 16 bytes, id "1", name "base".
  t.u64(0, 0x40000).u32(8, 16);
  store_be16(&t.b[12], 1);
  store_be16(&t.b[14], 4);
  t.u32(36, 16).u64(40, 1234).u64(48, 1ull << 30).bytes(56, "1").bytes(57, "base");
  // Entry length 61 -> padded to 64. Snapshot 2 at 64, no extra.
  t.u64(64, 0x50000).u32(72, 2);
  store_be16(&t.b[76], 1);
  store_be16(&t.b[78], 1);
  t.bytes(104, "2").bytes(105, "x");
  auto s = parse_snapshot_table(t.b, 2);
  REQUIRE(s.ok());
  REQUIRE(s->size() == 2);
  CHECK((*s)[0].l1_table_offset == 0x40000);
  CHECK((*s)[0].vm_state_size == 1234);
  CHECK((*s)[0].disk_size == 1ull << 30);
  CHECK((*s)[0].name == "base");
  CHECK((*s)[0].entry_length == 64);
  CHECK((*s)[1].id == "2");
  CHECK((*s)[1].l1_size == 2);
  CHECK(!parse_snapshot_table(Bytes(t.b.data(), 80), 2).ok());
  CHECK(!parse_snapshot_table(Bytes(t.b.data(), 120), 3).ok());  // a third entry does not fit

  Fixture d(64);
  d.u64(0, 0x60000).u32(8, 4).u32(12, 2);
  d.b[16] = 1;
  d.b[17] = 16;
  store_be16(&d.b[18], 6);
  d.bytes(24, "bitmap");
  auto dir = parse_bitmap_directory(d.b, 1);
  REQUIRE(dir.ok());
  CHECK((*dir)[0].name == "bitmap");
  CHECK((*dir)[0].table_size == 4);
  CHECK((*dir)[0].granularity_bits == 16);
  CHECK(!parse_bitmap_directory(Bytes(d.b.data(), 28), 1).ok());
}

TEST_CASE("qcow2 format: L1 sizes", "[storage][qcow2][format]") {
  CHECK(Header::l1_entries_for(0, 16) == 0);
  CHECK(Header::l1_entries_for(1, 16) == 1);
  CHECK(Header::l1_entries_for(1ull << 29, 16) == 1);  // 64 KiB clusters: 512 MiB per L2 table
  CHECK(Header::l1_entries_for((1ull << 29) + 1, 16) == 2);
  CHECK(Header::l1_entries_for(100ull << 20, 12) == 50);  // 4 KiB: 2 MiB per table
  CHECK(Header::l1_entries_for(64 << 10, 9) == 2);        // 512 B: 32 KiB per table
}
