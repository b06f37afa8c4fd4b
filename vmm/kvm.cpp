// KVM ioctl wrappers and probe_kvm().
//
// probe_kvm(), theory of operation: opening /dev/kvm and checking the API
// version and capabilities catches hosts without KVM, without permission, or
// with an old KVM. It does not catch a KVM whose ioctls all work but which
// cannot run an ordinary 64-bit kernel: PVM (a paravirtual KVM for guests
// built for it) runs 16- and 32-bit code, yet a stock x86_64 Linux hangs at
// decompression. So the probe boots a tiny guest the way load_linux() boots
// Linux (long mode and paging already on, the same GDT and identity page
// tables, the entry state from vcpu setup shared with vm.cpp) and has it do
// what the decompressor does early: use a stack (call/ret), reload the data
// segments and CS (lretq), CPUID, write and read memory at 1 GiB, reload CR3
// with a second set of page tables and read that memory back through them;
// then report a checksum with a 32-bit OUT. Anything else (a hang past 2 s,
// a triple fault, an entry failure, a wrong value) means this KVM cannot run
// our guests, and the error says so before anything boots.
#include "vmm/kvm.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "vmm/boot.h"
#include "vmm/guest_memory.h"

namespace berth::vmm {

namespace {

// Debian 12's <linux/kvm.h> declares the variable-length ioctl structures
// (kvm_cpuid2, kvm_msrs) with __DECLARE_FLEX_ARRAY, which in C++ puts an
// empty struct before the array: sizeof becomes 12 and the entries start at
// offset 12, so both the ioctl numbers (they encode the size) and the
// layout are wrong for the kernel, which expects an 8-byte header. These
// are the kernel's layouts, spelled out.
struct VarHeader {
  uint32_t count;  // nent / nmsrs
  uint32_t pad;
};
static_assert(sizeof(VarHeader) == 8);
constexpr unsigned long kGetSupportedCpuid = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x05, sizeof(VarHeader));
constexpr unsigned long kSetCpuid2 = _IOC(_IOC_WRITE, KVMIO, 0x90, sizeof(VarHeader));
constexpr unsigned long kSetMsrs = _IOC(_IOC_WRITE, KVMIO, 0x89, sizeof(VarHeader));

template <typename Entry>
struct VarBuffer {
  explicit VarBuffer(size_t n) : bytes(sizeof(VarHeader) + n * sizeof(Entry), 0) { header()->count = uint32_t(n); }
  VarHeader* header() { return reinterpret_cast<VarHeader*>(bytes.data()); }
  Entry* entries() { return reinterpret_cast<Entry*>(bytes.data() + sizeof(VarHeader)); }
  void* arg() { return bytes.data(); }
  std::vector<uint8_t> bytes;  // operator new's alignment covers Entry's
};

Error ioctl_error(const char* what) {
  int e = errno;
  return make_error(e, fmt::format("{}: {}", what, std::strerror(e)));
}

}  // namespace

void Fd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

// --- KvmVcpu ---

KvmVcpu::~KvmVcpu() {
  if (run_) munmap(run_, run_size_);
}

KvmVcpu::KvmVcpu(KvmVcpu&& o) noexcept
    : fd_(std::move(o.fd_)), id_(o.id_), run_(std::exchange(o.run_, nullptr)), run_size_(o.run_size_) {}

KvmVcpu& KvmVcpu::operator=(KvmVcpu&& o) noexcept {
  if (this != &o) {
    if (run_) munmap(run_, run_size_);
    fd_ = std::move(o.fd_);
    id_ = o.id_;
    run_ = std::exchange(o.run_, nullptr);
    run_size_ = o.run_size_;
  }
  return *this;
}

Result<void> KvmVcpu::run() {
  if (ioctl(fd_.get(), KVM_RUN, 0) < 0) return ioctl_error("KVM_RUN");
  return {};
}

Result<kvm_regs> KvmVcpu::get_regs() const {
  kvm_regs r{};
  if (ioctl(fd_.get(), KVM_GET_REGS, &r) < 0) return ioctl_error("KVM_GET_REGS");
  return r;
}

