// Qcow2 jobs: online compaction and discard of zero clusters (theory of
// operation in qcow2_jobs.h). Both run in slices between requests on the
// disk's I/O thread, so a slice never races with a request; each slice ends
// with a flush, which is where the backend's crash-ordering rules put the
// moved references on disk and free the old clusters.
#include "storage/qcow2_jobs.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace berth::storage {

using namespace qcow2;

// --- compaction -------------------------------------------------------------------

Qcow2Compactor::Qcow2Compactor(Qcow2Backend& b) : b_(b) {
  b_.job_ = this;
  b_.compactor_ = this;
  size_before_ = b_.physical_size_;
  owner_.assign(b_.alloc_end_, 0);
  buf_.resize(b_.cs_);
  set_owner(0, tag(Fixed, 0));
  const uint64_t l1c = (uint64_t(b_.l1_.size()) * 8 + b_.cs_ - 1) >> b_.cb_;
  for (uint64_t c = 0; c < l1c; c++) set_owner((b_.hdr_.l1_table_offset >> b_.cb_) + c, tag(Fixed, 0));
  for (uint64_t c = 0; c < b_.hdr_.refcount_table_clusters; c++)
    set_owner((b_.hdr_.refcount_table_offset >> b_.cb_) + c, tag(Fixed, 0));
  for (uint64_t g = 0; g < b_.reftable_.size(); g++) {
    const uint64_t off = b_.reftable_[g] & kRefTableOffsetMask;
    if (off) set_owner(off >> b_.cb_, tag(RefBlock, g));
  }
}

Qcow2Compactor::~Qcow2Compactor() {
  if (b_.job_ == this) b_.job_ = nullptr;
  if (b_.compactor_ == this) b_.compactor_ = nullptr;
}

void Qcow2Compactor::set_owner(uint64_t c, uint64_t o) {
  if (c >= owner_.size()) {
    // Nothing valid lies at or past alloc_end_ (a reference there is
    // corrupt, and never moved): the map stays bounded by the file.
    if (!o || c >= b_.alloc_end_) return;
    owner_.resize(b_.alloc_end_, 0);
  }
  owner_[c] = o;
}

void Qcow2Compactor::set_data_owner(uint64_t gc, uint64_t raw) {
  const L2Entry e = decode_l2(raw, b_.cb_);
  if (e.type == ClusterType::Normal || e.type == ClusterType::ZeroAlloc) {
    if (e.host_offset % b_.cs_ == 0) set_owner(e.host_offset >> b_.cb_, tag(Data, gc));
  } else if (e.type == ClusterType::Compressed) {
    const uint64_t a = e.compressed_range_start() >> b_.cb_;
    const uint64_t z = (e.compressed_range_start() + e.compressed_range_length() - 1) >> b_.cb_;
    for (uint64_t c = a; c <= z && c < b_.alloc_end_; c++) set_owner(c, tag(Fixed, 0));
  }
}

void Qcow2Compactor::clear_data_owner(uint64_t raw) {
  const L2Entry e = decode_l2(raw, b_.cb_);
  if ((e.type == ClusterType::Normal || e.type == ClusterType::ZeroAlloc) && e.host_offset % b_.cs_ == 0) {
    const uint64_t c = e.host_offset >> b_.cb_;
    if ((owner(c) >> kKindShift) == Data) set_owner(c, 0);
  }
}

void Qcow2Compactor::on_l1_change(uint64_t l1_index, uint64_t old_raw, uint64_t new_raw) {
  const uint64_t o = old_raw & kL1OffsetMask, n = new_raw & kL1OffsetMask;
  if (o && owner(o >> b_.cb_) == tag(L2, l1_index)) set_owner(o >> b_.cb_, 0);
  if (n) set_owner(n >> b_.cb_, tag(L2, l1_index));
}

void Qcow2Compactor::on_l2_change(uint64_t gc, uint64_t old_raw, uint64_t new_raw) {
  clear_data_owner(old_raw);
  set_data_owner(gc, new_raw);
}

