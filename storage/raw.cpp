// RawBackend (see raw.h).
#include "storage/raw.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace berth::storage {

namespace {
Error sys_error(const std::string& what) {
  const int e = errno;
  return make_error(e, what + ": " + std::strerror(e));
}
}  // namespace

Result<std::unique_ptr<RawBackend>> RawBackend::open(const std::string& path, bool read_only) {
  std::unique_ptr<RawBackend> b(new RawBackend());
  b->path_ = path;
  b->read_only_ = read_only;
  b->fd_ = ::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (b->fd_ < 0) return sys_error("raw: open " + path);
  struct stat st{};
  if (fstat(b->fd_, &st) != 0) return sys_error("raw: stat " + path);
  if (S_ISREG(st.st_mode)) {
    b->size_ = uint64_t(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (ioctl(b->fd_, BLKGETSIZE64, &b->size_) != 0) return sys_error("raw: size of " + path);
    b->block_device_ = true;
  } else {
    return make_error(EINVAL, "raw: " + path + " is not a regular file or block device");
  }
  return b;
}

Result<std::unique_ptr<RawBackend>> RawBackend::create(const std::string& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return sys_error("raw: create " + path);
  if (ftruncate(fd, off_t(size)) != 0) {
    auto e = sys_error("raw: size " + path);
    ::close(fd);
    return e;
  }
  ::close(fd);
  return open(path, false);
}

RawBackend::~RawBackend() {
  if (fd_ >= 0) ::close(fd_);
}

Result<void> RawBackend::check(uint64_t offset, uint64_t len, bool writing) const {
  if (writing && read_only_) return make_error(EROFS, "raw: " + path_ + " is open read-only");
  if (len > size_ || offset > size_ - len)
    return make_error(EINVAL, "raw: request at " + std::to_string(offset) + " of " + std::to_string(len) +
                                  " bytes is past the end of the disk (" + std::to_string(size_) + " bytes)");
  return {};
}

Result<void> RawBackend::read(uint64_t offset, std::span<uint8_t> out) {
  if (auto r = check(offset, out.size(), false); !r) {
    ctr_.errors++;
    return r;
  }
  ctr_.reads.fetch_add(1, std::memory_order_relaxed);
  ctr_.bytes_read.fetch_add(out.size(), std::memory_order_relaxed);
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd_, out.data() + done, out.size() - done, off_t(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      ctr_.errors++;
      return sys_error("raw: read " + path_);
    }
    if (n == 0) {
      std::memset(out.data() + done, 0, out.size() - done);
      break;
    }
    done += size_t(n);
  }
  return {};
}

Result<void> RawBackend::pwrite_all(const uint8_t* p, uint64_t len, uint64_t off) {
  uint64_t done = 0;
  while (done < len) {
    const ssize_t n = ::pwrite(fd_, p + done, len - done, off_t(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("raw: write " + path_);
    }
    if (n == 0) return make_error(EIO, "raw: write " + path_ + ": no progress");
    done += uint64_t(n);
  }
  return {};
}

Result<void> RawBackend::write(uint64_t offset, Bytes data, bool fua) {
  if (auto r = check(offset, data.size(), true); !r) {
    ctr_.errors++;
    return r;
  }
  ctr_.writes.fetch_add(1, std::memory_order_relaxed);
  ctr_.bytes_written.fetch_add(data.size(), std::memory_order_relaxed);
  if (auto r = pwrite_all(data.data(), data.size(), offset); !r) {
    ctr_.errors++;
    return r;
  }
  if (fua) return flush();
  return {};
}

Result<void> RawBackend::flush() {
  ctr_.flushes.fetch_add(1, std::memory_order_relaxed);
  if (read_only_) return {};
  while (::fdatasync(fd_) != 0) {
    if (errno == EINTR) continue;
    ctr_.errors++;
    return sys_error("raw: fdatasync " + path_);
  }
  return {};
}

Result<void> RawBackend::discard(uint64_t offset, uint64_t len) {
  if (auto r = check(offset, len, true); !r) {
    ctr_.errors++;
    return r;
  }
  ctr_.discards.fetch_add(1, std::memory_order_relaxed);
  ctr_.bytes_discarded.fetch_add(len, std::memory_order_relaxed);
  if (len && !block_device_) (void)fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(offset), off_t(len));
  return {};
}

Result<void> RawBackend::write_zeroes(uint64_t offset, uint64_t len, bool may_unmap, bool fua) {
  if (auto r = check(offset, len, true); !r) {
    ctr_.errors++;
    return r;
  }
  ctr_.write_zeroes.fetch_add(1, std::memory_order_relaxed);
  ctr_.bytes_zeroed.fetch_add(len, std::memory_order_relaxed);
  if (!len) return {};
  const int mode = may_unmap ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
  if (block_device_ || fallocate(fd_, mode, off_t(offset), off_t(len)) != 0) {
    static const std::vector<uint8_t> zeros(1 << 20, 0);
    for (uint64_t done = 0; done < len;) {
      const uint64_t n = std::min<uint64_t>(len - done, zeros.size());
      if (auto r = pwrite_all(zeros.data(), n, offset + done); !r) {
        ctr_.errors++;
        return r;
      }
      done += n;
    }
  }
  if (fua) return flush();
  return {};
}

BlockStats RawBackend::stats() const {
  BlockStats s;
  s.reads = ctr_.reads.load(std::memory_order_relaxed);
  s.writes = ctr_.writes.load(std::memory_order_relaxed);
  s.flushes = ctr_.flushes.load(std::memory_order_relaxed);
  s.discards = ctr_.discards.load(std::memory_order_relaxed);
  s.write_zeroes = ctr_.write_zeroes.load(std::memory_order_relaxed);
  s.bytes_read = ctr_.bytes_read.load(std::memory_order_relaxed);
  s.bytes_written = ctr_.bytes_written.load(std::memory_order_relaxed);
  s.bytes_discarded = ctr_.bytes_discarded.load(std::memory_order_relaxed);
  s.bytes_zeroed = ctr_.bytes_zeroed.load(std::memory_order_relaxed);
  s.errors = ctr_.errors.load(std::memory_order_relaxed);
  s.virtual_size = size_;
  struct stat st{};
  if (fstat(fd_, &st) == 0) {
    const uint64_t bs = st.st_blksize > 0 ? uint64_t(st.st_blksize) : 4096;
    s.cluster_size = bs;
    s.file_size = block_device_ ? size_ : uint64_t(st.st_size);
    s.allocated_clusters = uint64_t(st.st_blocks) * 512 / bs;
    const uint64_t total = (s.file_size + bs - 1) / bs;
    s.free_clusters = total > s.allocated_clusters ? total - s.allocated_clusters : 0;
  }
  s.last_check = "never";
  return s;
}

}  // namespace berth::storage