Result<void> KvmVcpu::set_regs(const kvm_regs& r) {
  if (ioctl(fd_.get(), KVM_SET_REGS, &r) < 0) return ioctl_error("KVM_SET_REGS");
  return {};
}

Result<kvm_sregs> KvmVcpu::get_sregs() const {
  kvm_sregs s{};
  if (ioctl(fd_.get(), KVM_GET_SREGS, &s) < 0) return ioctl_error("KVM_GET_SREGS");
  return s;
}

Result<void> KvmVcpu::set_sregs(const kvm_sregs& s) {
  if (ioctl(fd_.get(), KVM_SET_SREGS, &s) < 0) return ioctl_error("KVM_SET_SREGS");
  return {};
}

Result<void> KvmVcpu::set_fpu(const kvm_fpu& f) {
  if (ioctl(fd_.get(), KVM_SET_FPU, &f) < 0) return ioctl_error("KVM_SET_FPU");
  return {};
}

Result<void> KvmVcpu::set_msrs(const std::vector<std::pair<uint32_t, uint64_t>>& msrs) {
  VarBuffer<kvm_msr_entry> m(msrs.size());
  for (size_t i = 0; i < msrs.size(); i++) {
    m.entries()[i].index = msrs[i].first;
    m.entries()[i].data = msrs[i].second;
  }
  int n = ioctl(fd_.get(), kSetMsrs, m.arg());
  if (n < 0) return ioctl_error("KVM_SET_MSRS");
  if (size_t(n) != msrs.size())
    return make_error(EIO, fmt::format("KVM_SET_MSRS: KVM refused MSR {:#x}", msrs[size_t(n)].first));
  return {};
}

Result<void> KvmVcpu::set_cpuid(const std::vector<kvm_cpuid_entry2>& entries) {
  VarBuffer<kvm_cpuid_entry2> c(entries.size());
  std::memcpy(c.entries(), entries.data(), entries.size() * sizeof(kvm_cpuid_entry2));
  if (ioctl(fd_.get(), kSetCpuid2, c.arg()) < 0) return ioctl_error("KVM_SET_CPUID2");
  return {};
}

Result<kvm_lapic_state> KvmVcpu::get_lapic() const {
  kvm_lapic_state l{};
  if (ioctl(fd_.get(), KVM_GET_LAPIC, &l) < 0) return ioctl_error("KVM_GET_LAPIC");
  return l;
}

Result<void> KvmVcpu::set_lapic(const kvm_lapic_state& l) {
  if (ioctl(fd_.get(), KVM_SET_LAPIC, &l) < 0) return ioctl_error("KVM_SET_LAPIC");
  return {};
}

void KvmVcpu::set_immediate_exit(bool on) {
  if (run_) __atomic_store_n(&run_->immediate_exit, uint8_t(on ? 1 : 0), __ATOMIC_SEQ_CST);
}

// --- KvmVm ---

int KvmVm::check_extension(long cap) const {
  int r = ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Result<void> KvmVm::set_user_memory_region(uint32_t slot, uint64_t gpa, uint64_t size, void* host, uint32_t flags) {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.flags = flags;
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &r) < 0) return ioctl_error("KVM_SET_USER_MEMORY_REGION");
  return {};
}

Result<void> KvmVm::set_tss_addr(uint64_t addr) {
  if (ioctl(fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(addr)) < 0) return ioctl_error("KVM_SET_TSS_ADDR");
  return {};
}

Result<void> KvmVm::set_identity_map_addr(uint64_t addr) {
  uint64_t a = addr;
  if (ioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &a) < 0) return ioctl_error("KVM_SET_IDENTITY_MAP_ADDR");
  return {};
}

Result<void> KvmVm::create_irqchip() {
  if (ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) < 0) return ioctl_error("KVM_CREATE_IRQCHIP");
  return {};
}

Result<void> KvmVm::create_pit2(uint32_t flags) {
  kvm_pit_config c{};
  c.flags = flags;
  if (ioctl(fd_.get(), KVM_CREATE_PIT2, &c) < 0) return ioctl_error("KVM_CREATE_PIT2");
  return {};
}