Result<void> Qcow2Compactor::scan_slice(uint64_t budget) {
  const uint64_t l2n = 1ull << b_.l2_bits_;
  for (uint64_t k = 0; k < budget && scan_l1_ < b_.l1_.size(); scan_l1_++) {
    auto slot = b_.l2_for_read(scan_l1_);
    if (!slot) return slot.error();
    if (*slot < 0) continue;
    k++;
    const uint64_t off = b_.l1_[scan_l1_] & kL1OffsetMask;
    auto twice = [&](uint64_t c, uint64_t want) -> Result<void> {
      const uint64_t o = owner(c);
      if (o && o != want && (o >> kKindShift) != Fixed)
        return make_error(EUCLEAN, "qcow2: " + b_.path_ + ": cluster " + std::to_string(c) +
                                       " is referenced twice; repair the image (check --repair) before compacting");
      return {};
    };
    if (auto r = twice(off >> b_.cb_, tag(L2, scan_l1_)); !r) return r;
    set_owner(off >> b_.cb_, tag(L2, scan_l1_));
    for (uint64_t j = 0; j < l2n; j++) {
      const uint64_t raw = b_.l2_raw(uint32_t(*slot), j);
      if (!raw) continue;
      const uint64_t gc = (scan_l1_ << b_.l2_bits_) | j;
      const L2Entry e = decode_l2(raw, b_.cb_);
      if ((e.type == ClusterType::Normal || e.type == ClusterType::ZeroAlloc) && e.host_offset % b_.cs_ == 0)
        if (auto r = twice(e.host_offset >> b_.cb_, tag(Data, gc)); !r) return r;
      set_data_owner(gc, raw);
    }
  }
  return {};
}

Result<bool> Qcow2Compactor::move_one() {
  while (hi_ > 0) {
    auto rc = b_.get_refcount(hi_ - 1);
    if (!rc) return rc.error();
    if (*rc) break;
    hi_--;
  }
  if (hi_ == 0) return false;
  const uint64_t h = hi_ - 1;
  while (lo_ < h) {
    if (!b_.overlaps_metadata(lo_)) {
      auto rc = b_.get_refcount(lo_);
      if (!rc) return rc.error();
      if (*rc == 0) break;
    }
    lo_++;
  }
  if (lo_ >= h) return false;
  if (const uint64_t fo = owner(lo_); fo && (fo >> kKindShift) != Fixed)
    return make_error(EUCLEAN, "qcow2: " + b_.path_ + ": cluster " + std::to_string(lo_) +
                                   " is in use but its refcount is 0; repair the image (check --repair)");
  const uint64_t o = owner(h);
  const uint64_t kind = o >> kKindShift;
  const uint64_t idx = o & ((1ull << kKindShift) - 1);
  if (kind == None) {
    if (!b_.pending_free_.empty()) {
      // Freed but not yet flushed: flushing frees it.
      if (auto r = b_.flush_metadata(); !r) return r.error();
      return true;
    }
    stopped_ = "cluster " + std::to_string(h) + " is used but nothing references it (a leak: run check --repair)";
    return false;
  }
  if (kind == Fixed) {
    const uint64_t l1c = b_.hdr_.l1_table_offset >> b_.cb_;
    const uint64_t l1n = (uint64_t(b_.l1_.size()) * 8 + b_.cs_ - 1) >> b_.cb_;
    const uint64_t rtc = b_.hdr_.refcount_table_offset >> b_.cb_;
    const uint64_t rtn = b_.hdr_.refcount_table_clusters;
    if (l1n && h >= l1c && h < l1c + l1n) return move_table(true);
    if (rtn && h >= rtc && h < rtc + rtn) return move_table(false);
    stopped_ = "cluster " + std::to_string(h) + " holds the header or compressed data";
    return false;
  }
  const uint64_t f = lo_;
  auto got = b_.alloc_specific(f);
  if (!got) return got.error();
  if (!*got) return true;  // f became a refcount block; look again
  Result<void> r;
  if (kind == Data) r = move_data(h, f, idx);
  else if (kind == L2) r = move_l2(h, f, idx);
  else r = move_refblock(h, f, idx);
  if (!r) {
    (void)b_.release_now(f);
    return r.error();
  }
  hi_ = h;
  lo_ = f + 1;
  return true;
}

