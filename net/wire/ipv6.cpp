// Theory of operation: the IPv6 fixed header.
//
// IPv6 has no header checksum and no options in the fixed header: 40 bytes,
// then a chain of next headers. The view checks the version and that the
// payload length (RFC 8200 §3, "length of the IPv6 payload, i.e., the rest of
// the packet following this IPv6 header") is inside the buffer. Upper layers
// take their checksum pseudo-header from PseudoHeader::v6 (RFC 8200 §8.1).
#include "net/wire/ipv6.h"

#include <cassert>

namespace berth::net::wire {

Parsed<Ipv6Packet> Ipv6Packet::check(Bytes packet) {
  if (packet.size() < kHeaderLen) return WireError::Truncated;
  if ((packet[0] >> 4) != 6) return WireError::BadVersion;
  if (kHeaderLen + load_be16(&packet[4]) > packet.size()) return WireError::Truncated;
  return Ipv6Packet(packet);
}

Parsed<Ipv6Repr> Ipv6Repr::parse(const Ipv6Packet& p) {
  Ipv6Repr r;
  r.src = p.src();
  r.dst = p.dst();
  r.next_header = p.next_header();
  r.payload_len = p.payload_len();
  r.hop_limit = p.hop_limit();
  r.traffic_class = p.traffic_class();
  r.flow_label = p.flow_label();
  return r;
}

void Ipv6Repr::emit(std::span<uint8_t> out) const {
  assert(out.size() >= buffer_len() && flow_label < (1u << 20));
  store_be32(&out[0], (6u << 28) | (uint32_t(traffic_class) << 20) | flow_label);
  store_be16(&out[4], payload_len);
  out[6] = uint8_t(next_header);
  out[7] = hop_limit;
  src.write(&out[8]);
  dst.write(&out[24]);
}

Parsed<Icmpv6Packet> Icmpv6Packet::check(Bytes message) {
  if (message.size() < kHeaderLen) return WireError::Truncated;
  return Icmpv6Packet(message);
}

void fill_icmpv6_checksum(std::span<uint8_t> message, const Ipv6Addr& src, const Ipv6Addr& dst) {
  assert(message.size() >= Icmpv6Packet::kHeaderLen);
  store_be16(&message[2], 0);
  // RFC 4443 §2.3: the checksum covers the pseudo-header of RFC 8200 §8.1
  // with next header 58. Unlike UDP, a computed 0 is sent as 0.
  store_be16(&message[2], PseudoHeader::v6(src, dst).checksum(IpProtocol::Icmpv6, message));
}

}  // namespace berth::net::wire
