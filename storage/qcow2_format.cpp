// qcow2 format codecs (see qcow2_format.h). Theory of operation: parse()
// reads the fixed header fields with bounds-checked big-endian loads, checks
// each one against the limits QEMU applies (so that no later size computation
// can overflow or allocate without bound), then walks the header extension
// area (qcow2.txt "Header extensions") inside the first cluster, stopping at
// the end marker, at the backing file name, or at the end of the data given.
#include "storage/qcow2_format.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace berth::storage::qcow2 {
namespace {

Error bad(std::string msg) { return make_error(EINVAL, "qcow2: " + std::move(msg)); }

uint64_t round_up8(uint64_t v) { return (v + 7) & ~7ull; }

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

struct KnownFeature {
  FeatureType type;
  uint8_t bit;
  const char* name;
};
constexpr KnownFeature kKnownFeatures[] = {
    {FeatureType::Incompatible, 0, "dirty bit"},
    {FeatureType::Incompatible, 1, "corrupt bit"},
    {FeatureType::Incompatible, 2, "external data file"},
    {FeatureType::Incompatible, 3, "compression type"},
    {FeatureType::Incompatible, 4, "extended L2 entries"},
    {FeatureType::Compatible, 0, "lazy refcounts"},
    {FeatureType::Autoclear, 0, "bitmaps"},
    {FeatureType::Autoclear, 1, "raw external data"},
};

const char* type_word(FeatureType t) {
  switch (t) {
    case FeatureType::Incompatible: return "incompatible";
    case FeatureType::Compatible: return "compatible";
    case FeatureType::Autoclear: return "autoclear";
  }
  return "?";
}

}  // namespace

uint64_t Header::l1_entries_for(uint64_t size, uint32_t cluster_bits) {
  const uint64_t l2_bits = cluster_bits - 3;
  const uint64_t shift = cluster_bits + l2_bits;
  if (shift >= 64) return size ? 1 : 0;
  return (size + (1ull << shift) - 1) >> shift;
}

Result<uint64_t> Header::wanted_length(Bytes prefix) {
  if (prefix.size() < 24) return bad("file too short for a header (" + std::to_string(prefix.size()) + " bytes)");
  if (load_be32(prefix.data()) != kMagic) return bad("not a qcow2 image (bad magic)");
  uint32_t bits = load_be32(prefix.data() + 20);
  if (bits < kMinClusterBits || bits > kMaxClusterBits)
    return bad("cluster_bits " + std::to_string(bits) + " outside 9..21 (512 B..2 MiB)");
  return uint64_t(1) << bits;
}

