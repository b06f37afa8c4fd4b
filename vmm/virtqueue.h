// A split virtqueue (virtio 1.x §2.7), device side, with indirect
// descriptors and (optionally) event-index interrupt suppression.
//
// The guest owns the rings and is untrusted. pop() copies each descriptor
// out of guest memory once and validates the whole chain before a device
// sees it:
//   - every index is < the queue size (or the indirect table's length);
//   - a chain visits at most `size` descriptors (so a loop ends as an error);
//   - an indirect table is a non-empty multiple of 16 bytes, at most 1024
//     entries (its indices are bounded by its own length, and its chain by
//     its entry count), lies in RAM, and no descriptor inside it is INDIRECT
//     again; INDIRECT with NEXT is refused;
//   - every buffer lies wholly inside RAM (GuestMemory::span);
//   - device-readable buffers come before device-writable ones;
//   - the total length of each part is at most kMaxChainBytes.
// A chain that fails is counted by reason in stats(), returned to the used
// ring with length 0 (so the driver can reclaim it) and skipped. A broken
// ring (an avail index that jumps ahead by more than the queue size) marks
// the queue broken; it stops until reset.
//
// Threading: one thread (the device's loop) uses a queue at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "vmm/guest_memory.h"

namespace berth::vmm {

// Descriptor flags and ring layout (virtio 1.x).
constexpr uint16_t kDescFNext = 1;
constexpr uint16_t kDescFWrite = 2;
constexpr uint16_t kDescFIndirect = 4;
constexpr uint16_t kAvailFNoInterrupt = 1;
constexpr uint16_t kUsedFNoNotify = 1;
constexpr uint32_t kMaxChainBytes = 64u << 20;  // per direction

struct DescBuffer {
  uint64_t gpa = 0;
  uint32_t len = 0;
};

struct DescChain {
  uint16_t head = 0;                 // the id to push() back
  std::vector<DescBuffer> readable;  // driver -> device, in order
  std::vector<DescBuffer> writable;  // device -> driver, in order
  uint64_t readable_len = 0, writable_len = 0;
};

struct QueueStats {
  uint64_t chains = 0;       // valid chains popped
  uint64_t notifies = 0;     // kicks seen (counted by the transport)
  uint64_t interrupts = 0;   // interrupts raised for this queue
  // Chains refused, by reason.
  uint64_t bad_index = 0;       // a next/head index >= size
  uint64_t bad_loop = 0;        // more descriptors than the queue holds
  uint64_t bad_address = 0;     // a buffer (or the indirect table) outside RAM
  uint64_t bad_indirect = 0;    // nested indirect, INDIRECT|NEXT, bad table length, or not negotiated
  uint64_t bad_order = 0;       // a readable buffer after a writable one
  uint64_t bad_length = 0;      // a part longer than kMaxChainBytes, or a zero-length table
  uint64_t broken = 0;          // ring-level breakage (avail index ran too far ahead)
  uint64_t refused() const {
    return bad_index + bad_loop + bad_address + bad_indirect + bad_order + bad_length;
  }
};

class Virtqueue {
 public:
  Virtqueue(const GuestMemory& mem, uint16_t max_size) : mem_(mem), max_size_(max_size) {}

  // Configuration, from the transport (the driver's writes).
  uint16_t max_size() const { return max_size_; }
  // Size: a power of two, 1..max_size; activate() refuses anything else.
  void set_size(uint16_t n) { size_ = n; }
  uint16_t size() const { return size_; }
  void set_addresses(uint64_t desc, uint64_t avail, uint64_t used) {
    desc_ = desc;
    avail_ = avail;
    used_ = used;
  }
  void set_features(bool indirect, bool event_idx) {
    indirect_ = indirect;
    event_idx_ = event_idx;
  }
  // Checks the configuration (size, ring addresses inside RAM and aligned)
  // and starts from index 0. Error (EINVAL) leaves the queue not ready.
  [[nodiscard]] Result<void> activate();
  bool ready() const { return ready_ && !broken_; }
  bool broken() const { return broken_; }
  // Back to the unconfigured state (device reset).
  void reset();

  // The next valid chain, or nullopt when the driver has made none
  // available. Invalid chains are counted, completed with length 0, and
  // skipped.
  std::optional<DescChain> pop();
  // Whether any chain is available (without consuming it).
  bool has_available() const;

  // Copies from the chain's readable part, starting `offset` bytes in;
  // returns the bytes copied (short at the end of the part).
  size_t read_from(const DescChain& c, uint64_t offset, std::span<uint8_t> out) const;
  // Copies into the chain's writable part, `offset` bytes in; returns the
  // bytes copied (short when the part is too small).
  size_t write_to(const DescChain& c, uint64_t offset, Bytes in) const;

  // Returns a chain to the driver: `written` bytes of its writable part were
  // filled.
  void push(uint16_t head, uint32_t written);
  // After one or more push()es: whether the driver wants an interrupt now
  // (honours VRING_AVAIL_F_NO_INTERRUPT, or used_event with EVENT_IDX).
  // Resets the pending state; counts an interrupt when it returns true.
  bool should_interrupt();
  // With EVENT_IDX: ask for a kick at the next avail index (call before
  // sleeping on an empty queue). Without it: sets or clears NO_NOTIFY.
  void enable_notifications(bool on);

  QueueStats& stats() { return stats_; }
  const QueueStats& stats() const { return stats_; }

 private:
  const GuestMemory& mem_;
  uint16_t max_size_;
  uint16_t size_ = 0;
  uint64_t desc_ = 0, avail_ = 0, used_ = 0;
  bool indirect_ = false, event_idx_ = false;
  bool ready_ = false, broken_ = false;
  uint16_t last_avail_ = 0;   // next avail ring slot to read
  uint16_t used_idx_ = 0;     // our used index
  uint16_t signalled_used_ = 0;  // used index at the last interrupt decision
  bool pushed_ = false;
  uint32_t pushes_since_signal_ = 0;  // > 0xffff: the wrap-safe test cannot tell
  bool notify_on_ = true;             // enable_notifications() state
  // Host addresses of the rings, fixed by activate() (mappings never move).
  uint8_t* desc_host_ = nullptr;
  uint8_t* avail_host_ = nullptr;
  uint8_t* used_host_ = nullptr;
  std::vector<uint8_t> table_;  // scratch copy of an indirect table
  QueueStats stats_;
};

}  // namespace berth::vmm
