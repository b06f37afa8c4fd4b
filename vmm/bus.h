// The VM's buses as devices see them: MMIO and port-I/O handlers called on
// vCPU threads, and interrupt lines any thread may raise.
//
// A handler gets offsets relative to the base it was registered at, and
// accesses of 1, 2, 4 or 8 bytes (little-endian, as the guest did them).
// Handlers must be thread-safe: several vCPUs may call them at once, while
// the main loop runs the same device's queues.
#pragma once

#include <cstdint>
#include <span>

#include "common/bytes.h"

namespace berth::vmm {

class BusDevice {
 public:
  virtual ~BusDevice() = default;
  // Fill `data` (the guest's read). Unimplemented registers read as zero.
  virtual void bus_read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void bus_write(uint64_t offset, Bytes data) = 0;
};

// An edge-triggered interrupt toward the guest (an irqfd on a GSI in the VM;
// a counter in tests). trigger() is safe from any thread.
class InterruptLine {
 public:
  virtual ~InterruptLine() = default;
  virtual void trigger() = 0;
};

}  // namespace berth::vmm
