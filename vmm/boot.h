// Linux x86 64-bit boot protocol (Documentation/arch/x86/boot.rst) for a
// bzImage: what a VMM writes into guest RAM so that the kernel's 64-bit entry
// point (load address + 0x200) can run with no firmware.
//
// Pure: no KVM, no I/O. Everything is written through GuestMemory, so every
// address is bounds-checked; a kernel, initrd or command line that does not
// fit is refused with a message that says what and why, never written
// partially past RAM.
//
// Guest-physical layout below 1 MiB (all inside the first RAM region):
//   0x0500  GDT: null, null, 64-bit code (0x10), data (0x18), TSS (0x20)
//   0x7000  boot_params ("zero page")
//   0x8ff0  initial stack pointer (the kernel sets its own at once)
//   0x9000  PML4, 0xa000 PDPT, 0xb000-0xefff four PDs (2 MiB pages, 0-4 GiB)
//   0x20000 kernel command line
//   0x9fc00-0xa0000 EBDA (reserved), 0xa0000-0xe0000 legacy hole (not RAM),
//   0xe0000-0x100000 ACPI tables / BIOS area (reserved, vmm/acpi.h)
// The kernel goes at its pref_address (16 MiB for x86_64) or at 1 MiB; the
// initrd as high as possible below min(initrd_addr_max, end of low RAM).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"
#include "vmm/guest_memory.h"

