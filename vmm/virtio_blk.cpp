// virtio-blk. Theory of operation:
//
// A kick (or activation, or space at the IoThread) runs process(), which pops
// chains while the IoThread can take ops. Each chain is parsed once: the
// 16-byte header (type, reserved, sector) from the start of the readable
// part, data or segments after it, and the status byte in the last byte of
// the writable part (§5.2.6; the spec lets the driver split these across
// descriptors any way it likes, so the parts are treated as byte streams).
// GET_ID and every refusal are answered at once; the rest become IoOps
// (one per request, one per segment for discard and write-zeroes) under a
// request id kept in reqs_. Completions come back on the main loop through
// io_done(); the request is answered when its last op is back, with the
// first error it saw. One interrupt decision per batch (process() or
// io_batch_end()).
//
// reset() forgets reqs_ and the context; ops still at the IoThread come back
// to an id that no longer exists and are dropped, so a reset device never
// writes into guest memory the driver may have reused.
#include "vmm/virtio_blk.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

namespace berth::vmm {

namespace {
constexpr uint64_t kSector = 512;
constexpr size_t kHeaderLen = 16;
constexpr size_t kSegmentLen = 16;

void store_le64(uint8_t* p, uint64_t v) {
  store_le32(p, uint32_t(v));
  store_le32(p + 4, uint32_t(v >> 32));
}
}  // namespace

VirtioBlk::VirtioBlk(storage::IoThread& io, const storage::BlockBackend& backend, bool read_only, std::string serial)
    : io_(io), read_only_(read_only || backend.read_only()), capacity_(backend.size() / kSector) {
  std::memcpy(serial_.data(), serial.data(), std::min(serial.size(), serial_.size()));
  // struct virtio_blk_config (§5.2.4).
  uint8_t* c = config_.data();
  store_le64(c + 0, capacity_);
  store_le32(c + 8, kSizeMax);
  store_le32(c + 12, kSegMax);
  // 16: geometry (not offered)
  store_le32(c + 20, uint32_t(kSector));  // blk_size
  // 24: topology (not offered); 32: writeback (no CONFIG_WCE); 33: unused
  store_le16(c + 34, 1);  // num_queues
  store_le32(c + 36, kMaxDiscardSectors);
  store_le32(c + 40, kMaxDiscardSeg);
  store_le32(c + 44, kDiscardAlignment);
  store_le32(c + 48, kMaxDiscardSectors);  // max_write_zeroes_sectors
  store_le32(c + 52, kMaxDiscardSeg);      // max_write_zeroes_seg
  c[56] = 1;                               // write_zeroes_may_unmap
  io_.set_space_callback([this] {
    if (waiting_) {
      waiting_ = false;
      process();
    }
  });
}

VirtioBlk::~VirtioBlk() {
  io_.set_space_callback({});
  if (ops_in_flight_ != 0)
    spdlog::error("virtio-blk destroyed with {} ops in flight (their completions will be lost)", ops_in_flight_);
}

uint64_t VirtioBlk::device_features() const {
  uint64_t f = kBlkFSizeMax | kBlkFSegMax | kBlkFBlkSize | kBlkFFlush;
  if (read_only_)
    f |= kBlkFRo;
  else
    f |= kBlkFDiscard | kBlkFWriteZeroes;
  return f;
}

void VirtioBlk::read_config(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t(0));
  if (offset >= config_.size()) return;
  size_t n = std::min<uint64_t>(data.size(), config_.size() - offset);
  std::memcpy(data.data(), config_.data() + offset, n);
}

void VirtioBlk::activate(VirtioContext& ctx) {
  ctx_ = &ctx;
  process();
}

void VirtioBlk::notify(size_t index) {
  if (index == 0) process();
}

void VirtioBlk::reset() {
  ctx_ = nullptr;
  reqs_.clear();  // ops still out come back to unknown ids and are dropped
  waiting_ = false;
  pushed_ = false;
}

bool VirtioBlk::range_ok(uint64_t sector, uint64_t sectors) const {
  return sector <= capacity_ && sectors <= capacity_ - sector;
}

