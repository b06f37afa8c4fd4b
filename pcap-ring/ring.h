// Ring: a FIFO of captured packets bounded by bytes.
//
// Records are stored back to back in one circular buffer: a 24-byte header
// (timestamp, original length, captured length, link, direction) and the
// captured bytes, padded to 8. A record may wrap around the end of the
// buffer. Pushing a record that does not fit evicts the oldest records first
// (counted); the ring's memory never exceeds its limit.
//
// The buffer grows on demand up to the limit (a rule that matches little
// costs little); it grows only while nothing has been evicted, so records
// never move. clear() gives the memory back.
//
// Records are numbered (seq) from 0 for the ring's lifetime, and a Cursor
// names one by its seq and its absolute byte position. A cursor stays valid
// while seq >= first_seq(): readers compare, and skip ahead when the writer
// has overwritten their position. Nothing here blocks or allocates per
// packet once the buffer has reached its limit.
//
// Single-threaded (the loop thread), like everything in pcap-ring.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/bytes.h"
#include "pcap-ring/format.h"

namespace berth::pcap {

class Ring {
 public:
  static constexpr size_t kHeaderLen = 24;
  // Bytes a record of `caplen` captured bytes takes in the ring.
  static constexpr size_t record_size(size_t caplen) { return (kHeaderLen + caplen + 7) & ~size_t(7); }

  // `limit` is rounded down to a multiple of 8 and must hold one record of
  // the largest size it will be given (callers check; push() refuses otherwise).
  explicit Ring(size_t limit);

  // Store a record, evicting the oldest ones until it fits. Returns false,
  // and stores nothing, when the record is larger than the whole ring.
  bool push(const RecordMeta& meta, Bytes data);
  // Drop every record and free the buffer; seq numbers keep counting.
  void clear();

  struct Cursor {
    uint64_t seq = 0;
    uint64_t pos = 0;  // absolute byte position of the record's header
  };
  struct View {
    RecordMeta meta;
    uint32_t caplen = 0;
    Bytes a, b;  // the captured bytes, in two pieces when the record wraps
  };
  Cursor begin() const { return {first_seq_, head_}; }
  Cursor end() const { return {end_seq_, head_ + used_}; }
  // The record at `c`, which must satisfy first_seq() <= c.seq < end_seq();
  // advances `c` to the next record. The view is valid until the next push.
  View next(Cursor& c) const;
  // The captured length of the record at `c` (same precondition), without
  // advancing.
  uint32_t peek_caplen(const Cursor& c) const;

  uint64_t first_seq() const { return first_seq_; }  // oldest record kept
  uint64_t end_seq() const { return end_seq_; }      // one past the newest
  uint64_t cleared_seq() const { return cleared_seq_; }  // records below this were cleared, not evicted
  uint64_t packets() const { return end_seq_ - first_seq_; }
  size_t used() const { return used_; }              // ring bytes in use (headers, data, padding)
  size_t data_bytes() const { return data_bytes_; }  // captured bytes of the records kept
  size_t limit() const { return limit_; }
  size_t allocated() const { return buf_.size(); }
  uint64_t evicted_packets() const { return evicted_packets_; }
  uint64_t evicted_bytes() const { return evicted_bytes_; }  // captured bytes

 private:
  size_t index(uint64_t pos) const { return size_t((pos - base_) % buf_.size()); }
  void copy_in(size_t idx, const uint8_t* src, size_t n);
  void copy_out(size_t idx, uint8_t* dst, size_t n) const;
  uint32_t caplen_at(size_t idx) const;
  Bytes piece(uint64_t pos, size_t n, Bytes& rest) const;
  void evict_oldest();

  size_t limit_;
  std::vector<uint8_t> buf_;
  uint64_t base_ = 0;  // absolute position that maps to buf_[0] while the buffer grows
  uint64_t head_ = 0;  // absolute position of the oldest record
  size_t head_idx_ = 0;  // ... and its index in buf_ (kept to spare a division per packet)
  size_t used_ = 0;
  size_t data_bytes_ = 0;
  uint64_t first_seq_ = 0, end_seq_ = 0, cleared_seq_ = 0;
  uint64_t evicted_packets_ = 0, evicted_bytes_ = 0;
};

}  // namespace berth::pcap
