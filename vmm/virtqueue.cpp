// Split virtqueue, device side (virtio 1.x §2.7).
//
// Theory of operation
// -------------------
// The driver (the guest) owns the descriptor table and the available ring;
// the device owns the used ring. Both sides run concurrently, so:
//   - pop() loads avail->idx with acquire semantics, and only then reads the
//     ring entries and descriptors it publishes (§2.7.13: the driver writes
//     the ring entry, a barrier, then idx).
//   - Every descriptor is copied out of guest memory exactly once (16 bytes
//     at a time, an indirect table in one go) and only the copy is checked
//     and used: the guest may rewrite the table while we look at it, and a
//     second read could disagree with the first.
//   - push() writes the used element with plain stores, then stores
//     used->idx with release semantics, so the driver that sees the new idx
//     sees the element.
//   - Interrupt and notification suppression compare indices the other side
//     wrote; a full fence sits between our store and our load of theirs
//     (the classic store->load race: "I published, do they want to hear?").
//
// Chain validation (a failure refuses the whole chain, counted by reason):
//   head/next index >= table length      -> bad_index
//   more descriptors than the table has  -> bad_loop (a cycle ends here)
//   INDIRECT not negotiated, INDIRECT|NEXT, INDIRECT inside a table,
//   a table length not a multiple of 16 or over kMaxIndirectEntries
//                                        -> bad_indirect
//   a zero-length table, a part > kMaxChainBytes -> bad_length
//   a buffer or table outside RAM        -> bad_address
//   a readable buffer after a writable   -> bad_order
// A refused chain goes back to the used ring with length 0 so the driver can
// reclaim its buffers; the queue carries on with the next one. An avail idx
// more than `size` entries ahead of ours cannot come from a correct driver
// and leaves us no way to know which entries are real: the queue is broken
// until reset.
//
// Indirect tables: the indices inside a table are bounded by the table's own
// entry count, and a table holds at most kMaxIndirectEntries; so one chain
// visits at most size + kMaxIndirectEntries descriptors.
#include "vmm/virtqueue.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <string>

namespace berth::vmm {

namespace {

static_assert(std::endian::native == std::endian::little, "virtio rings are little-endian; the atomics below assume it");

constexpr uint64_t kDescSize = 16;
constexpr uint32_t kMaxQueueSize = 32768;       // §2.7: Queue Size is at most 32768
constexpr uint32_t kMaxIndirectEntries = 1024;  // bounds the scratch copy (16 KiB)

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

Desc decode_desc(const uint8_t* p) {
  return Desc{load_le64(p), load_le32(p + 8), load_le16(p + 12), load_le16(p + 14)};
}

// Ring fields shared with the guest. Aligned when activate() accepted the
// ring addresses and the region's host base is aligned (mmap'd memory is);
// fall back to a byte copy plus fence otherwise (test buffers).
uint16_t load_acquire16(const uint8_t* p) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) == 0)
    return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_ACQUIRE);
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  std::atomic_thread_fence(std::memory_order_acquire);
  return v;
}

uint16_t load_relaxed16(const uint8_t* p) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) == 0)
    return __atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_RELAXED);
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

void store_release16(uint8_t* p, uint16_t v) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) == 0) {
    __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELEASE);
    return;
  }
  std::atomic_thread_fence(std::memory_order_release);
  std::memcpy(p, &v, sizeof v);
}

void store_relaxed16(uint8_t* p, uint16_t v) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(uint16_t) == 0) {
    __atomic_store_n(reinterpret_cast<uint16_t*>(p), v, __ATOMIC_RELAXED);
    return;
  }
  std::memcpy(p, &v, sizeof v);
}

// §2.7.10: with EVENT_IDX, the other side wants to hear about the move of
// our index from `old_idx` to `new_idx` iff `event` lies in
// [old_idx, new_idx) modulo 2^16. Written as one unsigned comparison:
// new - event - 1 counts how far past `event` we are (0 when new = event+1).
bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return uint16_t(new_idx - event - 1) < uint16_t(new_idx - old_idx);
}

enum class Refusal { none, index, loop, address, indirect, order, length };

}  // namespace

