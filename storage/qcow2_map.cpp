// The allocation map (like `qemu-img map`) and the JSON renderings of check,
// info and map results.
#include <cstdio>

#include "storage/qcow2.h"
#include "storage/raw.h"

namespace berth::storage {

using namespace qcow2;

std::string json_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size() + 2);
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += char(c);
        }
    }
  }
  return o;
}

std::string CheckResult::summary() const {
  if (clean()) {
    std::string s = "No errors were found on the image.";
    if (corruptions_fixed || leaks_fixed)
      s += " (fixed: " + std::to_string(corruptions_fixed) + " errors, " + std::to_string(leaks_fixed) + " leaks)";
    return s;
  }
  std::string s;
  auto add = [&](uint64_t n, const char* what) {
    if (!n) return;
    if (!s.empty()) s += ", ";
    s += std::to_string(n) + " " + what;
  };
  add(corruptions, "errors");
  add(leaks, "leaked clusters");
  add(check_errors, "check errors");
  s += " were found on the image.";
  if (corruptions_fixed || leaks_fixed)
    s += " (fixed: " + std::to_string(corruptions_fixed) + " errors, " + std::to_string(leaks_fixed) + " leaks)";
  return s;
}

std::string CheckResult::to_json(const std::string& filename) const {
  std::string o = "{\n";
  auto num = [&](const char* k, uint64_t v) { o += std::string("    \"") + k + "\": " + std::to_string(v) + ",\n"; };
  num("image-end-offset", image_end_offset);
  num("total-clusters", total_clusters);
  num("check-errors", check_errors);
  num("allocated-clusters", allocated_clusters);
  o += "    \"filename\": \"" + json_escape(filename) + "\",\n";
  o += "    \"format\": \"qcow2\",\n";
  num("corruptions", corruptions);
  num("leaks", leaks);
  num("corruptions-fixed", corruptions_fixed);
  num("leaks-fixed", leaks_fixed);
  num("fragmented-clusters", fragmented_clusters);
  num("compressed-clusters", compressed_clusters);
  o += "    \"repaired\": " + std::string(repaired ? "true" : "false") + ",\n";
  o += "    \"messages\": [";
  for (size_t i = 0; i < messages.size(); i++) o += (i ? ", " : "") + ("\"" + json_escape(messages[i]) + "\"");
  o += "],\n";
  o += "    \"messages-dropped\": " + std::to_string(messages_dropped) + "\n}\n";
  return o;
}

std::string Qcow2Info::to_json() const {
  std::string o = "{\n";
  o += "    \"filename\": \"" + json_escape(filename) + "\",\n";
  o += "    \"format\": \"qcow2\",\n";
  o += "    \"virtual-size\": " + std::to_string(virtual_size) + ",\n";
  o += "    \"actual-size\": " + std::to_string(file_size) + ",\n";
  o += "    \"cluster-size\": " + std::to_string(cluster_size) + ",\n";
  if (!backing_file.empty()) {
    o += "    \"backing-filename\": \"" + json_escape(backing_file) + "\",\n";
    if (!backing_format.empty()) o += "    \"backing-filename-format\": \"" + json_escape(backing_format) + "\",\n";
  }
  o += "    \"dirty-flag\": " + std::string(dirty ? "true" : "false") + ",\n";
  o += "    \"format-specific\": {\n        \"type\": \"qcow2\",\n        \"data\": {\n";
  o += "            \"compat\": \"" + compat + "\",\n";
  o += "            \"compression-type\": \"zlib\",\n";
  o += "            \"lazy-refcounts\": " + std::string(lazy_refcounts ? "true" : "false") + ",\n";
  o += "            \"refcount-bits\": " + std::to_string(refcount_bits) + ",\n";
  o += "            \"corrupt\": " + std::string(corrupt ? "true" : "false") + ",\n";
  o += "            \"snapshots\": " + std::to_string(nb_snapshots) + ",\n";
  o += "            \"bitmaps\": " + std::string(has_bitmaps ? "true" : "false") + ",\n";
  o += "            \"extended-l2\": false\n        }\n    }\n}\n";
  return o;
}

