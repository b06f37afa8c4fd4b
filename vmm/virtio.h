// The device side of virtio (1.x, "modern" only), independent of the
// transport: what a device (net, blk, 9p, rng) implements, and what the
// transport (virtio_mmio.h) gives it once the driver has set DRIVER_OK.
//
// Threading: config space is read and written on vCPU threads, so
// read_config/write_config must be thread-safe; everything else runs on the
// device's loop (the main loop).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "common/bytes.h"
#include "vmm/guest_memory.h"
#include "vmm/virtqueue.h"

namespace berth::vmm {

// Device types (virtio 1.x §5).
constexpr uint32_t kVirtioNet = 1;
constexpr uint32_t kVirtioBlock = 2;
constexpr uint32_t kVirtioRng = 4;
constexpr uint32_t kVirtio9p = 9;

// Transport-level feature bits, offered by the transport for every device.
constexpr uint64_t kFeatureRingIndirectDesc = 1ull << 28;
constexpr uint64_t kFeatureRingEventIdx = 1ull << 29;
constexpr uint64_t kFeatureVersion1 = 1ull << 32;

// Device status bits.
constexpr uint32_t kStatusAcknowledge = 1;
constexpr uint32_t kStatusDriver = 2;
constexpr uint32_t kStatusDriverOk = 4;
constexpr uint32_t kStatusFeaturesOk = 8;
constexpr uint32_t kStatusNeedsReset = 64;
constexpr uint32_t kStatusFailed = 128;

// What an active device gets from its transport. Main loop only.
class VirtioContext {
 public:
  virtual ~VirtioContext() = default;
  virtual Virtqueue& queue(size_t index) = 0;
  virtual size_t num_queues() const = 0;
  virtual const GuestMemory& memory() const = 0;
  // The features the driver accepted (device and transport bits).
  virtual uint64_t features() const = 0;
  // After push()es on queue `index`: raises the interrupt if the driver
  // wants one now.
  virtual void signal_used(size_t index) = 0;
  virtual void signal_config_change() = 0;
};

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;
  virtual uint32_t device_type() const = 0;
  // Device-specific feature bits (the transport adds VERSION_1,
  // INDIRECT_DESC and EVENT_IDX).
  virtual uint64_t device_features() const = 0;
  virtual size_t num_queues() const = 0;
  virtual uint16_t queue_max_size() const { return 256; }
  // Device-specific configuration space (vCPU threads: must be
  // thread-safe). Reads past its end read zeros; writes to read-only fields
  // are ignored.
  virtual void read_config(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write_config(uint64_t /*offset*/, Bytes /*data*/) {}
  // Main loop: the driver set DRIVER_OK. `ctx` stays valid until reset().
  // Queues the driver did not enable are not ready().
  virtual void activate(VirtioContext& ctx) = 0;
  // Main loop: the driver kicked queue `index`.
  virtual void notify(size_t index) = 0;
  // Main loop: the driver reset the device (or the VM stops): drop every
  // reference to the context and its queues; return to the initial state.
  virtual void reset() = 0;
};

}  // namespace berth::vmm
