// virtio-blk (virtio 1.x §5.2) over a BlockBackend, through the disk's
// IoThread.
//
// One request queue. Offered features: SIZE_MAX, SEG_MAX, BLK_SIZE (512),
// FLUSH, and DISCARD and WRITE_ZEROES on a writable disk, RO on a read-only
// one. Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES; anything
// else is answered UNSUPP.
//
// Guarantees:
//  - Every request is validated before any I/O: sector ranges against the
//    capacity (overflow-safe), data lengths a multiple of 512 and at most
//    kMaxRequestBytes, segment tables whole, writes refused (IOERR) on a
//    read-only disk. Bad requests are answered, never crash, and are counted
//    in stats().
//  - A chain without room for the status byte is returned with length 0 and
//    counted (no_status).
//  - Data is copied: guest -> op buffer at submission (OUT), op buffer ->
//    guest at completion (IN). Guest memory is touched only while the
//    request is live: reset() forgets every in-flight request, and an op
//    that completes afterwards is discarded (counted as stale_completions).
//  - Backpressure: while the IoThread is full the device leaves chains in
//    the ring and resumes when ops complete or the IoThread reports space.
//    The device installs the IoThread's space callback (one owner at a time).
//
// Threading: read_config on any thread (the config is immutable);
// everything else on the main loop. Lifetime: ops in flight point at the
// device (IoOp::owner); destroy it only when ops_in_flight() is 0 (for
// instance after IoThread::stop()).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "storage/block_backend.h"
#include "storage/io_thread.h"
#include "vmm/virtio.h"

namespace berth::vmm {

// Feature bits (§5.2.3).
constexpr uint64_t kBlkFSizeMax = 1ull << 1;
constexpr uint64_t kBlkFSegMax = 1ull << 2;
constexpr uint64_t kBlkFRo = 1ull << 5;
constexpr uint64_t kBlkFBlkSize = 1ull << 6;
constexpr uint64_t kBlkFFlush = 1ull << 9;
constexpr uint64_t kBlkFDiscard = 1ull << 13;
constexpr uint64_t kBlkFWriteZeroes = 1ull << 14;

// Request types and status values (§5.2.6).
constexpr uint32_t kBlkTIn = 0, kBlkTOut = 1, kBlkTFlush = 4, kBlkTGetId = 8, kBlkTDiscard = 11,
                   kBlkTWriteZeroes = 13;
constexpr uint8_t kBlkSOk = 0, kBlkSIoErr = 1, kBlkSUnsupp = 2;
constexpr uint32_t kBlkWriteZeroesUnmap = 1;
constexpr size_t kBlkConfigSize = 60;
constexpr size_t kBlkIdBytes = 20;

struct VirtioBlkStats {
  // Requests accepted from the ring, by type.
  uint64_t reads = 0, writes = 0, flushes = 0, get_ids = 0, discards = 0, write_zeroes = 0, unsupported = 0;
  uint64_t bytes_read = 0, bytes_written = 0, bytes_discarded = 0, bytes_zeroed = 0;
  uint64_t io_errors = 0;          // the backend failed an op (answered IOERR)
  uint64_t read_only_refused = 0;  // a write, discard or write-zeroes on a read-only disk
  // Bad requests, by reason (answered IOERR or UNSUPP).
  uint64_t bad_header = 0;     // readable part shorter than the 16-byte header
  uint64_t bad_length = 0;     // data not a multiple of 512, too long, or a bad segment table
  uint64_t out_of_range = 0;   // a sector range beyond the capacity
  uint64_t bad_segment = 0;    // discard/write-zeroes segment with bad flags or too many sectors
  uint64_t no_status = 0;      // no writable byte for the status: returned with length 0
  uint64_t stale_completions = 0;  // ops that completed after a reset
  uint64_t deferred = 0;       // times the IoThread was full and chains waited
  uint64_t bad_requests() const { return bad_header + bad_length + out_of_range + bad_segment + no_status; }
};

class VirtioBlk final : public VirtioDevice, private storage::IoOwner {
 public:
  static constexpr uint32_t kSegMax = 128;
  static constexpr uint32_t kSizeMax = 64 * 1024;
  static constexpr uint64_t kMaxRequestBytes = uint64_t(kSegMax) * kSizeMax;  // 8 MiB
  static constexpr uint32_t kMaxDiscardSectors = 1u << 21;  // 1 GiB per segment
  static constexpr uint32_t kMaxDiscardSeg = 16;
  static constexpr uint32_t kDiscardAlignment = 8;  // sectors (4 KiB)

  // `serial` is truncated to 20 bytes (GET_ID). The disk is read-only when
  // `read_only` or the backend is.
  VirtioBlk(storage::IoThread& io, const storage::BlockBackend& backend, bool read_only, std::string serial);
  ~VirtioBlk() override;
  VirtioBlk(const VirtioBlk&) = delete;
  VirtioBlk& operator=(const VirtioBlk&) = delete;

  // VirtioDevice
  uint32_t device_type() const override { return kVirtioBlock; }
  uint64_t device_features() const override;
  size_t num_queues() const override { return 1; }
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void activate(VirtioContext& ctx) override;
  void notify(size_t index) override;
  void reset() override;

  bool read_only() const { return read_only_; }
  uint64_t capacity_sectors() const { return capacity_; }
  const VirtioBlkStats& stats() const { return stats_; }
  size_t requests_in_flight() const { return reqs_.size(); }
  size_t ops_in_flight() const { return ops_in_flight_; }

 private:
  struct Request {
    DescChain chain;
    uint32_t type = 0;
    uint32_t pending = 0;  // ops not yet back
    uint8_t status = kBlkSOk;
  };

  void io_done(std::unique_ptr<storage::IoOp> op) override;
  void io_batch_end() override;

  void process();
  // Handles one chain: answers it at once or submits its ops.
  void handle(DescChain&& c);
  void complete(const DescChain& c, uint8_t status, uint32_t data_written);
  std::unique_ptr<storage::IoOp> new_op(storage::IoOp::Kind kind, uint64_t id);
  bool range_ok(uint64_t sector, uint64_t sectors) const;

  storage::IoThread& io_;
  const bool read_only_;
  const uint64_t capacity_;  // in 512-byte sectors
  std::array<uint8_t, kBlkIdBytes> serial_{};
  std::array<uint8_t, kBlkConfigSize> config_{};

  VirtioContext* ctx_ = nullptr;
  std::unordered_map<uint64_t, Request> reqs_;  // in flight, by id
  uint64_t next_id_ = 1;
  size_t ops_in_flight_ = 0;
  bool pushed_ = false;   // used entries not yet signalled
  bool waiting_ = false;  // the IoThread was full with chains left
  bool in_process_ = false;
  VirtioBlkStats stats_;
};

}  // namespace berth::vmm