void VirtioBlk::process() {
  if (!ctx_ || in_process_) return;
  Virtqueue& q = ctx_->queue(0);
  if (!q.ready()) return;
  in_process_ = true;
  bool rechecked = false;
  for (;;) {
    if (io_.full()) {
      // Leave the chains in the ring; a completion or the space callback
      // brings us back.
      if (q.has_available()) {
        waiting_ = true;
        stats_.deferred++;
      }
      break;
    }
    std::optional<DescChain> c = q.pop();
    if (!c) {
      if (rechecked) break;
      q.enable_notifications(true);
      rechecked = true;
      if (!q.has_available()) break;
      continue;
    }
    handle(std::move(*c));
  }
  in_process_ = false;
  if (pushed_ && ctx_) {
    pushed_ = false;
    ctx_->signal_used(0);
  }
}

void VirtioBlk::complete(const DescChain& c, uint8_t status, uint32_t data_written) {
  Virtqueue& q = ctx_->queue(0);
  q.write_to(c, c.writable_len - 1, Bytes(&status, 1));
  q.push(c.head, data_written + 1);
  pushed_ = true;
}

std::unique_ptr<storage::IoOp> VirtioBlk::new_op(storage::IoOp::Kind kind, uint64_t id) {
  auto op = std::make_unique<storage::IoOp>();
  op->kind = kind;
  op->owner = this;
  op->tag = id;
  return op;
}

void VirtioBlk::handle(DescChain&& c) {
  Virtqueue& q = ctx_->queue(0);
  if (c.writable_len == 0) {
    // §5.2.6.1: the status byte is the last writable byte; without one the
    // request cannot be answered.
    stats_.no_status++;
    spdlog::debug("virtio-blk: request without a status byte");
    q.push(c.head, 0);
    pushed_ = true;
    return;
  }
  // Every writable byte but the last is data (IN, GET_ID).
  const uint64_t in_len = c.writable_len - 1;
  const uint32_t in_written = uint32_t(std::min<uint64_t>(in_len, UINT32_MAX - 1));
  if (c.readable_len < kHeaderLen) {
    stats_.bad_header++;
    spdlog::debug("virtio-blk: {}-byte request header", c.readable_len);
    return complete(c, kBlkSIoErr, 0);
  }
  uint8_t h[kHeaderLen];
  q.read_from(c, 0, h);
  const uint32_t type = load_le32(h);
  const uint64_t sector = load_le64(h + 8);
  const uint64_t out_len = c.readable_len - kHeaderLen;
  const uint64_t id = next_id_++;
  std::vector<std::unique_ptr<storage::IoOp>> ops;

  switch (type) {
    case kBlkTIn:
    case kBlkTOut: {
      const bool write = type == kBlkTOut;
      const uint64_t len = write ? out_len : in_len;
      (write ? stats_.writes : stats_.reads)++;
      const uint32_t done_len = write ? 0 : in_written;
      if (write && read_only_) {
        stats_.read_only_refused++;
        return complete(c, kBlkSIoErr, done_len);
      }
      if (len % kSector != 0 || len > kMaxRequestBytes) {
        stats_.bad_length++;
        spdlog::debug("virtio-blk: {} of {} bytes refused", write ? "write" : "read", len);
        return complete(c, kBlkSIoErr, done_len);
      }
      if (!range_ok(sector, len / kSector)) {
        stats_.out_of_range++;
        spdlog::debug("virtio-blk: sector {} + {} beyond capacity {}", sector, len / kSector, capacity_);
        return complete(c, kBlkSIoErr, done_len);
      }
      if (len == 0) return complete(c, kBlkSOk, done_len);
      auto op = new_op(write ? storage::IoOp::Kind::Write : storage::IoOp::Kind::Read, id);
      op->offset = sector * kSector;
      op->length = len;
      op->data = std::make_unique<uint8_t[]>(len);
      op->data_capacity = len;
      if (write) q.read_from(c, kHeaderLen, std::span<uint8_t>(op->data.get(), len));
      ops.push_back(std::move(op));
      break;
    }
    case kBlkTFlush:
      stats_.flushes++;
      ops.push_back(new_op(storage::IoOp::Kind::Flush, id));
      break;
    case kBlkTGetId: {
      // §5.2.6: up to 20 bytes, NUL-padded; a shorter buffer takes a prefix.
      stats_.get_ids++;
      uint32_t n = uint32_t(std::min<uint64_t>(in_len, kBlkIdBytes));
      q.write_to(c, 0, Bytes(serial_.data(), n));
      return complete(c, kBlkSOk, n);
    }
    case kBlkTDiscard:
    case kBlkTWriteZeroes: {
      const bool discard = type == kBlkTDiscard;
      (discard ? stats_.discards : stats_.write_zeroes)++;
      if (read_only_) {
        stats_.read_only_refused++;
        return complete(c, kBlkSIoErr, 0);
      }
      if (out_len == 0 || out_len % kSegmentLen != 0 || out_len / kSegmentLen > kMaxDiscardSeg) {
        stats_.bad_length++;
        spdlog::debug("virtio-blk: {}-byte segment table refused", out_len);
        return complete(c, kBlkSIoErr, 0);
      }
      uint8_t segs[kMaxDiscardSeg * kSegmentLen];
      q.read_from(c, kHeaderLen, std::span<uint8_t>(segs, out_len));
      // Validate every segment before submitting any (§5.2.6.2).
      uint8_t refuse = kBlkSOk;
      for (size_t i = 0; i < out_len / kSegmentLen; i++) {
        const uint8_t* s = segs + i * kSegmentLen;
        uint64_t seg_sector = load_le64(s);
        uint32_t num = load_le32(s + 8);
        uint32_t flags = load_le32(s + 12);
        uint32_t allowed = discard ? 0 : kBlkWriteZeroesUnmap;
        if (flags & ~allowed) {
          // Unknown flags, or UNMAP on a discard: UNSUPP.
          stats_.bad_segment++;
          refuse = kBlkSUnsupp;
          break;
        }
        if (num > kMaxDiscardSectors) {
          stats_.bad_segment++;
          refuse = kBlkSIoErr;
          break;
        }
        if (!range_ok(seg_sector, num)) {
          stats_.out_of_range++;
          refuse = kBlkSIoErr;
          break;
        }
        if (num == 0) continue;
        auto op = new_op(discard ? storage::IoOp::Kind::Discard : storage::IoOp::Kind::WriteZeroes, id);
        op->offset = seg_sector * kSector;
        op->length = uint64_t(num) * kSector;
        op->may_unmap = (flags & kBlkWriteZeroesUnmap) != 0;
        ops.push_back(std::move(op));
      }
      if (refuse != kBlkSOk) {
        spdlog::debug("virtio-blk: {} segment refused", discard ? "discard" : "write-zeroes");
        return complete(c, refuse, 0);
      }
      if (ops.empty()) return complete(c, kBlkSOk, 0);
      break;
    }
    default:
      stats_.unsupported++;
      spdlog::debug("virtio-blk: unsupported request type {}", type);
      return complete(c, kBlkSUnsupp, type == kBlkTIn ? in_written : 0);
  }

  Request r;
  r.type = type;
  r.pending = uint32_t(ops.size());
  r.chain = std::move(c);
  size_t n = ops.size();
  if (!io_.submit(ops)) {
    // process() checked full() before popping, so this means the IoThread
    // has stopped.
    stats_.io_errors++;
    return complete(r.chain, kBlkSIoErr, type == kBlkTIn ? in_written : 0);
  }
  ops_in_flight_ += n;
  reqs_.emplace(id, std::move(r));
}

