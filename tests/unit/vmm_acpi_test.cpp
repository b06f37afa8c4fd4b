// ACPI tables (vmm/acpi.h): checksums, lengths and linkage from the RSDP
// down, FADT and MADT fields, AML PkgLength encodings, and the DSDT decoded
// by a small AML reader written here. When iasl (acpica-tools) is installed
// the DSDT is also disassembled by it; that part is skipped otherwise.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "vmm/acpi.h"

using namespace berth;
using namespace berth::vmm;

namespace {

using V = std::vector<uint8_t>;

AcpiConfig two_devices() {
  AcpiConfig cfg;
  cfg.cpus = 2;
  cfg.virtio = {{0xD0000000, 0x200, 16}, {0xD0001000, 0x200, 17}};
  return cfg;
}

struct View {
  const AcpiTables& t;
  const uint8_t* at(uint64_t gpa) const { return &t.bytes[gpa - t.base]; }
  std::string sig(uint64_t gpa) const { return std::string(reinterpret_cast<const char*>(at(gpa)), 4); }
  uint32_t len(uint64_t gpa) const { return load_le32(at(gpa) + 4); }
  bool sums_to_zero(uint64_t gpa) const { return acpi_sum(Bytes(at(gpa), len(gpa))) == 0; }
};

// Decodes a PkgLength; returns its value and advances `p` past it.
size_t read_pkg_length(const uint8_t*& p) {
  uint8_t lead = *p++;
  size_t extra = lead >> 6;
  if (extra == 0) return lead & 0x3f;
  size_t v = lead & 0x0f;
  for (size_t i = 0; i < extra; i++) v |= size_t(*p++) << (4 + 8 * i);
  return v;
}

V pkg(size_t n) {
  V out;
  aml::pkg_length(out, n);
  return out;
}

}  // namespace

TEST_CASE("acpi: AML PkgLength uses the 1-, 2-, 3- and 4-byte forms", "[vmm][acpi]") {
  CHECK(pkg(0) == V{0x01});
  CHECK(pkg(62) == V{0x3f});                  // largest 1-byte form: 63
  CHECK(pkg(63) == V{0x41, 0x04});            // 65 = 0x041
  CHECK(pkg(4093) == V{0x4f, 0xff});          // 4095: largest 2-byte form
  CHECK(pkg(4094) == V{0x81, 0x00, 0x01});    // 4097 = 0x01001
  CHECK(pkg(0xfffff - 3) == V{0x8f, 0xff, 0xff});
  CHECK(pkg(0xfffff - 2) == V{0xc1, 0x00, 0x00, 0x01});  // 0x100001: 4-byte form
  // Round trip: the value counts the PkgLength bytes themselves.
  for (size_t n : {0, 1, 62, 63, 100, 4093, 4094, 70000, 0xfffff - 2, 5000000}) {
    V enc = pkg(n);
    const uint8_t* p = enc.data();
    CHECK(read_pkg_length(p) == n + enc.size());
    CHECK(p == enc.data() + enc.size());
  }
}

TEST_CASE("acpi: integers and EISA IDs", "[vmm][acpi]") {
  auto integer = [](uint64_t v) {
    V o;
    aml::integer(o, v);
    return o;
  };
  CHECK(integer(0) == V{0x00});
  CHECK(integer(1) == V{0x01});
  CHECK(integer(5) == V{0x0a, 0x05});
  CHECK(integer(0x1234) == V{0x0b, 0x34, 0x12});
  CHECK(integer(0xD0000000) == V{0x0c, 0x00, 0x00, 0x00, 0xd0});
  CHECK(integer(0x100000000ull).size() == 9);
  CHECK(aml::eisa_id("PNP0501") == 0x0105D041u);
  CHECK(aml::eisa_id("PNP0A03") == 0x030AD041u);
}

