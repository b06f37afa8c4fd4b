// Interoperability with QEMU, both ways. Skipped (with a warning) when
// qemu-img/qemu-io are not installed (Debian: qemu-utils).
//
// Reading what QEMU wrote: for a matrix of images made by `qemu-img create`
// (cluster sizes 4K, 64K, 2M; compat 0.10 and 1.1; refcount widths; lazy
// refcounts, also left dirty by a crashed qemu-io; compressed by
// `qemu-img convert -c`; a backing file), qemu-io writes patterns, zeroes and
// discards; QEMU's own reading (`qemu-img convert -O raw`) is the reference
// that our engine must match byte for byte, and our check must agree that the
// image is clean.
// QEMU reading what we wrote: random writes, discards and write-zeroes
// through our engine, mirrored into a raw reference; `qemu-img check` is
// clean and `qemu-img compare` finds them identical. Also after compaction,
// discard-zeroes, resize, and a repaired crash copy.
#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "storage/qcow2.h"
#include "storage/raw.h"
#include "storage_qcow2_util.h"

using namespace berth;
using namespace berth::storage;
using namespace storage_test;

namespace {

bool have_qemu() {
  static const bool ok = have_tool("qemu-img") && have_tool("qemu-io");
  return ok;
}

#define REQUIRE_QEMU()                                                   \
  do {                                                                   \
    if (!have_qemu()) {                                                  \
      WARN("qemu-img/qemu-io not installed (qemu-utils): test skipped"); \
      return;                                                            \
    }                                                                    \
  } while (0)

std::string q(const std::string& s) { return "'" + s + "'"; }

// qemu-io commands: write patterns, zeroes (with and without unmap), discards.
std::vector<std::string> qemu_io_workload(std::mt19937& rng, uint64_t size, uint64_t cs, int n) {
  std::vector<std::string> cmds;
  for (int i = 0; i < n; i++) {
    uint64_t off = (rng() % size) & ~511ull;
    if (rng() % 2) off &= ~(cs - 1);
    uint64_t len = 512 * (1 + rng() % (3 * cs / 512));
    len = std::min(len, size - off);
    const int op = int(rng() % 10);
    char b[160];
    if (op < 6)
      std::snprintf(b, sizeof b, "write -P 0x%02x %llu %llu", unsigned(1 + rng() % 254), (unsigned long long)off,
                    (unsigned long long)len);
    else if (op == 6)
      std::snprintf(b, sizeof b, "write -z %llu %llu", (unsigned long long)off, (unsigned long long)len);
    else if (op == 7)
      std::snprintf(b, sizeof b, "write -z -u %llu %llu", (unsigned long long)off, (unsigned long long)len);
    else
      std::snprintf(b, sizeof b, "discard %llu %llu", (unsigned long long)off, (unsigned long long)len);
    cmds.push_back(b);
  }
  return cmds;
}

int qemu_io(const std::string& img, const std::vector<std::string>& cmds, const std::string& extra = "") {
  std::string c = "qemu-io -f qcow2 " + extra;
  for (const auto& x : cmds) c += " -c " + q(x);
  return sh(c + " " + q(img) + " >/dev/null 2>&1");
}

// Our read of the whole image equals `qemu-img convert -O raw` of it.
void require_reads_like_qemu(const std::string& img, const std::string& scratch) {
  const std::string ref = scratch + "/ref.raw";
  REQUIRE(sh("qemu-img convert -U -O raw " + q(img) + " " + q(ref) + " >/dev/null 2>&1") == 0);
  const auto want = read_file(ref);
  auto b = Qcow2Backend::open(img, ro_opts());
  if (!b) FAIL("open " << img << ": " << b.error().message);
  REQUIRE((*b)->size() == want.size());
  std::vector<uint8_t> got(want.size());
  for (uint64_t off = 0; off < got.size(); off += 1 << 20) {
    const uint64_t n = std::min<uint64_t>(1 << 20, got.size() - off);
    auto r = (*b)->read(off, std::span<uint8_t>(got.data() + off, n));
    if (!r) FAIL("read at " << off << ": " << r.error().message);
  }
  if (got != want) {
    size_t i = 0;
    while (got[i] == want[i]) i++;
    FAIL("differs from qemu-img convert at byte " << i);
  }
}

void require_qemu_check_clean(const std::string& img) {
  const std::string out = sh_out("qemu-img check " + q(img) + " 2>&1; echo rc=$?");
  INFO(out);
  REQUIRE(out.find("No errors were found on the image.") != std::string::npos);
  REQUIRE(out.find("rc=0") != std::string::npos);
}

void require_our_check_clean(const std::string& img) {
  auto c = Qcow2Backend::check_file(img, false);
  REQUIRE(c.ok());
  if (!c->clean()) {
    for (const auto& m : c->messages) UNSCOPED_INFO(m);
    FAIL(c->summary());
  }
}

}  // namespace