Result<void> Qcow2Compactor::move_data(uint64_t h, uint64_t f, uint64_t gc) {
  const uint64_t l1i = gc >> b_.l2_bits_;
  const uint64_t l2i = gc & ((1ull << b_.l2_bits_) - 1);
  auto stale = [&]() -> Result<void> {
    set_owner(h, 0);
    return b_.release_now(f);
  };
  if (l1i >= b_.l1_.size()) return stale();
  auto slot = b_.l2_for_read(l1i);
  if (!slot) return slot.error();
  if (*slot < 0) return stale();
  const uint32_t s = uint32_t(*slot);
  const uint64_t raw = b_.l2_raw(s, l2i);
  const L2Entry e = decode_l2(raw, b_.cb_);
  if ((e.type != ClusterType::Normal && e.type != ClusterType::ZeroAlloc) || e.host_offset != (h << b_.cb_))
    return stale();
  if (e.type == ClusterType::ZeroAlloc) {
    // A preallocated zero cluster: nothing to copy, just let it go.
    b_.set_l2(s, l1i, l2i, kOflagZero);
    b_.queue_free(h, false);
    moved_++;
    return b_.release_now(f);
  }
  if (auto r = b_.pread_exact(buf_.data(), b_.cs_, h << b_.cb_, true); !r) return r;
  if (auto r = b_.pwrite_all(buf_.data(), b_.cs_, f << b_.cb_); !r) return r;
  b_.set_l2(s, l1i, l2i, (f << b_.cb_) | kOflagCopied);
  b_.queue_free(h, false);
  moved_++;
  return {};
}

Result<void> Qcow2Compactor::move_l2(uint64_t h, uint64_t f, uint64_t l1i) {
  if (l1i >= b_.l1_.size() || (b_.l1_[l1i] & kL1OffsetMask) != (h << b_.cb_)) {
    set_owner(h, 0);
    return b_.release_now(f);
  }
  auto slot = b_.l2_load(h << b_.cb_);
  if (!slot) return slot.error();
  auto& sl = b_.l2_cache_.slots[*slot];
  b_.meta_[f] = Qcow2Backend::MetaKind::L2;
  if (!sl.fresh) {
    if (auto r = b_.pwrite_all(b_.l2_cache_.data(*slot), b_.cs_, f << b_.cb_); !r) {
      b_.meta_.erase(f);
      return r;
    }
  }
  b_.rekey(b_.l2_cache_, *slot, f << b_.cb_);
  b_.meta_.erase(h);
  b_.set_l1(l1i, (f << b_.cb_) | kOflagCopied);
  b_.queue_free(h, false);
  moved_++;
  return {};
}

Result<void> Qcow2Compactor::move_refblock(uint64_t h, uint64_t f, uint64_t g) {
  if (g >= b_.reftable_.size() || (b_.reftable_[g] & kRefTableOffsetMask) != (h << b_.cb_)) {
    set_owner(h, 0);
    return b_.release_now(f);
  }
  auto slot = b_.rc_load(h << b_.cb_);
  if (!slot) return slot.error();
  // The copy (which already counts f) first, then the table entry, each synced.
  if (auto r = b_.pwrite_all(b_.rc_cache_.data(*slot), b_.cs_, f << b_.cb_); !r) return r;
  if (auto r = b_.sync(); !r) return r;
  uint8_t e[8];
  store_be64(e, f << b_.cb_);
  if (auto r = b_.pwrite_all(e, 8, b_.hdr_.refcount_table_offset + g * 8); !r) return r;
  if (auto r = b_.sync(); !r) return r;
  b_.reftable_[g] = f << b_.cb_;
  b_.rekey(b_.rc_cache_, *slot, f << b_.cb_);
  b_.meta_.erase(h);
  b_.meta_[f] = Qcow2Backend::MetaKind::RefBlock;
  set_owner(f, tag(RefBlock, g));
  set_owner(h, 0);
  moved_++;
  return b_.release_now(h);
}

