// Theory of operation: UDP.
//
// A UDP header is four 16-bit fields. The length field, not the IP payload
// size, ends the datagram (RFC 768 "Length"); Linux trims the same way. A
// datagram whose length field claims more than the IP layer delivered is
// truncated and refused. The checksum is the only other thing to check, and
// the pseudo-header it covers comes from the IP layer, so both parse() and
// emit() take a PseudoHeader rather than knowing which IP version is below.
#include "net/wire/udp.h"

#include <cassert>
#include <cstring>

namespace berth::net::wire {

Parsed<UdpPacket> UdpPacket::check(Bytes datagram) {
  if (datagram.size() < kHeaderLen) return WireError::Truncated;
  uint16_t len = load_be16(&datagram[4]);
  if (len < kHeaderLen) return WireError::BadLength;
  if (len > datagram.size()) return WireError::Truncated;
  return UdpPacket(datagram);
}

bool UdpPacket::verify_checksum(const PseudoHeader& ip) const {
  // RFC 768: "An all zero transmitted checksum value means that the
  // transmitter generated no checksum". RFC 8200 §8.1: not so over IPv6.
  if (checksum() == 0) return !ip.is_v6();
  return ip.verify(IpProtocol::Udp, datagram());
}

Parsed<UdpRepr> UdpRepr::parse(const UdpPacket& p, const PseudoHeader& ip, ChecksumPolicy policy) {
  if (policy == ChecksumPolicy::Verify && !p.verify_checksum(ip)) return WireError::BadChecksum;
  return UdpRepr{p.src_port(), p.dst_port(), p.payload()};
}

void UdpRepr::emit(std::span<uint8_t> out, const PseudoHeader& ip) const {
  size_t len = buffer_len();
  assert(out.size() >= len && len <= 0xffff);
  store_be16(&out[0], src_port);
  store_be16(&out[2], dst_port);
  store_be16(&out[4], uint16_t(len));
  store_be16(&out[6], 0);
  if (!payload.empty()) std::memmove(&out[8], payload.data(), payload.size());
  uint16_t sum = ip.checksum(IpProtocol::Udp, Bytes(out.data(), len));
  // RFC 768: "If the computed checksum is zero, it is transmitted as all ones".
  store_be16(&out[6], sum == 0 ? 0xffff : sum);
}

}  // namespace berth::net::wire
