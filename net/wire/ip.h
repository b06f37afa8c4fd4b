// What IPv4 and IPv6 share with the layers above them: protocol numbers and
// the pseudo-header that TCP, UDP and ICMPv6 checksums cover.
#pragma once

#include <cstdint>

#include "net/wire/addr.h"
#include "net/wire/checksum.h"

namespace berth::net::wire {

// IANA "Assigned Internet Protocol Numbers": the IPv4 protocol field and the
// IPv6 next-header field. Any value may appear; these are the ones we name.
enum class IpProtocol : uint8_t {
  HopByHop = 0,   // IPv6 extension (RFC 8200 §4.3)
  Icmp = 1,
  Igmp = 2,
  Tcp = 6,
  Udp = 17,
  Ipv6Route = 43,  // RFC 8200 §4.4
  Ipv6Frag = 44,   // RFC 8200 §4.5
  Esp = 50,
  Ah = 51,
  Icmpv6 = 58,
  Ipv6NoNext = 59,
  Ipv6Opts = 60,   // destination options, RFC 8200 §4.6
};

// True for next-header values that are IPv6 extension headers (RFC 8200 §4,
// RFC 7045 §2, including Mobility, HIP, Shim6 and the experimental values).
// They are recognised so a caller can refuse them; nothing here walks them.
constexpr bool is_ipv6_extension_header(IpProtocol p) {
  switch (uint8_t(p)) {
    case 0: case 43: case 44: case 50: case 51: case 60: case 135: case 139: case 140: case 253: case 254:
      return true;
    default:
      return false;
  }
}

// The source and destination addresses of the enclosing IP packet, as the
// transport checksum sees them (RFC 768, RFC 9293 §3.1, RFC 8200 §8.1). Only
// their sum is kept; the protocol and the upper-layer length are added per
// packet. For both families the pseudo-header sum is
// sum(src) + sum(dst) + protocol + length; the zero bytes add nothing.
class PseudoHeader {
 public:
  static PseudoHeader v4(Ipv4Addr src, Ipv4Addr dst) {
    uint32_t s = (src.v >> 16) + (src.v & 0xffff) + (dst.v >> 16) + (dst.v & 0xffff);
    return PseudoHeader(fold_sum(s), false);
  }
  static PseudoHeader v6(const Ipv6Addr& src, const Ipv6Addr& dst) {
    return PseudoHeader(ones_sum(dst.b, ones_sum(src.b)), true);
  }

  // IPv6 forbids a zero UDP checksum; IPv4 reads it as "none".
  bool is_v6() const { return v6_; }

  // The sum of the whole pseudo-header for `length` bytes of `proto`.
  uint16_t sum(IpProtocol proto, uint32_t length) const {
    return fold_sum(uint64_t(addr_sum_) + uint8_t(proto) + (length >> 16) + (length & 0xffff));
  }
  // The checksum to store for `segment`, whose checksum field is zero.
  uint16_t checksum(IpProtocol proto, Bytes segment) const {
    return internet_checksum(segment, sum(proto, uint32_t(segment.size())));
  }
  // True when `segment`, with its checksum field, verifies.
  bool verify(IpProtocol proto, Bytes segment) const {
    return checksum_verifies(segment, sum(proto, uint32_t(segment.size())));
  }

 private:
  PseudoHeader(uint16_t addr_sum, bool v6) : addr_sum_(addr_sum), v6_(v6) {}
  uint16_t addr_sum_;
  bool v6_;
};

}  // namespace berth::net::wire