TEST_CASE("acpi: RSDP, XSDT, FADT, FACS, MADT and DSDT link up with valid checksums", "[vmm][acpi]") {
  auto r = build_acpi_tables(two_devices());
  REQUIRE(r.ok());
  const AcpiTables& t = *r;
  View v{t};
  CHECK(t.base == 0xE0000);
  CHECK(t.base + t.bytes.size() <= kAcpiEnd);

  // RSDP (§5.2.5.3): at a 16-byte boundary in 0xE0000-0xFFFFF, both checksums.
  const uint8_t* rsdp = v.at(t.rsdp);
  CHECK(t.rsdp == 0xE0000);
  CHECK(std::string(reinterpret_cast<const char*>(rsdp), 8) == "RSD PTR ");
  CHECK(acpi_sum(Bytes(rsdp, 20)) == 0);
  CHECK(acpi_sum(Bytes(rsdp, 36)) == 0);
  CHECK(rsdp[15] == 2);
  CHECK(load_le32(rsdp + 20) == 36);
  CHECK(load_le64(rsdp + 24) == t.xsdt);

  // XSDT → FADT, MADT.
  CHECK(v.sig(t.xsdt) == "XSDT");
  CHECK(v.sums_to_zero(t.xsdt));
  REQUIRE(v.len(t.xsdt) == 36 + 16);
  CHECK(load_le64(v.at(t.xsdt) + 36) == t.fadt);
  CHECK(load_le64(v.at(t.xsdt) + 44) == t.madt);

  // FADT (§5.2.9).
  const uint8_t* f = v.at(t.fadt);
  CHECK(v.sig(t.fadt) == "FACP");
  CHECK(v.len(t.fadt) == 276);
  CHECK(f[8] == 6);
  CHECK(v.sums_to_zero(t.fadt));
  CHECK(load_le32(f + 40) == t.dsdt);       // DSDT
  CHECK(load_le64(f + 140) == t.dsdt);      // X_DSDT
  CHECK(load_le64(f + 132) == t.facs);      // X_FIRMWARE_CTRL
  CHECK(load_le16(f + 46) == 9);            // SCI_INT
  CHECK(load_le32(f + 48) == 0);            // SMI_CMD: ACPI mode always on
  CHECK(load_le32(f + 56) == kPm1aEvt);
  CHECK(load_le32(f + 64) == kPm1aCnt);
  CHECK(load_le32(f + 76) == 0);            // no PM timer
  CHECK(f[88] == 4);
  CHECK(f[89] == 2);
  uint16_t boot_arch = load_le16(f + 109);
  CHECK((boot_arch & 0x2) == 0);            // no 8042
  CHECK((boot_arch & 0x4) != 0);            // no VGA
  uint32_t flags = load_le32(f + 112);
  CHECK((flags & (1u << 20)) == 0);         // not hardware-reduced
  CHECK((flags & (1u << 4)) != 0);          // PWR_BUTTON: no fixed power button
  CHECK((flags & (1u << 5)) != 0);          // SLP_BUTTON
  CHECK((flags & (1u << 10)) != 0);         // RESET_REG_SUP
  CHECK(f[116] == 1);                       // RESET_REG: system I/O
  CHECK(f[117] == 8);                       // 8 bits wide
  CHECK(load_le64(f + 120) == kResetPort);
  CHECK(f[128] == kResetValue);
  CHECK(f[148] == 1);                       // X_PM1a_EVT_BLK: system I/O
  CHECK(load_le64(f + 152) == kPm1aEvt);
  CHECK(load_le64(f + 176) == kPm1aCnt);

  // FACS.
  CHECK(v.sig(t.facs) == "FACS");
  CHECK(v.len(t.facs) == 64);
  CHECK(t.facs % 64 == 0);

  // MADT (§5.2.12).
  const uint8_t* m = v.at(t.madt);
  CHECK(v.sig(t.madt) == "APIC");
  CHECK(v.sums_to_zero(t.madt));
  CHECK(load_le32(m + 36) == 0xFEE00000);
  CHECK(load_le32(m + 40) == 1);  // PCAT_COMPAT
  size_t off = 44;
  std::vector<int> lapic_ids;
  bool ioapic = false, nmi = false;
  while (off < v.len(t.madt)) {
    uint8_t type = m[off], l = m[off + 1];
    REQUIRE(l >= 2);
    if (type == 0) {
      lapic_ids.push_back(m[off + 3]);
      CHECK(load_le32(m + off + 4) == 1);
    } else if (type == 1) {
      ioapic = true;
      CHECK(load_le32(m + off + 4) == 0xFEC00000);
      CHECK(load_le32(m + off + 8) == 0);
    } else if (type == 4) {
      nmi = true;
      CHECK(m[off + 5] == 1);  // LINT1
    }
    off += l;
  }
  CHECK(off == v.len(t.madt));
  CHECK(lapic_ids == std::vector<int>{0, 1});
  CHECK(ioapic);
  CHECK(nmi);

  // DSDT.
  CHECK(v.sig(t.dsdt) == "DSDT");
  CHECK(v.sums_to_zero(t.dsdt));
  CHECK(t.dsdt + v.len(t.dsdt) == t.base + t.bytes.size());
}

