// The machine (see vm.h for the guest-visible map and the threading rules).
//
// Theory of operation:
//  - create() builds everything that does not depend on the guest image:
//    the KVM VM with its irqchip and PIT, guest RAM as memory slots, the
//    vCPU fds, the platform devices and the two uv_async handles (VM exit,
//    console output). add_virtio() adds transports and their eventfds.
//  - boot() writes ACPI tables and the Linux boot structures, sets up the
//    vCPUs and starts one thread each. From then on the bus tables are
//    immutable, so vCPU threads read them without locks.
//  - A vCPU thread loops: clear immediate_exit, check the control flags
//    (stop, pause), KVM_RUN, dispatch the exit. A kick (pause, stop, VM exit)
//    sets a flag, then immediate_exit, then sends the kick signal, so that a
//    vCPU either sees the flag before entering KVM_RUN or is thrown out of
//    it (the clear comes before the check: no kick is lost).
//  - The VM ends once: the first of a device's request (poweroff, reset), a
//    fatal exit on some vCPU, or stop() records the reason, sets the stop
//    flag, kicks every vCPU and wakes the main loop, which delivers
//    on_exit. Threads are joined in the destructor.
//  - Console bytes go from the UART (vCPU thread) into a bounded buffer;
//    the main loop takes the whole buffer at each wakeup and hands it to the
//    sink as one batch.
#include "vmm/vm.h"

#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "vmm/acpi.h"
#include "vmm/boot.h"
#include "vmm/kvm.h"
#include "vmm/uart.h"

namespace berth::vmm {

std::string_view to_string(VmState s) {
  switch (s) {
    case VmState::Created: return "created";
    case VmState::Running: return "running";
    case VmState::Paused: return "paused";
    case VmState::Stopped: return "stopped";
  }
  return "unknown";
}

std::string_view to_string(VmExit e) {
  switch (e) {
    case VmExit::PowerOff: return "poweroff";
    case VmExit::Reboot: return "reboot";
    case VmExit::Stopped: return "stopped";
    case VmExit::Crashed: return "crashed";
  }
  return "unknown";
}

namespace {

constexpr uint64_t kVirtioBase = 0xD000'0000;
constexpr uint64_t kVirtioStride = 0x1000;
constexpr uint32_t kVirtioGsiBase = 16;
constexpr size_t kMaxVirtio = 8;  // GSIs 16..23: the IOAPIC's last pins
constexpr unsigned kMaxCpus = 64;
constexpr size_t kConsoleLimit = 64 * 1024;

enum Counter : size_t {
  kIo, kMmio, kHlt, kShutdown, kInternalError, kFailEntry, kIntr, kUnknownIo, kUnknownMmio, kSystemEvent, kOther,
  kNumCounters
};
constexpr std::array<const char*, kNumCounters> kCounterNames = {
    "io", "mmio", "hlt", "shutdown", "internal_error", "fail_entry", "intr", "unknown_io", "unknown_mmio",
    "system_event", "other"};

Result<std::vector<uint8_t>> read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(errno ? errno : ENOENT, fmt::format("cannot open {} {}: {}", what, path,
                                                                 std::strerror(errno ? errno : ENOENT)));
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) return make_error(EIO, fmt::format("cannot read {} {}", what, path));
  return data;
}

// An edge-triggered GSI: an eventfd registered with KVM_IRQFD.
class IrqfdLine final : public InterruptLine {
 public:
  explicit IrqfdLine(Fd efd) : efd_(std::move(efd)) {}
  void trigger() override {
    uint64_t one = 1;
    ssize_t n = ::write(efd_.get(), &one, sizeof one);
    (void)n;  // EAGAIN: the counter is saturated; an interrupt is pending anyway
  }
  int fd() const { return efd_.get(); }

 private:
  Fd efd_;
};

Result<Fd> make_eventfd() {
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return make_error(errno, fmt::format("eventfd: {}", std::strerror(errno)));
  return Fd(fd);
}

