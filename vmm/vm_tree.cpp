#include "vmm/vm_tree.h"

#include <fmt/format.h>

namespace berth::vmm {
namespace {

std::string trim(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return std::string(s);
}

std::string_view type_name(uint32_t type) {
  switch (type) {
    case kVirtioNet: return "net";
    case kVirtioBlock: return "blk";
    case kVirtioRng: return "rng";
    case kVirtio9p: return "9p";
  }
  return "unknown";
}

// /vm/console: reading follows the console output (each open starts at the
// oldest retained byte); writing types into the UART's receiver, as a
// terminal would. Bytes the receiver has no room for are dropped and
// counted (console_dropped is the output side).
class ConsoleOpen final : public p9::ByteStreamReader {
 public:
  ConsoleOpen(std::shared_ptr<VmTreeParts> parts)
      : ByteStreamReader(parts->console, parts->console->start_seq()), parts_(std::move(parts)) {}
  Result<size_t> write(uint64_t, Bytes data) override {
    if (parts_->vm->state() == VmState::Stopped) return make_error(EPIPE, "the VM has stopped");
    parts_->vm->console_input(data);
    wrote_ = true;
    return data.size();
  }
  // A handle that typed something is a keyboard, not a screen: its reads
  // end at once (so `berth ctl write /vm/console TEXT` returns).
  Result<size_t> read(uint64_t offset, std::span<uint8_t> out) override {
    if (wrote_) return size_t(0);
    return ByteStreamReader::read(offset, out);
  }
  void wait_readable(std::function<void()> cb) override {
    if (wrote_) return cb();
    ByteStreamReader::wait_readable(std::move(cb));
  }
  Result<void> truncate(uint64_t) override { return {}; }

 private:
  std::shared_ptr<VmTreeParts> parts_;
  bool wrote_ = false;
};

class ConsoleFile final : public p9::Node {
 public:
  explicit ConsoleFile(std::shared_ptr<VmTreeParts> parts)
      : Node("console", 0644,
             "the serial console (ttyS0): reads follow its output from the oldest retained byte; writes type into it",
             false),
        parts_(std::move(parts)) {}
  Result<std::unique_ptr<p9::OpenFile>> open(p9::Access, bool) override {
    return std::unique_ptr<p9::OpenFile>(std::make_unique<ConsoleOpen>(parts_));
  }

 private:
  std::shared_ptr<VmTreeParts> parts_;
};

}  // namespace

std::string render_vm_cpus(const Vm& vm) {
  std::string out;
  auto counts = vm.cpu_exit_counts();
  for (size_t i = 0; i < counts.size(); i++) {
    out += fmt::format("cpu{}", i);
    for (auto& [reason, n] : counts[i]) out += fmt::format(" {} {}", reason, n);
    out += '\n';
  }
  return out;
}

std::string render_vm_devices(const std::vector<VmDeviceInfo>& devices) {
  std::string out;
  for (auto& d : devices) {
    const VirtioMmioStats& s = d.transport->stats();
    out += fmt::format("{} type {} status {:#x} notifies {} interrupts {} resets {} activations {} protocol_errors {}\n",
                       d.name, type_name(d.transport->device().device_type()), d.transport->status(),
                       s.notifies.load(), s.interrupts.load(), s.resets.load(), s.activations.load(),
                       s.protocol_errors.load());
    auto qs = d.transport->queue_stats();
    for (size_t q = 0; q < qs.size(); q++) {
      const QueueStats& x = qs[q];
      out += fmt::format(
          "{} queue {} chains {} notifies {} interrupts {} refused {} bad_index {} bad_loop {} bad_address {} "
          "bad_indirect {} bad_order {} bad_length {} broken {}\n",
          d.name, q, x.chains, x.notifies, x.interrupts, x.refused(), x.bad_index, x.bad_loop, x.bad_address,
          x.bad_indirect, x.bad_order, x.bad_length, x.broken);
    }
  }
  return out;
}

Result<std::string> vm_command(Vm& vm, std::string_view line) {
  std::string cmd = trim(line);
  if (cmd == "pause") {
    if (auto r = vm.pause(); !r) return r.error();
    return std::string("paused");
  }
  if (cmd == "resume") {
    if (auto r = vm.resume(); !r) return r.error();
    return std::string("running");
  }
  if (cmd == "stop") {
    if (vm.state() == VmState::Stopped) return make_error(EALREADY, "the VM is already stopped");
    vm.stop();
    return std::string("stopping");
  }
  return make_error(EINVAL, "unknown command '" + cmd + "': use pause, resume or stop");
}

void mount_vm_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, std::shared_ptr<VmTreeParts> parts) {
  using p9::StateFile;
  tree.mount("/vm", std::make_shared<StateFile>("state", "VM state: created, running, paused or stopped",
                                                [parts] { return std::string(to_string(parts->vm->state())) + "\n"; }));
  tree.mount("/vm", std::make_shared<p9::CtlFile>(
                        "ctl", "write pause, resume or stop",
                        [parts](std::string_view line) { return vm_command(*parts->vm, line); },
                        "pause | resume | stop"));
  tree.mount("/vm", std::make_shared<ConsoleFile>(parts));
  tree.mount("/vm", std::make_shared<StateFile>("cpus", "vCPU exit counts by reason, one line per vCPU",
                                                [parts] { return render_vm_cpus(*parts->vm); }));
  tree.mount("/vm", std::make_shared<StateFile>("config", "kernel, initrd, command line, memory and vCPUs", [parts] {
    const VmConfig& c = parts->config;
    return fmt::format("kernel {}\ninitrd {}\ncmdline {}\nmem {}\ncpus {}\n", c.kernel_path,
                       c.initrd_path.empty() ? "none" : c.initrd_path, c.cmdline, c.mem_bytes, c.cpus);
  }));
  tree.mount("/vm", std::make_shared<StateFile>("devices", "virtio devices: transport and queue counters",
                                                [parts] { return render_vm_devices(parts->devices); }));

  metrics.add([parts](p9::PromWriter& w) {
    w.family("berth_vm_running", "gauge", "1 while the VM runs");
    w.sample("berth_vm_running", parts->vm->state() == VmState::Running ? 1 : 0);
    w.family("berth_vm_exits_total", "counter", "vCPU exits by reason");
    auto counts = parts->vm->cpu_exit_counts();
    for (size_t i = 0; i < counts.size(); i++)
      for (auto& [reason, n] : counts[i])
        w.sample("berth_vm_exits_total", n, fmt::format("cpu=\"{}\",reason=\"{}\"", i, reason));
    for (bool refused : {false, true}) {
      const char* name = refused ? "berth_virtio_chains_refused_total" : "berth_virtio_chains_total";
      w.family(name, "counter", refused ? "malformed descriptor chains refused" : "descriptor chains served");
      for (auto& d : parts->devices) {
        auto qs = d.transport->queue_stats();
        for (size_t q = 0; q < qs.size(); q++)
          w.sample(name, refused ? qs[q].refused() : qs[q].chains,
                   fmt::format("device=\"{}\",queue=\"{}\"", d.name, q));
      }
    }
  });
}

}  // namespace berth::vmm