Result<KvmVcpu> KvmVm::create_vcpu(unsigned id) {
  int fd = ioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) return ioctl_error("KVM_CREATE_VCPU");
  KvmVcpu v;
  v.fd_ = Fd(fd);
  v.id_ = id;
  void* p = mmap(nullptr, run_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ioctl_error("mmap(kvm_run)");
  v.run_ = static_cast<kvm_run*>(p);
  v.run_size_ = run_size_;
  return v;
}

Result<void> KvmVm::ioeventfd_mmio(uint64_t addr, uint32_t len, uint64_t datamatch, int efd, bool deassign) {
  kvm_ioeventfd e{};
  e.datamatch = datamatch;
  e.addr = addr;
  e.len = len;
  e.fd = efd;
  e.flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0);
  if (ioctl(fd_.get(), KVM_IOEVENTFD, &e) < 0) return ioctl_error("KVM_IOEVENTFD");
  return {};
}

Result<void> KvmVm::irqfd(int efd, uint32_t gsi, bool deassign) {
  kvm_irqfd f{};
  f.fd = uint32_t(efd);
  f.gsi = gsi;
  f.flags = deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0;
  if (ioctl(fd_.get(), KVM_IRQFD, &f) < 0) return ioctl_error("KVM_IRQFD");
  return {};
}

Result<void> KvmVm::irq_line(uint32_t irq, bool level) {
  kvm_irq_level l{};
  l.irq = irq;
  l.level = level ? 1 : 0;
  if (ioctl(fd_.get(), KVM_IRQ_LINE, &l) < 0) return ioctl_error("KVM_IRQ_LINE");
  return {};
}

// --- KvmSystem ---

Result<KvmSystem> KvmSystem::open(const char* path) {
  int fd = ::open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return make_error(e, fmt::format("open {}: {}", path, std::strerror(e)));
  }
  KvmSystem s;
  s.fd_ = Fd(fd);
  return s;
}

int KvmSystem::api_version() const { return ioctl(fd_.get(), KVM_GET_API_VERSION, 0); }

int KvmSystem::check_extension(long cap) const {
  int r = ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Result<KvmVm> KvmSystem::create_vm() const {
  int mmap_size = ioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (mmap_size < int(sizeof(kvm_run))) return ioctl_error("KVM_GET_VCPU_MMAP_SIZE");
  int fd = -1;
  // EINTR is possible while the kernel sets up the VM's mm.
  for (int i = 0; i < 10 && fd < 0; i++) {
    fd = ioctl(fd_.get(), KVM_CREATE_VM, 0);
    if (fd < 0 && errno != EINTR) break;
  }
  if (fd < 0) return ioctl_error("KVM_CREATE_VM");
  KvmVm vm;
  vm.fd_ = Fd(fd);
  vm.run_size_ = size_t(mmap_size);
  return vm;
}

Result<std::vector<kvm_cpuid_entry2>> KvmSystem::supported_cpuid() const {
  for (size_t n = 128; n <= 4096; n *= 2) {
    VarBuffer<kvm_cpuid_entry2> c(n);
    if (ioctl(fd_.get(), kGetSupportedCpuid, c.arg()) == 0)
      return std::vector<kvm_cpuid_entry2>(c.entries(), c.entries() + std::min<size_t>(c.header()->count, n));
    if (errno != E2BIG) return ioctl_error("KVM_GET_SUPPORTED_CPUID");
  }
  return make_error(E2BIG, "KVM_GET_SUPPORTED_CPUID: too many entries");
}

// --- vCPU setup ---

namespace {

kvm_segment flat_segment(uint16_t selector, uint8_t type, bool code) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = code ? 0 : 1;  // L=1 requires D=0
  s.s = 1;
  s.l = code ? 1 : 0;
  s.g = 1;
  return s;
}

constexpr uint32_t kMsrIa32MiscEnable = 0x1a0;
constexpr uint32_t kMsrSysenterCs = 0x174, kMsrSysenterEsp = 0x175, kMsrSysenterEip = 0x176;
constexpr uint32_t kMsrStar = 0xc0000081, kMsrLstar = 0xc0000082, kMsrCstar = 0xc0000083;
constexpr uint32_t kMsrSyscallMask = 0xc0000084, kMsrKernelGsBase = 0xc0000102;

}  // namespace