Result<Header> Header::parse(Bytes data) {
  if (data.size() < kV2HeaderLength) return bad("file too short for a header (" + std::to_string(data.size()) + " bytes)");
  const uint8_t* p = data.data();
  if (load_be32(p) != kMagic) return bad("not a qcow2 image (bad magic)");
  Header h;
  h.version = load_be32(p + 4);
  if (h.version != 2 && h.version != 3) return bad("unsupported version " + std::to_string(h.version) + " (2 and 3 are known)");
  h.backing_file_offset = load_be64(p + 8);
  h.backing_file_size = load_be32(p + 16);
  h.cluster_bits = load_be32(p + 20);
  h.size = load_be64(p + 24);
  h.crypt_method = load_be32(p + 32);
  h.l1_size = load_be32(p + 36);
  h.l1_table_offset = load_be64(p + 40);
  h.refcount_table_offset = load_be64(p + 48);
  h.refcount_table_clusters = load_be32(p + 56);
  h.nb_snapshots = load_be32(p + 60);
  h.snapshots_offset = load_be64(p + 64);

  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits)
    return bad("cluster_bits " + std::to_string(h.cluster_bits) + " outside 9..21 (512 B..2 MiB)");
  const uint64_t cs = h.cluster_size();

  if (h.version == 2) {
    h.incompatible_features = h.compatible_features = h.autoclear_features = 0;
    h.refcount_order = 4;
    h.header_length = kV2HeaderLength;
  } else {
    if (data.size() < kV3HeaderLength) return bad("file too short for a version 3 header");
    h.incompatible_features = load_be64(p + 72);
    h.compatible_features = load_be64(p + 80);
    h.autoclear_features = load_be64(p + 88);
    h.refcount_order = load_be32(p + 96);
    h.header_length = load_be32(p + 100);
    if (h.header_length < kV3HeaderLength || h.header_length % 8 != 0)
      return bad("header_length " + std::to_string(h.header_length) + " invalid (at least 104, a multiple of 8)");
    if (h.header_length > cs) return bad("header_length " + std::to_string(h.header_length) + " exceeds the cluster size");
    if (h.header_length > data.size()) return bad("file too short for its header_length");
    if (h.header_length > kV3HeaderLength) h.compression_type = p[104];
    if (h.refcount_order > 6) return bad("refcount_order " + std::to_string(h.refcount_order) + " exceeds 6 (64-bit refcounts)");
  }

  if (h.size > kMaxVirtualSize) return bad("virtual size " + std::to_string(h.size) + " too large");
  const uint64_t l1_needed = l1_entries_for(h.size, h.cluster_bits);
  if (uint64_t(h.l1_size) * 8 > kMaxL1Bytes)
    return bad("L1 table of " + std::to_string(h.l1_size) + " entries exceeds the 32 MiB limit");
  if (h.l1_size < l1_needed)
    return bad("L1 table of " + std::to_string(h.l1_size) + " entries is too small for a virtual size of " +
               std::to_string(h.size) + " (needs " + std::to_string(l1_needed) + ")");
  if (h.l1_size > 0 && (h.l1_table_offset == 0 || h.l1_table_offset % cs != 0))
    return bad("L1 table offset " + std::to_string(h.l1_table_offset) + " is not cluster aligned");
  if (h.l1_table_offset > (1ull << 56)) return bad("L1 table offset past the 64 PiB limit");
  if (uint64_t(h.refcount_table_clusters) * cs > kMaxRefTableBytes)
    return bad("refcount table of " + std::to_string(h.refcount_table_clusters) + " clusters exceeds the 8 MiB limit");
  if (h.refcount_table_clusters > 0 && (h.refcount_table_offset == 0 || h.refcount_table_offset % cs != 0))
    return bad("refcount table offset " + std::to_string(h.refcount_table_offset) + " is not cluster aligned");
  if (h.refcount_table_offset > (1ull << 56)) return bad("refcount table offset past the 64 PiB limit");
  if (h.nb_snapshots > kMaxSnapshots) return bad("too many snapshots (" + std::to_string(h.nb_snapshots) + ")");
  if (h.nb_snapshots > 0 && (h.snapshots_offset % cs != 0 || h.snapshots_offset == 0 || h.snapshots_offset > (1ull << 56)))
    return bad("snapshot table offset is not cluster aligned");

  // Backing file name: inside the first cluster (QEMU refuses anything else).
  uint64_t ext_end = std::min<uint64_t>(cs, data.size());
  if (h.backing_file_offset != 0) {
    if (h.backing_file_size > kMaxBackingNameLength) return bad("backing file name longer than 1023 bytes");
    if (h.backing_file_offset > cs || h.backing_file_offset + h.backing_file_size > cs)
      return bad("backing file name lies outside the first cluster");
    if (h.backing_file_offset + h.backing_file_size > data.size()) return bad("backing file name past the end of the file");
    if (h.backing_file_offset < h.header_length) return bad("backing file name overlaps the header");
    h.backing_file.assign(reinterpret_cast<const char*>(p + h.backing_file_offset), h.backing_file_size);
    ext_end = std::min<uint64_t>(ext_end, h.backing_file_offset);
  }

  // Header extensions: type, length, data, padding to 8.
  uint64_t off = h.header_length;
  while (off + 8 <= ext_end) {
    const uint32_t type = load_be32(p + off);
    const uint32_t len = load_be32(p + off + 4);
    off += 8;
    if (type == kExtEnd) break;
    if (len > ext_end - off) return bad("header extension " + hex32(type) + " runs past the header area");
    const uint8_t* d = p + off;
    switch (type) {
      case kExtBackingFormat:
        if (len > kMaxBackingNameLength) return bad("backing format name too long");
        h.backing_format = std::string(reinterpret_cast<const char*>(d), len);
        break;
      case kExtFeatureTable:
        h.feature_names.clear();
        for (uint32_t i = 0; i + 48 <= len; i += 48) {
          FeatureName f;
          if (d[i] > 2) continue;
          f.type = FeatureType(d[i]);
          f.bit = d[i + 1];
          const char* s = reinterpret_cast<const char*>(d + i + 2);
          f.name.assign(s, strnlen(s, 46));
          h.feature_names.push_back(std::move(f));
        }
        break;
      case kExtBitmaps: {
        if (len < 24) return bad("bitmaps extension too short");
        BitmapsExtension b;
        b.nb_bitmaps = load_be32(d);
        b.directory_size = load_be64(d + 8);
        b.directory_offset = load_be64(d + 16);
        h.bitmaps = b;
        break;
      }
      case kExtCrypto: h.has_crypto_extension = true; break;
      case kExtDataFile: h.data_file = std::string(reinterpret_cast<const char*>(d), len); break;
      default:
        if (h.unknown_extensions.size() < 64) h.unknown_extensions.push_back({type, std::vector<uint8_t>(d, d + len)});
        break;
    }
    off += round_up8(len);
  }
  return h;
}

