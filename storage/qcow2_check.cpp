// Qcow2Backend::check: consistency check and repair, modelled on
// `qemu-img check` (QEMU block/qcow2-refcount.c's check_refcounts), written
// from the format description. Theory of operation:
//
// 1. Flush, so that the file is the whole truth.
// 2. A pass reads every structure that references clusters and counts the
//    references per host cluster in an array sized by the file (references
//    past the end of the file are reported, not counted): the header cluster,
//    the L1 table, every L2 table and what its entries point at (data,
//    preallocated zero clusters, the sectors of compressed data), the
//    snapshot table with each snapshot's L1 and L2 tables, the bitmap
//    directory, tables and data, and the refcount table and blocks.
// 3. The counts are compared with the refcounts stored on disk: lower on
//    disk is an ERROR (a corruption), higher is a leak.
// 4. OFLAG_COPIED in the active L1 and L2 tables must be set exactly when the
//    refcount is 1.
// Repair: entries that cannot be right (unaligned, past the end of the file,
// reserved bits) are cleared first, then the refcount structures are rebuilt
// from the counts into a fresh area at the end of the file (new blocks and a
// new table, synced, then the header switched in one write, synced; the old
// ones become free space), then the COPIED flags are set from the new counts,
// and a final check reports what is left.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "storage/qcow2.h"

namespace berth::storage {

using namespace qcow2;

namespace {

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

void note(CheckResult& r, std::string msg) {
  if (r.messages.size() < CheckResult::kMaxMessages)
    r.messages.push_back(std::move(msg));
  else
    r.messages_dropped++;
}

constexpr uint64_t kMaxCheckClusters = 1ull << 28;  // 1 GiB of counters

}  // namespace

struct Qcow2Backend::CheckPass {
  CheckResult res;
  uint64_t nclusters = 0;
  std::vector<uint32_t> refs;
  std::vector<std::pair<uint64_t, uint64_t>> l1_fixes;  // (L1 index, new entry)
  struct L2Fix {
    uint64_t table, index, raw;
  };
  std::vector<L2Fix> l2_fixes;
  std::vector<uint8_t> buf;