Result<void> setup_vcpu(KvmVcpu& vcpu, const std::vector<kvm_cpuid_entry2>& supported, unsigned cpus,
                        const EntryState* entry) {
  const uint32_t id = vcpu.id();
  std::vector<kvm_cpuid_entry2> cpuid = supported;
  for (auto& e : cpuid) {
    switch (e.function) {
      case 1:
        // EBX[31:24] initial APIC ID, EBX[23:16] logical processors; HTT
        // when several; ECX[31] running under a hypervisor.
        e.ebx = (e.ebx & 0x0000ffff) | (id << 24) | (std::min(cpus, 255u) << 16);
        if (cpus > 1) e.edx |= 1u << 28;
        e.ecx |= 1u << 31;
        break;
      case 0xb:
      case 0x1f:
        e.edx = id;  // x2APIC ID
        break;
      case 0x8000001e:
        e.eax = id;  // AMD extended APIC ID
        break;
      default:
        break;
    }
  }
  if (auto r = vcpu.set_cpuid(cpuid); !r) return r.error();

  // LVT LINT0 (0x350) = ExtINT (the 8259 path), LINT1 (0x360) = NMI.
  auto lapic = vcpu.get_lapic();
  if (!lapic) return lapic.error();
  auto set_lvt = [&](size_t off, uint32_t mode) {
    auto* p = reinterpret_cast<uint8_t*>(lapic->regs) + off;
    uint32_t v = load_le32(p);
    v = (v & ~0x700u) | (mode << 8);
    store_le32(p, v);
  };
  set_lvt(0x350, 7);
  set_lvt(0x360, 4);
  if (auto r = vcpu.set_lapic(*lapic); !r) return r.error();

  if (!entry) return {};

  auto sregs = vcpu.get_sregs();
  if (!sregs) return sregs.error();
  kvm_sregs& s = *sregs;
  s.cs = flat_segment(entry->code_selector, 0xb, true);
  s.ds = s.es = s.fs = s.gs = s.ss = flat_segment(entry->data_selector, 0x3, false);
  s.tr = kvm_segment{};
  s.tr.selector = entry->tss_selector;
  s.tr.limit = 0x67;
  s.tr.type = 0xb;  // 64-bit TSS, busy
  s.tr.present = 1;
  s.ldt = kvm_segment{};
  s.ldt.type = 2;
  s.ldt.unusable = 1;
  s.gdt.base = entry->gdt_base;
  s.gdt.limit = entry->gdt_limit;
  s.idt.base = 0;
  s.idt.limit = 0;
  s.cr0 = 0x80000031;  // PG | NE | ET | PE
  s.cr3 = entry->cr3;
  s.cr4 = 0x20;        // PAE
  s.efer = 0x500;      // LMA | LME
  if (auto r = vcpu.set_sregs(s); !r) return r.error();

  kvm_regs regs{};
  regs.rflags = 0x2;
  regs.rip = entry->rip;
  regs.rsi = entry->rsi;
  regs.rsp = entry->rsp;
  regs.rbp = entry->rsp;
  if (auto r = vcpu.set_regs(regs); !r) return r.error();

  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  if (auto r = vcpu.set_fpu(fpu); !r) return r.error();

  // The MSRs a cold CPU would have as zero, plus fast strings (bit 0 of
  // IA32_MISC_ENABLE), as firmware leaves them. The TSC is left alone:
  // KVM synchronized it across vCPUs at creation.
  std::vector<std::pair<uint32_t, uint64_t>> msrs = {
      {kMsrSysenterCs, 0}, {kMsrSysenterEsp, 0}, {kMsrSysenterEip, 0}, {kMsrStar, 0},
      {kMsrLstar, 0},      {kMsrCstar, 0},       {kMsrSyscallMask, 0}, {kMsrKernelGsBase, 0},
      {kMsrIa32MiscEnable, 1},
  };
  if (auto r = vcpu.set_msrs(msrs); !r) spdlog::warn("vcpu {}: {} (continuing)", id, r.error().message);
  return {};
}