Result<std::vector<uint8_t>> Header::emit() {
  const uint64_t cs = cluster_size();
  std::vector<uint8_t> out;
  if (version == 2) {
    header_length = kV2HeaderLength;
  } else {
    header_length = 112;  // includes compression_type and its padding, as QEMU writes
  }
  out.assign(header_length, 0);
  uint8_t* p = out.data();
  store_be32(p, kMagic);
  store_be32(p + 4, version);
  store_be32(p + 20, cluster_bits);
  store_be64(p + 24, size);
  store_be32(p + 32, crypt_method);
  store_be32(p + 36, l1_size);
  store_be64(p + 40, l1_table_offset);
  store_be64(p + 48, refcount_table_offset);
  store_be32(p + 56, refcount_table_clusters);
  store_be32(p + 60, nb_snapshots);
  store_be64(p + 64, snapshots_offset);
  if (version >= 3) {
    store_be64(p + 72, incompatible_features);
    store_be64(p + 80, compatible_features);
    store_be64(p + 88, autoclear_features);
    store_be32(p + 96, refcount_order);
    store_be32(p + 100, header_length);
    p[104] = compression_type;
  }
  auto add_ext = [&](uint32_t type, Bytes d) {
    size_t at = out.size();
    out.resize(at + 8 + round_up8(d.size()), 0);
    store_be32(out.data() + at, type);
    store_be32(out.data() + at + 4, uint32_t(d.size()));
    if (!d.empty()) std::memcpy(out.data() + at + 8, d.data(), d.size());
  };
  if (backing_format) add_ext(kExtBackingFormat, as_bytes(*backing_format));
  if (version >= 3) {
    if (feature_names.empty()) {
      for (const auto& k : kKnownFeatures) feature_names.push_back({k.type, k.bit, k.name});
    }
    std::vector<uint8_t> table(feature_names.size() * 48, 0);
    for (size_t i = 0; i < feature_names.size(); i++) {
      table[i * 48] = uint8_t(feature_names[i].type);
      table[i * 48 + 1] = feature_names[i].bit;
      std::memcpy(&table[i * 48 + 2], feature_names[i].name.data(), std::min<size_t>(46, feature_names[i].name.size()));
    }
    add_ext(kExtFeatureTable, table);
  }
  if (bitmaps) {
    uint8_t b[24] = {};
    store_be32(b, bitmaps->nb_bitmaps);
    store_be64(b + 8, bitmaps->directory_size);
    store_be64(b + 16, bitmaps->directory_offset);
    add_ext(kExtBitmaps, Bytes(b, 24));
  }
  if (data_file) add_ext(kExtDataFile, as_bytes(*data_file));
  for (const auto& u : unknown_extensions) add_ext(u.type, u.data);
  out.resize(out.size() + 8, 0);  // end marker
  if (!backing_file.empty()) {
    if (backing_file.size() > kMaxBackingNameLength) return make_error(EINVAL, "qcow2: backing file name longer than 1023 bytes");
    backing_file_offset = out.size();
    backing_file_size = uint32_t(backing_file.size());
    out.insert(out.end(), backing_file.begin(), backing_file.end());
  } else {
    backing_file_offset = 0;
    backing_file_size = 0;
  }
  store_be64(out.data() + 8, backing_file_offset);
  store_be32(out.data() + 16, backing_file_size);
  if (out.size() > cs) return make_error(EFBIG, "qcow2: header and extensions do not fit in one cluster");
  return out;
}

