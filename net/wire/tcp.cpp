// Theory of operation: TCP headers and options.
//
// The fixed header is 20 bytes; the data offset says how many 32-bit words
// the header really has, the rest being options (RFC 9293 §3.1). check()
// makes the offset trustworthy once. Options are a TLV list with two
// one-byte exceptions, End-of-list and NOP. Everything a peer could get wrong
// there is refused as BadOption rather than guessed at: a zero or one length
// would loop forever or step backwards, a length past the header would read
// into the payload, and a known option of the wrong size has no meaning.
//
// Emitting cannot reproduce the peer's NOP placement from decoded fields, so
// it uses one deterministic layout: Linux's (tcp_options_write), 32-bit
// aligned, which makes segments from Linux peers round-trip exactly. If that
// layout overflows the 40-byte area (only possible with 3+ SACK blocks beside
// timestamps, which Linux itself never sends) the options are packed back to
// back and padded with End-of-list; a set parsed from a 40-byte area always
// fits that way. The layout is a function of the fields alone, so
// parse(emit(r)) == r.
#include "net/wire/tcp.h"

#include <cassert>
#include <cstring>

namespace berth::net::wire {
namespace {

constexpr size_t kMaxOptionsLen = TcpPacket::kMaxHeaderLen - TcpPacket::kMinHeaderLen;

uint8_t k(TcpOptionKind kind) { return uint8_t(kind); }

size_t aligned_layout_len(const TcpRepr& r) {
  size_t n = 0;
  if (r.mss) n += 4;
  if (r.timestamps) n += 12;              // SACK-permitted rides in the timestamps' NOPs
  else if (r.sack_permitted) n += 4;
  if (r.window_scale) n += 4;
  if (r.sack_count) n += 4 + 8 * size_t(r.sack_count);
  return n;
}

size_t packed_layout_len(const TcpRepr& r) {
  size_t n = 0;
  if (r.mss) n += 4;
  if (r.window_scale) n += 3;
  if (r.sack_permitted) n += 2;
  if (r.timestamps) n += 10;
  if (r.sack_count) n += 2 + 8 * size_t(r.sack_count);
  return (n + 3) & ~size_t(3);
}

uint8_t* put_sack(uint8_t* p, const TcpRepr& r) {
  *p++ = k(TcpOptionKind::Sack);
  *p++ = uint8_t(2 + 8 * r.sack_count);
  for (size_t i = 0; i < r.sack_count; i++) {
    store_be32(p, r.sack_blocks[i].left);
    store_be32(p + 4, r.sack_blocks[i].right);
    p += 8;
  }
  return p;
}

uint8_t* put_timestamps(uint8_t* p, const TcpTimestamps& ts) {
  *p++ = k(TcpOptionKind::Timestamps);
  *p++ = 10;
  store_be32(p, ts.tsval);
  store_be32(p + 4, ts.tsecr);
  return p + 8;
}

// Writes options_len() bytes at p.
void write_options(const TcpRepr& r, uint8_t* p) {
  uint8_t* start = p;
  if (aligned_layout_len(r) <= kMaxOptionsLen) {
    if (r.mss) {
      *p++ = k(TcpOptionKind::Mss); *p++ = 4;
      store_be16(p, *r.mss); p += 2;
    }
    if (r.timestamps) {
      if (r.sack_permitted) { *p++ = k(TcpOptionKind::SackPermitted); *p++ = 2; }
      else { *p++ = k(TcpOptionKind::Nop); *p++ = k(TcpOptionKind::Nop); }
      p = put_timestamps(p, *r.timestamps);
    } else if (r.sack_permitted) {
      *p++ = k(TcpOptionKind::Nop); *p++ = k(TcpOptionKind::Nop);
      *p++ = k(TcpOptionKind::SackPermitted); *p++ = 2;
    }
    if (r.window_scale) {
      *p++ = k(TcpOptionKind::Nop);
      *p++ = k(TcpOptionKind::WindowScale); *p++ = 3; *p++ = *r.window_scale;
    }
    if (r.sack_count) {
      *p++ = k(TcpOptionKind::Nop); *p++ = k(TcpOptionKind::Nop);
      p = put_sack(p, r);
    }
    assert(size_t(p - start) == aligned_layout_len(r));
    return;
  }
  if (r.mss) {
    *p++ = k(TcpOptionKind::Mss); *p++ = 4;
    store_be16(p, *r.mss); p += 2;
  }
  if (r.window_scale) { *p++ = k(TcpOptionKind::WindowScale); *p++ = 3; *p++ = *r.window_scale; }
  if (r.sack_permitted) { *p++ = k(TcpOptionKind::SackPermitted); *p++ = 2; }
  if (r.timestamps) p = put_timestamps(p, *r.timestamps);
  if (r.sack_count) p = put_sack(p, r);
  while (size_t(p - start) < packed_layout_len(r)) *p++ = k(TcpOptionKind::End);
}

// Records one option in `r`; false when its length is wrong for its kind.
bool take_option(TcpRepr& r, const TcpOption& o) {
  switch (TcpOptionKind(o.kind)) {
    case TcpOptionKind::Mss:  // RFC 9293 §3.2: kind 2, length 4, 16-bit MSS
      if (o.data.size() != 2) return false;
      r.mss = load_be16(o.data.data());
      return true;
    case TcpOptionKind::WindowScale:  // RFC 7323 §2.2: kind 3, length 3, shift count
      if (o.data.size() != 1) return false;
      r.window_scale = o.data[0];
      return true;
    case TcpOptionKind::SackPermitted:  // RFC 2018 §2: kind 4, length 2
      if (!o.data.empty()) return false;
      r.sack_permitted = true;
      return true;
    case TcpOptionKind::Sack: {  // RFC 2018 §3: kind 5, length 2 + 8n, n >= 1 (at most 4 fit)
      size_t n = o.data.size() / 8;
      if (o.data.size() % 8 != 0 || n == 0 || n > TcpRepr::kMaxSackBlocks) return false;
      r.sack_count = uint8_t(n);
      for (size_t i = 0; i < n; i++)
        r.sack_blocks[i] = {load_be32(&o.data[8 * i]), load_be32(&o.data[8 * i + 4])};
      for (size_t i = n; i < TcpRepr::kMaxSackBlocks; i++) r.sack_blocks[i] = {};
      return true;
    }
    case TcpOptionKind::Timestamps:  // RFC 7323 §3.2: kind 8, length 10, TSval, TSecr
      if (o.data.size() != 8) return false;
      r.timestamps = TcpTimestamps{load_be32(&o.data[0]), load_be32(&o.data[4])};
      return true;
    default:  // RFC 9293 §3.1: unknown options are skipped by their length
      return true;
  }
}

}  // namespace

bool TcpOptionReader::next(TcpOption& out) {
  while (!failed_ && pos_ < b_.size()) {
    uint8_t kind = b_[pos_];
    if (kind == k(TcpOptionKind::End)) {  // RFC 9293 §3.1: the rest is padding
      pos_ = b_.size();
      return false;
    }
    if (kind == k(TcpOptionKind::Nop)) {
      pos_++;
      continue;
    }
    if (pos_ + 1 >= b_.size()) break;        // no room for the length byte
    size_t len = b_[pos_ + 1];
    if (len < 2 || len > b_.size() - pos_) break;  // would not advance, or runs past the header
    out = TcpOption{kind, b_.subspan(pos_ + 2, len - 2)};
    pos_ += len;
    return true;
  }
  if (pos_ < b_.size()) failed_ = true;
  return false;
}

Parsed<TcpPacket> TcpPacket::check(Bytes segment) {
  if (segment.size() < kMinHeaderLen) return WireError::Truncated;
  size_t hlen = size_t(segment[12] >> 4) * 4;
  if (hlen < kMinHeaderLen) return WireError::BadHeaderLength;
  if (hlen > segment.size()) return WireError::Truncated;
  return TcpPacket(segment);
}

Parsed<TcpRepr> TcpRepr::parse(const TcpPacket& p, const PseudoHeader& ip, ChecksumPolicy policy) {
  if (policy == ChecksumPolicy::Verify && !p.verify_checksum(ip)) return WireError::BadChecksum;
  TcpRepr r;
  r.src_port = p.src_port();
  r.dst_port = p.dst_port();
  r.seq = p.seq();
  r.ack = p.ack();
  r.flags = p.flags();
  r.window = p.window();
  r.urgent = p.urgent();
  r.payload = p.payload();
  TcpOptionReader options(p.options());
  TcpOption o;
  while (options.next(o))
    if (!take_option(r, o)) return WireError::BadOption;
  if (options.failed()) return WireError::BadOption;
  return r;
}

size_t TcpRepr::options_len() const {
  size_t aligned = aligned_layout_len(*this);
  return aligned <= kMaxOptionsLen ? aligned : packed_layout_len(*this);
}

void TcpRepr::emit(std::span<uint8_t> out, const PseudoHeader& ip) const {
  size_t hlen = header_len();
  size_t len = hlen + payload.size();
  assert(hlen <= TcpPacket::kMaxHeaderLen && sack_count <= kMaxSackBlocks);
  assert(out.size() >= len);
  // Payload first: if it lies in place it is not disturbed by the header.
  if (!payload.empty()) std::memmove(&out[hlen], payload.data(), payload.size());
  store_be16(&out[0], src_port);
  store_be16(&out[2], dst_port);
  store_be32(&out[4], seq);
  store_be32(&out[8], ack);
  store_be16(&out[12], uint16_t((hlen / 4) << 12 | (flags & kTcpFlagMask)));
  store_be16(&out[14], window);
  store_be16(&out[16], 0);
  store_be16(&out[18], urgent);
  write_options(*this, &out[TcpPacket::kMinHeaderLen]);
  store_be16(&out[16], ip.checksum(IpProtocol::Tcp, Bytes(out.data(), len)));
}

bool operator==(const TcpRepr& a, const TcpRepr& b) {
  if (a.sack_count != b.sack_count) return false;
  for (size_t i = 0; i < a.sack_count; i++)
    if (!(a.sack_blocks[i] == b.sack_blocks[i])) return false;
  return a.src_port == b.src_port && a.dst_port == b.dst_port && a.seq == b.seq && a.ack == b.ack &&
         a.flags == b.flags && a.window == b.window && a.urgent == b.urgent && a.mss == b.mss &&
         a.window_scale == b.window_scale && a.sack_permitted == b.sack_permitted && a.timestamps == b.timestamps &&
         same_bytes(a.payload, b.payload);
}

}  // namespace berth::net::wire