// --- kick signal ---

int vcpu_kick_signal() { return SIGRTMIN + 3; }

void install_vcpu_kick_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(vcpu_kick_signal(), &sa, nullptr);
  });
}

// --- probe ---

namespace {

constexpr uint16_t kProbePort = 0x5ff0;
constexpr uint32_t kProbeExpect = 0x12345678u + 0x11111111u;
constexpr uint64_t kProbeLowSize = 2 << 20;
constexpr uint64_t kProbeHighGpa = 1ull << 30;
constexpr uint64_t kProbeHighSize = 2 << 20;
constexpr uint64_t kProbeGdt = 0x1000, kProbePml4A = 0x2000, kProbePml4B = 0x8000, kProbeCode = 0x10000;
constexpr uint64_t kProbeStack = 0x1f000;

// Assembled from (AT&T syntax, .code64, loaded at kProbeCode):
//   mov $0x1f000,%esp ; call sub1 ; cmp $0x5a5a,%eax ; jne fail
//   mov $0x18,%eax ; mov %eax,%ds ; mov %eax,%es ; mov %eax,%ss
//   lea 1f(%rip),%rax ; pushq $0x10 ; push %rax ; lretq
// 1: xor %eax,%eax ; cpuid
//   mov $0x40000000,%ebx ; movl $0x12345678,0x100(%rbx)
//   mov $0x8000,%ecx ; mov %rcx,%cr3            (second page-table set)
//   mov 0x100(%rbx),%eax ; add $0x11111111,%eax
//   mov $0x5ff0,%dx ; out %eax,(%dx) ; hlt ; jmp fail
// fail: mov $0xdead,%eax ; mov $0x5ff0,%dx ; out %eax,(%dx) ; hlt ; jmp fail
// sub1: mov $0x5a5a,%eax ; ret
constexpr uint8_t kProbeCodeBytes[] = {
    0xbc, 0x00, 0xf0, 0x01, 0x00, 0xe8, 0x59, 0x00, 0x00, 0x00, 0x3d, 0x5a, 0x5a, 0x00, 0x00, 0x75, 0x45, 0xb8,
    0x18, 0x00, 0x00, 0x00, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0x48, 0x8d, 0x05, 0x05, 0x00, 0x00, 0x00, 0x6a,
    0x10, 0x50, 0x48, 0xcb, 0x31, 0xc0, 0x0f, 0xa2, 0xbb, 0x00, 0x00, 0x00, 0x40, 0xc7, 0x83, 0x00, 0x01, 0x00,
    0x00, 0x78, 0x56, 0x34, 0x12, 0xb9, 0x00, 0x80, 0x00, 0x00, 0x0f, 0x22, 0xd9, 0x8b, 0x83, 0x00, 0x01, 0x00,
    0x00, 0x05, 0x11, 0x11, 0x11, 0x11, 0x66, 0xba, 0xf0, 0x5f, 0xef, 0xf4, 0xeb, 0x00, 0xb8, 0xad, 0xde, 0x00,
    0x00, 0x66, 0xba, 0xf0, 0x5f, 0xef, 0xf4, 0xeb, 0xf3, 0xb8, 0x5a, 0x5a, 0x00, 0x00, 0xc3};

struct Mapping {
  void* p = MAP_FAILED;
  size_t n = 0;
  explicit Mapping(size_t size) : n(size) {
    p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  ~Mapping() {
    if (p != MAP_FAILED) munmap(p, n);
  }
  bool ok() const { return p != MAP_FAILED; }
  std::span<uint8_t> span() const { return {static_cast<uint8_t*>(p), n}; }
};

// Shared with the probe's vCPU thread, which may outlive probe_kvm() if
// KVM_RUN never returns (the state is then leaked with it, deliberately).
struct ProbeGuest {
  Mapping low{kProbeLowSize}, high{kProbeHighSize};
  KvmVm vm;
  KvmVcpu vcpu;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  bool ok = false;
  std::string detail;
};

std::string exit_detail(KvmVcpu& v) {
  kvm_run* run = v.run_struct();
  std::string rip = "?";
  if (auto r = v.get_regs()) rip = fmt::format("{:#x}", r->rip);
  switch (run->exit_reason) {
    case KVM_EXIT_SHUTDOWN:
      return fmt::format("triple fault at RIP {}", rip);
    case KVM_EXIT_FAIL_ENTRY:
      return fmt::format("VM entry failed (reason {:#x}) at RIP {}",
                         uint64_t(run->fail_entry.hardware_entry_failure_reason), rip);
    case KVM_EXIT_INTERNAL_ERROR:
      return fmt::format("KVM internal error {} at RIP {}", run->internal.suberror, rip);
    case KVM_EXIT_HLT:
      return fmt::format("halted at RIP {} before reporting", rip);
    default:
      return fmt::format("unexpected exit {} at RIP {}", run->exit_reason, rip);
  }
}

void probe_thread(std::shared_ptr<ProbeGuest> g) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, vcpu_kick_signal());
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  bool ok = false;
  std::string detail;
  for (int i = 0; i < 1000; i++) {
    auto r = g->vcpu.run();
    kvm_run* run = g->vcpu.run_struct();
    if (!r) {
      if (r.error().code == EINTR) {
        detail = "no answer within 2 s (the guest hangs in 64-bit mode)";
        break;
      }
      detail = r.error().message;
      break;
    }
    if (run->exit_reason == KVM_EXIT_IO && run->io.port == kProbePort && run->io.direction == KVM_EXIT_IO_OUT &&
        run->io.size == 4 && run->io.data_offset + 4 <= g->vcpu.run_size()) {
      uint32_t v = load_le32(reinterpret_cast<uint8_t*>(run) + run->io.data_offset);
      ok = v == kProbeExpect;
      if (!ok) detail = fmt::format("the guest reported {:#x} instead of {:#x}", v, kProbeExpect);
      break;
    }
    if (run->exit_reason == KVM_EXIT_IO || run->exit_reason == KVM_EXIT_MMIO) continue;
    detail = exit_detail(g->vcpu);
    break;
  }
  if (!ok && detail.empty()) detail = "the guest never reported";
  std::lock_guard lock(g->mu);
  g->ok = ok;
  g->detail = std::move(detail);
  g->done = true;
  g->cv.notify_all();
}