Result<void> Virtqueue::activate() {
  ready_ = false;
  broken_ = false;
  if (size_ == 0 || size_ > max_size_ || size_ > kMaxQueueSize || (size_ & (size_ - 1)) != 0)
    return make_error(EINVAL, "virtqueue size " + std::to_string(size_) + " is not a power of two in 1.." +
                                  std::to_string(max_size_));
  // §2.7: descriptor table 16-aligned, available ring 2-aligned, used ring 4-aligned.
  if (desc_ % 16 != 0 || avail_ % 2 != 0 || used_ % 4 != 0)
    return make_error(EINVAL, "virtqueue ring addresses are misaligned");
  uint64_t n = size_;
  uint64_t extra = event_idx_ ? 2 : 0;  // used_event / avail_event trail the rings
  auto d = mem_.span(desc_, kDescSize * n);
  auto a = mem_.span(avail_, 4 + 2 * n + extra);
  auto u = mem_.span(used_, 4 + 8 * n + extra);
  if (!d || !a || !u) return make_error(EINVAL, "virtqueue rings are not inside guest RAM");
  desc_host_ = d->data();
  avail_host_ = a->data();
  used_host_ = u->data();
  last_avail_ = 0;
  used_idx_ = 0;
  signalled_used_ = 0;
  pushed_ = false;
  pushes_since_signal_ = 0;
  notify_on_ = true;
  ready_ = true;
  return {};
}

void Virtqueue::reset() {
  size_ = 0;
  desc_ = avail_ = used_ = 0;
  indirect_ = event_idx_ = false;
  ready_ = broken_ = false;
  last_avail_ = used_idx_ = signalled_used_ = 0;
  pushed_ = false;
  pushes_since_signal_ = 0;
  notify_on_ = true;
  desc_host_ = avail_host_ = used_host_ = nullptr;
  table_.clear();
  table_.shrink_to_fit();
}

bool Virtqueue::has_available() const {
  if (!ready()) return false;
  return load_acquire16(avail_host_ + 2) != last_avail_;
}

std::optional<DescChain> Virtqueue::pop() {
  if (!ready()) return std::nullopt;
  const uint64_t mask = size_ - 1u;
  uint16_t avail_idx = load_acquire16(avail_host_ + 2);
  for (;;) {
    uint16_t pending = uint16_t(avail_idx - last_avail_);
    if (pending > size_) {
      // No correct driver gets more than `size` entries ahead (§2.7.6).
      broken_ = true;
      stats_.broken++;
      return std::nullopt;
    }
    if (pending == 0) {
      if (!event_idx_ || !notify_on_) return std::nullopt;
      // Empty: ask for a kick at the next entry, then look again, in case the
      // driver added one after our load but read the old avail_event.
      store_relaxed16(used_host_ + 4 + 8 * uint64_t(size_), last_avail_);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      avail_idx = load_acquire16(avail_host_ + 2);
      if (avail_idx == last_avail_) return std::nullopt;
      continue;
    }

    uint16_t head = load_le16(avail_host_ + 4 + 2 * (last_avail_ & mask));
    last_avail_++;

    DescChain c;
    c.head = head;
    Refusal why = Refusal::none;

    // Walk the chain: first in the descriptor table, then (at most once) in
    // an indirect table. `table`/`entries` is where the current index points.
    const uint8_t* table = desc_host_;
    uint32_t entries = size_;
    uint32_t visited = 0;
    bool in_indirect = false;
    bool seen_writable = false;
    uint32_t idx = head;
    for (;;) {
      if (idx >= entries) {
        why = Refusal::index;
        break;
      }
      if (++visited > entries) {
        why = Refusal::loop;
        break;
      }
      // The one read of this descriptor; only the copy is used from here on.
      uint8_t raw[kDescSize];
      std::memcpy(raw, table + kDescSize * idx, kDescSize);
      Desc d = decode_desc(raw);

      if (d.flags & kDescFIndirect) {
        // §2.7.5.3: only with the feature, never nested, never with NEXT.
        if (!indirect_ || in_indirect || (d.flags & kDescFNext)) {
          why = Refusal::indirect;
          break;
        }
        if (d.len == 0) {
          why = Refusal::length;
          break;
        }
        if (d.len % kDescSize != 0 || d.len / kDescSize > kMaxIndirectEntries) {
          why = Refusal::indirect;
          break;
        }
        auto t = mem_.span(d.addr, d.len);
        if (!t) {
          why = Refusal::address;
          break;
        }
        table_.resize(d.len);
        std::memcpy(table_.data(), t->data(), d.len);
        table = table_.data();
        entries = d.len / kDescSize;
        visited = 0;
        in_indirect = true;
        idx = 0;
        continue;
      }

      bool writable = (d.flags & kDescFWrite) != 0;
      if (writable) {
        seen_writable = true;
      } else if (seen_writable) {
        why = Refusal::order;  // §2.7.4: readable descriptors come first
        break;
      }
      if (d.len != 0) {
        if (!mem_.contains(d.addr, d.len)) {
          why = Refusal::address;
          break;
        }
        uint64_t& total = writable ? c.writable_len : c.readable_len;
        total += d.len;
        if (total > kMaxChainBytes) {
          why = Refusal::length;
          break;
        }
        (writable ? c.writable : c.readable).push_back(DescBuffer{d.addr, d.len});
      }
      if (!(d.flags & kDescFNext)) break;
      idx = d.next;
    }

    switch (why) {
      case Refusal::none:
        stats_.chains++;
        return c;
      case Refusal::index: stats_.bad_index++; break;
      case Refusal::loop: stats_.bad_loop++; break;
      case Refusal::address: stats_.bad_address++; break;
      case Refusal::indirect: stats_.bad_indirect++; break;
      case Refusal::order: stats_.bad_order++; break;
      case Refusal::length: stats_.bad_length++; break;
    }
    // Give the buffers back untouched so the driver can reclaim them.
    push(head, 0);
  }
}