// ACPI PM1a event block (status, enable), PM1a control and the reset
// register (ACPI 6.4 §4.8.3: PM1_STS bits are write-1-to-clear; SCI_EN reads
// as set since SMI_CMD is 0; SLP_EN is write-only and starts the sleep).
class PmDevice final : public BusDevice {
 public:
  using Request = std::function<void(VmExit, std::string)>;
  explicit PmDevice(Request req) : req_(std::move(req)) {}
  void bus_read(uint64_t offset, std::span<uint8_t> data) override {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < data.size(); i++) {
      uint64_t o = offset + i;
      uint16_t cnt = uint16_t(cnt_ | kPm1CntSciEn);
      switch (o) {
        case 0: data[i] = uint8_t(sts_); break;
        case 1: data[i] = uint8_t(sts_ >> 8); break;
        case 2: data[i] = uint8_t(en_); break;
        case 3: data[i] = uint8_t(en_ >> 8); break;
        case 4: data[i] = uint8_t(cnt); break;
        case 5: data[i] = uint8_t(cnt >> 8); break;
        default: data[i] = 0; break;
      }
    }
  }
  void bus_write(uint64_t offset, Bytes data) override {
    std::unique_lock lock(mu_);
    bool sleep = false, reset = false;
    for (size_t i = 0; i < data.size(); i++) {
      uint64_t o = offset + i;
      uint8_t v = data[i];
      switch (o) {
        case 0: sts_ &= uint16_t(~v); break;
        case 1: sts_ &= uint16_t(~(v << 8)); break;
        case 2: en_ = uint16_t((en_ & 0xff00) | v); break;
        case 3: en_ = uint16_t((en_ & 0x00ff) | (v << 8)); break;
        case 4: cnt_ = uint16_t((cnt_ & 0xff00) | v); break;
        case 5:
          if (v & (kPm1CntSlpEn >> 8)) sleep = true;
          cnt_ = uint16_t((cnt_ & 0x00ff) | ((v & ~(kPm1CntSlpEn >> 8)) << 8));
          break;
        case kResetPort - kPmBase:
          if (v == kResetValue) reset = true;
          break;
        default: break;
      }
    }
    unsigned slp_typ = (cnt_ >> kPm1CntSlpTypShift) & 7;
    lock.unlock();
    // We only offer \_S5; any sleep request turns the machine off.
    if (sleep) req_(VmExit::PowerOff, fmt::format("guest powered off (ACPI sleep, SLP_TYP {})", slp_typ));
    if (reset) req_(VmExit::Reboot, "guest reset through the ACPI reset register");
  }

 private:
  Request req_;
  std::mutex mu_;
  uint16_t sts_ = 0, en_ = 0, cnt_ = 0;
};

// i8042 stub: no keyboard, but the 0xFE "pulse reset line" command works
// (reboot=k). Status: no output data, input buffer empty.
class KbdData final : public BusDevice {
 public:
  void bus_read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), 0); }
  void bus_write(uint64_t, Bytes) override {}
};
class KbdControl final : public BusDevice {
 public:
  explicit KbdControl(PmDevice::Request req) : req_(std::move(req)) {}
  void bus_read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), 0x14); }
  void bus_write(uint64_t offset, Bytes data) override {
    if (offset == 0 && !data.empty() && data[0] == 0xfe)
      req_(VmExit::Reboot, "guest reset through the keyboard controller (0xFE to port 0x64)");
  }

 private:
  PmDevice::Request req_;
};

// No device here, and the guest is told so: all ones (port 0x80, PCI conf1).
class AllOnes final : public BusDevice {
 public:
  void bus_read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), 0xff); }
  void bus_write(uint64_t, Bytes) override {}
};

// CMOS stub: the FADT says there is no RTC, but a guest that reads it
// anyway gets a valid, idle chip (register D bit 7 "valid RAM", register A
// UIP clear) rather than all ones, which Linux's mc146818 code warns about.
class Cmos final : public BusDevice {
 public:
  void bus_read(uint64_t offset, std::span<uint8_t> data) override {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < data.size(); i++) {
      if (offset + i != 1) {
        data[i] = 0xff;
        continue;
      }
      switch (index_ & 0x7f) {
        case 0x0a: data[i] = 0x26; break;  // 32.768 kHz, 1024 Hz; UIP clear
        case 0x0b: data[i] = 0x02; break;  // 24-hour, BCD
        case 0x0d: data[i] = 0x80; break;  // valid
        default: data[i] = 0; break;
      }
    }
  }
  void bus_write(uint64_t offset, Bytes data) override {
    std::lock_guard lock(mu_);
    if (offset == 0 && !data.empty()) index_ = data[0];
  }

 private:
  std::mutex mu_;
  uint8_t index_ = 0;
};

struct BusRange {
  uint64_t base = 0, len = 0;
  BusDevice* dev = nullptr;
};

