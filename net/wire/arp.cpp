// Theory of operation: ARP for IPv4 over Ethernet.
//
// RFC 826 lays a packet out as a fixed 8-byte part (hardware type, protocol
// type, their address lengths, operation) followed by sender and target
// address pairs whose sizes the packet declares. The view trusts nothing but
// those declared sizes, checked once against the buffer. The representation
// then insists on Ethernet/IPv4 sizes and types, and on the two operations
// a host answers (RARP and InARP codes are Unsupported).
#include "net/wire/arp.h"

#include <cassert>

namespace berth::net::wire {

Parsed<ArpPacket> ArpPacket::check(Bytes packet) {
  if (packet.size() < kFixedLen) return WireError::Truncated;
  ArpPacket p(packet);
  if (packet.size() < p.len()) return WireError::Truncated;
  return p;
}

Parsed<ArpRepr> ArpRepr::parse(const ArpPacket& p) {
  if (p.hardware_type() != ArpPacket::kHardwareEthernet || p.protocol_type() != ArpPacket::kProtocolIpv4 ||
      p.hardware_len() != 6 || p.protocol_len() != 4)
    return WireError::Unsupported;
  switch (p.operation()) {
    case uint16_t(ArpOperation::Request):  // RFC 826 "ares_op$REQUEST"
    case uint16_t(ArpOperation::Reply):    // RFC 826 "ares_op$REPLY"
      break;
    default:  // RARP (RFC 903) 3/4, InARP (RFC 2390) 8/9, and the rest
      return WireError::Unsupported;
  }
  ArpRepr r;
  r.op = ArpOperation(p.operation());
  r.sender_mac = MacAddr::from_bytes(p.sender_hardware_addr().data());
  r.sender_ip = Ipv4Addr::from_bytes(p.sender_protocol_addr().data());
  r.target_mac = MacAddr::from_bytes(p.target_hardware_addr().data());
  r.target_ip = Ipv4Addr::from_bytes(p.target_protocol_addr().data());
  return r;
}

void ArpRepr::emit(std::span<uint8_t> out) const {
  assert(out.size() >= buffer_len());
  store_be16(&out[0], ArpPacket::kHardwareEthernet);
  store_be16(&out[2], ArpPacket::kProtocolIpv4);
  out[4] = 6;
  out[5] = 4;
  store_be16(&out[6], uint16_t(op));
  sender_mac.write(&out[8]);
  sender_ip.write(&out[14]);
  target_mac.write(&out[18]);
  target_ip.write(&out[24]);
}

}  // namespace berth::net::wire
