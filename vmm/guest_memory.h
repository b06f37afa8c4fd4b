// GuestMemory: the guest's RAM as one or more host mappings, and the only
// way devices touch it (DESIGN.md: vmm/).
//
// The guest is untrusted: every address and length a device takes from it
// (descriptor tables, buffers, boot structures) goes through span(), which
// checks that [gpa, gpa + len) lies wholly inside one region, without
// overflowing. A failed check is an ordinary outcome (std::nullopt), never a
// crash. Buffers never straddle regions: a descriptor that does is refused.
//
// Threading: the mappings are fixed for the VM's life; any thread may read or
// write through them. The guest writes concurrently, so a device copies what
// it parses (headers, descriptors) once, then validates the copy.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"

namespace berth::vmm {

// The x86 layout: RAM from 0 up to the MMIO hole, the rest above 4 GiB.
constexpr uint64_t kMmioHoleStart = 0xC000'0000;
constexpr uint64_t kMmioHoleEnd = 0x1'0000'0000;

struct MemRegion {
  uint64_t gpa = 0;
  uint64_t size = 0;
  uint8_t* host = nullptr;
};

class GuestMemory {
 public:
  GuestMemory() = default;
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  GuestMemory(GuestMemory&& o) noexcept;
  GuestMemory& operator=(GuestMemory&& o) noexcept;

  // mmap's `size` bytes of anonymous memory laid out around the MMIO hole
  // (one region when size <= kMmioHoleStart, two otherwise). ENOMEM, EINVAL.
  [[nodiscard]] static Result<GuestMemory> allocate(uint64_t size);

  // Adds a region backed by memory the caller owns (tests: a plain buffer).
  // Regions must not overlap; EINVAL otherwise.
  [[nodiscard]] Result<void> add_region(uint64_t gpa, std::span<uint8_t> host);

  const std::vector<MemRegion>& regions() const { return regions_; }
  uint64_t total_size() const;

  // The host bytes for [gpa, gpa + len), or nullopt when any byte of it is
  // outside guest RAM or the range crosses a region boundary. len 0 is
  // allowed (an empty span) when gpa is inside or at the end of a region.
  std::optional<std::span<uint8_t>> span(uint64_t gpa, uint64_t len) const;
  bool contains(uint64_t gpa, uint64_t len) const { return span(gpa, len).has_value(); }

  // Copy in or out; false (nothing copied) when the range is not RAM.
  bool read(uint64_t gpa, std::span<uint8_t> out) const;
  bool write(uint64_t gpa, Bytes in) const;

  template <typename T>
  std::optional<T> read_obj(uint64_t gpa) const {
    T v;
    if (!read(gpa, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), sizeof v))) return std::nullopt;
    return v;
  }
  template <typename T>
  bool write_obj(uint64_t gpa, const T& v) const {
    return write(gpa, Bytes(reinterpret_cast<const uint8_t*>(&v), sizeof v));
  }

 private:
  std::vector<MemRegion> regions_;
  std::vector<std::pair<uint8_t*, uint64_t>> owned_;  // mmap'd by allocate()
};

}  // namespace berth::vmm
