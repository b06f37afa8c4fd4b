// Linux x86 64-bit boot protocol (vmm/boot.h) against a synthetic bzImage
// built here: header checks and refusals, boot_params fields, e820, initrd
// placement limits, page tables, GDT, and bounds against small RAM.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "vmm/boot.h"

using namespace berth;
using namespace berth::vmm;

namespace {

using V = std::vector<uint8_t>;
constexpr uint64_t MiB = 1 << 20;

void put64(uint8_t* p, uint64_t v) {
  store_le32(p, uint32_t(v));
  store_le32(p + 4, uint32_t(v >> 32));
}

struct ImageSpec {
  uint16_t version = 0x020f;
  uint8_t setup_sects = 4;
  uint8_t loadflags = 0x01;
  uint16_t xloadflags = 0x03;
  uint32_t init_size = 4 * MiB;
  uint64_t pref_address = 16 * MiB;
  uint32_t initrd_addr_max = 0x7fffffff;
  uint32_t cmdline_size = 2047;
  size_t payload = 64 * 1024;
};

// A bzImage-shaped file: boot sector + setup sectors with the header, then a
// payload whose bytes are (i * 7) & 0xff.
V make_image(const ImageSpec& s = {}) {
  size_t setup = (size_t(s.setup_sects ? s.setup_sects : 4) + 1) * 512;
  V img(setup + s.payload, 0);
  uint8_t* p = img.data();
  p[0x1f1] = s.setup_sects;
  store_le32(p + 0x1f4, uint32_t(s.payload / 16));
  store_le16(p + 0x1fe, 0xAA55);
  p[0x200] = 0xEB;
  p[0x201] = 0x268 - 0x202;  // header through kernel_info_offset
  store_le32(p + 0x202, 0x53726448);
  store_le16(p + 0x206, s.version);
  p[0x211] = s.loadflags;
  store_le32(p + 0x214, 0x100000);
  store_le32(p + 0x22c, s.initrd_addr_max);
  store_le32(p + 0x230, 2 * MiB);
  p[0x234] = 1;
  p[0x235] = 21;
  store_le16(p + 0x236, s.xloadflags);
  store_le32(p + 0x238, s.cmdline_size);
  put64(p + 0x258, s.pref_address);
  store_le32(p + 0x260, s.init_size);
  for (size_t i = 0; i < s.payload; i++) img[setup + i] = uint8_t(i * 7);
  return img;
}

// Guest RAM from 0, backed by a vector; pre-filled with 0xa5.
struct Ram {
  V buf;
  GuestMemory mem;
  explicit Ram(uint64_t size) : buf(size, 0xa5) { REQUIRE(mem.add_region(0, buf).ok()); }
  uint32_t u32(uint64_t gpa) const { return load_le32(&buf[gpa]); }
  uint64_t u64(uint64_t gpa) const { return load_le64(&buf[gpa]); }
};

}  // namespace

TEST_CASE("parse_bzimage accepts a 64-bit bzImage and reads its header", "[vmm][boot]") {
  V img = make_image();
  auto r = parse_bzimage(img);
  REQUIRE(r.ok());
  CHECK(r->version == 0x020f);
  CHECK(r->setup_sects == 4);
  CHECK(r->kernel_offset == 5 * 512);
  CHECK(r->kernel_size == 64 * 1024);
  CHECK(r->init_size == 4 * MiB);
  CHECK(r->pref_address == 16 * MiB);
  CHECK(r->relocatable);
  CHECK(r->setup_header_end == 0x268);

  // setup_sects 0 means 4.
  ImageSpec s;
  s.setup_sects = 0;
  auto z = parse_bzimage(make_image(s));
  REQUIRE(z.ok());
  CHECK(z->setup_sects == 4);
}

TEST_CASE("parse_bzimage refuses what it cannot boot, saying why", "[vmm][boot]") {
  auto refuse = [](V img, const std::string& words) {
    auto r = parse_bzimage(img);
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK(r.error().message.find(words) != std::string::npos);
  };
  SECTION("not a bzImage") {
    V img = make_image();
    img[0x202] = 'X';
    refuse(img, "not a bzImage");
    refuse(V(100, 0), "too small");
    V elf = make_image();
    std::memcpy(elf.data(), "\x7f" "ELF", 4);
    store_le32(elf.data() + 0x202, 0);
    refuse(elf, "not a bzImage");
  }
  SECTION("too old") {
    ImageSpec s;
    s.version = 0x020b;
    refuse(make_image(s), "too old");
  }
  SECTION("no 64-bit entry") {
    ImageSpec s;
    s.xloadflags = 0;
    refuse(make_image(s), "64-bit");
  }
  SECTION("zImage") {
    ImageSpec s;
    s.loadflags = 0;
    refuse(make_image(s), "zImage");
  }
  SECTION("truncated") {
    V img = make_image();
    img.resize(img.size() - 4096);
    refuse(img, "truncated");
    V setup_only = make_image();
    setup_only.resize(5 * 512);
    refuse(setup_only, "truncated");
  }
  SECTION("bad boot flag") {
    V img = make_image();
    img[0x1fe] = 0;
    refuse(img, "boot_flag");
  }
}

