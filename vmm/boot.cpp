// Linux x86 64-bit boot (see boot.h for the layout).
//
// Theory of operation: parse_bzimage() checks the setup header once and
// returns the few fields the loader needs. load_linux() then decides every
// address first (kernel, command line, initrd), checks each against low RAM,
// and only then writes: the protected-mode part of the bzImage at its load
// address, the command line, the initrd, boot_params (a zeroed page with the
// file's setup header copied in and our fields filled), the identity page
// tables and the GDT. The vCPU code applies the returned EntryState.
//
// Kernel placement: the 64-bit decompressor (arch/x86/boot/compressed/
// head_64.S) decompresses at max(load address rounded up to
// kernel_alignment, LOAD_PHYSICAL_ADDR), and LOAD_PHYSICAL_ADDR is what the
// header calls pref_address. Loading at pref_address makes the kernel's whole
// footprint [pref_address, pref_address + init_size) known, so the initrd can
// be kept out of it.
#include "vmm/boot.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace berth::vmm {

namespace {

using namespace bootproto;

constexpr uint64_t kPage = 4096;
uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
uint64_t align_down(uint64_t v, uint64_t a) { return v / a * a; }

std::string mib(uint64_t v) { return fmt::format("{:.1f} MiB", double(v) / (1 << 20)); }

void store_le64(uint8_t* p, uint64_t v) {
  store_le32(p, uint32_t(v));
  store_le32(p + 4, uint32_t(v >> 32));
}

// End of the RAM region that starts at 0 (the only place for boot data).
uint64_t low_ram_end(const GuestMemory& mem) {
  for (const auto& r : mem.regions())
    if (r.gpa == 0) return r.size;
  return 0;
}

}  // namespace

Result<BzImageInfo> parse_bzimage(Bytes image) {
  if (image.size() < kOffInitSize + 4)
    return make_error(ENOEXEC, fmt::format("kernel image is {} bytes: too small to be a bzImage", image.size()));
  const uint8_t* p = image.data();
  if (load_le32(p + kOffHeader) != kHdrSMagic)
    return make_error(ENOEXEC,
                      "kernel image has no \"HdrS\" setup header: not a bzImage (an ELF vmlinux or a "
                      "compressed file? use arch/x86/boot/bzImage, e.g. /boot/vmlinuz-*)");
  BzImageInfo info;
  info.version = load_le16(p + kOffVersion);
  if (load_le16(p + kOffBootFlag) != kBootFlag)
    return make_error(ENOEXEC, "kernel image has a bad boot_flag (expected 0xAA55): not a bzImage");
  if (info.version < kMinVersion)
    return make_error(ENOEXEC, fmt::format("kernel boot protocol {}.{:02} is too old: 2.12 or newer (Linux 3.8+) "
                                           "is needed for the 64-bit entry point",
                                           info.version >> 8, info.version & 0xff));
  info.setup_sects = p[kOffSetupSects] ? p[kOffSetupSects] : 4;
  info.loadflags = p[kOffLoadflags];
  info.xloadflags = load_le16(p + kOffXloadflags);
  info.relocatable = p[kOffRelocatable] != 0;
  info.kernel_alignment = load_le32(p + kOffKernelAlignment);
  info.initrd_addr_max = load_le32(p + kOffInitrdAddrMax);
  info.cmdline_size = load_le32(p + kOffCmdlineSize);
  info.pref_address = load_le64(p + kOffPrefAddress);
  info.init_size = load_le32(p + kOffInitSize);
  if (!(info.xloadflags & kXlfKernel64))
    return make_error(ENOEXEC, "kernel has no 64-bit entry point (XLF_KERNEL_64 unset): a 32-bit kernel? "
                               "only x86_64 kernels can be booted");
  if (!(info.loadflags & kLoadedHigh))
    return make_error(ENOEXEC, "kernel is a zImage (LOADED_HIGH unset): only bzImages can be booted");
  info.setup_header_end = kOffJump + 2 + p[kOffJump + 1];
  if (p[kOffJump] != 0xEB || info.setup_header_end > kSetupHeaderMaxEnd || info.setup_header_end < kOffInitSize + 4)
    return make_error(ENOEXEC, "kernel setup header has an implausible length");
  info.kernel_offset = (size_t(info.setup_sects) + 1) * 512;
  if (info.kernel_offset >= image.size())
    return make_error(ENOEXEC, fmt::format("kernel image truncated: {} bytes, the setup code alone is {}",
                                           image.size(), info.kernel_offset));
  info.kernel_size = image.size() - info.kernel_offset;
  uint64_t syssize = uint64_t(load_le32(p + 0x1f4)) * 16;
  if (syssize > info.kernel_size)
    return make_error(ENOEXEC, fmt::format("kernel image truncated: header says {} bytes of kernel, file has {}",
                                           syssize, info.kernel_size));
  if (info.init_size == 0) info.init_size = uint32_t(std::min<size_t>(info.kernel_size * 4, 0xffffffffu));
  if (info.relocatable && (info.kernel_alignment == 0 || (info.kernel_alignment & (info.kernel_alignment - 1))))
    return make_error(ENOEXEC, fmt::format("kernel_alignment {:#x} is not a power of two", info.kernel_alignment));
  return info;
}