BusDevice* find(const std::vector<BusRange>& bus, uint64_t addr, uint64_t& offset) {
  for (const auto& r : bus)
    if (addr >= r.base && addr - r.base < r.len) {
      offset = addr - r.base;
      return r.dev;
    }
  return nullptr;
}

void close_async(uv_async_t* h) {
  if (!h) return;
  h->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(h), [](uv_handle_t* x) { delete reinterpret_cast<uv_async_t*>(x); });
}

}  // namespace

struct Vm::Impl {
  struct Vcpu {
    KvmVcpu kvm;
    std::thread thread;
    std::atomic<pthread_t> tid{0};  // set by the thread itself, for kicks
    std::array<std::atomic<uint64_t>, kNumCounters> counts{};
  };
  struct VirtioSlot {
    std::string name;
    uint64_t base = 0;
    uint32_t gsi = 0;
    std::unique_ptr<IrqfdLine> irq;
    std::unique_ptr<VirtioMmio> transport;
  };

  // Declaration order is destruction order reversed: the transports go
  // first (they refer to memory, the lines and the loop), memory last.
  uv_loop_t* loop = nullptr;
  VmConfig cfg;
  GuestMemory mem;
  KvmSystem sys;
  KvmVm vm;
  std::vector<kvm_cpuid_entry2> cpuid;
  std::vector<std::unique_ptr<Vcpu>> vcpus;

  std::unique_ptr<IrqfdLine> com1_irq;
  std::unique_ptr<Uart> uart;
  std::unique_ptr<PmDevice> pm;
  std::unique_ptr<KbdData> kbd_data;
  std::unique_ptr<KbdControl> kbd_ctl;
  std::unique_ptr<AllOnes> all_ones;
  std::unique_ptr<Cmos> cmos;
  std::vector<VirtioSlot> virtio;
  std::vector<BusRange> pio, mmio;

  std::atomic<VmState> state{VmState::Created};
  std::atomic<bool> stop_req{false}, pause_req{false};
  std::mutex ctl_mu;
  std::condition_variable ctl_cv;
  unsigned parked = 0, exited = 0, started = 0;

  std::mutex exit_mu;
  bool exit_recorded = false, exit_delivered = false;
  VmExit exit_reason = VmExit::Stopped;
  std::string exit_detail;
  std::function<void(VmExit, std::string)> on_exit;
  uv_async_t* exit_async = nullptr;

  std::mutex con_mu;
  std::vector<uint8_t> con_buf;
  std::atomic<uint64_t> con_dropped{0};
  std::function<void(Bytes)> con_sink;
  uv_async_t* con_async = nullptr;

  ~Impl() {
    stop_threads();
    for (auto& v : virtio)
      if (v.transport) v.transport->close();
    close_async(exit_async);
    close_async(con_async);
  }

  void kick_all() {
    for (auto& v : vcpus) {
      v->kvm.set_immediate_exit(true);
      if (pthread_t t = v->tid.load()) pthread_kill(t, vcpu_kick_signal());
    }
  }

  void stop_threads() {
    stop_req = true;
    {
      std::lock_guard lock(ctl_mu);
      ctl_cv.notify_all();
    }
    kick_all();
    for (auto& v : vcpus)
      if (v->thread.joinable()) v->thread.join();
  }

  // Any thread: the VM ends (first reason wins).
  void request_exit(VmExit reason, std::string detail) {
    {
      std::lock_guard lock(exit_mu);
      if (!exit_recorded) {
        exit_recorded = true;
        exit_reason = reason;
        exit_detail = std::move(detail);
        spdlog::info("vm: {} ({})", to_string(reason), exit_detail);
      }
    }
    state = VmState::Stopped;
    stop_req = true;
    {
      std::lock_guard lock(ctl_mu);
      ctl_cv.notify_all();
    }
    kick_all();
    if (exit_async) uv_async_send(exit_async);
  }

  // Main loop.
  void deliver_exit() {
    std::function<void(VmExit, std::string)> cb;
    VmExit reason;
    std::string detail;
    {
      std::lock_guard lock(exit_mu);
      if (!exit_recorded || exit_delivered || !on_exit) return;
      exit_delivered = true;
      cb = on_exit;
      reason = exit_reason;
      detail = exit_detail;
    }
    state = VmState::Stopped;
    cb(reason, std::move(detail));  // may destroy the Vm: nothing after this
  }