Result<void> run_probe_guest(const KvmSystem& sys) {
  auto g = std::make_shared<ProbeGuest>();
  if (!g->low.ok() || !g->high.ok()) return make_error(ENOMEM, "probe guest: cannot map memory");
  auto vm = sys.create_vm();
  if (!vm) return vm.error();
  g->vm = std::move(*vm);
  if (auto r = g->vm.set_tss_addr(); !r) return r.error();
  if (auto r = g->vm.set_identity_map_addr(); !r) return r.error();
  if (auto r = g->vm.create_irqchip(); !r) return r.error();
  if (auto r = g->vm.set_user_memory_region(0, 0, kProbeLowSize, g->low.p); !r) return r.error();
  if (auto r = g->vm.set_user_memory_region(1, kProbeHighGpa, kProbeHighSize, g->high.p); !r) return r.error();

  GuestMemory mem;
  if (auto r = mem.add_region(0, g->low.span()); !r) return r.error();
  if (auto r = mem.add_region(kProbeHighGpa, g->high.span()); !r) return r.error();
  if (auto r = write_boot_gdt(mem, kProbeGdt); !r) return r.error();
  if (auto r = write_identity_page_tables(mem, kProbePml4A); !r) return r.error();
  if (auto r = write_identity_page_tables(mem, kProbePml4B); !r) return r.error();
  if (!mem.write(kProbeCode, kProbeCodeBytes)) return make_error(ENOMEM, "probe guest: code outside RAM");

  auto vcpu = g->vm.create_vcpu(0);
  if (!vcpu) return vcpu.error();
  g->vcpu = std::move(*vcpu);
  auto cpuid = sys.supported_cpuid();
  if (!cpuid) return cpuid.error();
  EntryState entry;
  entry.rip = kProbeCode;
  entry.rsp = kProbeStack;
  entry.cr3 = kProbePml4A;
  entry.gdt_base = kProbeGdt;
  entry.gdt_limit = bootlayout::kGdtLimit;
  if (auto r = setup_vcpu(g->vcpu, *cpuid, 1, &entry); !r) return r.error();

  install_vcpu_kick_handler();
  std::thread t(probe_thread, g);
  pthread_t handle = t.native_handle();
  std::unique_lock lock(g->mu);
  if (!g->cv.wait_for(lock, std::chrono::seconds(2), [&] { return g->done; })) {
    // Kick it out of KVM_RUN, and give it a moment to say so.
    g->vcpu.set_immediate_exit(true);
    pthread_kill(handle, vcpu_kick_signal());
    if (!g->cv.wait_for(lock, std::chrono::seconds(1), [&] { return g->done; })) {
      lock.unlock();
      t.detach();  // stuck inside KVM: leak its VM rather than hang the caller
      return make_error(ENOTSUP, "this KVM cannot run a 64-bit guest: the probe guest hangs in 64-bit long "
                                 "mode and KVM_RUN does not return (a paravirtual KVM such as PVM?); use a "
                                 "host with VT-x/AMD-V, or nested virtualization");
    }
  }
  lock.unlock();
  t.join();
  if (!g->ok)
    return make_error(ENOTSUP, fmt::format("this KVM cannot run a 64-bit guest: {} (a paravirtual KVM such as "
                                           "PVM runs the ioctls and 16/32-bit code but not a stock 64-bit "
                                           "kernel); use a host with VT-x/AMD-V, or nested virtualization",
                                           g->detail));
  return {};
}

}  // namespace