TEST_CASE("qemu interop: we read what qemu-img and qemu-io wrote", "[storage][qcow2][qemu]") {
  REQUIRE_QEMU();
  struct Case {
    const char* name;
    uint64_t cs;
    std::string opts;
  };
  const std::vector<Case> cases = {
      {"4K v3", 4096, "compat=1.1"},
      {"64K v3", 65536, "compat=1.1"},
      {"2M v3", 2 << 20, "compat=1.1"},
      {"4K v2", 4096, "compat=0.10"},
      {"64K v2", 65536, "compat=0.10"},
      {"2M v2", 2 << 20, "compat=0.10"},
      {"64K lazy refcounts", 65536, "compat=1.1,lazy_refcounts=on"},
      {"512 refcount_bits=1", 512, "compat=1.1,refcount_bits=1"},
      {"4K refcount_bits=64", 4096, "compat=1.1,refcount_bits=64"},
      {"16K refcount_bits=4", 16384, "compat=1.1,refcount_bits=4"},
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      TempDir d;
      const std::string img = d / "q.qcow2";
      const uint64_t size = c.cs >= (2u << 20) ? 64ull << 20 : 24ull << 20;
      REQUIRE(sh("qemu-img create -q -f qcow2 -o cluster_size=" + std::to_string(c.cs) + "," + c.opts + " " + q(img) +
                 " " + std::to_string(size)) == 0);
      std::mt19937 rng(uint32_t(c.cs) ^ uint32_t(c.opts.size()));
      REQUIRE(qemu_io(img, qemu_io_workload(rng, size, c.cs, 120)) == 0);
      require_reads_like_qemu(img, d.path());
      require_our_check_clean(img);
      // Then we write on top, and QEMU reads and checks it.
      {
        auto b = Qcow2Backend::open(img);
        REQUIRE(b.ok());
        REQUIRE((*b)->write(size / 3 + 5, pattern(3 * c.cs, 77)).ok());
        REQUIRE((*b)->discard(0, 4 * c.cs).ok());
        REQUIRE((*b)->close().ok());
      }
      require_qemu_check_clean(img);
      require_reads_like_qemu(img, d.path());
    }
  }
}

TEST_CASE("qemu interop: an image qemu-io left dirty (lazy refcounts, abort) is repaired", "[storage][qcow2][qemu]") {
  REQUIRE_QEMU();
  TempDir d;
  const std::string img = d / "dirty.qcow2";
  REQUIRE(sh("qemu-img create -q -f qcow2 -o lazy_refcounts=on " + q(img) + " 32M") == 0);
  std::mt19937 rng(3);
  auto cmds = qemu_io_workload(rng, 32 << 20, 65536, 60);
  cmds.push_back("abort");
  qemu_io(img, cmds);  // dies on purpose
  CHECK((peek_be64(img, 72) & qcow2::kIncompatDirty) != 0);
  // QEMU reads it as it is (convert -U), and so do we, read-only.
  require_reads_like_qemu(img, d.path());
  {
    auto b = Qcow2Backend::open(img);  // writable: rebuilds the refcounts
    REQUIRE(b.ok());
    CHECK(!(*b)->info().dirty);
    REQUIRE((*b)->close().ok());
  }
  CHECK((peek_be64(img, 72) & qcow2::kIncompatDirty) == 0);
  require_qemu_check_clean(img);
  require_our_check_clean(img);
  require_reads_like_qemu(img, d.path());
}

TEST_CASE("qemu interop: compressed images from qemu-img convert -c", "[storage][qcow2][qemu]") {
  REQUIRE_QEMU();
  for (uint64_t cs : {4096ull, 65536ull, 2ull << 20}) {
    DYNAMIC_SECTION("cluster size " << cs) {
      TempDir d;
      const std::string raw = d / "src.raw";
      // Compressible but varied content, with holes.
      std::vector<uint8_t> src(16 << 20, 0);
      std::mt19937 rng{uint32_t(cs)};
      for (size_t i = 0; i < src.size(); i += 4096) {
        if (rng() % 4 == 0) continue;
        const uint8_t v = uint8_t(rng());
        for (size_t j = 0; j < 4096; j++) src[i + j] = uint8_t(v + (j / 64) + (rng() % 8 == 0 ? rng() : 0));
      }
      REQUIRE(write_file(raw, src));
      const std::string img = d / "c.qcow2";
      REQUIRE(sh("qemu-img convert -c -O qcow2 -o cluster_size=" + std::to_string(cs) + " " + q(raw) + " " + q(img)) ==
              0);
      require_reads_like_qemu(img, d.path());
      require_our_check_clean(img);
      auto b = Qcow2Backend::open(img);
      REQUIRE(b.ok());
      auto c = (*b)->check(false);
      REQUIRE(c.ok());
      CHECK(c->compressed_clusters > 0);
      // Overwrite parts of compressed clusters: copy-on-write out of them.
      for (int i = 0; i < 40; i++) {
        const uint64_t off = rng() % (src.size() - 10000);
        auto p = pattern(1 + rng() % 10000, uint32_t(i));
        REQUIRE((*b)->write(off, p).ok());
        std::memcpy(&src[off], p.data(), p.size());
      }
      REQUIRE((*b)->discard(0, 8 * cs).ok());
      std::memset(src.data(), 0, 8 * cs);
      REQUIRE((*b)->close().ok());
      require_qemu_check_clean(img);
      REQUIRE(write_file(raw, src));
      REQUIRE(sh("qemu-img compare -q " + q(raw) + " " + q(img)) == 0);
    }
  }
}