  void deliver_console() {
    std::vector<uint8_t> batch;
    {
      std::lock_guard lock(con_mu);
      batch.swap(con_buf);
    }
    if (!batch.empty() && con_sink) con_sink(batch);
  }

  void console_byte(uint8_t b) {
    {
      std::lock_guard lock(con_mu);
      if (con_buf.size() >= kConsoleLimit) {
        con_dropped++;
        return;
      }
      con_buf.push_back(b);
    }
    if (con_async) uv_async_send(con_async);
  }

  void add_pio(uint64_t base, uint64_t len, BusDevice* dev) { pio.push_back({base, len, dev}); }

  void dispatch(const std::vector<BusRange>& bus, uint64_t addr, bool is_write, std::span<uint8_t> data, Vcpu& c,
                Counter unknown) {
    uint64_t off = 0;
    if (BusDevice* d = find(bus, addr, off)) {
      if (is_write)
        d->bus_write(off, data);
      else
        d->bus_read(off, data);
      return;
    }
    c.counts[unknown]++;
    if (!is_write) std::fill(data.begin(), data.end(), 0xff);
    spdlog::debug("vcpu {}: unhandled {} {} at {:#x} ({} bytes)", c.kvm.id(), unknown == kUnknownIo ? "port" : "mmio",
                  is_write ? "write" : "read", addr, data.size());
  }

  std::string rip_of(Vcpu& c) {
    auto r = c.kvm.get_regs();
    return r ? fmt::format("{:#x}", r->rip) : std::string("?");
  }

  // Returns false when the vCPU must stop.
  bool handle_exit(Vcpu& c) {
    kvm_run* run = c.kvm.run_struct();
    switch (run->exit_reason) {
      case KVM_EXIT_IO: {
        c.counts[kIo]++;
        const uint64_t size = run->io.size, count = run->io.count;
        // The data lies at data_offset inside the vCPU mapping (usually its
        // second page); KVM sets it, but check against the mapping anyway.
        const uint64_t mapped = c.kvm.run_size();
        if ((size != 1 && size != 2 && size != 4) || run->io.data_offset >= mapped ||
            count * size > mapped - run->io.data_offset) {
          if (c.counts[kOther]++ < 3)
            spdlog::warn("vm: vCPU {}: malformed port I/O exit (port {:#x} size {} count {} data_offset {} mapping {})",
                         c.kvm.id(), run->io.port, size, count, uint64_t(run->io.data_offset), mapped);
          return true;
        }
        uint8_t* p = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
        for (uint64_t i = 0; i < count; i++, p += size)
          dispatch(pio, run->io.port, run->io.direction == KVM_EXIT_IO_OUT, {p, size_t(size)}, c, kUnknownIo);
        return true;
      }
      case KVM_EXIT_MMIO: {
        c.counts[kMmio]++;
        uint32_t len = std::min<uint32_t>(run->mmio.len, sizeof run->mmio.data);
        dispatch(mmio, run->mmio.phys_addr, run->mmio.is_write, {run->mmio.data, len}, c, kUnknownMmio);
        return true;
      }
      case KVM_EXIT_HLT:
        c.counts[kHlt]++;  // only without an in-kernel LAPIC; harmless
        return true;
      case KVM_EXIT_INTR:
        c.counts[kIntr]++;
        return true;
      case KVM_EXIT_SHUTDOWN:
        c.counts[kShutdown]++;
        request_exit(VmExit::Crashed, fmt::format("triple fault (KVM_EXIT_SHUTDOWN) on vCPU {} at RIP {}",
                                                  c.kvm.id(), rip_of(c)));
        return false;
      case KVM_EXIT_INTERNAL_ERROR:
        c.counts[kInternalError]++;
        request_exit(VmExit::Crashed, fmt::format("KVM internal error (suberror {}) on vCPU {} at RIP {}",
                                                  run->internal.suberror, c.kvm.id(), rip_of(c)));
        return false;
      case KVM_EXIT_FAIL_ENTRY:
        c.counts[kFailEntry]++;
        request_exit(VmExit::Crashed,
                     fmt::format("VM entry failed (hardware reason {:#x}) on vCPU {} at RIP {}",
                                 uint64_t(run->fail_entry.hardware_entry_failure_reason), c.kvm.id(), rip_of(c)));
        return false;
      case KVM_EXIT_SYSTEM_EVENT:
        c.counts[kSystemEvent]++;
        switch (run->system_event.type) {
          case KVM_SYSTEM_EVENT_SHUTDOWN:
            request_exit(VmExit::PowerOff, "guest powered off (system event)");
            return false;
          case KVM_SYSTEM_EVENT_RESET:
            request_exit(VmExit::Reboot, "guest reset (system event)");
            return false;
          case KVM_SYSTEM_EVENT_CRASH:
            request_exit(VmExit::Crashed, fmt::format("guest crash event on vCPU {} at RIP {}", c.kvm.id(), rip_of(c)));
            return false;
          default:
            return true;
        }
      default:
        c.counts[kOther]++;
        request_exit(VmExit::Crashed, fmt::format("unexpected KVM exit {} on vCPU {} at RIP {}", run->exit_reason,
                                                  c.kvm.id(), rip_of(c)));
        return false;
    }
  }

