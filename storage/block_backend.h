// BlockBackend: a virtual disk as the NBD export, virtio-blk and the tree see
// it (DESIGN.md: storage/). Implementations: RawBackend (a plain file) and
// Qcow2Backend (storage/qcow2*).
//
// Threading: a backend is used from one thread at a time, the disk's own I/O
// thread; callers (the NBD export, virtio-blk) queue requests to it. Calls
// block that thread only, never the main loop. stats() may be read from any
// thread (counters are atomic or copied under a lock).
//
// Errors are errno values (EIO, ENOSPC, EROFS, EINVAL for out-of-range
// requests) with a message; they never crash the process. Offsets and
// lengths from guests and NBD clients are untrusted: every call checks them
// against size() first.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/bytes.h"
#include "common/result.h"

namespace berth::storage {

struct BlockStats {
  uint64_t reads = 0, writes = 0, flushes = 0, discards = 0, write_zeroes = 0;
  uint64_t bytes_read = 0, bytes_written = 0, bytes_discarded = 0, bytes_zeroed = 0;
  uint64_t errors = 0;
  // Allocation (qcow2; a raw file reports its blocks).
  uint64_t cluster_size = 0;
  uint64_t allocated_clusters = 0, free_clusters = 0;  // free: holes inside the file
  uint64_t file_size = 0, virtual_size = 0;
  // Metadata caches (qcow2).
  uint64_t l2_hits = 0, l2_misses = 0, refcount_hits = 0, refcount_misses = 0;
  std::string last_check;  // "never", or the last check's summary line
};

class BlockBackend {
 public:
  virtual ~BlockBackend() = default;

  virtual uint64_t size() const = 0;  // virtual disk size in bytes
  virtual bool read_only() const = 0;
  virtual std::string format() const = 0;  // "raw" or "qcow2"

  [[nodiscard]] virtual Result<void> read(uint64_t offset, std::span<uint8_t> out) = 0;
  // fua: the data is on stable storage when this returns.
  [[nodiscard]] virtual Result<void> write(uint64_t offset, Bytes data, bool fua = false) = 0;
  [[nodiscard]] virtual Result<void> flush() = 0;
  // The range may read back as anything afterwards (zeros in practice);
  // space is returned to the host where possible.
  [[nodiscard]] virtual Result<void> discard(uint64_t offset, uint64_t len) = 0;
  // The range reads back as zeros. may_unmap: space may be deallocated.
  [[nodiscard]] virtual Result<void> write_zeroes(uint64_t offset, uint64_t len, bool may_unmap, bool fua = false) = 0;

  virtual BlockStats stats() const = 0;
};

}  // namespace berth::storage