// The L1 or refcount table, contiguous, moves as a whole into the lowest run
// of free clusters below it: copy, sync (with the refcounts of the new
// clusters), switch the header in one write, sync, free the old clusters.
Result<bool> Qcow2Compactor::move_table(bool l1) {
  const uint64_t old_off = l1 ? b_.hdr_.l1_table_offset : b_.hdr_.refcount_table_offset;
  const uint64_t n = l1 ? (uint64_t(b_.l1_.size()) * 8 + b_.cs_ - 1) >> b_.cb_ : b_.hdr_.refcount_table_clusters;
  const uint64_t old_c = old_off >> b_.cb_;
  uint64_t start = 0, len = 0;
  for (uint64_t c = lo_; c < old_c && len < n; c++) {
    bool free = !b_.overlaps_metadata(c);
    if (free) {
      auto rc = b_.get_refcount(c);
      if (!rc) return rc.error();
      free = *rc == 0;
    }
    if (!free) {
      len = 0;
      continue;
    }
    if (!len) start = c;
    len++;
  }
  if (len < n) {
    stopped_ = std::string("no run of free clusters below the ") + (l1 ? "L1" : "refcount") + " table";
    return false;
  }
  for (uint64_t c = start; c < start + n; c++) {
    auto got = b_.alloc_specific(c);
    if (!got || !*got) {
      // A refcount block took one of them: give the run back, look again.
      for (uint64_t k = start; k < c; k++) (void)b_.release_now(k);
      if (!got) return got.error();
      return true;
    }
  }
  auto undo = [&](Error e) -> Result<bool> {
    for (uint64_t k = start; k < start + n; k++) (void)b_.release_now(k);
    return e;
  };
  // L1 entries in memory may point at L2 tables not yet on disk: flush first,
  // so that the copy holds only what is durable.
  if (l1)
    if (auto r = b_.flush_metadata(); !r) return undo(r.error());
  std::vector<uint8_t> buf(n << b_.cb_, 0);
  if (l1)
    for (uint64_t i = 0; i < b_.l1_.size(); i++) store_be64(&buf[i * 8], b_.l1_[i]);
  else
    for (uint64_t i = 0; i < b_.reftable_.size(); i++) store_be64(&buf[i * 8], b_.reftable_[i]);
  if (auto r = b_.pwrite_all(buf.data(), buf.size(), start << b_.cb_); !r) return undo(r.error());
  for (uint32_t i = 0; i < b_.rc_cache_.slots.size(); i++)
    if (b_.rc_cache_.slots[i].dirty)
      if (auto r = b_.rc_write_slot(i); !r) return undo(r.error());
  if (auto r = b_.sync(); !r) return undo(r.error());
  uint8_t h[12];
  if (l1) {
    store_be32(h, uint32_t(b_.l1_.size()));
    store_be64(h + 4, start << b_.cb_);
  } else {
    store_be64(h, start << b_.cb_);
    store_be32(h + 8, uint32_t(n));
  }
  // From here on the header may point either way: on failure keep both (a leak at worst).
  if (auto r = b_.write_header_bytes(l1 ? 36 : 48, h, 12); !r) return r.error();
  if (auto r = b_.sync(); !r) return r.error();
  if (l1)
    b_.hdr_.l1_table_offset = start << b_.cb_;
  else
    b_.hdr_.refcount_table_offset = start << b_.cb_;
  for (uint64_t c = start; c < start + n; c++) set_owner(c, tag(Fixed, 0));
  for (uint64_t c = old_c; c < old_c + n; c++) {
    set_owner(c, 0);
    if (auto r = b_.release_now(c); !r) return r.error();
  }
  moved_ += n;
  hi_ = old_c;
  lo_ = start + n;
  return true;
}

