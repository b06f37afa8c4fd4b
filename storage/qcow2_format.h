// qcow2 on-disk format: pure codecs, no I/O (QEMU docs/interop/qcow2.txt).
//
// Everything here works on byte spans the engine has read, and checks every
// length and offset it derives from them: a Header that parse() returns has a
// cluster size of 512 B..2 MiB, a refcount order of 0..6, a header length and
// header extensions that lie inside the first cluster, table offsets that are
// cluster aligned, and an L1 table (at most 32 MiB) and a refcount table (at
// most 8 MiB) whose sizes do not overflow. Whether the tables lie inside the
// file, and whether the features are supported, are the engine's checks
// (check_open_features()), because they need the file size and the open mode.
//
// All numbers are big-endian (qcow2.txt "General").
//
// Entries:
// - L1 entry: bits 9..55 the L2 table offset, bit 63 "copied" (refcount 1).
// - L2 entry (standard): bit 0 "reads as zero" (v3), bits 9..55 the host
//   cluster offset, bit 62 compressed, bit 63 copied.
// - L2 entry (compressed): x = 62 - (cluster_bits - 8); bits 0..x-1 the host
//   byte offset, bits x..61 the number of additional 512-byte sectors.
// - Refcount table entry: bits 9..63 the refcount block offset.
// - Refcount block entry: refcount_bits = 1 << refcount_order wide; sub-byte
//   entries are packed from the least significant bit of each byte.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"

namespace berth::storage::qcow2 {

inline uint64_t load_be64(const uint8_t* p) {
  return (uint64_t(load_be32(p)) << 32) | load_be32(p + 4);
}
inline void store_be64(uint8_t* p, uint64_t v) {
  store_be32(p, uint32_t(v >> 32));
  store_be32(p + 4, uint32_t(v));
}

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kMinClusterBits = 9;   // 512 B
inline constexpr uint32_t kMaxClusterBits = 21;  // 2 MiB (QEMU's limit)
inline constexpr uint32_t kV2HeaderLength = 72;
inline constexpr uint32_t kV3HeaderLength = 104;
inline constexpr uint32_t kMaxBackingNameLength = 1023;
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;        // QEMU's QCOW_MAX_L1_SIZE
inline constexpr uint64_t kMaxRefTableBytes = 8ull << 20;   // QEMU's QCOW_MAX_REFTABLE_SIZE
inline constexpr uint32_t kMaxSnapshots = 65536;
inline constexpr uint64_t kMaxSnapshotTableBytes = 64ull << 20;
inline constexpr uint64_t kMaxVirtualSize = 1ull << 61;  // what a 32 MiB L1 reaches with 2 MiB clusters

// Feature bits (qcow2.txt "Header", bytes 72..95).
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompression = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kIncompatSupported = kIncompatDirty | kIncompatCorrupt;
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearRawData = 1ull << 1;

// Header extension types (qcow2.txt "Header extensions").
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCrypto = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;

// Entry bits (qcow2.txt "Cluster mapping", "Host cluster management").
inline constexpr uint64_t kOflagCopied = 1ull << 63;
inline constexpr uint64_t kOflagCompressed = 1ull << 62;
inline constexpr uint64_t kOflagZero = 1ull << 0;
inline constexpr uint64_t kL1OffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint64_t kL1ReservedMask = 0x7f000000000001ffull;
inline constexpr uint64_t kL2OffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint64_t kL2StdReservedMask = 0x3f000000000001feull;
inline constexpr uint64_t kRefTableOffsetMask = 0xfffffffffffffe00ull;
inline constexpr uint64_t kRefTableReservedMask = 0x1ffull;

enum class FeatureType : uint8_t { Incompatible = 0, Compatible = 1, Autoclear = 2 };

struct FeatureName {
  FeatureType type = FeatureType::Incompatible;
  uint8_t bit = 0;
  std::string name;
};

struct BitmapsExtension {
  uint32_t nb_bitmaps = 0;
  uint64_t directory_size = 0;
  uint64_t directory_offset = 0;
};

struct UnknownExtension {
  uint32_t type = 0;
  std::vector<uint8_t> data;
};

// The header and its extensions, as parsed from (or to be written into) the
// first cluster.
struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  // v3 (v2 reads as zero / order 4 / length 72).
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = kV3HeaderLength;
  uint8_t compression_type = 0;  // byte 104, present when header_length > 104

  // Extensions.
  std::string backing_file;
  std::optional<std::string> backing_format;
  std::vector<FeatureName> feature_names;
  std::optional<BitmapsExtension> bitmaps;
  bool has_crypto_extension = false;
  std::optional<std::string> data_file;
  std::vector<UnknownExtension> unknown_extensions;  // preserved on rewrite

