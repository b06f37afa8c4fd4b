#include "vmm/guest_memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace berth::vmm {

GuestMemory::~GuestMemory() {
  for (auto& [p, n] : owned_) munmap(p, n);
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept : regions_(std::move(o.regions_)), owned_(std::move(o.owned_)) {
  o.regions_.clear();
  o.owned_.clear();
}

GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept {
  if (this != &o) {
    for (auto& [p, n] : owned_) munmap(p, n);
    regions_ = std::move(o.regions_);
    owned_ = std::move(o.owned_);
    o.regions_.clear();
    o.owned_.clear();
  }
  return *this;
}

Result<GuestMemory> GuestMemory::allocate(uint64_t size) {
  if (size == 0 || size % 4096 != 0 || size > (1ull << 40))
    return make_error(EINVAL, "guest memory size must be a non-zero multiple of 4 KiB, at most 1 TiB");
  GuestMemory m;
  auto map = [&](uint64_t gpa, uint64_t len) -> Result<void> {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
      return make_error(errno, "cannot map " + std::to_string(len >> 20) + " MiB of guest memory: " + strerror(errno));
    // Guest RAM is never forked into children; mergeable where the host allows.
    madvise(p, len, MADV_DONTFORK);
    m.owned_.emplace_back(static_cast<uint8_t*>(p), len);
    m.regions_.push_back(MemRegion{gpa, len, static_cast<uint8_t*>(p)});
    return {};
  };
  uint64_t low = std::min(size, kMmioHoleStart);
  if (auto r = map(0, low); !r) return r.error();
  if (size > low)
    if (auto r = map(kMmioHoleEnd, size - low); !r) return r.error();
  return m;
}

Result<void> GuestMemory::add_region(uint64_t gpa, std::span<uint8_t> host) {
  uint64_t len = host.size();
  if (len == 0 || gpa + len < gpa) return make_error(EINVAL, "empty or wrapping guest memory region");
  for (auto& r : regions_)
    if (gpa < r.gpa + r.size && r.gpa < gpa + len) return make_error(EINVAL, "overlapping guest memory regions");
  regions_.push_back(MemRegion{gpa, len, host.data()});
  std::sort(regions_.begin(), regions_.end(), [](const MemRegion& a, const MemRegion& b) { return a.gpa < b.gpa; });
  return {};
}

uint64_t GuestMemory::total_size() const {
  uint64_t n = 0;
  for (auto& r : regions_) n += r.size;
  return n;
}

std::optional<std::span<uint8_t>> GuestMemory::span(uint64_t gpa, uint64_t len) const {
  for (auto& r : regions_) {
    if (gpa < r.gpa) continue;
    uint64_t off = gpa - r.gpa;
    if (off > r.size || (off == r.size && len > 0)) continue;
    // off <= size here, so size - off cannot underflow and the test cannot overflow.
    if (len > r.size - off) return std::nullopt;
    return std::span<uint8_t>(r.host + off, size_t(len));
  }
  return std::nullopt;
}

bool GuestMemory::read(uint64_t gpa, std::span<uint8_t> out) const {
  auto s = span(gpa, out.size());
  if (!s) return false;
  if (!out.empty()) std::memcpy(out.data(), s->data(), out.size());
  return true;
}

bool GuestMemory::write(uint64_t gpa, Bytes in) const {
  auto s = span(gpa, in.size());
  if (!s) return false;
  if (!in.empty()) std::memcpy(s->data(), in.data(), in.size());
  return true;
}

}  // namespace berth::vmm
