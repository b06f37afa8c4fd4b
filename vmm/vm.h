// The machine: a KVM VM with guest RAM, the in-kernel irqchip (8259s,
// IOAPIC, LAPICs) and PIT, a 16550A on ttyS0, an ACPI fixed-hardware block
// (poweroff, reset), up to 8 virtio-mmio devices announced in the DSDT, and
// one thread per vCPU. Boots a Linux bzImage through the 64-bit boot
// protocol (vmm/boot.h) with ACPI tables (vmm/acpi.h).
//
// Threads: create(), add_virtio(), boot(), pause(), resume(), stop(),
// set_*() and the destructor run on the main loop's thread; callbacks are
// delivered there too (uv_async). vCPU threads only run KVM_RUN and dispatch
// port and MMIO exits to the devices. state(), console_input() and
// cpu_exit_counts() may be called from any thread.
//
// Guest-visible map:
//   RAM        0 .. min(mem, 3 GiB), the rest from 4 GiB
//   ports      0x3f8-0x3ff COM1 (IRQ 4); 0x600-0x608 ACPI PM1a_EVT, PM1a_CNT,
//              reset register (acpi.h); 0x60/0x64 keyboard controller stub
//              (0xFE to 0x64 resets); 0x70-0x71 CMOS stub (no RTC);
//              0x80 and 0xcf8-0xcff read all ones (no PCI); anything else
//              reads all ones and is counted as "unknown_io"
//   MMIO       0xD0000000 + i*0x1000: virtio-mmio window i (GSI 16+i, edge);
//              IOAPIC 0xFEC00000 and LAPICs 0xFEE00000 in KVM; anything else
//              reads all ones and is counted as "unknown_mmio"
//
// Guests are untrusted: no exit, register value or access size ends the
// process. A triple fault, an internal KVM error or a failed entry ends the
// VM with VmExit::Crashed and a detail naming the vCPU and its RIP.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"
#include "vmm/guest_memory.h"
#include "vmm/virtio_mmio.h"

namespace berth::vmm {

struct VmConfig {
  std::string kernel_path, initrd_path, cmdline;
  uint64_t mem_bytes = 512ull << 20;
  unsigned cpus = 1;
};

enum class VmState { Created, Running, Paused, Stopped };
enum class VmExit { PowerOff, Reboot, Stopped, Crashed };
std::string_view to_string(VmState);
std::string_view to_string(VmExit);

// Checks /dev/kvm before anything boots: its presence (ENOENT: load
// kvm-intel/kvm-amd, or use a host with VT-x/AMD-V), permission (EACCES: the
// kvm group), the API version and the capabilities we use, then runs a tiny
// 64-bit guest (long mode, paging, a CR3 reload, memory at 1 GiB) that must
// report back through a port within ~2 s. ENOTSUP with "this KVM cannot run a
// 64-bit guest ..." when it does not (e.g. PVM, a paravirtual KVM).
// Implemented in kvm.cpp.
[[nodiscard]] Result<void> probe_kvm();

class Vm {
 public:
  // Opens KVM (runs probe_kvm()), allocates memory, creates the irqchip,
  // PIT, UART and vCPU fds. Nothing runs yet. EINVAL for a bad config.
  [[nodiscard]] static Result<std::unique_ptr<Vm>> create(uv_loop_t* loop, const VmConfig& cfg);
  // Stops and joins the vCPU threads, closes the transports and the loop
  // handles (main loop; the loop must still be alive).
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  const GuestMemory& memory() const;

  // Before boot(): virtio-mmio window i (at 0xD0000000 + i*0x1000, GSI 16+i,
  // edge-triggered, at most 8) for `dev`. The Vm owns the transport, its
  // irqfd-backed interrupt line and one ioeventfd per queue (a 4-byte write
  // of the queue index to QueueNotify). Returns the transport (for stats).
  // EBUSY after boot(), ENOSPC beyond 8.
  [[nodiscard]] Result<VirtioMmio*> add_virtio(VirtioDevice& dev, std::string name);

  // Loads kernel, initrd, command line and ACPI tables, sets up the vCPUs
  // (the BSP in 64-bit mode at the kernel's entry; APs wait for INIT/SIPI
  // in KVM) and starts one thread per vCPU. Errors name the file or limit.
  [[nodiscard]] Result<void> boot();

  VmState state() const;
  // Main loop. vCPUs are kicked out of KVM_RUN (signal + immediate_exit) and
  // parked; pause() returns once all are parked (or after 2 s, logged).
  // EINVAL unless Running (pause) or Paused (resume).
  [[nodiscard]] Result<void> pause();
  [[nodiscard]] Result<void> resume();
  // Main loop. Ends the VM; on_exit(Stopped) follows unless the VM had
  // already ended for another reason.
  void stop();

  // Called once, on the main loop, when the VM ends.
  void set_on_exit(std::function<void(VmExit, std::string detail)> cb);
  // UART output, delivered on the main loop in batches. The buffer between
  // the vCPUs and the loop is bounded (64 KiB): bytes beyond it are dropped
  // and counted ("console_dropped" in cpu_exit_counts' first row).
  void set_console_sink(std::function<void(Bytes)> cb);
  // Bytes for the UART's receiver (any thread).
  void console_input(Bytes data);

  // Exit counts per vCPU by reason ("io", "mmio", "hlt", "shutdown",
  // "internal_error", "fail_entry", "intr", "unknown_io", "unknown_mmio",
  // "system_event", "other"), a snapshot of atomics.
  std::vector<std::vector<std::pair<std::string, uint64_t>>> cpu_exit_counts() const;

  struct Impl;

 private:
  explicit Vm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace berth::vmm