std::vector<E820Entry> build_e820(const GuestMemory& mem) {
  using namespace bootlayout;
  std::vector<E820Entry> out;
  auto add = [&](uint64_t a, uint64_t b, uint32_t type) {
    if (b > a) out.push_back({a, b - a, type});
  };
  for (const auto& r : mem.regions()) {
    uint64_t a = r.gpa, b = r.gpa + r.size;
    // RAM outside [EBDA, 1 MiB).
    add(a, std::min(b, kEbdaStart), kE820Ram);
    add(std::max(a, kHighMemory), b, kE820Ram);
    // The EBDA and the BIOS/ACPI area, where they are backed by this region.
    add(std::max(a, kEbdaStart), std::min(b, kBiosStart), kE820Reserved);
    add(std::max(a, kBiosAreaStart), std::min(b, kHighMemory), kE820Reserved);
  }
  std::sort(out.begin(), out.end(), [](const E820Entry& x, const E820Entry& y) { return x.addr < y.addr; });
  // Merge touching entries of one type (regions added by tests may abut).
  std::vector<E820Entry> merged;
  for (const auto& e : out) {
    if (!merged.empty() && merged.back().type == e.type && merged.back().addr + merged.back().size == e.addr)
      merged.back().size += e.size;
    else
      merged.push_back(e);
  }
  return merged;
}

Result<void> write_identity_page_tables(const GuestMemory& mem, uint64_t pml4) {
  auto s = mem.span(pml4, bootlayout::kPageTablesSize);
  if (!s) return make_error(ENOMEM, fmt::format("page tables at {:#x} are outside guest RAM", pml4));
  uint8_t* t = s->data();
  std::memset(t, 0, s->size());
  const uint64_t pdpt = pml4 + 0x1000, pd = pml4 + 0x2000;
  store_le64(t, pdpt | 0x3);  // present, writable
  for (uint64_t i = 0; i < 4; i++) store_le64(t + 0x1000 + i * 8, (pd + i * 0x1000) | 0x3);
  for (uint64_t i = 0; i < 4 * 512; i++)
    store_le64(t + 0x2000 + i * 8, (i << 21) | 0x83);  // present, writable, 2 MiB page
  return {};
}

Result<void> write_boot_gdt(const GuestMemory& mem, uint64_t base) {
  auto s = mem.span(base, bootlayout::kGdtLimit + 1);
  if (!s) return make_error(ENOMEM, fmt::format("GDT at {:#x} is outside guest RAM", base));
  uint8_t* g = s->data();
  std::memset(g, 0, s->size());
  store_le64(g + 0x10, 0x00af9b000000ffffull);  // code: G, L, P, DPL0, S, execute/read, accessed
  store_le64(g + 0x18, 0x00cf93000000ffffull);  // data: G, D/B, P, DPL0, S, read/write, accessed
  store_le64(g + 0x20, 0x00008b0000000067ull);  // 64-bit TSS (busy), base 0, limit 0x67; upper half 0
  return {};
}