namespace berth::vmm {

namespace bootlayout {
constexpr uint64_t kGdt = 0x500;
constexpr uint16_t kGdtLimit = 6 * 8 - 1;  // 5 entries, the TSS one is 16 bytes
constexpr uint16_t kCodeSelector = 0x10;   // __BOOT_CS
constexpr uint16_t kDataSelector = 0x18;   // __BOOT_DS
constexpr uint16_t kTssSelector = 0x20;
constexpr uint64_t kBootParams = 0x7000;
constexpr uint64_t kStackTop = 0x8ff0;
constexpr uint64_t kPml4 = 0x9000;          // PDPT at +0x1000, PDs at +0x2000..+0x5fff
constexpr uint64_t kPageTablesSize = 0x6000;
constexpr uint64_t kCmdline = 0x20000;
constexpr uint64_t kCmdlineMax = 0x10000;   // bytes reserved for it, NUL included
constexpr uint64_t kEbdaStart = 0x9fc00;
constexpr uint64_t kBiosStart = 0xa0000;    // legacy VGA hole + option ROMs + BIOS
constexpr uint64_t kBiosAreaStart = 0xe0000;  // ACPI tables live here (reserved)
constexpr uint64_t kHighMemory = 0x100000;  // 1 MiB
constexpr uint64_t kIdentityMapped = 4ull << 30;
}  // namespace bootlayout

// boot_params / setup_header constants (boot.rst).
namespace bootproto {
constexpr uint32_t kHdrSMagic = 0x53726448;  // "HdrS"
constexpr uint16_t kBootFlag = 0xAA55;
constexpr uint16_t kMinVersion = 0x020c;    // 2.12: xloadflags
constexpr uint8_t kLoadedHigh = 0x01;
constexpr uint16_t kXlfKernel64 = 0x01;
constexpr uint16_t kXlfCanBeLoadedAbove4G = 0x02;
constexpr uint8_t kLoaderUndefined = 0xff;
// Offsets inside boot_params.
constexpr size_t kOffAcpiRsdpAddr = 0x070;
constexpr size_t kOffExtRamdiskImage = 0x0c0, kOffExtRamdiskSize = 0x0c4, kOffExtCmdLinePtr = 0x0c8;
constexpr size_t kOffE820Entries = 0x1e8;
constexpr size_t kOffSetupHeader = 0x1f1;
constexpr size_t kOffSetupSects = 0x1f1, kOffBootFlag = 0x1fe, kOffJump = 0x200, kOffHeader = 0x202;
constexpr size_t kOffVersion = 0x206, kOffTypeOfLoader = 0x210, kOffLoadflags = 0x211;
constexpr size_t kOffRamdiskImage = 0x218, kOffRamdiskSize = 0x21c, kOffCmdLinePtr = 0x228;
constexpr size_t kOffInitrdAddrMax = 0x22c, kOffKernelAlignment = 0x230, kOffRelocatable = 0x234;
constexpr size_t kOffXloadflags = 0x236, kOffCmdlineSize = 0x238, kOffPrefAddress = 0x258;
constexpr size_t kOffInitSize = 0x260;
constexpr size_t kOffE820Table = 0x2d0;
constexpr size_t kE820Max = 128;
constexpr size_t kSetupHeaderMaxEnd = 0x290;  // boot_params field after the header
constexpr size_t kBootParamsSize = 4096;
}  // namespace bootproto

constexpr uint32_t kE820Ram = 1, kE820Reserved = 2, kE820Acpi = 3;

struct E820Entry {
  uint64_t addr = 0, size = 0;
  uint32_t type = 0;
  bool operator==(const E820Entry&) const = default;
};

// What the setup header says, checked by parse_bzimage().
struct BzImageInfo {
  uint16_t version = 0;
  uint8_t setup_sects = 0;      // 0 in the file means 4
  uint8_t loadflags = 0;
  uint16_t xloadflags = 0;
  bool relocatable = false;
  uint32_t kernel_alignment = 0;
  uint32_t initrd_addr_max = 0;
  uint32_t cmdline_size = 0;    // longest command line, without the NUL
  uint32_t init_size = 0;       // memory the kernel needs from its load address
  uint64_t pref_address = 0;
  size_t setup_header_end = 0;  // offset of the first byte after the header
  size_t kernel_offset = 0;     // (setup_sects + 1) * 512
  size_t kernel_size = 0;       // bytes of the protected-mode kernel
};

// Checks a bzImage; refuses (EINVAL/ENOEXEC) with a clear message what we
// cannot boot: not a bzImage, boot protocol older than 2.12, no 64-bit entry,
// not loadable high, truncated.
[[nodiscard]] Result<BzImageInfo> parse_bzimage(Bytes image);

// The e820 map for `mem`: its RAM regions minus the EBDA and the legacy
// 0xa0000-0x100000 area (the 0xe0000-0x100000 part, which holds the ACPI
// tables, is listed as reserved; so is the EBDA). Sorted, non-overlapping.
std::vector<E820Entry> build_e820(const GuestMemory& mem);

// Identity page tables at `pml4` (PDPT at +0x1000, four PDs after it):
// 2 MiB pages covering 0..4 GiB. ENOMEM when the 24 KiB are not RAM.
[[nodiscard]] Result<void> write_identity_page_tables(const GuestMemory& mem, uint64_t pml4);
// The boot GDT at `base`: null, null, 64-bit code at 0x10, flat data at 0x18,
// a 64-bit TSS descriptor at 0x20 (for TR).
[[nodiscard]] Result<void> write_boot_gdt(const GuestMemory& mem, uint64_t base);

// The register state the 64-bit entry point expects (boot.rst, "64-bit Boot
// Protocol"): long mode, paging on with the identity map, CS=__BOOT_CS,
// DS=ES=SS=__BOOT_DS, interrupts off, RSI = boot_params.
struct EntryState {
  uint64_t rip = 0, rsi = 0, rsp = 0;
  uint64_t cr3 = 0;
  uint64_t gdt_base = 0;
  uint16_t gdt_limit = 0;
  uint16_t code_selector = bootlayout::kCodeSelector;
  uint16_t data_selector = bootlayout::kDataSelector;
  uint16_t tss_selector = bootlayout::kTssSelector;
};

struct LinuxBootSpec {
  Bytes kernel;             // the bzImage file
  Bytes initrd;             // may be empty
  std::string_view cmdline;
  uint64_t rsdp_addr = 0;   // boot_params.acpi_rsdp_addr (0: let Linux scan)
};

struct LinuxBootLayout {
  EntryState entry;
  BzImageInfo info;
  uint64_t kernel_addr = 0, kernel_end = 0;  // [load address, + max(init_size, file))
  uint64_t initrd_addr = 0, initrd_size = 0;
  uint64_t cmdline_addr = 0;
  std::vector<E820Entry> e820;
};

// Places kernel, initrd, command line, boot_params, page tables and GDT in
// `mem`. Refuses (ENOMEM, E2BIG, EINVAL) a kernel or initrd that does not fit
// in low RAM, a command line longer than the kernel accepts, a kernel whose
// 64-bit entry cannot be reached.
[[nodiscard]] Result<LinuxBootLayout> load_linux(const GuestMemory& mem, const LinuxBootSpec& spec);

}  // namespace berth::vmm