size_t Virtqueue::read_from(const DescChain& c, uint64_t offset, std::span<uint8_t> out) const {
  size_t done = 0;
  for (const auto& b : c.readable) {
    if (done == out.size()) break;
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(b.len - offset, out.size() - done);
    auto s = mem_.span(b.gpa + offset, n);
    if (!s) break;  // validated at pop(); RAM does not shrink
    std::memcpy(out.data() + done, s->data(), n);
    done += n;
    offset = 0;
  }
  return done;
}

size_t Virtqueue::write_to(const DescChain& c, uint64_t offset, Bytes in) const {
  size_t done = 0;
  for (const auto& b : c.writable) {
    if (done == in.size()) break;
    if (offset >= b.len) {
      offset -= b.len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(b.len - offset, in.size() - done);
    auto s = mem_.span(b.gpa + offset, n);
    if (!s) break;
    std::memcpy(s->data(), in.data() + done, n);
    done += n;
    offset = 0;
  }
  return done;
}

void Virtqueue::push(uint16_t head, uint32_t written) {
  if (!ready()) return;
  // §2.7.8: the element first, then (release) the index that publishes it.
  uint8_t* elem = used_host_ + 4 + 8 * uint64_t(used_idx_ & (size_ - 1u));
  uint8_t buf[8];
  store_le32(buf, head);
  store_le32(buf + 4, written);
  std::memcpy(elem, buf, sizeof buf);
  used_idx_++;
  store_release16(used_host_ + 2, used_idx_);
  pushed_ = true;
  pushes_since_signal_++;
}

bool Virtqueue::should_interrupt() {
  if (!ready() || !pushed_) return false;
  // Our used->idx store must be visible before we read what the driver
  // wants; otherwise both sides may decide the other will act (§2.7.10).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  uint16_t old_idx = signalled_used_;
  uint16_t new_idx = used_idx_;
  bool want;
  if (event_idx_) {
    uint16_t used_event = load_relaxed16(avail_host_ + 4 + 2 * uint64_t(size_));
    // More than 2^16 pushes since the last decision: the modular test
    // cannot tell whether used_event was crossed, so interrupt.
    want = pushes_since_signal_ > 0xffffu || need_event(used_event, new_idx, old_idx);
  } else {
    want = !(load_relaxed16(avail_host_) & kAvailFNoInterrupt);
  }
  signalled_used_ = new_idx;
  pushed_ = false;
  pushes_since_signal_ = 0;
  if (want) stats_.interrupts++;
  return want;
}

void Virtqueue::enable_notifications(bool on) {
  notify_on_ = on;
  if (!ready()) return;
  if (event_idx_) {
    // §2.7.10: the driver kicks when its avail idx moves past avail_event.
    // Off: leave the old value behind us, which suppresses kicks until
    // pop() finds the queue empty and asks again (while on).
    if (on) store_relaxed16(used_host_ + 4 + 8 * uint64_t(size_), last_avail_);
  } else {
    store_relaxed16(used_host_, on ? 0 : kUsedFNoNotify);
  }
  // The caller re-checks has_available() after turning kicks on; the
  // fence orders our store before that load.
  if (on) std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace berth::vmm
