// ACPI tables for the guest (ACPI 6.x): RSDP, XSDT, FADT, FACS, MADT, DSDT.
//
// Design decision (issue "vmm"): devices are announced as virtio-mmio v2 in
// the ACPI DSDT (_HID "LNRO0005", which Debian's virtio_mmio.ko matches;
// Debian kernels lack CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so
// "virtio_mmio.device=" on the command line is not an option). ACPI is needed
// anyway, for poweroff (\_S5 plus a PM1a control block) and for the MADT
// (several vCPUs); virtio-mmio avoids emulating PCI config space, BARs and
// MSI-X.
//
// The platform described: not hardware-reduced, ACPI mode always on
// (SMI_CMD = 0), SCI on IRQ 9 (never raised), PM1a event/control blocks and a
// reset register at I/O ports of our own (kPm*), no PM timer, no GPEs,
// control-method buttons (none exist), no 8042, no VGA, no CMOS RTC;
// one local APIC per vCPU, one IOAPIC at 0xFEC00000 (GSI base 0), 8259
// PICs present (PCAT_COMPAT); the interrupt routing is KVM's default
// (ISA IRQ n = GSI n, no overrides).
//
// Pure: build_acpi_tables() returns bytes; write_acpi_tables() copies them
// into guest RAM (bounds-checked).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"
#include "vmm/guest_memory.h"

namespace berth::vmm {

// Where the tables go: the BIOS area Linux scans for the RSDP (16-byte
// steps over 0xE0000-0xFFFFF); boot.cpp marks it reserved in the e820 map.
constexpr uint64_t kAcpiBase = 0xE0000;
constexpr uint64_t kAcpiEnd = 0x100000;

// The fixed-hardware I/O block (vm.cpp emulates it).
constexpr uint16_t kPmBase = 0x600;
constexpr uint16_t kPm1aEvt = kPmBase;       // PM1_STS (2 bytes) then PM1_EN (2 bytes)
constexpr uint16_t kPm1aCnt = kPmBase + 4;   // PM1_CNT, 2 bytes
constexpr uint16_t kResetPort = kPmBase + 8; // RESET_REG, 1 byte
constexpr uint16_t kPmBlockLen = 9;
constexpr uint8_t kResetValue = 0x01;
constexpr uint8_t kSciIrq = 9;
constexpr uint16_t kPm1CntSciEn = 1 << 0;
constexpr uint16_t kPm1CntSlpEn = 1 << 13;
constexpr uint16_t kPm1CntSlpTypShift = 10;
constexpr uint8_t kS5SleepType = 5;          // \_S5 = {5, 5, 0, 0}

constexpr uint64_t kIoApicAddr = 0xFEC00000;
constexpr uint64_t kLocalApicAddr = 0xFEE00000;

struct AcpiVirtioMmio {
  uint64_t base = 0;
  uint32_t size = 0x200;
  uint32_t gsi = 0;
};

struct AcpiConfig {
  unsigned cpus = 1;                   // local APICs with IDs 0..cpus-1
  std::vector<AcpiVirtioMmio> virtio;  // \_SB.VR00.. (_UID = index)
  bool com1 = true;                    // \_SB.COM1: PNP0501 at 0x3f8, IRQ 4
};

struct AcpiTables {
  uint64_t base = 0;           // guest address of bytes[0]
  std::vector<uint8_t> bytes;  // everything, laid out from base
  uint64_t rsdp = 0, xsdt = 0, fadt = 0, facs = 0, madt = 0, dsdt = 0;
};

// Lays out the tables from `base` (16-byte aligned; the RSDP first).
// EINVAL for 0 or more than 255 vCPUs; E2BIG when they would pass kAcpiEnd.
[[nodiscard]] Result<AcpiTables> build_acpi_tables(const AcpiConfig& cfg, uint64_t base = kAcpiBase);
// ENOMEM when [base, base + size) is not guest RAM.
[[nodiscard]] Result<void> write_acpi_tables(const GuestMemory& mem, const AcpiTables& tables);

// Sum of all bytes, mod 256 (a table is valid when this is 0 over it).
uint8_t acpi_sum(Bytes b);

// AML encoding pieces (ACPI 6.x §20), exposed for the tests.
namespace aml {
// Appends a PkgLength for `content_len` bytes that follow it: the encoded
// value counts the PkgLength bytes themselves (1 to 4 of them). Asserts the
// length fits in 28 bits.
void pkg_length(std::vector<uint8_t>& out, size_t content_len);
// The smallest integer encoding (ZeroOp, OneOp, Byte/Word/DWord/QWordPrefix).
void integer(std::vector<uint8_t>& out, uint64_t v);
// A 32-bit compressed EISA ID ("PNP0501" → 0x0105D041).
uint32_t eisa_id(const char id[8]);
}  // namespace aml

// The DSDT's AML (header included).
std::vector<uint8_t> build_dsdt(const AcpiConfig& cfg);

}  // namespace berth::vmm
