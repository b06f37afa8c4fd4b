// ACPI table construction (ACPI 6.4 §5.2: RSDP 5.2.5, XSDT 5.2.8, FADT
// 5.2.9, FACS 5.2.10, DSDT 5.2.11.1, MADT 5.2.12; AML §20; resource
// descriptors §6.4).
//
// Theory of operation: all addresses are decided first (each table's size
// is known before it is built: the DSDT is built once up front), then each
// table is emitted into one byte vector that mirrors guest memory from
// `base`, then lengths and checksums are patched. The XSDT lists the FADT
// and the MADT; the FADT points at the FACS and the DSDT. Only 64-bit
// pointers (XSDT, X_DSDT, X_FIRMWARE_CTRL) plus the 32-bit DSDT (same value)
// are filled, as ACPI 6 asks.
#include "vmm/acpi.h"

#include <cassert>
#include <cstring>

#include <fmt/format.h>

namespace berth::vmm {

namespace {

constexpr char kOemId[7] = "BERTH ";
constexpr char kOemTableId[9] = "BERTHVMM";
constexpr char kCreatorId[5] = "BRTH";
constexpr size_t kHeaderLen = 36;
constexpr size_t kRsdpLen = 36, kFadtLen = 276, kFacsLen = 64;

uint64_t align(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

void put(std::vector<uint8_t>& v, const char* s, size_t n) {
  size_t at = v.size();
  v.resize(at + n);
  std::memcpy(v.data() + at, s, n);
}

// A table: standard header with length and checksum patched by finish().
struct Table {
  std::vector<uint8_t> b;
  ByteWriter w{b};
  Table(const char sig[5], uint8_t revision) {
    b.reserve(256);
    put(b, sig, 4);
    w.u32(0);  // length
    w.u8(revision);
    w.u8(0);   // checksum
    put(b, kOemId, 6);
    put(b, kOemTableId, 8);
    w.u32(1);  // OEM revision
    put(b, kCreatorId, 4);
    w.u32(1);  // creator revision
  }
  std::vector<uint8_t> finish() {
    store_le32(&b[4], uint32_t(b.size()));
    b[9] = uint8_t(-acpi_sum(b));
    return std::move(b);
  }
};

// Generic Address Structure (§5.2.3.2). Access size 0: legacy/undefined.
void gas(ByteWriter& w, uint8_t space, uint8_t bit_width, uint8_t access_size, uint64_t address) {
  w.u8(space);
  w.u8(bit_width);
  w.u8(0);  // bit offset
  w.u8(access_size);
  w.u64(address);
}
constexpr uint8_t kSystemIo = 1;

std::vector<uint8_t> build_fadt(uint64_t facs, uint64_t dsdt) {
  Table t("FACP", 6);
  ByteWriter& w = t.w;
  w.u32(0);                       // FIRMWARE_CTRL: X_FIRMWARE_CTRL is used
  w.u32(uint32_t(dsdt));          // DSDT
  w.u8(0);                        // reserved (INT_MODEL)
  w.u8(0);                        // Preferred_PM_Profile: unspecified
  w.u16(kSciIrq);                 // SCI_INT
  w.u32(0);                       // SMI_CMD = 0: no SMI, ACPI mode always on
  w.u8(0);                        // ACPI_ENABLE
  w.u8(0);                        // ACPI_DISABLE
  w.u8(0);                        // S4BIOS_REQ
  w.u8(0);                        // PSTATE_CNT
  w.u32(kPm1aEvt);                // PM1a_EVT_BLK
  w.u32(0);                       // PM1b_EVT_BLK
  w.u32(kPm1aCnt);                // PM1a_CNT_BLK
  w.u32(0);                       // PM1b_CNT_BLK
  w.u32(0);                       // PM2_CNT_BLK
  w.u32(0);                       // PM_TMR_BLK: no PM timer
  w.u32(0);                       // GPE0_BLK
  w.u32(0);                       // GPE1_BLK
  w.u8(4);                        // PM1_EVT_LEN
  w.u8(2);                        // PM1_CNT_LEN
  w.u8(0);                        // PM2_CNT_LEN
  w.u8(0);                        // PM_TMR_LEN
  w.u8(0);                        // GPE0_BLK_LEN
  w.u8(0);                        // GPE1_BLK_LEN
  w.u8(0);                        // GPE1_BASE
  w.u8(0);                        // CST_CNT
  w.u16(101);                     // P_LVL2_LAT > 100: C2 not supported
  w.u16(1001);                    // P_LVL3_LAT > 1000: C3 not supported
  w.u16(0);                       // FLUSH_SIZE
  w.u16(0);                       // FLUSH_STRIDE
  w.u8(0);                        // DUTY_OFFSET
  w.u8(0);                        // DUTY_WIDTH
  w.u8(0);                        // DAY_ALRM
  w.u8(0);                        // MON_ALRM
  w.u8(0);                        // CENTURY
  // IAPC_BOOT_ARCH: no LEGACY_DEVICES, no 8042 (bit 1 clear), VGA not
  // present (bit 2), CMOS RTC not present (bit 5).
  w.u16((1 << 2) | (1 << 5));
  w.u8(0);                        // reserved
  // Flags: WBINVD (0), PROC_C1 (2), PWR_BUTTON (4) and SLP_BUTTON (5): no
  // fixed-feature buttons, FIX_RTC (6), RESET_REG_SUP (10). HW_REDUCED (20)
  // clear.
  w.u32((1 << 0) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 10));
  gas(w, kSystemIo, 8, 1, kResetPort);  // RESET_REG (Linux wants width 8, offset 0)
  w.u8(kResetValue);              // RESET_VALUE
  w.u16(0);                       // ARM_BOOT_ARCH
  w.u8(0);                        // FADT minor version
  w.u64(facs);                    // X_FIRMWARE_CTRL
  w.u64(dsdt);                    // X_DSDT
  gas(w, kSystemIo, 32, 0, kPm1aEvt);  // X_PM1a_EVT_BLK
  gas(w, 0, 0, 0, 0);                  // X_PM1b_EVT_BLK
  gas(w, kSystemIo, 16, 0, kPm1aCnt);  // X_PM1a_CNT_BLK
  gas(w, 0, 0, 0, 0);                  // X_PM1b_CNT_BLK
  gas(w, 0, 0, 0, 0);                  // X_PM2_CNT_BLK
  gas(w, 0, 0, 0, 0);                  // X_PM_TMR_BLK
  gas(w, 0, 0, 0, 0);                  // X_GPE0_BLK
  gas(w, 0, 0, 0, 0);                  // X_GPE1_BLK
  gas(w, 0, 0, 0, 0);                  // SLEEP_CONTROL_REG (hardware-reduced only)
  gas(w, 0, 0, 0, 0);                  // SLEEP_STATUS_REG
  put(t.b, "BERTHVMM", 8);             // Hypervisor Vendor Identity
  assert(t.b.size() == kFadtLen);
  return t.finish();
}

std::vector<uint8_t> build_facs() {
  // §5.2.10: no checksum; 64-byte aligned. Version 2, no waking vector.
  std::vector<uint8_t> b;
  b.reserve(kFacsLen);
  ByteWriter w(b);
  put(b, "FACS", 4);
  w.u32(kFacsLen);
  w.u32(0);  // hardware signature
  w.u32(0);  // firmware waking vector
  w.u32(0);  // global lock
  w.u32(0);  // flags
  w.u64(0);  // X firmware waking vector
  w.u8(2);   // version
  b.resize(kFacsLen, 0);
  return b;
}

std::vector<uint8_t> build_madt(unsigned cpus) {
  Table t("APIC", 5);
  ByteWriter& w = t.w;
  w.u32(uint32_t(kLocalApicAddr));
  w.u32(1);  // PCAT_COMPAT: dual 8259s present
  for (unsigned i = 0; i < cpus; i++) {
    // Processor Local APIC (§5.2.12.2): UID i, APIC ID i, enabled.
    w.u8(0);
    w.u8(8);
    w.u8(uint8_t(i));
    w.u8(uint8_t(i));
    w.u32(1);
  }
  // I/O APIC (§5.2.12.3): ID 0 (KVM's reset value), GSI base 0.
  w.u8(1);
  w.u8(12);
  w.u8(0);
  w.u8(0);
  w.u32(uint32_t(kIoApicAddr));
  w.u32(0);
  // Local APIC NMI (§5.2.12.7): all processors, LINT1, bus-conforming flags.
  w.u8(4);
  w.u8(6);
  w.u8(0xff);
  w.u16(0);
  w.u8(1);
  return t.finish();
}

size_t madt_len(unsigned cpus) { return kHeaderLen + 8 + 8 * cpus + 12 + 6; }

// --- AML (§20.2) ---
constexpr uint8_t kNameOp = 0x08, kScopeOp = 0x10, kBufferOp = 0x11, kPackageOp = 0x12;
constexpr uint8_t kStringPrefix = 0x0d, kExtOpPrefix = 0x5b, kDeviceOp = 0x82, kRootChar = 0x5c;

void name_seg(std::vector<uint8_t>& out, std::string_view s) {
  assert(s.size() == 4);
  out.insert(out.end(), s.begin(), s.end());
}

// Wraps `body` as <prefix bytes> PkgLength <body>.
void with_pkg(std::vector<uint8_t>& out, std::initializer_list<uint8_t> prefix, const std::vector<uint8_t>& body) {
  out.insert(out.end(), prefix);
  aml::pkg_length(out, body.size());
  out.insert(out.end(), body.begin(), body.end());
}

void name_integer(std::vector<uint8_t>& out, std::string_view name, uint64_t v) {
  out.push_back(kNameOp);
  name_seg(out, name);
  aml::integer(out, v);
}

void name_string(std::vector<uint8_t>& out, std::string_view name, std::string_view s) {
  out.push_back(kNameOp);
  name_seg(out, name);
  out.push_back(kStringPrefix);
  out.insert(out.end(), s.begin(), s.end());
  out.push_back(0);
}

// Name(_CRS, ResourceTemplate() { <descs> EndTag }).
void name_crs(std::vector<uint8_t>& out, std::vector<uint8_t> descs) {
  descs.push_back(0x79);  // End Tag (§6.4.2.9), checksum 0: "treat as correct"
  descs.push_back(0x00);
  std::vector<uint8_t> buf;
  buf.reserve(descs.size() + 8);
  aml::integer(buf, descs.size());  // BufferSize
  buf.insert(buf.end(), descs.begin(), descs.end());
  out.push_back(kNameOp);
  name_seg(out, "_CRS");
  with_pkg(out, {kBufferOp}, buf);
}

void device(std::vector<uint8_t>& out, std::string_view name, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> b;
  b.reserve(body.size() + 8);
  name_seg(b, name);
  b.insert(b.end(), body.begin(), body.end());
  with_pkg(out, {kExtOpPrefix, kDeviceOp}, b);
}

void virtio_device(std::vector<uint8_t>& out, size_t index, const AcpiVirtioMmio& v) {
  std::vector<uint8_t> body;
  body.reserve(128);
  name_string(body, "_HID", "LNRO0005");
  name_integer(body, "_UID", index);
  std::vector<uint8_t> d;
  d.reserve(64);
  ByteWriter w(d);
  // Memory32Fixed (§6.4.3.4): large item 0x86, length 9, read-write.
  w.u8(0x86);
  w.u16(9);
  w.u8(1);
  w.u32(uint32_t(v.base));
  w.u32(v.size);
  // Extended Interrupt (§6.4.3.6): large item 0x89, length 6; flags:
  // consumer (bit 0), edge (bit 1), active-high (bit 2 clear), exclusive
  // (bit 3 clear); one GSI.
  w.u8(0x89);
  w.u16(6);
  w.u8(0x03);
  w.u8(1);
  w.u32(v.gsi);
  name_crs(body, std::move(d));
  device(out, fmt::format("VR{:02X}", index), body);
}

void com1_device(std::vector<uint8_t>& out) {
  std::vector<uint8_t> body;
  body.reserve(128);
  body.push_back(kNameOp);
  name_seg(body, "_HID");
  aml::integer(body, aml::eisa_id("PNP0501"));
  name_integer(body, "_UID", 1);
  std::vector<uint8_t> d;
  d.reserve(64);
  ByteWriter w(d);
  // I/O Port (§6.4.2.5): small item 0x47, 16-bit decode, 0x3f8..0x3f8, align 1, length 8.
  w.u8(0x47);
  w.u8(1);
  w.u16(0x3f8);
  w.u16(0x3f8);
  w.u8(1);
  w.u8(8);
  // IRQ (§6.4.2.1): small item 0x22 (no flags byte: edge, active-high), IRQ 4.
  w.u8(0x22);
  w.u16(1 << 4);
  name_crs(body, std::move(d));
  device(out, "COM1", body);
}

}  // namespace

uint8_t acpi_sum(Bytes b) {
  uint8_t s = 0;
  for (uint8_t x : b) s = uint8_t(s + x);
  return s;
}

namespace aml {

void pkg_length(std::vector<uint8_t>& out, size_t n) {
  // §20.2.4: bits 7-6 of the lead byte count the bytes that follow; with
  // none, bits 5-0 are the length; otherwise bits 3-0 are its low nibble and
  // each following byte holds the next 8 bits.
  if (n + 1 <= 0x3f) {
    out.push_back(uint8_t(n + 1));
    return;
  }
  size_t extra = n + 2 <= 0xfff ? 1 : n + 3 <= 0xfffff ? 2 : 3;
  size_t v = n + 1 + extra;
  assert(v <= 0xfffffff);
  out.push_back(uint8_t((extra << 6) | (v & 0xf)));
  for (size_t i = 0; i < extra; i++) out.push_back(uint8_t(v >> (4 + 8 * i)));
}

void integer(std::vector<uint8_t>& out, uint64_t v) {
  ByteWriter w(out);
  if (v == 0) {
    w.u8(0x00);  // ZeroOp
  } else if (v == 1) {
    w.u8(0x01);  // OneOp
  } else if (v <= 0xff) {
    w.u8(0x0a);
    w.u8(uint8_t(v));
  } else if (v <= 0xffff) {
    w.u8(0x0b);
    w.u16(uint16_t(v));
  } else if (v <= 0xffffffff) {
    w.u8(0x0c);
    w.u32(uint32_t(v));
  } else {
    w.u8(0x0e);
    w.u64(v);
  }
}

uint32_t eisa_id(const char id[8]) {
  // Three letters, 5 bits each ('A' = 1), big-endian in the first two bytes,
  // then four hex digits, two per byte.
  auto hex = [](char c) -> uint32_t { return c <= '9' ? uint32_t(c - '0') : uint32_t(c - 'A' + 10); };
  uint32_t letters = (uint32_t(id[0] - '@') << 10) | (uint32_t(id[1] - '@') << 5) | uint32_t(id[2] - '@');
  uint32_t b0 = letters >> 8, b1 = letters & 0xff;
  uint32_t b2 = (hex(id[3]) << 4) | hex(id[4]), b3 = (hex(id[5]) << 4) | hex(id[6]);
  return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24);
}

}  // namespace aml

