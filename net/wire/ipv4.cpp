// Theory of operation: IPv4 headers.
//
// The view's check() orders its tests so that each accessor's bounds follow
// from an earlier one: 20 bytes make the fixed fields readable, IHL*4 within
// the buffer makes options() and header() safe, and header_len <= total_len
// <= buffer makes payload() and packet() safe. Padding after the total
// length (Ethernet's 60-byte minimum) is silently excluded (RFC 791 §3.1
// "Total Length"); a total length beyond the buffer is a truncated packet.
//
// The representation keeps every header field, options as a view, so
// parse → emit reproduces a valid header exactly; the checksum is recomputed
// on emit. The reserved ("evil") flag bit must be zero (RFC 791 §3.1 Flags);
// a packet with it set is refused rather than silently cleared.
#include "net/wire/ipv4.h"

#include <cassert>
#include <cstring>

namespace berth::net::wire {
namespace {

// The checks shared by check() and parse_quoted(), up to the total length.
Parsed<size_t> check_header(Bytes b) {
  if (b.size() < Ipv4Packet::kMinHeaderLen) return WireError::Truncated;
  if ((b[0] >> 4) != 4) return WireError::BadVersion;
  size_t hlen = size_t(b[0] & 0x0f) * 4;
  if (hlen < Ipv4Packet::kMinHeaderLen) return WireError::BadHeaderLength;
  if (b.size() < hlen) return WireError::Truncated;
  if (load_be16(&b[2]) < hlen) return WireError::BadLength;
  return hlen;
}

Ipv4Repr repr_of_header(Bytes h, size_t hlen) {
  Ipv4Repr r;
  r.dscp = h[1] >> 2;
  r.ecn = h[1] & 0x03;
  r.payload_len = uint16_t(load_be16(&h[2]) - hlen);
  r.ident = load_be16(&h[4]);
  r.dont_frag = h[6] & 0x40;
  r.more_frags = h[6] & 0x20;
  r.frag_offset = uint16_t((load_be16(&h[6]) & 0x1fff) * 8);
  r.ttl = h[8];
  r.protocol = IpProtocol(h[9]);
  r.src = Ipv4Addr::from_bytes(&h[12]);
  r.dst = Ipv4Addr::from_bytes(&h[16]);
  r.options = h.subspan(Ipv4Packet::kMinHeaderLen, hlen - Ipv4Packet::kMinHeaderLen);
  return r;
}

}  // namespace

Parsed<Ipv4Packet> Ipv4Packet::check(Bytes packet) {
  auto hlen = check_header(packet);
  if (!hlen) return hlen.error();
  if (load_be16(&packet[2]) > packet.size()) return WireError::Truncated;
  return Ipv4Packet(packet);
}

Parsed<Ipv4Repr> Ipv4Repr::parse(const Ipv4Packet& p, ChecksumPolicy policy) {
  if (policy == ChecksumPolicy::Verify && !p.verify_checksum()) return WireError::BadChecksum;
  if (p.reserved_flag()) return WireError::BadField;
  return repr_of_header(p.header(), p.header_len());
}

Parsed<Ipv4Repr> Ipv4Repr::parse_quoted(Bytes quoted) {
  auto hlen = check_header(quoted);
  if (!hlen) return hlen.error();
  if (quoted[6] & 0x80) return WireError::BadField;
  return repr_of_header(quoted.first(*hlen), *hlen);
}

void Ipv4Repr::emit(std::span<uint8_t> out) const {
  assert(out.size() >= buffer_len());
  assert(options.size() % 4 == 0 && options.size() <= Ipv4Packet::kMaxHeaderLen - Ipv4Packet::kMinHeaderLen);
  assert(frag_offset % 8 == 0 && total_len() <= 0xffff && dscp < 64 && ecn < 4);
  size_t hlen = header_len();
  out[0] = uint8_t(0x40 | (hlen / 4));
  out[1] = uint8_t((dscp << 2) | ecn);
  store_be16(&out[2], uint16_t(total_len()));
  store_be16(&out[4], ident);
  store_be16(&out[6], uint16_t((dont_frag ? 0x4000 : 0) | (more_frags ? 0x2000 : 0) | (frag_offset / 8)));
  out[8] = ttl;
  out[9] = uint8_t(protocol);
  store_be16(&out[10], 0);
  src.write(&out[12]);
  dst.write(&out[16]);
  if (!options.empty()) std::memmove(&out[20], options.data(), options.size());
  store_be16(&out[10], internet_checksum(Bytes(out.data(), hlen)));
}

bool operator==(const Ipv4Repr& a, const Ipv4Repr& b) {
  return a.src == b.src && a.dst == b.dst && a.protocol == b.protocol && a.payload_len == b.payload_len &&
         a.ttl == b.ttl && a.dscp == b.dscp && a.ecn == b.ecn && a.ident == b.ident && a.dont_frag == b.dont_frag &&
         a.more_frags == b.more_frags && a.frag_offset == b.frag_offset && same_bytes(a.options, b.options);
}

}  // namespace berth::net::wire