  void vcpu_loop(Vcpu& c) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, vcpu_kick_signal());
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    c.tid = pthread_self();
    while (true) {
      c.kvm.set_immediate_exit(false);  // before the checks: see the theory above
      if (stop_req) break;
      if (pause_req) {
        std::unique_lock lock(ctl_mu);
        parked++;
        ctl_cv.notify_all();
        ctl_cv.wait(lock, [&] { return !pause_req || stop_req; });
        parked--;
        continue;
      }
      auto r = c.kvm.run();
      if (!r) {
        int e = r.error().code;
        if (e == EINTR || e == EAGAIN) {
          c.counts[kIntr]++;
          continue;
        }
        request_exit(VmExit::Crashed, fmt::format("vCPU {}: {}", c.kvm.id(), r.error().message));
        break;
      }
      if (!handle_exit(c)) break;
    }
    std::lock_guard lock(ctl_mu);
    exited++;
    ctl_cv.notify_all();
  }
};

Vm::Vm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Vm::~Vm() = default;

Result<std::unique_ptr<Vm>> Vm::create(uv_loop_t* loop, const VmConfig& cfg) {
  if (cfg.cpus == 0 || cfg.cpus > kMaxCpus)
    return make_error(EINVAL, fmt::format("vm: {} vCPUs requested; 1 to {} supported", cfg.cpus, kMaxCpus));
  if (cfg.mem_bytes < (32ull << 20))
    return make_error(EINVAL, fmt::format("vm: {} bytes of memory; at least 32 MiB needed", cfg.mem_bytes));
  if (cfg.kernel_path.empty()) return make_error(EINVAL, "vm: no kernel given");
  if (auto r = probe_kvm(); !r) return r.error();

  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.loop = loop;
  m.cfg = cfg;
  m.cfg.mem_bytes = (cfg.mem_bytes + (2 << 20) - 1) & ~uint64_t((2 << 20) - 1);

  auto sys = KvmSystem::open();
  if (!sys) return sys.error();
  m.sys = std::move(*sys);
  auto vm = m.sys.create_vm();
  if (!vm) return vm.error();
  m.vm = std::move(*vm);
  if (auto r = m.vm.set_tss_addr(0xfffbd000); !r) return r.error();
  if (auto r = m.vm.set_identity_map_addr(0xfffbc000); !r) return r.error();
  if (auto r = m.vm.create_irqchip(); !r) return r.error();
  if (auto r = m.vm.create_pit2(); !r) return r.error();

  auto mem = GuestMemory::allocate(m.cfg.mem_bytes);
  if (!mem) return mem.error();
  m.mem = std::move(*mem);
  uint32_t slot = 0;
  for (const auto& r : m.mem.regions())
    if (auto s = m.vm.set_user_memory_region(slot++, r.gpa, r.size, r.host); !s) return s.error();

  auto cpuid = m.sys.supported_cpuid();
  if (!cpuid) return cpuid.error();
  m.cpuid = std::move(*cpuid);
  for (unsigned i = 0; i < m.cfg.cpus; i++) {
    auto v = m.vm.create_vcpu(i);
    if (!v) return v.error();
    auto c = std::make_unique<Impl::Vcpu>();
    c->kvm = std::move(*v);
    m.vcpus.push_back(std::move(c));
  }

  // Platform devices.
  Impl* self = &m;
  auto req = [self](VmExit e, std::string d) { self->request_exit(e, std::move(d)); };
  auto efd = make_eventfd();
  if (!efd) return efd.error();
  if (auto r = m.vm.irqfd(efd->get(), Uart::kCom1Irq); !r) return r.error();
  m.com1_irq = std::make_unique<IrqfdLine>(std::move(*efd));
  m.uart = std::make_unique<Uart>(*m.com1_irq, [self](uint8_t b) { self->console_byte(b); });
  m.pm = std::make_unique<PmDevice>(req);
  m.kbd_data = std::make_unique<KbdData>();
  m.kbd_ctl = std::make_unique<KbdControl>(req);
  m.all_ones = std::make_unique<AllOnes>();
  m.cmos = std::make_unique<Cmos>();
  m.add_pio(Uart::kCom1Base, 8, m.uart.get());
  m.add_pio(kPmBase, kPmBlockLen, m.pm.get());
  m.add_pio(0x60, 1, m.kbd_data.get());
  m.add_pio(0x64, 1, m.kbd_ctl.get());
  m.add_pio(0x70, 2, m.cmos.get());
  m.add_pio(0x80, 1, m.all_ones.get());
  m.add_pio(0xcf8, 8, m.all_ones.get());

  m.exit_async = new uv_async_t;
  if (int e = uv_async_init(loop, m.exit_async, [](uv_async_t* h) {
        if (h->data) static_cast<Impl*>(h->data)->deliver_exit();
      }); e < 0) {
    delete m.exit_async;
    m.exit_async = nullptr;
    return make_error(-e, fmt::format("uv_async_init: {}", uv_strerror(e)));
  }
  m.exit_async->data = self;
  m.con_async = new uv_async_t;
  if (int e = uv_async_init(loop, m.con_async, [](uv_async_t* h) {
        if (h->data) static_cast<Impl*>(h->data)->deliver_console();
      }); e < 0) {
    delete m.con_async;
    m.con_async = nullptr;
    return make_error(-e, fmt::format("uv_async_init: {}", uv_strerror(e)));
  }
  m.con_async->data = self;

  spdlog::info("vm: created: {} vCPUs, {} MiB", m.cfg.cpus, m.cfg.mem_bytes >> 20);
  return std::unique_ptr<Vm>(new Vm(std::move(impl)));
}

