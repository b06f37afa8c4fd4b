// virtio-rng (virtio 1.x §5.4): one request queue; the device fills every
// device-writable buffer the driver offers with bytes from the host's
// getrandom(2). No feature bits, no configuration space.
//
// Threading: everything but bytes_served() runs on the device's loop.
#pragma once

#include <atomic>
#include <cstdint>

#include "vmm/virtio.h"

namespace berth::vmm {

class VirtioRng final : public VirtioDevice {
 public:
  // Bytes served per request at most; the driver is told how many it got.
  static constexpr uint32_t kMaxPerRequest = 64 * 1024;

  VirtioRng() = default;

  uint32_t device_type() const override { return kVirtioRng; }
  uint64_t device_features() const override { return 0; }
  size_t num_queues() const override { return 1; }
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void activate(VirtioContext& ctx) override;
  void notify(size_t index) override;
  void reset() override;

  // Random bytes handed to the guest so far (any thread).
  uint64_t bytes_served() const { return bytes_served_.load(std::memory_order_relaxed); }

 private:
  void serve();

  VirtioContext* ctx_ = nullptr;
  std::atomic<uint64_t> bytes_served_{0};
};

}  // namespace berth::vmm