TEST_CASE("qemu interop: backing files written by qemu-img", "[storage][qcow2][qemu]") {
  REQUIRE_QEMU();
  TempDir d;
  const std::string base = d / "base.qcow2";
  const std::string top = d / "top.qcow2";
  REQUIRE(sh("qemu-img create -q -f qcow2 " + q(base) + " 16M") == 0);
  std::mt19937 rng(17);
  REQUIRE(qemu_io(base, qemu_io_workload(rng, 16 << 20, 65536, 60)) == 0);
  REQUIRE(sh("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 " + q(top) + " 20M") == 0);
  REQUIRE(qemu_io(top, qemu_io_workload(rng, 20 << 20, 65536, 60)) == 0);
  require_reads_like_qemu(top, d.path());
  auto b = Qcow2Backend::open(top);
  REQUIRE(b.ok());
  // Partial writes copy from the backing file.
  for (int i = 0; i < 30; i++) {
    const uint64_t off = rng() % ((20 << 20) - 5000);
    REQUIRE((*b)->write(off, pattern(1 + rng() % 5000, uint32_t(i))).ok());
  }
  REQUIRE((*b)->write_zeroes(0, 1 << 20, true).ok());
  REQUIRE((*b)->discard(2 << 20, 1 << 20).ok());
  REQUIRE((*b)->close().ok());
  require_qemu_check_clean(top);
  require_reads_like_qemu(top, d.path());
}

TEST_CASE("qemu interop: QEMU reads, checks and compares what we wrote", "[storage][qcow2][qemu]") {
  REQUIRE_QEMU();
  struct Case {
    const char* name;
    Qcow2CreateOptions co;
  };
  auto mk = [](uint64_t cs, uint32_t rb, uint32_t ver, bool lazy) {
    Qcow2CreateOptions o;
    o.cluster_size = cs;
    o.refcount_bits = rb;
    o.version = ver;
    o.lazy_refcounts = lazy;
    return o;
  };
  const std::vector<Case> cases = {
      {"512 v3", mk(512, 16, 3, false)},        {"4K v3", mk(4096, 16, 3, false)},
      {"64K v3", mk(65536, 16, 3, false)},      {"2M v3", mk(2 << 20, 16, 3, false)},
      {"64K v2", mk(65536, 16, 2, false)},      {"64K lazy", mk(65536, 16, 3, true)},
      {"4K refcount 1", mk(4096, 1, 3, false)}, {"4K refcount 64", mk(4096, 64, 3, false)},
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      TempDir d;
      const std::string img = d / "ours.qcow2";
      const std::string ref = d / "ref.raw";
      const uint64_t cs = c.co.cluster_size;
      const uint64_t size = cs >= (2u << 20) ? 64ull << 20 : cs == 512 ? 4ull << 20 : 24ull << 20;
      auto b = Qcow2Backend::create(img, size, c.co);
      REQUIRE(b.ok());
      std::vector<uint8_t> model(size, 0);
      std::mt19937 rng(uint32_t(cs) + c.co.version);
      for (int i = 0; i < 300; i++) {
        const int op = int(rng() % 10);
        uint64_t off = rng() % size;
        if (rng() % 2) off &= ~(cs - 1);
        uint64_t len = std::min<uint64_t>(1 + rng() % (3 * cs), size - off);
        if (op < 6) {
          auto p = pattern(len, uint32_t(i));
          REQUIRE((*b)->write(off, p).ok());
          std::memcpy(&model[off], p.data(), len);
        } else if (op < 8) {
          REQUIRE((*b)->write_zeroes(off, len, op == 6).ok());
          std::memset(&model[off], 0, len);
        } else if (op == 8) {
          REQUIRE((*b)->discard(off, len).ok());
          const uint64_t a = (off + cs - 1) / cs * cs, z = (off + len) / cs * cs;
          if (a < z) std::memset(&model[a], 0, z - a);
        } else {
          REQUIRE((*b)->flush().ok());
        }
      }
      REQUIRE((*b)->close().ok());
      REQUIRE(write_file(ref, model));
      require_qemu_check_clean(img);
      REQUIRE(sh("qemu-img compare -q " + q(ref) + " " + q(img)) == 0);
      // qemu-img map agrees on the layout size.
      CHECK(sh("qemu-img map --output=json " + q(img) + " >/dev/null") == 0);

      // Compaction: write most of it, discard half, compact; still identical and clean.
      {
        auto o = Qcow2Backend::open(img);
        REQUIRE(o.ok());
        auto p = pattern(size / 2, 1234);
        REQUIRE((*o)->write(size / 4, p).ok());
        std::memcpy(&model[size / 4], p.data(), p.size());
        for (uint64_t off = 0; off + 8 * cs <= size; off += 16 * cs) {
          REQUIRE((*o)->discard(off, 8 * cs).ok());
          std::memset(&model[off], 0, 8 * cs);
        }
        auto job = (*o)->start_compaction();
        REQUIRE(job.ok());
        while (!(*job)->done()) REQUIRE((*job)->step(256).ok());
        job->reset();
        auto z = (*o)->start_discard_zeroes();
        REQUIRE(z.ok());
        while (!(*z)->done()) REQUIRE((*z)->step(256).ok());
        z->reset();
        REQUIRE((*o)->resize(size + (3 << 20)).ok());
        model.resize(size + (3 << 20), 0);
        REQUIRE((*o)->close().ok());
      }
      REQUIRE(write_file(ref, model));
      require_qemu_check_clean(img);
      REQUIRE(sh("qemu-img compare -q " + q(ref) + " " + q(img)) == 0);
    }
  }
}