std::vector<uint8_t> build_dsdt(const AcpiConfig& cfg) {
  Table t("DSDT", 2);  // revision 2: 64-bit integers
  std::vector<uint8_t> sb;
  sb.reserve(1024);
  sb.push_back(kRootChar);
  name_seg(sb, "_SB_");
  if (cfg.com1) com1_device(sb);
  for (size_t i = 0; i < cfg.virtio.size(); i++) virtio_device(sb, i, cfg.virtio[i]);
  // Scope(\_SB) { ... }
  t.b.push_back(kScopeOp);
  aml::pkg_length(t.b, sb.size());
  t.b.insert(t.b.end(), sb.begin(), sb.end());
  // Name(\_S5, Package(4) { 5, 5, 0, 0 }): SLP_TYPa, SLP_TYPb, reserved.
  std::vector<uint8_t> pkg;
  pkg.reserve(16);
  pkg.push_back(4);  // NumElements
  aml::integer(pkg, kS5SleepType);
  aml::integer(pkg, kS5SleepType);
  aml::integer(pkg, 0);
  aml::integer(pkg, 0);
  t.b.push_back(kNameOp);
  t.b.push_back(kRootChar);
  name_seg(t.b, "_S5_");
  with_pkg(t.b, {kPackageOp}, pkg);
  return t.finish();
}

