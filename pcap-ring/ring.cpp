// Ring of captured packets. Theory of operation:
//
// Positions are absolute byte counts since the last clear() (base_), so a
// cursor never aliases a newer record: a record at position p lives at
// buf_[(p - base_) % buf_.size()]. Before the first eviction the buffer may
// grow; at that time head_ == base_ and nothing wraps, so the mapping of
// every live position is the same before and after the resize. Once the
// buffer has reached the limit it never changes size until clear().
//
// Record header (little-endian): ts_ns u64, orig_len u32, caplen u32,
// link u32, direction u8, 3 bytes of zero padding.
#include "pcap-ring/ring.h"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace berth::pcap {

namespace {
constexpr size_t kMinGrowth = 16 * 1024;
}

Ring::Ring(size_t limit) : limit_(limit & ~size_t(7)) {}

void Ring::copy_in(size_t i, const uint8_t* src, size_t n) {
  size_t first = std::min(n, buf_.size() - i);
  if (first) std::memcpy(buf_.data() + i, src, first);
  if (n > first) std::memcpy(buf_.data(), src + first, n - first);
}

void Ring::copy_out(size_t i, uint8_t* dst, size_t n) const {
  size_t first = std::min(n, buf_.size() - i);
  std::memcpy(dst, buf_.data() + i, first);
  if (n > first) std::memcpy(dst + first, buf_.data(), n - first);
}

// The caplen field of the header at index i (offset 12), which may wrap.
uint32_t Ring::caplen_at(size_t i) const {
  if (i + 16 <= buf_.size()) return load_le32(buf_.data() + i + 12);
  uint8_t b[4];
  for (size_t k = 0; k < 4; k++) b[k] = buf_[(i + 12 + k) % buf_.size()];
  return load_le32(b);
}

// The n bytes at pos as one or two views.
Bytes Ring::piece(uint64_t pos, size_t n, Bytes& rest) const {
  if (n == 0) {
    rest = {};
    return {};
  }
  size_t i = index(pos);
  size_t first = std::min(n, buf_.size() - i);
  rest = n > first ? Bytes(buf_.data(), n - first) : Bytes();
  return Bytes(buf_.data() + i, first);
}

uint32_t Ring::peek_caplen(const Cursor& c) const {
  assert(c.seq >= first_seq_ && c.seq < end_seq_);
  return caplen_at(index(c.pos));
}

Ring::View Ring::next(Cursor& c) const {
  assert(c.seq >= first_seq_ && c.seq < end_seq_);
  uint8_t h[kHeaderLen];
  copy_out(index(c.pos), h, kHeaderLen);
  View v;
  v.meta.ts_ns = load_le64(h);
  v.meta.orig_len = load_le32(h + 8);
  v.caplen = load_le32(h + 12);
  v.meta.link = load_le32(h + 16);
  v.meta.dir = Direction(h[20]);
  v.a = piece(c.pos + kHeaderLen, v.caplen, v.b);
  c.pos += record_size(v.caplen);
  c.seq++;
  return v;
}

void Ring::evict_oldest() {
  uint32_t caplen = caplen_at(head_idx_);
  size_t size = record_size(caplen);
  head_ += size;
  head_idx_ += size;
  if (head_idx_ >= buf_.size()) head_idx_ -= buf_.size();
  used_ -= size;
  data_bytes_ -= caplen;
  first_seq_++;
  evicted_packets_++;
  evicted_bytes_ += caplen;
}

namespace {
void emit_header(uint8_t* h, const RecordMeta& meta, uint32_t caplen) {
  store_le32(h, uint32_t(meta.ts_ns));
  store_le32(h + 4, uint32_t(meta.ts_ns >> 32));
  store_le32(h + 8, meta.orig_len);
  store_le32(h + 12, caplen);
  store_le32(h + 16, meta.link);
  store_le32(h + 20, uint32_t(meta.dir));  // direction, then 3 zero bytes
}
}  // namespace

bool Ring::push(const RecordMeta& meta, Bytes data) {
  size_t need = record_size(data.size());
  if (need > limit_) return false;
  if (used_ + need > buf_.size() && buf_.size() < limit_) {
    // Still growing: nothing was evicted since the last clear, so head_ ==
    // base_ and the live bytes sit at the start of the buffer.
    assert(head_ == base_ && head_idx_ == 0);
    size_t want = std::max({buf_.size() * 2, used_ + need, kMinGrowth});
    buf_.resize(std::min(want, limit_));
  }
  while (buf_.size() - used_ < need) evict_oldest();
  size_t tail = head_idx_ + used_;
  if (tail >= buf_.size()) tail -= buf_.size();
  uint32_t caplen = uint32_t(data.size());
  if (tail + need <= buf_.size()) {  // the common case: the record does not wrap
    uint8_t* p = buf_.data() + tail;
    emit_header(p, meta, caplen);
    if (caplen) std::memcpy(p + kHeaderLen, data.data(), caplen);
  } else {
    uint8_t h[kHeaderLen];
    emit_header(h, meta, caplen);
    copy_in(tail, h, kHeaderLen);
    size_t at = tail + kHeaderLen;
    copy_in(at >= buf_.size() ? at - buf_.size() : at, data.data(), caplen);
  }
  used_ += need;
  data_bytes_ += caplen;
  end_seq_++;
  return true;
}

void Ring::clear() {
  std::vector<uint8_t>().swap(buf_);
  head_ += used_;
  head_idx_ = 0;
  base_ = head_;
  used_ = 0;
  data_bytes_ = 0;
  first_seq_ = end_seq_;
  cleared_seq_ = end_seq_;
}

}  // namespace berth::pcap