Result<LinuxBootLayout> load_linux(const GuestMemory& mem, const LinuxBootSpec& spec) {
  using namespace bootlayout;
  auto parsed = parse_bzimage(spec.kernel);
  if (!parsed) return parsed.error();
  LinuxBootLayout out;
  out.info = *parsed;
  const BzImageInfo& info = out.info;

  const uint64_t low_end = low_ram_end(mem);
  if (low_end < kHighMemory + (1 << 20))
    return make_error(ENOMEM, fmt::format("guest RAM below 3 GiB is {}: too small to boot Linux", mib(low_end)));

  // Kernel: at pref_address (where it decompresses anyway) or at 1 MiB.
  // The decompressor never runs below pref_address (LOAD_PHYSICAL_ADDR), so
  // RAM must reach pref_address + init_size whatever the load address.
  uint64_t load = kHighMemory;
  if (info.pref_address >= kHighMemory) {
    if (info.pref_address >= low_end)
      return make_error(ENOMEM, fmt::format("kernel wants to run at {:#x} (pref_address) but low RAM ends at "
                                            "{:#x}: give the VM more memory",
                                            info.pref_address, low_end));
    load = info.relocatable ? align_up(info.pref_address, info.kernel_alignment) : info.pref_address;
  }
  const uint64_t footprint = align_up(std::max<uint64_t>(info.init_size, info.kernel_size), kPage);
  if (load >= low_end || footprint > low_end - load)
    return make_error(ENOMEM, fmt::format("kernel needs {} from {:#x} (init_size) but low RAM ends at {:#x}: "
                                          "give the VM more memory",
                                          mib(footprint), load, low_end));
  out.kernel_addr = load;
  out.kernel_end = load + footprint;

  // Command line.
  if (spec.cmdline.find('\0') != std::string_view::npos)
    return make_error(EINVAL, "kernel command line contains a NUL byte");
  const uint64_t cmdline_max = std::min<uint64_t>(info.cmdline_size, kCmdlineMax - 1);
  if (spec.cmdline.size() > cmdline_max)
    return make_error(E2BIG, fmt::format("kernel command line is {} bytes; this kernel accepts at most {}",
                                         spec.cmdline.size(), cmdline_max));
  out.cmdline_addr = kCmdline;

  // Initrd: as high as possible below min(initrd_addr_max, low RAM end).
  if (!spec.initrd.empty()) {
    const uint64_t size = spec.initrd.size();
    const uint64_t limit = std::min<uint64_t>(uint64_t(info.initrd_addr_max) + 1, low_end);
    const uint64_t addr = size <= limit ? align_down(limit - size, kPage) : 0;
    if (size > limit || addr < out.kernel_end)
      return make_error(ENOMEM, fmt::format("initrd of {} does not fit between the kernel's end ({:#x}) and "
                                            "{:#x} (min of initrd_addr_max and end of low RAM): give the VM "
                                            "more memory",
                                            mib(size), out.kernel_end, limit));
    out.initrd_addr = addr;
    out.initrd_size = size;
  }

  out.e820 = build_e820(mem);
  if (out.e820.size() > kE820Max) return make_error(EINVAL, "too many e820 entries");

  // Every address is decided; now write.
  auto write = [&](uint64_t gpa, Bytes b, const char* what) -> Result<void> {
    if (!mem.write(gpa, b))
      return make_error(ENOMEM, fmt::format("{} ({} bytes at {:#x}) is outside guest RAM", what, b.size(), gpa));
    return {};
  };
  if (auto r = write(load, spec.kernel.subspan(info.kernel_offset), "kernel"); !r) return r.error();
  {
    std::vector<uint8_t> cl(spec.cmdline.begin(), spec.cmdline.end());
    cl.push_back(0);
    if (auto r = write(kCmdline, cl, "command line"); !r) return r.error();
  }
  if (!spec.initrd.empty())
    if (auto r = write(out.initrd_addr, spec.initrd, "initrd"); !r) return r.error();

  std::vector<uint8_t> bp(kBootParamsSize, 0);
  std::memcpy(&bp[kOffSetupHeader], spec.kernel.data() + kOffSetupHeader, info.setup_header_end - kOffSetupHeader);
  bp[kOffTypeOfLoader] = kLoaderUndefined;
  bp[kOffLoadflags] = info.loadflags;
  store_le32(&bp[kOffCmdLinePtr], uint32_t(kCmdline));
  store_le32(&bp[kOffExtCmdLinePtr], 0);
  store_le32(&bp[kOffRamdiskImage], uint32_t(out.initrd_addr));
  store_le32(&bp[kOffRamdiskSize], uint32_t(out.initrd_size));
  store_le32(&bp[kOffExtRamdiskImage], uint32_t(out.initrd_addr >> 32));
  store_le32(&bp[kOffExtRamdiskSize], uint32_t(out.initrd_size >> 32));
  store_le64(&bp[kOffAcpiRsdpAddr], spec.rsdp_addr);
  bp[kOffE820Entries] = uint8_t(out.e820.size());
  for (size_t i = 0; i < out.e820.size(); i++) {
    uint8_t* e = &bp[kOffE820Table + i * 20];
    store_le64(e, out.e820[i].addr);
    store_le64(e + 8, out.e820[i].size);
    store_le32(e + 16, out.e820[i].type);
  }
  if (auto r = write(kBootParams, bp, "boot_params"); !r) return r.error();
  if (auto r = write_identity_page_tables(mem, kPml4); !r) return r.error();
  if (auto r = write_boot_gdt(mem, kGdt); !r) return r.error();

  out.entry.rip = load + 0x200;  // the 64-bit entry point, startup_64
  out.entry.rsi = kBootParams;
  out.entry.rsp = kStackTop;
  out.entry.cr3 = kPml4;
  out.entry.gdt_base = kGdt;
  out.entry.gdt_limit = kGdtLimit;
  return out;
}

}  // namespace berth::vmm
