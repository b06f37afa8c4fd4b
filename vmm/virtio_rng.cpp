// virtio-rng: on every kick (and on activation, for buffers queued before
// DRIVER_OK) pop each chain, fill its writable part straight from
// getrandom(2) into guest memory, and return it with the number of bytes
// filled (§5.4.6: the device MAY return fewer bytes than the buffer holds).
// Readable buffers in a request are ignored.
#include "vmm/virtio_rng.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

namespace berth::vmm {

namespace {

// Fills `out` from the kernel's CSPRNG; returns the bytes filled (short only
// when getrandom itself fails, which it does not once the pool is ready).
size_t fill_random(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = getrandom(out.data() + done, out.size() - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      spdlog::warn("virtio-rng: getrandom: {}", std::strerror(errno));
      break;
    }
    done += size_t(n);
  }
  return done;
}

}  // namespace

void VirtioRng::read_config(uint64_t /*offset*/, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t(0));  // §5.4.4: no config space
}

void VirtioRng::activate(VirtioContext& ctx) {
  ctx_ = &ctx;
  serve();
}

void VirtioRng::notify(size_t index) {
  if (index == 0) serve();
}

void VirtioRng::reset() { ctx_ = nullptr; }

void VirtioRng::serve() {
  if (!ctx_ || ctx_->num_queues() < 1) return;
  Virtqueue& q = ctx_->queue(0);
  if (!q.ready()) return;
  const GuestMemory& mem = ctx_->memory();
  while (auto c = q.pop()) {
    uint32_t filled = 0;
    for (const DescBuffer& b : c->writable) {
      uint32_t want = std::min(b.len, kMaxPerRequest - filled);
      if (want == 0) break;
      auto s = mem.span(b.gpa, want);
      if (!s) break;  // validated by pop(); RAM does not move
      size_t n = fill_random(*s);
      filled += uint32_t(n);
      if (n < want) break;
    }
    bytes_served_.fetch_add(filled, std::memory_order_relaxed);
    q.push(c->head, filled);
  }
  // Also covers chains pop() refused and returned with length 0.
  ctx_->signal_used(0);
}

}  // namespace berth::vmm