Result<void> Qcow2Compactor::truncate() {
  if (auto r = b_.flush_all(); !r) return r;
  uint64_t top = b_.alloc_end_;
  while (top > 0) {
    auto rc = b_.get_refcount(top - 1);
    if (!rc) return rc.error();
    if (*rc) break;
    top--;
  }
  const uint64_t bytes = top << b_.cb_;
  if (bytes < b_.physical_size_) {
    if (ftruncate(b_.fd_, off_t(bytes)) != 0) {
      const int e = errno;
      return make_error(e, "qcow2: truncate " + b_.path_ + ": " + std::strerror(e));
    }
    b_.physical_size_ = bytes;
    if (auto r = b_.sync(); !r) return r;
  }
  b_.alloc_end_ = top;
  b_.free_hint_ = std::min(b_.free_hint_, top);
  size_after_ = b_.physical_size_;
  return {};
}

Result<bool> Qcow2Compactor::step(uint64_t budget) {
  if (phase_ == Phase::Done) return true;
  budget = std::max<uint64_t>(budget, 1);
  auto fail = [&](Error e) {
    phase_ = Phase::Done;
    stopped_ = e.message;
    if (b_.job_ == this) b_.job_ = nullptr;
    if (b_.compactor_ == this) b_.compactor_ = nullptr;
    return e;
  };
  if (auto r = b_.writable(); !r) return fail(r.error());
  if (auto r = b_.ensure_dirty_bit(); !r) return fail(r.error());
  if (phase_ == Phase::Scan) {
    if (auto r = scan_slice(budget); !r) return fail(r.error());
    if (scan_l1_ < b_.l1_.size()) return false;
    // Counting: live clusters, and how many sit past where they would all fit.
    live_ = b_.ctr_.allocated.load();
    to_move_ = 0;
    for (uint64_t c = live_; c < b_.alloc_end_; c++) {
      auto rc = b_.get_refcount(c);
      if (!rc) return fail(rc.error());
      to_move_ += *rc != 0;
    }
    hi_ = b_.alloc_end_;
    lo_ = 0;
    phase_ = Phase::Move;
    return false;
  }
  if (phase_ == Phase::Move) {
    bool more = true;
    for (uint64_t k = 0; k < budget && more; k++) {
      auto m = move_one();
      if (!m) return fail(m.error());
      more = *m;
    }
    if (auto r = b_.flush_metadata(); !r) return fail(r.error());
    if (more) return false;
    // Something may have been allocated above us meanwhile (the guest writes
    // too): look once more from the top before truncating.
    if (b_.alloc_end_ > hi_ && stopped_.empty() && rescans_ < 4) {
      rescans_++;
      hi_ = b_.alloc_end_;
      lo_ = 0;
      return false;
    }
    phase_ = Phase::Truncate;
    return false;
  }
  if (auto r = truncate(); !r) return fail(r.error());
  phase_ = Phase::Done;
  spdlog::info("qcow2: {}: {}", b_.path_, summary());
  if (b_.job_ == this) b_.job_ = nullptr;
  if (b_.compactor_ == this) b_.compactor_ = nullptr;
  return true;
}

unsigned Qcow2Compactor::percent() const {
  switch (phase_) {
    case Phase::Scan: return b_.l1_.empty() ? 0 : unsigned(5 * scan_l1_ / b_.l1_.size());
    case Phase::Move: return 5 + unsigned(std::min<uint64_t>(90, 90 * moved_ / std::max<uint64_t>(1, to_move_)));
    case Phase::Truncate: return 95;
    case Phase::Done: return 100;
  }
  return 0;
}

