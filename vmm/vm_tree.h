// /vm in the control tree (DESIGN.md "The control tree"):
//   /vm/state     running, paused or stopped (and created, before boot)
//   /vm/ctl       write pause, resume or stop
//   /vm/console   the serial console (ttyS0) as a stream; a reader starts at
//                 the oldest retained byte and follows new output
//   /vm/cpus      exit counts by reason, one line per vCPU
//   /vm/config    kernel, initrd, command line, memory, vCPUs
//   /vm/devices   each virtio device: transport and per-queue counters,
//                 including descriptor chains refused by reason
// and berth_vm_* metrics in /metrics.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "server9p/metrics.h"
#include "server9p/tree.h"
#include "vmm/vm.h"

namespace berth::vmm {

struct VmDeviceInfo {
  std::string name;        // "net0", "blk-d0", "9p", "rng"
  VirtioMmio* transport;   // owned by the Vm
};

struct VmTreeParts {
  Vm* vm = nullptr;
  VmConfig config;
  std::vector<VmDeviceInfo> devices;
  std::shared_ptr<p9::ByteStream> console;  // fed from Vm::set_console_sink
};

std::string render_vm_cpus(const Vm& vm);
std::string render_vm_devices(const std::vector<VmDeviceInfo>& devices);
// Runs one /vm/ctl command on the main loop: "pause", "resume", "stop".
Result<std::string> vm_command(Vm& vm, std::string_view line);

void mount_vm_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, std::shared_ptr<VmTreeParts> parts);

}  // namespace berth::vmm