std::string Header::describe_features(FeatureType type, uint64_t bits) const {
  std::string out;
  for (unsigned bit = 0; bit < 64; bit++) {
    if (!(bits & (1ull << bit))) continue;
    std::string name;
    for (const auto& k : kKnownFeatures)
      if (k.type == type && k.bit == bit) name = k.name;
    if (name.empty())
      for (const auto& f : feature_names)
        if (f.type == type && f.bit == bit) name = f.name;
    if (name.empty()) name = "unknown feature";
    if (!out.empty()) out += ", ";
    out += name + " (" + type_word(type) + " bit " + std::to_string(bit) + ")";
  }
  return out;
}

Result<void> check_open_features(const Header& h) {
  if (h.crypt_method != 0)
    return make_error(ENOTSUP, "qcow2: encrypted images are not supported (crypt_method " + std::to_string(h.crypt_method) + ")");
  const uint64_t unsupported = h.incompatible_features & ~kIncompatSupported;
  if (unsupported)
    return make_error(ENOTSUP, "qcow2: unsupported incompatible feature(s): " +
                                   h.describe_features(FeatureType::Incompatible, unsupported));
  if (h.compression_type != 0)
    return make_error(EINVAL, "qcow2: compression_type " + std::to_string(h.compression_type) +
                                  " set without the compression type feature bit");
  return {};
}

CompressedLayout compressed_layout(uint32_t cluster_bits) {
  CompressedLayout l;
  l.offset_bits = 62 - (cluster_bits - 8);
  l.offset_mask = (1ull << l.offset_bits) - 1;
  l.sectors_mask = (1ull << (cluster_bits - 8)) - 1;
  return l;
}

L2Entry decode_l2(uint64_t raw, uint32_t cluster_bits) {
  L2Entry e;
  e.copied = (raw & kOflagCopied) != 0;
  if (raw & kOflagCompressed) {
    const CompressedLayout l = compressed_layout(cluster_bits);
    e.type = ClusterType::Compressed;
    e.compressed_offset = raw & l.offset_mask;
    e.compressed_sectors = ((raw >> l.offset_bits) & l.sectors_mask) + 1;
    return e;
  }
  e.host_offset = raw & kL2OffsetMask;
  if (raw & kOflagZero)
    e.type = e.host_offset ? ClusterType::ZeroAlloc : ClusterType::ZeroPlain;
  else
    e.type = e.host_offset ? ClusterType::Normal : ClusterType::Unallocated;
  return e;
}

uint64_t encode_compressed(uint64_t host_offset, uint64_t sectors, uint32_t cluster_bits) {
  const CompressedLayout l = compressed_layout(cluster_bits);
  return kOflagCompressed | (host_offset & l.offset_mask) | (((sectors - 1) & l.sectors_mask) << l.offset_bits);
}

uint64_t refcount_max(uint32_t order) { return order >= 6 ? ~0ull : (1ull << (1u << order)) - 1; }

