// virtio-mmio version 2 (virtio 1.x §4.2.2): one register window per device,
// announced to the guest in the ACPI DSDT (vmm/acpi.h), with one
// edge-triggered interrupt line.
//
// Registers are accessed on vCPU threads (bus_read/bus_write, under a
// mutex); the device runs on the main loop. Crossing over:
//  - DRIVER_OK: the queues' configuration is copied into the Virtqueues and
//    the device is activated on the loop (uv_async).
//  - QueueNotify: the VM turns the guest's write into an eventfd signal
//    (ioeventfd, watch_notify_fd()); without one, bus_write() passes the
//    kick to the loop through uv_async.
//  - Interrupts: signal_used() sets InterruptStatus bit 0 and triggers the
//    line; the guest acknowledges through InterruptACK.
//  - Reset (status 0): the loop resets the device; the writing vCPU waits
//    for that (bounded) so the driver never sees a half-reset device.
// A driver that breaks the protocol (bad queue size, rings outside RAM,
// DRIVER_OK without FEATURES_OK) gets DEVICE_NEEDS_RESET, counted.
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "vmm/bus.h"
#include "vmm/virtio.h"

namespace berth::vmm {

// Register offsets.
namespace mmio {
constexpr uint64_t kMagic = 0x000, kVersion = 0x004, kDeviceId = 0x008, kVendorId = 0x00c;
constexpr uint64_t kDeviceFeatures = 0x010, kDeviceFeaturesSel = 0x014;
constexpr uint64_t kDriverFeatures = 0x020, kDriverFeaturesSel = 0x024;
constexpr uint64_t kQueueSel = 0x030, kQueueNumMax = 0x034, kQueueNum = 0x038, kQueueReady = 0x044;
constexpr uint64_t kQueueNotify = 0x050, kInterruptStatus = 0x060, kInterruptAck = 0x064;
constexpr uint64_t kStatus = 0x070;
constexpr uint64_t kQueueDescLow = 0x080, kQueueDescHigh = 0x084;
constexpr uint64_t kQueueDriverLow = 0x090, kQueueDriverHigh = 0x094;
constexpr uint64_t kQueueDeviceLow = 0x0a0, kQueueDeviceHigh = 0x0a4;
constexpr uint64_t kConfigGeneration = 0x0fc, kConfig = 0x100;
constexpr uint32_t kMagicValue = 0x74726976;  // "virt"
constexpr uint32_t kVendor = 0x48545242;      // "BRTH"
constexpr uint64_t kWindow = 0x200;           // register window size
}  // namespace mmio

struct VirtioMmioStats {
  std::atomic<uint64_t> reads{0}, writes{0};
  std::atomic<uint64_t> notifies{0}, interrupts{0};
  std::atomic<uint64_t> resets{0}, activations{0};
  std::atomic<uint64_t> protocol_errors{0};  // driver broke the register protocol
};

class VirtioMmio final : public BusDevice, private VirtioContext {
 public:
  VirtioMmio(uv_loop_t* loop, const GuestMemory& mem, VirtioDevice& dev, InterruptLine& irq);
  ~VirtioMmio() override;  // close() must have run, or the loop must be gone
  VirtioMmio(const VirtioMmio&) = delete;
  VirtioMmio& operator=(const VirtioMmio&) = delete;

  void bus_read(uint64_t offset, std::span<uint8_t> data) override;
  void bus_write(uint64_t offset, Bytes data) override;

  // Watches `fd` (an eventfd the VM signals for QueueNotify writes of
  // `queue`); takes ownership.
  [[nodiscard]] Result<void> watch_notify_fd(size_t queue, int fd);
  // Resets the device and closes the loop handles (main loop; idempotent).
  void close();

  VirtioDevice& device() { return dev_; }
  uint32_t status() const;
  const VirtioMmioStats& stats() const { return stats_; }
  // Per-queue stats snapshot (main loop).
  std::vector<QueueStats> queue_stats() const;

 private:
  struct Impl;
  // VirtioContext
  Virtqueue& queue(size_t index) override;
  size_t num_queues() const override;
  const GuestMemory& memory() const override { return mem_; }
  uint64_t features() const override;
  void signal_used(size_t index) override;
  void signal_config_change() override;

  const GuestMemory& mem_;
  VirtioDevice& dev_;
  InterruptLine& irq_;
  VirtioMmioStats stats_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace berth::vmm
