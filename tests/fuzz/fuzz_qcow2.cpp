// libFuzzer target: the qcow2 engine (storage/qcow2.h) on arbitrary bytes as
// an image file.
//
// The input becomes a file in memory (memfd) that is:
//  1. opened read-only (backing files are never opened): a few ranges are
//     read, the allocation map is built, and the image is checked;
//  2. copied and opened writable: writes, a discard, write-zeroes and a
//     flush, then read-back, a check, a repair, a few slices of compaction
//     and discard-zeroes, and close.
// Errors are fine; crashes, sanitizer reports and these invariants are not:
//  - on an image that checks clean, a write that succeeded reads back as
//    written, also after discards and write-zeroes elsewhere and a flush
//    (on a corrupt image, say refcounts of 0 for used clusters, new data
//    can land on old, as in QEMU: that is what check is for);
//  - a failed open or request carries a message.
// The seed corpus (tests/fuzz/corpus/qcow2/) holds small valid images with
// 512-byte clusters, so that mutations land in real metadata.
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "storage/qcow2.h"

using namespace berth;
using namespace berth::storage;

namespace {

int memfd_with(const uint8_t* data, size_t size) {
  const int fd = memfd_create("fuzz_qcow2", MFD_CLOEXEC);
  if (fd < 0) abort();
  size_t done = 0;
  while (done < size) {
    const ssize_t n = write(fd, data + done, size - done);
    if (n <= 0) abort();
    done += size_t(n);
  }
  return fd;
}

std::string fd_path(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

void must_have_message(const Error& e) {
  if (e.message.empty()) abort();
}

void read_some(Qcow2Backend& b) {
  static std::vector<uint8_t> buf(1 << 16);
  const uint64_t size = b.size();
  const uint64_t offs[] = {0, size / 3, size / 2, size > buf.size() ? size - buf.size() : 0};
  for (uint64_t off : offs) {
    const uint64_t n = std::min<uint64_t>(buf.size(), size - std::min(size, off));
    auto r = b.read(off, std::span<uint8_t>(buf.data(), n));
    if (!r) must_have_message(r.error());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Qcow2OpenOptions ro;
  ro.read_only = true;
  ro.open_backing = false;
  ro.l2_cache_bytes = 1;  // the minimum: evictions happen
  ro.refcount_cache_bytes = 1;

  const int fd = memfd_with(data, size);
  {
    auto b = Qcow2Backend::open(fd_path(fd), ro);
    if (!b) {
      must_have_message(b.error());
    } else {
      read_some(**b);
      (void)(*b)->map();
      auto c = (*b)->check(false);
      if (c) (void)c->to_json("x");
      (void)(*b)->info().to_json();
    }
  }
  close(fd);

  Qcow2OpenOptions rw = ro;
  rw.read_only = false;
  const int wfd = memfd_with(data, size);
  {
    auto b = Qcow2Backend::open(fd_path(wfd), rw);
    if (!b) {
      must_have_message(b.error());
    } else {
      Qcow2Backend& q = **b;
      const uint64_t vsize = q.size();
      static const std::vector<uint8_t> pat = [] {
        std::vector<uint8_t> v(6000);
        for (size_t i = 0; i < v.size(); i++) v[i] = uint8_t(i * 13 + 1);
        return v;
      }();
      auto pre = q.check(false);
      const bool consistent = pre && pre->clean();
      bool failed = !consistent;
      const uint64_t woff = vsize > pat.size() ? (vsize / 5) & ~uint64_t(7) : 0;
      const uint64_t wlen = std::min<uint64_t>(pat.size(), vsize);
      if (wlen) {
        auto w = q.write(woff, Bytes(pat.data(), wlen));
        if (!w) {
          must_have_message(w.error());
          failed = true;
        } else {
          std::vector<uint8_t> back(wlen);
          auto r = q.read(woff, back);
          if (consistent && r && std::memcmp(back.data(), pat.data(), wlen) != 0) abort();
        }
      }
      if (vsize > 4096) {
        (void)q.discard(vsize - 4096, 4096);
        (void)q.write_zeroes(0, std::min<uint64_t>(vsize, 3000), true);
        (void)q.write_zeroes(vsize / 2, std::min<uint64_t>(vsize / 2, 70000), false);
      }
      auto f = q.flush();
      if (!failed && f && wlen && woff >= 3000 && (woff + wlen <= vsize / 2 || woff >= vsize / 2 + 70000) &&
          woff + wlen <= vsize - 4096) {
        std::vector<uint8_t> back(wlen);
        auto r = q.read(woff, back);
        if (r && std::memcmp(back.data(), pat.data(), wlen) != 0) abort();
      }
      if (q.file_size() < (64u << 20)) {
        (void)q.check(false);
        (void)q.check(true);
        read_some(q);
      }
      if (auto job = q.start_compaction(); job) {
        for (int i = 0; i < 20 && !(*job)->done(); i++)
          if (!(*job)->step(16)) break;
      }
      if (auto job = q.start_discard_zeroes(); job) {
        for (int i = 0; i < 20 && !(*job)->done(); i++)
          if (!(*job)->step(16)) break;
      }
      (void)q.close();
    }
  }
  close(wfd);
  return 0;
}