Result<AcpiTables> build_acpi_tables(const AcpiConfig& cfg, uint64_t base) {
  if (cfg.cpus == 0 || cfg.cpus > 255)
    return make_error(EINVAL, fmt::format("ACPI tables: {} vCPUs (1 to 255 supported)", cfg.cpus));
  if (base % 16) return make_error(EINVAL, "ACPI tables: base must be 16-byte aligned");
  AcpiTables t;
  t.base = base;
  std::vector<uint8_t> dsdt = build_dsdt(cfg);
  const size_t xsdt_len = kHeaderLen + 8 * 2;
  t.rsdp = base;
  t.xsdt = align(t.rsdp + kRsdpLen, 16);
  t.fadt = align(t.xsdt + xsdt_len, 16);
  t.facs = align(t.fadt + kFadtLen, 64);
  t.madt = align(t.facs + kFacsLen, 16);
  t.dsdt = align(t.madt + madt_len(cfg.cpus), 16);
  const uint64_t end = t.dsdt + dsdt.size();
  if (base < kAcpiEnd && end > kAcpiEnd)
    return make_error(E2BIG, fmt::format("ACPI tables need {} bytes, more than the BIOS area holds", end - base));
  t.bytes.assign(end - base, 0);
  auto place = [&](uint64_t at, const std::vector<uint8_t>& b) { std::memcpy(&t.bytes[at - base], b.data(), b.size()); };

  // RSDP (§5.2.5.3), revision 2.
  std::vector<uint8_t> rsdp;
  rsdp.reserve(kRsdpLen);
  ByteWriter w(rsdp);
  put(rsdp, "RSD PTR ", 8);
  w.u8(0);  // checksum over the first 20 bytes
  put(rsdp, kOemId, 6);
  w.u8(2);  // revision
  w.u32(0);  // RsdtAddress: the XSDT is used
  w.u32(kRsdpLen);
  w.u64(t.xsdt);
  w.u8(0);  // extended checksum
  w.u8(0), w.u8(0), w.u8(0);
  rsdp[8] = uint8_t(-acpi_sum(Bytes(rsdp).first(20)));
  rsdp[32] = uint8_t(-acpi_sum(rsdp));
  place(t.rsdp, rsdp);

  Table xsdt("XSDT", 1);
  xsdt.w.u64(t.fadt);
  xsdt.w.u64(t.madt);
  place(t.xsdt, xsdt.finish());
  place(t.fadt, build_fadt(t.facs, t.dsdt));
  place(t.facs, build_facs());
  place(t.madt, build_madt(cfg.cpus));
  place(t.dsdt, dsdt);
  return t;
}

Result<void> write_acpi_tables(const GuestMemory& mem, const AcpiTables& tables) {
  if (!mem.write(tables.base, tables.bytes))
    return make_error(ENOMEM, fmt::format("ACPI tables ({} bytes at {:#x}) are outside guest RAM",
                                          tables.bytes.size(), tables.base));
  return {};
}

}  // namespace berth::vmm