TEST_CASE("qemu interop: a crash copy of our image, repaired, passes qemu-img check", "[storage][qcow2][qemu]") {
  REQUIRE_QEMU();
  TempDir d;
  const std::string img = d / "a.qcow2";
  Qcow2CreateOptions co;
  co.cluster_size = 4096;
  auto b = Qcow2Backend::create(img, 16 << 20, co);
  REQUIRE(b.ok());
  std::mt19937 rng(1);
  for (int round = 0; round < 10; round++) {
    for (int i = 0; i < 30; i++) {
      const uint64_t off = rng() % ((16 << 20) - 20000);
      if (rng() % 4 == 0)
        REQUIRE((*b)->discard(off, 1 + rng() % 20000).ok());
      else
        REQUIRE((*b)->write(off, pattern(1 + rng() % 20000, uint32_t(i))).ok());
    }
    const std::string snap = d / "snap.qcow2";
    REQUIRE(write_file(snap, read_file(img)));
    // QEMU sees at worst leaks (exit status 3), never corruption (2).
    const int rc = sh("qemu-img check -q " + q(snap) + " >/dev/null 2>&1");
    CHECK((rc == 0 || rc == 3));
    auto fixed = Qcow2Backend::check_file(snap, true);
    REQUIRE(fixed.ok());
    CHECK(fixed->clean());
    require_qemu_check_clean(snap);
  }
}

TEST_CASE("qemu interop: images with bitmaps: read, then written as a program without bitmap support",
          "[storage][qcow2][qemu]") {
  REQUIRE_QEMU();
  TempDir d;
  const std::string img = d / "bm.qcow2";
  REQUIRE(sh("qemu-img create -q -f qcow2 " + q(img) + " 64M") == 0);
  REQUIRE(qemu_io(img, {"write -P 1 0 1M"}) == 0);
  REQUIRE(sh("qemu-img bitmap --add " + q(img) + " b0 && qemu-img bitmap --add -g 65536 " + q(img) + " b1") == 0);
  REQUIRE(qemu_io(img, {"write -P 2 4M 1M"}) == 0);
  require_our_check_clean(img);  // bitmap directory, tables and data are counted
  require_reads_like_qemu(img, d.path());
  {
    auto b = Qcow2Backend::open(img);
    REQUIRE(b.ok());
    REQUIRE((*b)->write(8 << 20, pattern(65536, 3)).ok());
    REQUIRE((*b)->close().ok());
  }
  // The autoclear bit is gone: QEMU and we both see the bitmap clusters as leaks.
  CHECK((peek_be64(img, 88) & qcow2::kAutoclearBitmaps) == 0);
  const int rc = sh("qemu-img check -q " + q(img) + " >/dev/null 2>&1");
  CHECK(rc == 3);
  auto c = Qcow2Backend::check_file(img, false);
  REQUIRE(c.ok());
  CHECK(c->corruptions == 0);
  CHECK(c->leaks > 0);
  auto fixed = Qcow2Backend::check_file(img, true);
  REQUIRE(fixed.ok());
  CHECK(fixed->clean());
  require_qemu_check_clean(img);
  require_reads_like_qemu(img, d.path());
}
