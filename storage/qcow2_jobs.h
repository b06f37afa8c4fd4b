// Internal: the long-running qcow2 jobs (compaction, discard of zero
// clusters). Only qcow2*.cpp include this; users see Qcow2Job.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/qcow2.h"

namespace berth::storage {

// Compaction. Theory of operation:
// 1. Start: flush everything (so queued frees are applied and the refcounts
//    in the cache are the truth), then scan the L1 and L2 tables and the
//    refcount table, slice by slice, recording the owner of every used host
//    cluster: a guest cluster (data), an L1 index (an L2 table), a refcount
//    table index (a refcount block), or "fixed" (the header, the L1 and
//    refcount tables, compressed data). The backend reports every
//    L1/L2 entry change to the compactor while it runs (on_l1_change,
//    on_l2_change), so the owner map stays true while the guest writes.
// 2. Move: take the highest used cluster H and the lowest free cluster F < H;
//    copy H to F, point the owner's reference at F, and queue H to be freed.
//    The backend's ordering rules apply unchanged: F's refcount is set before
//    the reference, F's data is written and synced before the reference is
//    written back, and H is freed only after the new reference is on disk
//    (each step ends with a flush). Refcount blocks are moved with their own
//    write-sync-switch-sync sequence. A preallocated zero cluster is simply
//    dropped. The L1 and refcount tables move whole, into the lowest run of
//    free clusters below them: copy, sync, switch the header, sync, free.
//    Stop when no free cluster lies below the highest used one, or the
//    highest used cluster cannot move (header, compressed data, a leak).
// 3. Truncate: flush, then cut the file after the highest used cluster.
class Qcow2Compactor final : public Qcow2Job {
 public:
  explicit Qcow2Compactor(Qcow2Backend& b);
  ~Qcow2Compactor() override;
  Result<bool> step(uint64_t budget) override;
  bool done() const override { return phase_ == Phase::Done; }
  unsigned percent() const override;
  std::string summary() const override;

  void on_l1_change(uint64_t l1_index, uint64_t old_raw, uint64_t new_raw);
  void on_l2_change(uint64_t guest_cluster, uint64_t old_raw, uint64_t new_raw);
  void on_refblock(uint64_t rt_index, uint64_t cluster) { set_owner(cluster, tag(RefBlock, rt_index)); }
  void on_fixed(uint64_t cluster) { set_owner(cluster, tag(Fixed, 0)); }

 private:
  enum class Phase { Scan, Move, Truncate, Done };
  static constexpr uint64_t kKindShift = 60;
  enum Kind : uint64_t { None = 0, Data = 1, L2 = 2, RefBlock = 3, Fixed = 4 };
  static uint64_t tag(Kind k, uint64_t index) { return (uint64_t(k) << kKindShift) | index; }
  void set_owner(uint64_t cluster, uint64_t owner);
  uint64_t owner(uint64_t cluster) const { return cluster < owner_.size() ? owner_[cluster] : 0; }
  void set_data_owner(uint64_t guest_cluster, uint64_t raw);
  void clear_data_owner(uint64_t raw);
  Result<void> scan_slice(uint64_t budget);
  Result<bool> move_one();  // false: nothing more to move
  Result<void> move_data(uint64_t h, uint64_t f, uint64_t guest_cluster);
  Result<void> move_l2(uint64_t h, uint64_t f, uint64_t l1_index);
  Result<void> move_refblock(uint64_t h, uint64_t f, uint64_t rt_index);
  Result<bool> move_table(bool l1);
  Result<void> truncate();

  Qcow2Backend& b_;
  Phase phase_ = Phase::Scan;
  std::vector<uint64_t> owner_;
  uint64_t scan_l1_ = 0;
  uint64_t hi_ = 0;      // next candidate for the highest used cluster (exclusive)
  uint64_t lo_ = 0;      // no free cluster below it
  uint64_t live_ = 0;    // used clusters at the start of the move phase
  uint64_t to_move_ = 0; // used clusters at or past live_ then
  uint64_t moved_ = 0;
  uint64_t size_before_ = 0, size_after_ = 0;
  std::vector<uint8_t> buf_;
  std::string stopped_;  // why moving stopped early
  unsigned rescans_ = 0;
};

class Qcow2ZeroDiscarder final : public Qcow2Job {
 public:
  explicit Qcow2ZeroDiscarder(Qcow2Backend& b);
  ~Qcow2ZeroDiscarder() override;
  Result<bool> step(uint64_t budget) override;
  bool done() const override { return done_; }
  unsigned percent() const override;
  std::string summary() const override;

 private:
  Qcow2Backend& b_;
  uint64_t next_ = 0;  // guest cluster
  uint64_t total_ = 0;
  uint64_t released_ = 0;
  bool done_ = false;
  std::vector<uint8_t> buf_;
};

}  // namespace berth::storage