  uint64_t cluster_size() const { return 1ull << cluster_bits; }
  uint32_t refcount_bits() const { return 1u << refcount_order; }
  uint64_t l2_entries() const { return cluster_size() / 8; }
  // Refcount entries per refcount block.
  uint64_t refblock_entries() const { return (cluster_size() * 8) >> refcount_order; }
  // L1 entries needed to map `size` bytes.
  static uint64_t l1_entries_for(uint64_t size, uint32_t cluster_bits);

  // Parses the start of an image. `data` holds at least the first cluster, or
  // the whole file when that is shorter. Needs only the first 104 bytes to
  // learn the cluster size: header_prefix_length() says how much to read.
  [[nodiscard]] static Result<Header> parse(Bytes data);
  static constexpr size_t header_prefix_length() { return kV3HeaderLength; }
  // How many bytes parse() wants: the first cluster, as the prefix says.
  [[nodiscard]] static Result<uint64_t> wanted_length(Bytes prefix);

  // The first-cluster bytes: header, extensions (backing format, feature
  // table, bitmaps, unknown ones, end marker) and the backing file name.
  // Updates backing_file_offset/size and header_length. Fails with EFBIG
  // when it does not fit in one cluster.
  [[nodiscard]] Result<std::vector<uint8_t>> emit();

  // Human names of set feature bits that are not understood, e.g.
  // "extended L2 entries (incompatible bit 4)". Uses the image's own feature
  // name table for bits this code has no name for.
  std::string describe_features(FeatureType type, uint64_t bits) const;
};

// Refuses what this engine cannot open: unknown or unsupported incompatible
// bits, encryption, zstd, external data files. ENOTSUP with a message that
// names the feature.
[[nodiscard]] Result<void> check_open_features(const Header& h);

// --- L2 entries -------------------------------------------------------------

enum class ClusterType : uint8_t {
  Unallocated,  // reads from the backing file, or zeros
  ZeroPlain,    // zero flag, no host cluster
  ZeroAlloc,    // zero flag with a preallocated host cluster
  Normal,       // data at host_offset
  Compressed,   // deflate data at compressed_offset
};

struct L2Entry {
  ClusterType type = ClusterType::Unallocated;
  bool copied = false;
  uint64_t host_offset = 0;          // Normal / ZeroAlloc (may be unaligned: check)
  uint64_t compressed_offset = 0;    // Compressed: host byte offset
  uint64_t compressed_sectors = 0;   // Compressed: sectors field + 1
  // Compressed: bytes to read starting at compressed_offset.
  uint64_t compressed_bytes() const { return compressed_sectors * 512 - (compressed_offset & 511); }
  // Compressed: the 512-aligned range QEMU counts references over.
  uint64_t compressed_range_start() const { return compressed_offset & ~511ull; }
  uint64_t compressed_range_length() const { return compressed_sectors * 512; }
};

struct CompressedLayout {
  uint32_t offset_bits = 0;   // x = 62 - (cluster_bits - 8)
  uint64_t offset_mask = 0;   // (1 << x) - 1
  uint64_t sectors_mask = 0;  // (1 << (cluster_bits - 8)) - 1, at shift x
};
CompressedLayout compressed_layout(uint32_t cluster_bits);

L2Entry decode_l2(uint64_t raw, uint32_t cluster_bits);
uint64_t encode_compressed(uint64_t host_offset, uint64_t sectors, uint32_t cluster_bits);

// --- Refcount blocks ----------------------------------------------------------

uint64_t refcount_max(uint32_t order);
// index < refblock_entries; block holds one cluster.
uint64_t refcount_get(const uint8_t* block, uint64_t index, uint32_t order);
void refcount_set(uint8_t* block, uint64_t index, uint32_t order, uint64_t value);

// --- Snapshot table (qcow2.txt "Snapshots") -----------------------------------

struct SnapshotEntry {
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  uint64_t vm_state_size = 0;
  uint64_t disk_size = 0;
  std::string id, name;
  uint64_t entry_length = 0;  // bytes, padded to 8
};
// Parses `count` entries from `table`; EINVAL if they run past it.
[[nodiscard]] Result<std::vector<SnapshotEntry>> parse_snapshot_table(Bytes table, uint32_t count);

// --- Bitmap directory (qcow2.txt "Bitmaps") -----------------------------------

struct BitmapDirectoryEntry {
  uint64_t table_offset = 0;
  uint32_t table_size = 0;
  uint32_t flags = 0;
  uint8_t type = 0;
  uint8_t granularity_bits = 0;
  std::string name;
};
inline constexpr uint64_t kBitmapTableOffsetMask = 0x00fffffffffffe00ull;
[[nodiscard]] Result<std::vector<BitmapDirectoryEntry>> parse_bitmap_directory(Bytes dir, uint32_t count);

}  // namespace berth::storage::qcow2