TEST_CASE("load_linux writes kernel, command line, initrd and boot_params", "[vmm][boot]") {
  Ram ram(64 * MiB);
  V img = make_image();
  V initrd(3 * MiB + 123, 0x5c);
  LinuxBootSpec spec;
  spec.kernel = img;
  spec.initrd = initrd;
  spec.cmdline = "console=ttyS0 reboot=k panic=-1";
  spec.rsdp_addr = 0xE0000;
  auto r = load_linux(ram.mem, spec);
  REQUIRE(r.ok());

  // Kernel at pref_address, its payload copied byte for byte.
  CHECK(r->kernel_addr == 16 * MiB);
  CHECK(r->kernel_end == 20 * MiB);
  for (size_t i : {size_t(0), size_t(1), size_t(4095), size_t(64 * 1024 - 1)})
    CHECK(ram.buf[16 * MiB + i] == uint8_t(i * 7));

  // Entry state (boot.rst, 64-bit boot protocol).
  CHECK(r->entry.rip == 16 * MiB + 0x200);
  CHECK(r->entry.rsi == bootlayout::kBootParams);
  CHECK(r->entry.cr3 == bootlayout::kPml4);
  CHECK(r->entry.gdt_base == bootlayout::kGdt);
  CHECK(r->entry.gdt_limit == 47);
  CHECK(r->entry.code_selector == 0x10);
  CHECK(r->entry.data_selector == 0x18);

  // boot_params.
  const uint64_t bp = bootlayout::kBootParams;
  CHECK(ram.u32(bp + 0x202) == 0x53726448);          // header copied
  CHECK(load_le16(&ram.buf[bp + 0x206]) == 0x020f);
  CHECK(ram.buf[bp + 0x210] == 0xff);                 // type_of_loader
  CHECK((ram.buf[bp + 0x211] & 1) == 1);              // LOADED_HIGH kept
  CHECK(ram.u32(bp + 0x228) == bootlayout::kCmdline);  // cmd_line_ptr
  CHECK(ram.u32(bp + 0x0c8) == 0);                    // ext_cmd_line_ptr
  CHECK(ram.u64(bp + 0x070) == 0xE0000);              // acpi_rsdp_addr
  CHECK(ram.buf[bp + 0x000] == 0);                    // rest of the page zeroed
  CHECK(ram.buf[bp + 0xfff] == 0);
  CHECK(std::string(reinterpret_cast<const char*>(&ram.buf[bootlayout::kCmdline])) == spec.cmdline);

  // Initrd: page-aligned, as high as possible, below the end of RAM.
  uint32_t ri = ram.u32(bp + 0x218), rs = ram.u32(bp + 0x21c);
  CHECK(rs == initrd.size());
  CHECK(ri == r->initrd_addr);
  CHECK(ri % 4096 == 0);
  CHECK(ri + rs <= 64 * MiB);
  CHECK(ri + rs > 64 * MiB - 4096);
  CHECK(ri >= r->kernel_end);
  CHECK(ram.buf[ri] == 0x5c);
  CHECK(ram.buf[ri + rs - 1] == 0x5c);

  // e820 in boot_params.
  REQUIRE(ram.buf[bp + 0x1e8] == 4);
  std::vector<E820Entry> want = {{0, 0x9fc00, kE820Ram},
                                 {0x9fc00, 0x400, kE820Reserved},
                                 {0xe0000, 0x20000, kE820Reserved},
                                 {MiB, 63 * MiB, kE820Ram}};
  for (size_t i = 0; i < want.size(); i++) {
    const uint8_t* e = &ram.buf[bp + 0x2d0 + i * 20];
    INFO("e820 entry " << i);
    CHECK(load_le64(e) == want[i].addr);
    CHECK(load_le64(e + 8) == want[i].size);
    CHECK(load_le32(e + 16) == want[i].type);
  }
  CHECK(r->e820 == want);
}