std::string map_to_json(const std::vector<MapExtent>& extents) {
  std::string o = "[";
  for (size_t i = 0; i < extents.size(); i++) {
    const auto& e = extents[i];
    o += i ? ",\n" : "";
    o += "{ \"start\": " + std::to_string(e.start) + ", \"length\": " + std::to_string(e.length) +
         ", \"depth\": " + std::to_string(e.depth) + ", \"present\": " + (e.present ? "true" : "false") +
         ", \"zero\": " + (e.zero ? "true" : "false") + ", \"data\": " + (e.data ? "true" : "false");
    if (e.compressed) o += ", \"compressed\": true";
    if (e.offset) o += ", \"offset\": " + std::to_string(*e.offset);
    o += "}";
  }
  o += "]\n";
  return o;
}

Result<std::vector<MapExtent>> Qcow2Backend::map(uint64_t offset, uint64_t length) {
  if (closed_) return make_error(EBADF, "qcow2: " + path_ + " is closed");
  const uint64_t size = virtual_size_.load();
  if (offset > size) return make_error(EINVAL, "qcow2: map offset past the end of the disk");
  length = std::min(length, size - offset);
  std::vector<MapExtent> out;
  auto add = [&](const MapExtent& e) {
    if (!e.length) return;
    if (!out.empty()) {
      MapExtent& b = out.back();
      const bool same = b.depth == e.depth && b.present == e.present && b.zero == e.zero && b.data == e.data &&
                        b.compressed == e.compressed && b.offset.has_value() == e.offset.has_value() &&
                        (!e.offset || *b.offset + b.length == *e.offset) && b.start + b.length == e.start;
      if (same) {
        b.length += e.length;
        return;
      }
    }
    out.push_back(e);
  };
  // Unallocated here: ask the backing file.
  auto unallocated = [&](uint64_t g, uint64_t n) -> Result<void> {
    const uint64_t in_backing = backing_ && g < backing_size_ ? std::min(n, backing_size_ - g) : 0;
    if (in_backing) {
      if (auto* q = dynamic_cast<Qcow2Backend*>(backing_.get())) {
        auto sub = q->map(g, in_backing);
        if (!sub) return sub.error();
        for (auto e : *sub) {
          e.depth += 1;
          e.offset.reset();
          add(e);
        }
      } else {
        add(MapExtent{g, in_backing, 1, true, false, true, false, std::nullopt});
      }
    }
    if (in_backing < n) add(MapExtent{g + in_backing, n - in_backing, 0, false, true, false, false, std::nullopt});
    return {};
  };
  const uint32_t tb = cb_ + l2_bits_;
  const uint64_t l2mask = (1ull << l2_bits_) - 1;
  uint64_t g = offset;
  const uint64_t end = offset + length;
  while (g < end) {
    const uint64_t l1i = g >> tb;
    const uint64_t chunk = std::min<uint64_t>(end - g, ((l1i + 1) << tb) - g);
    auto slot = l2_for_read(l1i);
    if (!slot) return slot.error();
    if (*slot < 0) {
      if (auto r = unallocated(g, chunk); !r) return r.error();
      g += chunk;
      continue;
    }
    const uint32_t s = uint32_t(*slot);
    uint64_t pos = 0;
    uint64_t un_start = 0, un_len = 0;
    while (pos < chunk) {
      const uint64_t go = g + pos;
      const uint64_t in = go & (cs_ - 1);
      const uint64_t n = std::min(chunk - pos, cs_ - in);
      const uint64_t raw = l2_raw(s, (go >> cb_) & l2mask);
      const L2Entry e = decode_l2(raw, cb_);
      if (e.type == ClusterType::Unallocated) {
        if (!un_len) un_start = go;
        un_len += n;
        pos += n;
        continue;
      }
      if (un_len) {
        if (auto r = unallocated(un_start, un_len); !r) return r.error();
        un_len = 0;
      }
      switch (e.type) {
        case ClusterType::ZeroPlain: add(MapExtent{go, n, 0, true, true, false, false, std::nullopt}); break;
        case ClusterType::ZeroAlloc: add(MapExtent{go, n, 0, true, true, false, false, e.host_offset + in}); break;
        case ClusterType::Normal: add(MapExtent{go, n, 0, true, false, true, false, e.host_offset + in}); break;
        case ClusterType::Compressed: add(MapExtent{go, n, 0, true, false, true, true, std::nullopt}); break;
        default: break;
      }
      pos += n;
    }
    if (un_len)
      if (auto r = unallocated(un_start, un_len); !r) return r.error();
    g += chunk;
  }
  return out;
}

}  // namespace berth::storage
