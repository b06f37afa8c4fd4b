// Thin RAII wrappers over the KVM API (Documentation/virt/kvm/api.rst):
// the system fd (/dev/kvm), a VM fd and vCPU fds with their mmap'd kvm_run.
// Each wrapper owns its fd (and mapping) and closes it on destruction; every
// ioctl returns Result with the errno and the ioctl's name. No policy here:
// vm.cpp decides the machine.
//
// Threading: a KvmVcpu is used by its own thread, except that
// kick_immediate_exit() may be called from any thread. KvmVm ioctls used
// after boot (irqfd signalling goes through eventfds, not ioctls) are
// thread-safe in the kernel.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "vmm/boot.h"

namespace berth::vmm {

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset();

 private:
  int fd_ = -1;
};

class KvmVcpu {
 public:
  KvmVcpu() = default;
  ~KvmVcpu();
  KvmVcpu(KvmVcpu&& o) noexcept;
  KvmVcpu& operator=(KvmVcpu&& o) noexcept;
  KvmVcpu(const KvmVcpu&) = delete;

  int fd() const { return fd_.get(); }
  unsigned id() const { return id_; }
  kvm_run* run_struct() const { return run_; }
  size_t run_size() const { return run_size_; }  // the mapping: kvm_run, then the PIO data page

  // KVM_RUN once. EINTR (a signal or immediate_exit) is an ordinary outcome.
  [[nodiscard]] Result<void> run();
  [[nodiscard]] Result<kvm_regs> get_regs() const;
  [[nodiscard]] Result<void> set_regs(const kvm_regs& r);
  [[nodiscard]] Result<kvm_sregs> get_sregs() const;
  [[nodiscard]] Result<void> set_sregs(const kvm_sregs& s);
  [[nodiscard]] Result<void> set_fpu(const kvm_fpu& f);
  // KVM_SET_MSRS; EIO when KVM took fewer than all of them.
  [[nodiscard]] Result<void> set_msrs(const std::vector<std::pair<uint32_t, uint64_t>>& msrs);
  [[nodiscard]] Result<void> set_cpuid(const std::vector<kvm_cpuid_entry2>& entries);
  [[nodiscard]] Result<kvm_lapic_state> get_lapic() const;
  [[nodiscard]] Result<void> set_lapic(const kvm_lapic_state& l);
  // Makes the next (or current, with a signal) KVM_RUN return EINTR.
  void set_immediate_exit(bool on);

 private:
  friend class KvmVm;
  Fd fd_;
  unsigned id_ = 0;
  kvm_run* run_ = nullptr;
  size_t run_size_ = 0;
};

class KvmVm {
 public:
  KvmVm() = default;
  KvmVm(KvmVm&&) noexcept = default;
  KvmVm& operator=(KvmVm&&) noexcept = default;

  int fd() const { return fd_.get(); }
  int check_extension(long cap) const;  // on the VM fd (0 when absent)
  [[nodiscard]] Result<void> set_user_memory_region(uint32_t slot, uint64_t gpa, uint64_t size, void* host,
                                                    uint32_t flags = 0);
  [[nodiscard]] Result<void> set_tss_addr(uint64_t addr = 0xfffbd000);
  [[nodiscard]] Result<void> set_identity_map_addr(uint64_t addr = 0xfffbc000);
  [[nodiscard]] Result<void> create_irqchip();
  [[nodiscard]] Result<void> create_pit2(uint32_t flags = KVM_PIT_SPEAKER_DUMMY);
  [[nodiscard]] Result<KvmVcpu> create_vcpu(unsigned id);
  // KVM_IOEVENTFD for an MMIO write of `len` bytes at `addr` whose value is
  // `datamatch`; `deassign` removes it.
  [[nodiscard]] Result<void> ioeventfd_mmio(uint64_t addr, uint32_t len, uint64_t datamatch, int efd,
                                            bool deassign = false);
  [[nodiscard]] Result<void> irqfd(int efd, uint32_t gsi, bool deassign = false);
  [[nodiscard]] Result<void> irq_line(uint32_t irq, bool level);

 private:
  friend class KvmSystem;
  Fd fd_;
  size_t run_size_ = 0;
};

class KvmSystem {
 public:
  // open(path): ENOENT and EACCES are passed through with their errno; the
  // caller words the advice (probe_kvm() does).
  [[nodiscard]] static Result<KvmSystem> open(const char* path = "/dev/kvm");
  int fd() const { return fd_.get(); }
  int api_version() const;
  int check_extension(long cap) const;
  [[nodiscard]] Result<KvmVm> create_vm() const;
  [[nodiscard]] Result<std::vector<kvm_cpuid_entry2>> supported_cpuid() const;

 private:
  Fd fd_;
};

// Prepares vCPU `vcpu.id()` of `cpus`: CPUID from KVM_GET_SUPPORTED_CPUID
// with its APIC ID (leaves 1, 0xB, 0x1F, 0x8000001E) and the hypervisor bit,
// LAPIC LINT0 = ExtINT and LINT1 = NMI. With `entry` (the BSP): 64-bit long
// mode sregs from the EntryState (paging, EFER.LME|LMA, flat segments from
// the boot GDT, TR), general registers, FPU defaults and MSRs. APs keep
// their reset state and wait for INIT/SIPI in KVM's LAPIC.
[[nodiscard]] Result<void> setup_vcpu(KvmVcpu& vcpu, const std::vector<kvm_cpuid_entry2>& supported, unsigned cpus,
                                      const EntryState* entry);

// The checks vm.h documents (declared there too).
[[nodiscard]] Result<void> probe_kvm();

// The signal used to kick vCPU threads out of KVM_RUN; its handler does
// nothing (installed once, without SA_RESTART).
int vcpu_kick_signal();
void install_vcpu_kick_handler();

}  // namespace berth::vmm