  // Counts a reference to every cluster of [off, off+len). False if any part
  // lies past the end of the file (nothing is counted then).
  bool count(uint64_t off, uint64_t len, uint32_t cb) {
    if (len == 0) return true;
    const uint64_t first = off >> cb;
    const uint64_t last = (off + len - 1) >> cb;
    if (off + len < off || last >= nclusters) return false;
    for (uint64_t c = first; c <= last; c++)
      if (refs[c] != UINT32_MAX) refs[c]++;
    return true;
  }
};

Result<void> Qcow2Backend::check_pass(CheckPass& p, bool count_refcount_structures) {
  const uint64_t fsize = physical_size_;
  p.nclusters = (fsize + cs_ - 1) >> cb_;
  if (p.nclusters > kMaxCheckClusters)
    return make_error(EFBIG, "qcow2: " + path_ + ": too many clusters to check (" + std::to_string(p.nclusters) + ")");
  p.refs.assign(p.nclusters, 0);
  p.buf.resize(cs_);
  CheckResult& res = p.res;
  const bool zero_flag = hdr_.version >= 3;
  auto corrupt = [&](std::string m) {
    res.corruptions++;
    note(res, "ERROR " + std::move(m));
  };

  p.count(0, cs_, cb_);
  if (!p.count(hdr_.l1_table_offset, uint64_t(l1_.size()) * 8, cb_))
    corrupt("L1 table at " + hex(hdr_.l1_table_offset) + " is past the end of the file");

  // Walks one L1 table's L2 tables. active: the image's own (fixes allowed).
  auto walk_l1 = [&](const std::vector<uint64_t>& l1, bool active, const std::string& what) -> Result<void> {
    uint64_t prev_host = 0;
    for (uint64_t i = 0; i < l1.size(); i++) {
      uint64_t raw = l1[i];
      const uint64_t off = raw & kL1OffsetMask;
      if (!off) continue;
      if (raw & kL1ReservedMask) {
        corrupt(what + " L1 entry " + std::to_string(i) + " has reserved bits set: " + hex(raw));
        if (active) p.l1_fixes.emplace_back(i, raw & ~kL1ReservedMask);
      }
      if (off % cs_ != 0) {
        corrupt(what + " L2 table offset " + hex(off) + " is not cluster aligned (L1 index " + std::to_string(i) + ")");
        if (active) p.l1_fixes.emplace_back(i, 0);
        continue;
      }
      if (!p.count(off, cs_, cb_)) {
        corrupt(what + " L2 table at " + hex(off) + " is past the end of the file (L1 index " + std::to_string(i) + ")");
        if (active) p.l1_fixes.emplace_back(i, 0);
        continue;
      }
      if (auto r = pread_exact(p.buf.data(), cs_, off, true); !r) {
        res.check_errors++;
        note(res, "ERROR reading L2 table at " + hex(off) + ": " + r.error().message);
        continue;
      }
      for (uint64_t j = 0; j < (1ull << l2_bits_); j++) {
        const uint64_t e_raw = load_be64(&p.buf[j * 8]);
        if (!e_raw) continue;
        const L2Entry e = decode_l2(e_raw, cb_);
        const uint64_t guest = ((i << l2_bits_) | j) << cb_;
        auto fix = [&](uint64_t nraw) {
          if (active) p.l2_fixes.push_back({off, j, nraw});
        };
        switch (e.type) {
          case ClusterType::Normal:
          case ClusterType::ZeroAlloc:
            if (e_raw & kL2StdReservedMask) {
              corrupt(what + " L2 entry for guest offset " + hex(guest) + " has reserved bits set: " + hex(e_raw));
              fix(e_raw & ~kL2StdReservedMask);
            }
            if (e.host_offset % cs_ != 0) {
              corrupt(what + " cluster at " + hex(e.host_offset) + " is not cluster aligned (guest offset " + hex(guest) +
                      "); L2 entry corrupted");
              fix(zero_flag ? kOflagZero : 0);
              break;
            }
            if (!p.count(e.host_offset, cs_, cb_)) {
              corrupt(what + " cluster at " + hex(e.host_offset) + " is past the end of the file (guest offset " +
                      hex(guest) + ")");
              fix(zero_flag ? kOflagZero : 0);
              break;
            }
            if (active) {
              res.allocated_clusters++;
              if (prev_host && e.host_offset != prev_host + cs_) res.fragmented_clusters++;
              prev_host = e.host_offset;
            }
            break;
          case ClusterType::Compressed:
            if (e.copied) {
              corrupt(what + " compressed cluster at guest offset " + hex(guest) + " has the copied flag set");
              fix(e_raw & ~kOflagCopied);
            }
            if (!p.count(e.compressed_range_start(), e.compressed_range_length(), cb_)) {
              corrupt(what + " compressed cluster at " + hex(e.compressed_offset) +
                      " is past the end of the file (guest offset " + hex(guest) + ")");
              fix(zero_flag ? kOflagZero : 0);
              break;
            }
            if (active) {
              res.allocated_clusters++;
              res.compressed_clusters++;
              res.fragmented_clusters++;
              prev_host = 0;
            }
            break;
          default: break;
        }
      }
    }
    return {};
  };
  if (auto r = walk_l1(l1_, true, "active"); !r) return r;

  // Snapshots: their tables hold references too.
  if (hdr_.nb_snapshots > 0) {
    const uint64_t off = hdr_.snapshots_offset;
    const uint64_t len = off < fsize ? std::min<uint64_t>(kMaxSnapshotTableBytes, fsize - off) : 0;
    std::vector<uint8_t> table(len);
    if (len) {
      if (auto r = pread_exact(table.data(), len, off, true); !r) return r;
    }
    auto snaps = parse_snapshot_table(table, hdr_.nb_snapshots);
    if (!snaps) {
      corrupt("snapshot table: " + snaps.error().message);
    } else {
      uint64_t table_len = 0;
      for (const auto& s : *snaps) table_len += s.entry_length;
      if (!p.count(off, table_len, cb_)) corrupt("snapshot table at " + hex(off) + " is past the end of the file");
      for (size_t k = 0; k < snaps->size(); k++) {
        const auto& s = (*snaps)[k];
        const uint64_t bytes = uint64_t(s.l1_size) * 8;
        if (s.l1_table_offset % cs_ != 0 || !p.count(s.l1_table_offset, bytes, cb_)) {
          corrupt("snapshot " + s.id + " L1 table at " + hex(s.l1_table_offset) + " is invalid or past the end");
          continue;
        }
        std::vector<uint8_t> b(bytes);
        if (auto r = pread_exact(b.data(), bytes, s.l1_table_offset, true); !r) return r;
        std::vector<uint64_t> sl1(s.l1_size);
        for (uint64_t i = 0; i < s.l1_size; i++) sl1[i] = load_be64(&b[i * 8]);
        if (auto r = walk_l1(sl1, false, "snapshot " + s.id); !r) return r;
      }
    }
  }

  // Bitmaps: directory, tables, data. Only while the autoclear bit says
  // they are consistent: once a program without bitmap support (this one,
  // writing) has cleared it, QEMU ignores them too and counts their clusters
  // as leaks, which repair returns.
  if (hdr_.bitmaps && (hdr_.autoclear_features & kAutoclearBitmaps)) {
    const auto& bm = *hdr_.bitmaps;
    if (bm.directory_offset % cs_ != 0 || bm.directory_size > (64u << 20) ||
        !p.count(bm.directory_offset, bm.directory_size, cb_)) {
      corrupt("bitmap directory at " + hex(bm.directory_offset) + " is invalid or past the end of the file");
    } else {
      std::vector<uint8_t> dir(bm.directory_size);
      if (auto r = pread_exact(dir.data(), dir.size(), bm.directory_offset, true); !r) return r;
      auto entries = parse_bitmap_directory(dir, bm.nb_bitmaps);
      if (!entries) {
        corrupt("bitmap directory: " + entries.error().message);
      } else {
        for (const auto& b : *entries) {
          const uint64_t bytes = uint64_t(b.table_size) * 8;
          if (b.table_offset % cs_ != 0 || bytes > kMaxL1Bytes || !p.count(b.table_offset, bytes, cb_)) {
            corrupt("bitmap '" + b.name + "' table at " + hex(b.table_offset) + " is invalid or past the end");
            continue;
          }
          std::vector<uint8_t> t(bytes);
          if (auto r = pread_exact(t.data(), bytes, b.table_offset, true); !r) return r;
          for (uint64_t i = 0; i < b.table_size; i++) {
            const uint64_t d = load_be64(&t[i * 8]) & kBitmapTableOffsetMask;
            if (d && (d % cs_ != 0 || !p.count(d, cs_, cb_)))
              corrupt("bitmap '" + b.name + "' data cluster at " + hex(d) + " is invalid or past the end");
          }
        }
      }
    }
  }

  if (count_refcount_structures) {
    if (!p.count(hdr_.refcount_table_offset, uint64_t(hdr_.refcount_table_clusters) * cs_, cb_))
      corrupt("refcount table at " + hex(hdr_.refcount_table_offset) + " is past the end of the file");
    for (uint64_t g = 0; g < reftable_.size(); g++) {
      const uint64_t raw = reftable_[g];
      const uint64_t off = raw & kRefTableOffsetMask;
      if (raw & kRefTableReservedMask) corrupt("refcount table entry " + std::to_string(g) + " has reserved bits set");
      if (!off) continue;
      if (off % cs_ != 0) {
        corrupt("refcount block " + std::to_string(g) + " at " + hex(off) + " is not cluster aligned");
        continue;
      }
      if (!p.count(off, cs_, cb_))
        corrupt("refcount block " + std::to_string(g) + " at " + hex(off) + " is past the end of the file");
    }
  }
  res.total_clusters = (hdr_.size + cs_ - 1) >> cb_;
  return {};
}

Result<void> Qcow2Backend::check_compare(CheckPass& p, CheckResult& res) {
  const uint64_t E = 1ull << rb_bits_;
  std::vector<uint8_t> blk(cs_);
  uint64_t highest = 0;
  const uint64_t groups_in_file = (p.nclusters + E - 1) / E;
  const uint64_t groups = std::max<uint64_t>(groups_in_file, reftable_.size());
  const uint64_t maxrc = refcount_max(rc_order_);
  for (uint64_t g = 0; g < groups; g++) {
    const uint64_t off = g < reftable_.size() ? reftable_[g] & kRefTableOffsetMask : 0;
    const bool have = off && off % cs_ == 0 && off < physical_size_;
    if (have) {
      if (auto r = pread_exact(blk.data(), cs_, off, true); !r) {
        res.check_errors++;
        note(res, "ERROR reading refcount block " + std::to_string(g) + ": " + r.error().message);
        continue;
      }
    } else if (g >= groups_in_file) {
      continue;  // no block and no clusters of the file
    }
    // Without a block only the file's own clusters matter (they count 0).
    const uint64_t n = have ? E : std::min<uint64_t>(E, p.nclusters - g * E);
    for (uint64_t i = 0; i < n; i++) {
      const uint64_t c = g * E + i;
      const uint64_t ondisk = have ? refcount_get(blk.data(), i, rc_order_) : 0;
      const uint64_t want = c < p.nclusters ? p.refs[c] : 0;
      if (want) highest = c + 1;
      if (want > maxrc) {
        res.corruptions++;
        note(res, "ERROR cluster " + std::to_string(c) + " has " + std::to_string(want) +
                      " references, more than a refcount of " + std::to_string(hdr_.refcount_bits()) + " bits holds");
        continue;
      }
      if (ondisk == want) continue;
      if (ondisk < want) {
        res.corruptions++;
        note(res, "ERROR cluster " + std::to_string(c) + " refcount=" + std::to_string(ondisk) +
                      " reference=" + std::to_string(want));
      } else {
        res.leaks++;
        note(res, "Leaked cluster " + std::to_string(c) + " refcount=" + std::to_string(ondisk) +
                      " reference=" + std::to_string(want));
      }
    }
  }
  res.image_end_offset = highest << cb_;
  return {};
}

Result<void> Qcow2Backend::check_copied(CheckPass& p, CheckResult& res) {
  auto refs = [&](uint64_t off) -> uint64_t {
    const uint64_t c = off >> cb_;
    return c < p.nclusters ? p.refs[c] : 0;
  };
  std::vector<uint8_t> buf(cs_);
  for (uint64_t i = 0; i < l1_.size(); i++) {
    const uint64_t raw = l1_[i];
    const uint64_t off = raw & kL1OffsetMask;
    if (!off || off % cs_ != 0 || off >= physical_size_) continue;
    const uint64_t rc = refs(off);
    const bool want = rc == 1;
    if (bool(raw & kOflagCopied) != want) {
      res.corruptions++;
      note(res, "ERROR OFLAG_COPIED L2 cluster: l1_index=" + std::to_string(i) + " l1_entry=" + hex(raw) +
                    " refcount=" + std::to_string(rc));
      p.l1_fixes.emplace_back(i, want ? raw | kOflagCopied : raw & ~kOflagCopied);
    }
    if (auto r = pread_exact(buf.data(), cs_, off, true); !r) {
      res.check_errors++;
      continue;
    }
    for (uint64_t j = 0; j < (1ull << l2_bits_); j++) {
      const uint64_t e_raw = load_be64(&buf[j * 8]);
      const L2Entry e = decode_l2(e_raw, cb_);
      if (e.type != ClusterType::Normal && e.type != ClusterType::ZeroAlloc) continue;
      if (e.host_offset % cs_ != 0 || e.host_offset >= physical_size_) continue;
      const uint64_t erc = refs(e.host_offset);
      const bool ewant = erc == 1;
      if (e.copied != ewant) {
        res.corruptions++;
        note(res, "ERROR OFLAG_COPIED data cluster: l2_entry=" + hex(e_raw) + " refcount=" + std::to_string(erc));
        p.l2_fixes.push_back({off, j, ewant ? e_raw | kOflagCopied : e_raw & ~kOflagCopied});
      }
    }
  }
  return {};
}

Result<void> Qcow2Backend::apply_entry_fixes(CheckPass& p) {
  for (const auto& [i, raw] : p.l1_fixes) {
    l1_[i] = raw;
    uint8_t e[8];
    store_be64(e, raw);
    if (auto r = pwrite_all(e, 8, hdr_.l1_table_offset + i * 8); !r) return r;
  }
  std::sort(p.l2_fixes.begin(), p.l2_fixes.end(),
            [](const CheckPass::L2Fix& a, const CheckPass::L2Fix& b) { return a.table < b.table; });
  std::vector<uint8_t> buf(cs_);
  for (size_t k = 0; k < p.l2_fixes.size();) {
    const uint64_t t = p.l2_fixes[k].table;
    if (auto r = pread_exact(buf.data(), cs_, t, true); !r) return r;
    for (; k < p.l2_fixes.size() && p.l2_fixes[k].table == t; k++)
      store_be64(&buf[p.l2_fixes[k].index * 8], p.l2_fixes[k].raw);
    if (auto r = pwrite_all(buf.data(), cs_, t); !r) return r;
  }
  p.l1_fixes.clear();
  p.l2_fixes.clear();
  cache_drop(l2_cache_);
  return sync();
}

Result<void> Qcow2Backend::rebuild_refcounts(std::vector<uint32_t>& refs) {
  const uint64_t E = 1ull << rb_bits_;
  const uint64_t per = cs_ / 8;
  const uint64_t end = refs.size();
  const uint64_t maxrc = refcount_max(rc_order_);
  std::vector<uint8_t> need((end + E - 1) / E, 0);
  for (uint64_t c = 0; c < end; c++)
    if (refs[c]) need[c / E] = 1;
  uint64_t nb = 0, T = 1, total = 0, G = 0;
  for (int iter = 0;; iter++) {
    if (iter > 64) return make_error(EIO, "qcow2: internal: refcount rebuild layout did not converge");
    total = end + nb + T;
    G = (total + E - 1) / E;
    uint64_t nnb = 0;
    for (uint64_t g = 0; g < G; g++) {
      const bool in_new = g >= end / E;  // the group holds part of the new area
      nnb += (g < need.size() && need[g]) || in_new;
    }
    const uint64_t nT = std::max<uint64_t>(1, (G + per - 1) / per);
    if (nnb == nb && nT == T) break;
    nb = nnb;
    T = nT;
  }
  if (T * cs_ > kMaxRefTableBytes) return make_error(ENOSPC, "qcow2: rebuilt refcount table would exceed 8 MiB");
  refs.resize(total, 0);
  for (uint64_t c = end; c < total; c++) refs[c] = 1;
  std::vector<uint64_t> table(T * per, 0);
  std::vector<uint8_t> blk(cs_);
  uint64_t next = end;
  for (uint64_t g = 0; g < G; g++) {
    bool used = false;
    for (uint64_t c = g * E; c < std::min(total, (g + 1) * E) && !used; c++) used = refs[c] != 0;
    if (!used) continue;
    if (next >= end + nb) return make_error(EIO, "qcow2: internal: refcount rebuild ran out of blocks");
    table[g] = next << cb_;
    std::memset(blk.data(), 0, cs_);
    for (uint64_t c = g * E; c < std::min(total, (g + 1) * E); c++)
      refcount_set(blk.data(), c - g * E, rc_order_, std::min<uint64_t>(refs[c], maxrc));
    if (auto r = pwrite_all(blk.data(), cs_, next << cb_); !r) return r;
    next++;
  }
  // Blocks we did not need after all stay allocated (refcount 1) but empty.
  for (; next < end + nb; next++)
    if (auto r = pwrite_all(zeros_.data(), cs_, next << cb_); !r) return r;
  std::vector<uint8_t> tb(T * cs_, 0);
  for (uint64_t i = 0; i < table.size(); i++) store_be64(&tb[i * 8], table[i]);
  const uint64_t toff = (end + nb) << cb_;
  if (auto r = pwrite_all(tb.data(), tb.size(), toff); !r) return r;
  if (auto r = sync(); !r) return r;
  uint8_t h[12];
  store_be64(h, toff);
  store_be32(h + 8, uint32_t(T));
  if (auto r = write_header_bytes(48, h, 12); !r) return r;
  if (auto r = sync(); !r) return r;

  // The old structures are free space now.
  std::vector<uint64_t> old;
  for (uint64_t c = hdr_.refcount_table_offset >> cb_;
       hdr_.refcount_table_clusters && c < (hdr_.refcount_table_offset >> cb_) + hdr_.refcount_table_clusters; c++)
    old.push_back(c);
  for (uint64_t raw : reftable_) {
    const uint64_t off = raw & kRefTableOffsetMask;
    if (off && off % cs_ == 0) old.push_back(off >> cb_);
  }
  hdr_.refcount_table_offset = toff;
  hdr_.refcount_table_clusters = uint32_t(T);
  reftable_ = std::move(table);
  cache_drop(rc_cache_);
  for (uint64_t c : old)
    if (c < refs.size() && refs[c] == 0) punch(c << cb_, cs_);
  return {};
}

Result<void> Qcow2Backend::reload_after_repair() {
  meta_.clear();
  for (uint64_t i = 0; i < l1_.size(); i++) {
    const uint64_t off = l1_[i] & kL1OffsetMask;
    if (off && off % cs_ == 0 && off < physical_size_) meta_[off >> cb_] = MetaKind::L2;
  }
  for (uint64_t raw : reftable_) {
    const uint64_t off = raw & kRefTableOffsetMask;
    if (off && off % cs_ == 0 && off < physical_size_) meta_[off >> cb_] = MetaKind::RefBlock;
  }
  cache_drop(l2_cache_);
  cache_drop(rc_cache_);
  dbuf_key_ = 0;
  const bool saved = read_only_;
  read_only_ = true;  // scan_refcounts must not refuse: we just rebuilt them
  auto r = scan_refcounts();
  read_only_ = saved;
  return r;
}

Result<CheckResult> Qcow2Backend::run_check(bool repair) {
  if (!read_only_) {
    if (auto r = flush_all(); !r) return r.error();
  }
  auto full_check = [&](CheckPass& p) -> Result<void> {
    if (auto r = check_pass(p, true); !r) return r;
    if (auto r = check_compare(p, p.res); !r) return r;
    return check_copied(p, p.res);
  };
  CheckPass first;
  if (auto r = full_check(first); !r) return r.error();
  CheckResult res = first.res;
  if (repair && !res.clean()) {
    // a) clear entries that cannot be right (from the walk, not the COPIED pass)
    CheckPass walk;
    if (auto r = check_pass(walk, false); !r) return r.error();
    if (!walk.l1_fixes.empty() || !walk.l2_fixes.empty())
      if (auto r = apply_entry_fixes(walk); !r) return r.error();
    // b) rebuild the refcounts from the references
    CheckPass counts;
    if (auto r = check_pass(counts, false); !r) return r.error();
    if (auto r = rebuild_refcounts(counts.refs); !r) return r.error();
    if (auto r = reload_after_repair(); !r) return r.error();
    // c) COPIED flags from the new counts
    CheckPass flags;
    if (auto r = check_pass(flags, true); !r) return r.error();
    CheckResult scratch;
    if (auto r = check_copied(flags, scratch); !r) return r.error();
    if (!flags.l1_fixes.empty() || !flags.l2_fixes.empty())
      if (auto r = apply_entry_fixes(flags); !r) return r.error();
    // d) what is left
    CheckPass last;
    if (auto r = full_check(last); !r) return r.error();
    CheckResult fin = last.res;
    fin.repaired = true;
    fin.corruptions_fixed = res.corruptions > fin.corruptions ? res.corruptions - fin.corruptions : 0;
    fin.leaks_fixed = res.leaks > fin.leaks ? res.leaks - fin.leaks : 0;
    std::vector<std::string> msgs = res.messages;
    for (auto& m : fin.messages) msgs.push_back("after repair: " + m);
    fin.messages = std::move(msgs);
    fin.messages_dropped += res.messages_dropped;
    res = std::move(fin);
    spdlog::info("qcow2: {}: repaired ({} corruptions and {} leaks fixed, {} corruptions left)", path_,
                 res.corruptions_fixed, res.leaks_fixed, res.corruptions);
  }
  if (repair && res.corruptions == 0 && res.check_errors == 0) {
    // Everything is on disk and consistent: clean. With lazy refcounts the
    // next write sets the dirty bit again.
    const uint64_t bits = hdr_.incompatible_features & ~(kIncompatCorrupt | kIncompatDirty);
    if (bits != hdr_.incompatible_features) {
      if (auto r = set_incompatible_bits(bits); !r) return r.error();
    }
    dirty_set_ = false;
    corrupt_marked_ = false;
    write_block_.clear();
  }
  {
    std::lock_guard<std::mutex> lock(info_mu_);
    last_check_ = res.summary();
  }
  return res;
}

Result<CheckResult> Qcow2Backend::check(bool repair) {
  if (closed_) return make_error(EBADF, "qcow2: " + path_ + " is closed");
  if (repair && read_only_) return make_error(EROFS, "qcow2: " + path_ + " is open read-only; cannot repair");
  if (repair && job_) return make_error(EBUSY, "qcow2: " + path_ + ": a job is running");
  return run_check(repair);
}

}  // namespace berth::storage