void VirtioBlk::io_done(std::unique_ptr<storage::IoOp> op) {
  ops_in_flight_--;
  auto it = reqs_.find(op->tag);
  if (it == reqs_.end() || !ctx_) {
    stats_.stale_completions++;
    return;
  }
  Request& r = it->second;
  if (op->err != 0) {
    stats_.io_errors++;
    r.status = kBlkSIoErr;
    spdlog::debug("virtio-blk: I/O error at {}+{}: {}", op->offset, op->length, op->message);
  } else {
    switch (op->kind) {
      case storage::IoOp::Kind::Read:
        ctx_->queue(0).write_to(r.chain, 0, Bytes(op->data.get(), op->length));
        stats_.bytes_read += op->length;
        break;
      case storage::IoOp::Kind::Write: stats_.bytes_written += op->length; break;
      case storage::IoOp::Kind::Discard: stats_.bytes_discarded += op->length; break;
      case storage::IoOp::Kind::WriteZeroes: stats_.bytes_zeroed += op->length; break;
      default: break;
    }
  }
  if (--r.pending != 0) return;
  uint32_t data = 0;
  if (r.type == kBlkTIn) data = uint32_t(std::min<uint64_t>(r.chain.writable_len - 1, UINT32_MAX - 1));
  complete(r.chain, r.status, data);
  reqs_.erase(it);
}

void VirtioBlk::io_batch_end() {
  if (!ctx_) return;
  if (pushed_) {
    pushed_ = false;
    ctx_->signal_used(0);
  }
  if (waiting_) {
    waiting_ = false;
    process();
  }
}

}  // namespace berth::vmm