const GuestMemory& Vm::memory() const { return impl_->mem; }

Result<VirtioMmio*> Vm::add_virtio(VirtioDevice& dev, std::string name) {
  Impl& m = *impl_;
  if (m.state != VmState::Created) return make_error(EBUSY, "add_virtio: the VM has already booted");
  if (m.virtio.size() >= kMaxVirtio)
    return make_error(ENOSPC, fmt::format("add_virtio {}: at most {} virtio devices", name, kMaxVirtio));
  const size_t i = m.virtio.size();
  Impl::VirtioSlot slot;
  slot.name = std::move(name);
  slot.base = kVirtioBase + i * kVirtioStride;
  slot.gsi = kVirtioGsiBase + uint32_t(i);
  auto efd = make_eventfd();
  if (!efd) return efd.error();
  if (auto r = m.vm.irqfd(efd->get(), slot.gsi); !r) return r.error();
  slot.irq = std::make_unique<IrqfdLine>(std::move(*efd));
  slot.transport = std::make_unique<VirtioMmio>(m.loop, m.mem, dev, *slot.irq);
  for (size_t q = 0; q < dev.num_queues(); q++) {
    auto qfd = make_eventfd();
    if (!qfd) return qfd.error();
    if (auto r = m.vm.ioeventfd_mmio(slot.base + mmio::kQueueNotify, 4, q, qfd->get()); !r) return r.error();
    if (auto r = slot.transport->watch_notify_fd(q, qfd->release()); !r) return r.error();
  }
  VirtioMmio* t = slot.transport.get();
  m.mmio.push_back({slot.base, mmio::kWindow, t});
  spdlog::info("vm: virtio-mmio {} (type {}) at {:#x}, GSI {}", slot.name, dev.device_type(), slot.base, slot.gsi);
  m.virtio.push_back(std::move(slot));
  return t;
}