Result<void> probe_kvm() {
  auto sys = KvmSystem::open("/dev/kvm");
  if (!sys) {
    int e = sys.error().code;
    if (e == ENOENT)
      return make_error(ENOENT, "/dev/kvm does not exist: load the KVM module (modprobe kvm-intel or kvm-amd) "
                                "or use a host with VT-x/AMD-V (inside a VM: enable nested virtualization)");
    if (e == EACCES || e == EPERM)
      return make_error(EACCES, "no permission to open /dev/kvm: add this user to the 'kvm' group "
                                "(usermod -aG kvm USER, then log in again) or run as root");
    if (e == ENXIO || e == ENODEV)
      return make_error(e, "/dev/kvm exists but no KVM driver is loaded: modprobe kvm-intel or kvm-amd "
                           "(and check that VT-x/AMD-V is enabled in the firmware)");
    return make_error(e, fmt::format("cannot open /dev/kvm: {}", sys.error().message));
  }
  int api = sys->api_version();
  if (api != KVM_API_VERSION)
    return make_error(ENOTSUP, fmt::format("/dev/kvm speaks API version {}, expected {}", api, KVM_API_VERSION));
  struct Cap {
    long id;
    const char* name;
  };
  static constexpr Cap kCaps[] = {
      {KVM_CAP_USER_MEMORY, "USER_MEMORY"},     {KVM_CAP_IRQCHIP, "IRQCHIP"},
      {KVM_CAP_PIT2, "PIT2"},                   {KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR"},
      {KVM_CAP_SET_IDENTITY_MAP_ADDR, "SET_IDENTITY_MAP_ADDR"},
      {KVM_CAP_IOEVENTFD, "IOEVENTFD"},         {KVM_CAP_IRQFD, "IRQFD"},
      {KVM_CAP_EXT_CPUID, "EXT_CPUID"},         {KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT"},
  };
  std::string missing;
  for (const auto& c : kCaps)
    if (sys->check_extension(c.id) <= 0) missing += fmt::format(" KVM_CAP_{}", c.name);
  if (!missing.empty())
    return make_error(ENOTSUP, fmt::format("this KVM lacks required capabilities:{}", missing));
  if (auto r = run_probe_guest(*sys); !r) return r.error();
  return {};
}

}  // namespace berth::vmm
