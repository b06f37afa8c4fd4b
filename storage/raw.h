// RawBackend: a plain file (or block device) as a BlockBackend.
//
// read/write are pread/pwrite at the same offsets; reads past the end of a
// regular file that is shorter than size() (it cannot be, unless someone
// truncates it under us) return zeros. discard punches a hole
// (FALLOC_FL_PUNCH_HOLE | KEEP_SIZE) and ignores a filesystem that cannot;
// write_zeroes uses PUNCH_HOLE when it may unmap, else ZERO_RANGE, and falls
// back to writing zeros. fua and flush are fdatasync. Stats report the
// file's allocated blocks (st_blocks) in units of st_blksize.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "storage/block_backend.h"

namespace berth::storage {

class RawBackend final : public BlockBackend {
 public:
  [[nodiscard]] static Result<std::unique_ptr<RawBackend>> open(const std::string& path, bool read_only);
  // Creates (truncating) a sparse file of `size` bytes and opens it writable.
  [[nodiscard]] static Result<std::unique_ptr<RawBackend>> create(const std::string& path, uint64_t size);
  ~RawBackend() override;

  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  std::string format() const override { return "raw"; }
  [[nodiscard]] Result<void> read(uint64_t offset, std::span<uint8_t> out) override;
  [[nodiscard]] Result<void> write(uint64_t offset, Bytes data, bool fua = false) override;
  [[nodiscard]] Result<void> flush() override;
  [[nodiscard]] Result<void> discard(uint64_t offset, uint64_t len) override;
  [[nodiscard]] Result<void> write_zeroes(uint64_t offset, uint64_t len, bool may_unmap, bool fua = false) override;
  BlockStats stats() const override;

  const std::string& path() const { return path_; }

 private:
  RawBackend() = default;
  [[nodiscard]] Result<void> check(uint64_t offset, uint64_t len, bool writing) const;
  [[nodiscard]] Result<void> pwrite_all(const uint8_t* p, uint64_t len, uint64_t off);

  int fd_ = -1;
  std::string path_;
  uint64_t size_ = 0;
  bool read_only_ = true;
  bool block_device_ = false;
  struct Counters {
    std::atomic<uint64_t> reads{0}, writes{0}, flushes{0}, discards{0}, write_zeroes{0};
    std::atomic<uint64_t> bytes_read{0}, bytes_written{0}, bytes_discarded{0}, bytes_zeroed{0};
    std::atomic<uint64_t> errors{0};
  } ctr_;
};

}  // namespace berth::storage