uint64_t refcount_get(const uint8_t* b, uint64_t i, uint32_t order) {
  switch (order) {
    case 0: return (b[i / 8] >> (i % 8)) & 0x1;
    case 1: return (b[i / 4] >> (2 * (i % 4))) & 0x3;
    case 2: return (b[i / 2] >> (4 * (i % 2))) & 0xf;
    case 3: return b[i];
    case 4: return load_be16(b + 2 * i);
    case 5: return load_be32(b + 4 * i);
    default: return load_be64(b + 8 * i);
  }
}

void refcount_set(uint8_t* b, uint64_t i, uint32_t order, uint64_t v) {
  switch (order) {
    case 0: b[i / 8] = uint8_t((b[i / 8] & ~(0x1 << (i % 8))) | ((v & 0x1) << (i % 8))); break;
    case 1: b[i / 4] = uint8_t((b[i / 4] & ~(0x3 << (2 * (i % 4)))) | ((v & 0x3) << (2 * (i % 4)))); break;
    case 2: b[i / 2] = uint8_t((b[i / 2] & ~(0xf << (4 * (i % 2)))) | ((v & 0xf) << (4 * (i % 2)))); break;
    case 3: b[i] = uint8_t(v); break;
    case 4: store_be16(b + 2 * i, uint16_t(v)); break;
    case 5: store_be32(b + 4 * i, uint32_t(v)); break;
    default: store_be64(b + 8 * i, v); break;
  }
}

Result<std::vector<SnapshotEntry>> parse_snapshot_table(Bytes table, uint32_t count) {
  std::vector<SnapshotEntry> out;
  uint64_t off = 0;
  for (uint32_t i = 0; i < count; i++) {
    if (table.size() - off < 40) return bad("snapshot table truncated at entry " + std::to_string(i));
    const uint8_t* p = table.data() + off;
    SnapshotEntry s;
    s.l1_table_offset = load_be64(p);
    s.l1_size = load_be32(p + 8);
    const uint16_t id_len = load_be16(p + 12);
    const uint16_t name_len = load_be16(p + 14);
    s.vm_state_size = load_be32(p + 32);
    const uint32_t extra_len = load_be32(p + 36);
    const uint64_t len = 40ull + extra_len + id_len + name_len;
    if (len > table.size() - off) return bad("snapshot table entry " + std::to_string(i) + " runs past the table");
    if (extra_len >= 8) s.vm_state_size = load_be64(p + 40);
    if (extra_len >= 16) s.disk_size = load_be64(p + 48);
    s.id.assign(reinterpret_cast<const char*>(p + 40 + extra_len), id_len);
    s.name.assign(reinterpret_cast<const char*>(p + 40 + extra_len + id_len), name_len);
    s.entry_length = round_up8(len);
    if (uint64_t(s.l1_size) * 8 > kMaxL1Bytes) return bad("snapshot " + std::to_string(i) + " L1 table too large");
    off += std::min<uint64_t>(s.entry_length, table.size() - off);
    out.push_back(std::move(s));
  }
  return out;
}

Result<std::vector<BitmapDirectoryEntry>> parse_bitmap_directory(Bytes dir, uint32_t count) {
  std::vector<BitmapDirectoryEntry> out;
  uint64_t off = 0;
  for (uint32_t i = 0; i < count; i++) {
    if (dir.size() - off < 24) return bad("bitmap directory truncated at entry " + std::to_string(i));
    const uint8_t* p = dir.data() + off;
    BitmapDirectoryEntry b;
    b.table_offset = load_be64(p);
    b.table_size = load_be32(p + 8);
    b.flags = load_be32(p + 12);
    b.type = p[16];
    b.granularity_bits = p[17];
    const uint16_t name_len = load_be16(p + 18);
    const uint32_t extra_len = load_be32(p + 20);
    const uint64_t len = 24ull + extra_len + name_len;
    if (len > dir.size() - off) return bad("bitmap directory entry " + std::to_string(i) + " runs past the directory");
    b.name.assign(reinterpret_cast<const char*>(p + 24 + extra_len), name_len);
    off += std::min<uint64_t>(round_up8(len), dir.size() - off);
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace berth::storage::qcow2