std::string Qcow2Compactor::summary() const {
  if (phase_ == Phase::Done) {
    std::string s = "compacted: moved " + std::to_string(moved_) + " clusters, file " + std::to_string(size_before_) +
                    " -> " + std::to_string(size_after_ ? size_after_ : b_.physical_size_.load()) + " bytes";
    if (!stopped_.empty()) s += " (stopped early: " + stopped_ + ")";
    return s;
  }
  const char* ph = phase_ == Phase::Scan ? "scanning" : phase_ == Phase::Move ? "moving" : "truncating";
  return std::string("compacting: ") + ph + ", " + std::to_string(moved_) + "/" + std::to_string(to_move_) +
         " clusters moved";
}

// --- discard of zero clusters ----------------------------------------------------------

Qcow2ZeroDiscarder::Qcow2ZeroDiscarder(Qcow2Backend& b) : b_(b) {
  b_.job_ = this;
  total_ = (b_.size() + b_.cs_ - 1) >> b_.cb_;
  buf_.resize(b_.cs_);
}

Qcow2ZeroDiscarder::~Qcow2ZeroDiscarder() {
  if (b_.job_ == this) b_.job_ = nullptr;
}

Result<bool> Qcow2ZeroDiscarder::step(uint64_t budget) {
  if (done_) return true;
  auto fail = [&](Error e) {
    done_ = true;
    if (b_.job_ == this) b_.job_ = nullptr;
    return e;
  };
  if (auto r = b_.writable(); !r) return fail(r.error());
  if (auto r = b_.ensure_dirty_bit(); !r) return fail(r.error());
  const bool zero_flag = b_.hdr_.version >= 3;
  const uint64_t l2mask = (1ull << b_.l2_bits_) - 1;
  budget = std::max<uint64_t>(budget, 1);
  for (uint64_t k = 0; k < budget && next_ < total_; k++) {
    const uint64_t gc = next_;
    const uint64_t l1i = gc >> b_.l2_bits_;
    auto slot = b_.l2_for_read(l1i);
    if (!slot) return fail(slot.error());
    if (*slot < 0) {
      next_ = (l1i + 1) << b_.l2_bits_;
      continue;
    }
    const uint32_t s = uint32_t(*slot);
    const uint64_t raw = b_.l2_raw(s, gc & l2mask);
    const L2Entry e = decode_l2(raw, b_.cb_);
    next_++;
    if (e.type == ClusterType::ZeroAlloc && zero_flag) {
      b_.set_l2(s, l1i, gc & l2mask, kOflagZero);
      b_.queue_free_entry(raw);
      released_++;
      continue;
    }
    if (e.type != ClusterType::Normal) continue;
    if (auto r = b_.validate_data_entry(e, raw, gc << b_.cb_, false); !r) return fail(r.error());
    if (auto r = b_.pread_exact(buf_.data(), b_.cs_, e.host_offset, true); !r) return fail(r.error());
    if (std::memcmp(buf_.data(), b_.zeros_.data(), b_.cs_) != 0) continue;
    const bool backing_here = b_.backing_ && (gc << b_.cb_) < b_.backing_size_;
    uint64_t nraw;
    if (zero_flag) nraw = kOflagZero;
    else if (!backing_here) nraw = 0;
    else continue;  // v2 over a backing file cannot say "zeros" without data
    b_.set_l2(s, l1i, gc & l2mask, nraw);
    b_.queue_free_entry(raw);
    released_++;
  }
  if (auto r = b_.flush_metadata(); !r) return fail(r.error());
  if (next_ >= total_) {
    done_ = true;
    if (b_.job_ == this) b_.job_ = nullptr;
    spdlog::info("qcow2: {}: {}", b_.path_, summary());
  }
  return done_;
}

unsigned Qcow2ZeroDiscarder::percent() const {
  if (done_) return 100;
  return unsigned(std::min<uint64_t>(99, 100 * next_ / std::max<uint64_t>(1, total_)));
}

std::string Qcow2ZeroDiscarder::summary() const {
  const std::string n = std::to_string(released_) + " zero clusters (" + std::to_string(released_ * b_.cs_) + " bytes)";
  return done_ ? "discard-zeroes: released " + n : "discard-zeroes: " + std::to_string(percent()) + "%, " + n + " so far";
}

}  // namespace berth::storage