TEST_CASE("load_linux identity-maps 4 GiB with 2 MiB pages and loads the boot GDT", "[vmm][boot]") {
  Ram ram(32 * MiB);
  V img = make_image();
  LinuxBootSpec spec;
  spec.kernel = img;
  REQUIRE(load_linux(ram.mem, spec).ok());
  const uint64_t pml4 = bootlayout::kPml4;
  CHECK(ram.u64(pml4) == ((pml4 + 0x1000) | 3));
  CHECK(ram.u64(pml4 + 8) == 0);
  for (uint64_t i = 0; i < 4; i++) CHECK(ram.u64(pml4 + 0x1000 + i * 8) == ((pml4 + 0x2000 + i * 0x1000) | 3));
  CHECK(ram.u64(pml4 + 0x1000 + 4 * 8) == 0);
  for (uint64_t i : {0ull, 1ull, 511ull, 512ull, 1000ull, 2047ull})
    CHECK(ram.u64(pml4 + 0x2000 + i * 8) == ((i << 21) | 0x83));
  // GDT: null, null, code 0x10, data 0x18, TSS 0x20.
  const uint64_t g = bootlayout::kGdt;
  CHECK(ram.u64(g) == 0);
  CHECK(ram.u64(g + 8) == 0);
  CHECK(ram.u64(g + 0x10) == 0x00af9b000000ffffull);
  CHECK(ram.u64(g + 0x18) == 0x00cf93000000ffffull);
  CHECK((ram.u64(g + 0x20) >> 40 & 0xff) == 0x8b);
}

TEST_CASE("load_linux keeps the initrd inside initrd_addr_max and out of the kernel", "[vmm][boot]") {
  SECTION("initrd_addr_max below the end of RAM") {
    Ram ram(64 * MiB);
    ImageSpec s;
    s.initrd_addr_max = 30 * MiB - 1;
    V img = make_image(s);
    V initrd(MiB + 1, 1);
    LinuxBootSpec spec;
    spec.kernel = img;
    spec.initrd = initrd;
    auto r = load_linux(ram.mem, spec);
    REQUIRE(r.ok());
    CHECK(r->initrd_addr + r->initrd_size <= 30 * MiB);
    CHECK(r->initrd_addr == 29 * MiB - 4096);  // as high as possible, page-aligned
  }
  SECTION("an initrd that would overlap the kernel is refused") {
    Ram ram(32 * MiB);  // kernel footprint 16..20 MiB: 12 MiB left above it
    V img = make_image();
    V fits(12 * MiB, 1), too_big(12 * MiB + 1, 1);
    LinuxBootSpec spec;
    spec.kernel = img;
    spec.initrd = fits;
    auto ok = load_linux(ram.mem, spec);
    REQUIRE(ok.ok());
    CHECK(ok->initrd_addr == 20 * MiB);
    spec.initrd = too_big;
    auto r = load_linux(ram.mem, spec);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ENOMEM);
    CHECK(r.error().message.find("initrd") != std::string::npos);
  }
}

TEST_CASE("load_linux refuses small RAM and long command lines without writing past RAM", "[vmm][boot]") {
  SECTION("RAM below the kernel's footprint") {
    Ram ram(18 * MiB);  // kernel needs 16 MiB + 4 MiB
    V img = make_image();
    LinuxBootSpec spec;
    spec.kernel = img;
    auto r = load_linux(ram.mem, spec);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ENOMEM);
    CHECK(r.error().message.find("more memory") != std::string::npos);
    CHECK(ram.buf[bootlayout::kBootParams] == 0xa5);  // nothing written
  }
  SECTION("tiny RAM") {
    Ram ram(512 * 1024);
    V img = make_image();
    LinuxBootSpec spec;
    spec.kernel = img;
    REQUIRE_FALSE(load_linux(ram.mem, spec).ok());
  }
  SECTION("pref_address beyond RAM") {
    Ram ram(32 * MiB);
    ImageSpec s;
    s.pref_address = 0xffff'ffff'ffff'0000ull;
    V img = make_image(s);
    LinuxBootSpec spec;
    spec.kernel = img;
    REQUIRE_FALSE(load_linux(ram.mem, spec).ok());
  }
  SECTION("command line") {
    Ram ram(32 * MiB);
    ImageSpec s;
    s.cmdline_size = 16;
    V img = make_image(s);
    LinuxBootSpec spec;
    spec.kernel = img;
    std::string exact(16, 'a'), longer(17, 'a');
    spec.cmdline = exact;
    CHECK(load_linux(ram.mem, spec).ok());
    spec.cmdline = longer;
    auto r = load_linux(ram.mem, spec);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == E2BIG);
  }
}

TEST_CASE("build_e820 reserves the EBDA and BIOS area and lists RAM above 4 GiB", "[vmm][boot]") {
  V low(8 * MiB), high(2 * MiB);
  GuestMemory mem;
  REQUIRE(mem.add_region(0, low).ok());
  REQUIRE(mem.add_region(4ull << 30, high).ok());
  auto e = build_e820(mem);
  std::vector<E820Entry> want = {{0, 0x9fc00, kE820Ram},
                                 {0x9fc00, 0x400, kE820Reserved},
                                 {0xe0000, 0x20000, kE820Reserved},
                                 {MiB, 7 * MiB, kE820Ram},
                                 {4ull << 30, 2 * MiB, kE820Ram}};
  CHECK(e == want);
}
