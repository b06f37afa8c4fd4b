// The result of a qcow2 consistency check (Qcow2Backend::check), shaped like
// `qemu-img check`'s: counts of corruptions (references that break the
// format's rules or could lose data), leaks (clusters whose refcount is higher
// than the references to them: space lost, nothing else) and check errors
// (metadata that could not be read), plus the allocation figures.
//
// What is found: refcounts lower than the references (ERROR), higher
// (Leaked), a cluster referenced twice where that is not allowed, OFLAG_COPIED
// flags that disagree with the refcount, unaligned L1/L2/refcount-table
// entries, entries (L2 tables, data, compressed data, refcount blocks) past
// the end of the file, and refcounts that overflow their width.
// What repair fixes: entries that point past the end or are unaligned are
// cleared (a zero cluster on v3), refcounts are rebuilt from the references
// (which fixes leaks, mismatches and double references: a cluster referenced
// twice gets refcount 2 and is copied on its next write), OFLAG_COPIED flags
// are corrected, and the corrupt bit is cleared when nothing is left.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace berth::storage {

struct CheckResult {
  uint64_t corruptions = 0, leaks = 0, check_errors = 0;
  uint64_t corruptions_fixed = 0, leaks_fixed = 0;
  uint64_t image_end_offset = 0;  // end of the last used cluster
  uint64_t total_clusters = 0;    // guest clusters (virtual size / cluster size)
  uint64_t allocated_clusters = 0, fragmented_clusters = 0, compressed_clusters = 0;
  bool repaired = false;               // a repair ran (check(true) found something)
  std::vector<std::string> messages;   // one per finding, at most kMaxMessages
  uint64_t messages_dropped = 0;       // findings beyond kMaxMessages
  static constexpr size_t kMaxMessages = 200;

  bool clean() const { return corruptions == 0 && leaks == 0 && check_errors == 0; }
  // One line, e.g. "No errors were found on the image." or
  // "2 errors, 3 leaked clusters (fixed: 2 errors, 3 leaks)".
  std::string summary() const;
  // qemu-img check --output=json's keys ("image-end-offset", "total-clusters",
  // "check-errors", "allocated-clusters", "filename", "format",
  // "corruptions", "leaks", "corruptions-fixed", "leaks-fixed",
  // "fragmented-clusters", "compressed-clusters") plus "messages".
  std::string to_json(const std::string& filename) const;
};

// JSON string escaping shared by the storage JSON writers.
std::string json_escape(const std::string& s);

}  // namespace berth::storage