TEST_CASE("acpi: the DSDT decodes to virtio-mmio devices, COM1 and \\_S5", "[vmm][acpi]") {
  AcpiConfig cfg = two_devices();
  V d = build_dsdt(cfg);
  REQUIRE(d.size() > 36);
  REQUIRE(load_le32(&d[4]) == d.size());
  const uint8_t* p = d.data() + 36;
  const uint8_t* end = d.data() + d.size();

  // Scope(\_SB_) { ... }
  REQUIRE(*p++ == 0x10);
  const uint8_t* scope_start = p;
  size_t scope_len = read_pkg_length(p);
  const uint8_t* scope_end = scope_start + scope_len;
  REQUIRE(scope_end <= end);
  REQUIRE(std::string(reinterpret_cast<const char*>(p), 5) == "\\_SB_");
  p += 5;

  struct Dev {
    std::string name, hid;
    uint64_t uid = ~0ull;
    V crs;
  };
  std::vector<Dev> devs;
  auto read_int = [](const uint8_t*& q) -> uint64_t {
    uint8_t op = *q++;
    switch (op) {
      case 0x00: return 0;
      case 0x01: return 1;
      case 0x0a: return *q++;
      case 0x0b: { uint64_t v = load_le16(q); q += 2; return v; }
      case 0x0c: { uint64_t v = load_le32(q); q += 4; return v; }
      default: FAIL("unexpected integer opcode " << int(op)); return 0;
    }
  };
  while (p < scope_end) {
    REQUIRE(p[0] == 0x5b);
    REQUIRE(p[1] == 0x82);  // DeviceOp
    p += 2;
    const uint8_t* dev_start = p;
    size_t dev_len = read_pkg_length(p);
    const uint8_t* dev_end = dev_start + dev_len;
    REQUIRE(dev_end <= scope_end);
    Dev dev;
    dev.name.assign(reinterpret_cast<const char*>(p), 4);
    p += 4;
    while (p < dev_end) {
      REQUIRE(*p++ == 0x08);  // NameOp
      std::string n(reinterpret_cast<const char*>(p), 4);
      p += 4;
      if (n == "_HID") {
        if (*p == 0x0d) {
          ++p;
          while (*p) dev.hid.push_back(char(*p++));
          ++p;
        } else {
          dev.hid = "EISA:" + std::to_string(read_int(p));
        }
      } else if (n == "_UID") {
        dev.uid = read_int(p);
      } else if (n == "_CRS") {
        REQUIRE(*p++ == 0x11);  // BufferOp
        const uint8_t* buf_start = p;
        size_t buf_len = read_pkg_length(p);
        const uint8_t* buf_end = buf_start + buf_len;
        uint64_t size = read_int(p);
        REQUIRE(size_t(buf_end - p) == size);
        dev.crs.assign(p, buf_end);
        p = buf_end;
      } else {
        FAIL("unexpected name " << n);
      }
    }
    devs.push_back(dev);
  }
  REQUIRE(p == scope_end);
  REQUIRE(devs.size() == 3);

  CHECK(devs[0].name == "COM1");
  CHECK(devs[0].hid == "EISA:" + std::to_string(0x0105D041u));
  CHECK(devs[0].crs == V{0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00});

  for (size_t i = 0; i < 2; i++) {
    const Dev& dv = devs[1 + i];
    INFO("virtio device " << i);
    CHECK(dv.name == (i == 0 ? "VR00" : "VR01"));
    CHECK(dv.hid == "LNRO0005");
    CHECK(dv.uid == i);
    const V& c = dv.crs;
    REQUIRE(c.size() == 12 + 9 + 2);
    // Memory32Fixed(ReadWrite, base, 0x200).
    CHECK(c[0] == 0x86);
    CHECK(load_le16(&c[1]) == 9);
    CHECK(c[3] == 1);
    CHECK(load_le32(&c[4]) == cfg.virtio[i].base);
    CHECK(load_le32(&c[8]) == 0x200);
    // Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { GSI }.
    CHECK(c[12] == 0x89);
    CHECK(load_le16(&c[13]) == 6);
    CHECK(c[15] == 0x03);
    CHECK(c[16] == 1);
    CHECK(load_le32(&c[17]) == cfg.virtio[i].gsi);
    CHECK(c[21] == 0x79);
  }

  // Name(\_S5_, Package(4) { 5, 5, 0, 0 }).
  V s5 = {0x08, '\\', '_', 'S', '5', '_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00};
  REQUIRE(size_t(end - p) == s5.size());
  CHECK(V(p, end) == s5);
}

TEST_CASE("acpi: the DSDT of eight devices uses 2-byte PkgLengths and still checks out", "[vmm][acpi]") {
  AcpiConfig cfg;
  cfg.cpus = 64;
  for (uint32_t i = 0; i < 8; i++) cfg.virtio.push_back({0xD0000000 + i * 0x1000, 0x200, 16 + i});
  auto r = build_acpi_tables(cfg);
  REQUIRE(r.ok());
  View v{*r};
  CHECK(v.sums_to_zero(r->dsdt));
  CHECK(v.sums_to_zero(r->madt));
  const uint8_t* scope = v.at(r->dsdt) + 36;
  CHECK(scope[0] == 0x10);
  CHECK((scope[1] >> 6) == 1);  // the scope is > 63 bytes: 2-byte form
  CHECK(r->base + r->bytes.size() <= kAcpiEnd);
  CHECK_FALSE(build_acpi_tables(AcpiConfig{0, {}, true}).ok());
}

TEST_CASE("acpi: iasl disassembles the DSDT (skipped without acpica-tools)", "[vmm][acpi][iasl]") {
  if (std::system("command -v iasl >/dev/null 2>&1") != 0) {
    WARN("iasl not installed (apt-get install acpica-tools): skipped");
    return;
  }
  char dir[] = "/tmp/berth-acpi-XXXXXX";
  REQUIRE(mkdtemp(dir));
  std::string base = std::string(dir) + "/dsdt";
  V d = build_dsdt(two_devices());
  {
    std::ofstream f(base + ".aml", std::ios::binary);
    f.write(reinterpret_cast<const char*>(d.data()), std::streamsize(d.size()));
  }
  std::string cmd = "cd " + std::string(dir) + " && iasl -d dsdt.aml >iasl.log 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream in(base + ".dsl");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string dsl = ss.str();
  INFO(dsl);
  CHECK(dsl.find("Device (VR00)") != std::string::npos);
  CHECK(dsl.find("Device (VR01)") != std::string::npos);
  CHECK(dsl.find("\"LNRO0005\"") != std::string::npos);
  CHECK(dsl.find("Memory32Fixed (ReadWrite,") != std::string::npos);
  CHECK(dsl.find("0xD0001000") != std::string::npos);
  CHECK(dsl.find("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive") != std::string::npos);
  CHECK(dsl.find("EisaId (\"PNP0501\")") != std::string::npos);
  CHECK(dsl.find("Name (\\_S5, Package (0x04)") != std::string::npos);
  std::system(("rm -rf " + std::string(dir)).c_str());
}