Result<void> Vm::boot() {
  Impl& m = *impl_;
  if (m.state != VmState::Created) return make_error(EBUSY, "boot: the VM has already booted");
  auto kernel = read_file(m.cfg.kernel_path, "kernel");
  if (!kernel) return kernel.error();
  std::vector<uint8_t> initrd;
  if (!m.cfg.initrd_path.empty()) {
    auto r = read_file(m.cfg.initrd_path, "initrd");
    if (!r) return r.error();
    initrd = std::move(*r);
  }

  AcpiConfig acfg;
  acfg.cpus = m.cfg.cpus;
  for (const auto& v : m.virtio) acfg.virtio.push_back({v.base, uint32_t(mmio::kWindow), v.gsi});
  auto tables = build_acpi_tables(acfg);
  if (!tables) return tables.error();
  if (auto r = write_acpi_tables(m.mem, *tables); !r) return r.error();

  LinuxBootSpec spec;
  spec.kernel = *kernel;
  spec.initrd = initrd;
  spec.cmdline = m.cfg.cmdline;
  spec.rsdp_addr = tables->rsdp;
  auto layout = load_linux(m.mem, spec);
  if (!layout) return make_error(layout.error().code, fmt::format("{}: {}", m.cfg.kernel_path, layout.error().message));

  for (auto& c : m.vcpus) {
    const EntryState* entry = c->kvm.id() == 0 ? &layout->entry : nullptr;
    if (auto r = setup_vcpu(c->kvm, m.cpuid, m.cfg.cpus, entry); !r)
      return make_error(r.error().code, fmt::format("vCPU {}: {}", c->kvm.id(), r.error().message));
  }

  install_vcpu_kick_handler();
  m.state = VmState::Running;
  for (auto& c : m.vcpus) {
    Impl::Vcpu* cp = c.get();
    Impl* self = &m;
    c->thread = std::thread([self, cp] { self->vcpu_loop(*cp); });
    m.started++;
  }
  spdlog::info("vm: booting {} (boot protocol {}.{:02}) at {:#x}, initrd {} bytes at {:#x}, {} vCPUs",
               m.cfg.kernel_path, layout->info.version >> 8, layout->info.version & 0xff, layout->kernel_addr,
               layout->initrd_size, layout->initrd_addr, m.cfg.cpus);
  return {};
}

VmState Vm::state() const { return impl_->state; }

Result<void> Vm::pause() {
  Impl& m = *impl_;
  if (m.state != VmState::Running)
    return make_error(EINVAL, fmt::format("pause: the VM is {}", to_string(m.state.load())));
  m.pause_req = true;
  m.kick_all();
  std::unique_lock lock(m.ctl_mu);
  bool all = m.ctl_cv.wait_for(lock, std::chrono::seconds(2), [&] { return m.parked + m.exited >= m.started; });
  if (!all) spdlog::warn("vm: pause: {} of {} vCPUs parked after 2 s", m.parked, m.started);
  if (m.state == VmState::Running) m.state = VmState::Paused;
  return {};
}

Result<void> Vm::resume() {
  Impl& m = *impl_;
  if (m.state != VmState::Paused)
    return make_error(EINVAL, fmt::format("resume: the VM is {}", to_string(m.state.load())));
  {
    std::lock_guard lock(m.ctl_mu);
    m.pause_req = false;
    m.ctl_cv.notify_all();
  }
  m.state = VmState::Running;
  return {};
}

void Vm::stop() {
  Impl& m = *impl_;
  if (m.state == VmState::Stopped) return;
  m.request_exit(VmExit::Stopped, "stopped by request");
  m.state = VmState::Stopped;
}

void Vm::set_on_exit(std::function<void(VmExit, std::string)> cb) {
  Impl& m = *impl_;
  bool pending;
  {
    std::lock_guard lock(m.exit_mu);
    m.on_exit = std::move(cb);
    pending = m.exit_recorded && !m.exit_delivered;
  }
  if (pending && m.exit_async) uv_async_send(m.exit_async);
}

void Vm::set_console_sink(std::function<void(Bytes)> cb) { impl_->con_sink = std::move(cb); }

void Vm::console_input(Bytes data) {
  size_t n = impl_->uart->input(data);
  if (n < data.size()) spdlog::debug("vm: console input: {} bytes dropped (receiver full)", data.size() - n);
}

std::vector<std::vector<std::pair<std::string, uint64_t>>> Vm::cpu_exit_counts() const {
  std::vector<std::vector<std::pair<std::string, uint64_t>>> out;
  for (const auto& c : impl_->vcpus) {
    std::vector<std::pair<std::string, uint64_t>> row;
    for (size_t i = 0; i < kNumCounters; i++) row.emplace_back(kCounterNames[i], c->counts[i].load());
    out.push_back(std::move(row));
  }
  if (!out.empty()) out[0].emplace_back("console_dropped", impl_->con_dropped.load());
  return out;
}

}  // namespace berth::vmm
