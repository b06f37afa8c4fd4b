// UDP datagrams (RFC 768), over IPv4 or IPv6.
//
// UdpPacket is a view over the IP payload, checked once: at least the 8-byte
// header, a length field of at least 8 and not beyond the buffer. payload()
// ends at the length field.
//
// The checksum covers a pseudo-header (PseudoHeader, from the IP layer), the
// UDP header and the payload. Over IPv4 a checksum of 0 means "none sent" and
// verifies; over IPv6 it is invalid (RFC 8200 §8.1). On emit a computed 0 is
// sent as 0xffff (RFC 768), and the checksum is always sent.
#pragma once

#include <cstdint>
#include <span>

#include "common/bytes.h"
#include "net/wire/ip.h"
#include "net/wire/parsed.h"

namespace berth::net::wire {

class UdpPacket {
 public:
  static constexpr size_t kHeaderLen = 8;

  // Truncated: shorter than 8 bytes or than the length field.
  // BadLength: length field < 8.
  static Parsed<UdpPacket> check(Bytes datagram);

  uint16_t src_port() const { return load_be16(&b_[0]); }
  uint16_t dst_port() const { return load_be16(&b_[2]); }
  uint16_t len() const { return load_be16(&b_[4]); }
  uint16_t checksum() const { return load_be16(&b_[6]); }
  Bytes payload() const { return b_.subspan(kHeaderLen, len() - kHeaderLen); }
  // Header and payload, up to the length field.
  Bytes datagram() const { return b_.first(len()); }

  // True when the checksum is right, or is 0 over IPv4.
  bool verify_checksum(const PseudoHeader& ip) const;

 private:
  explicit UdpPacket(Bytes b) : b_(b) {}
  Bytes b_;
};

struct UdpRepr {
  uint16_t src_port = 0;
  uint16_t dst_port = 0;
  Bytes payload;  // a view; at most 65527 bytes

  // BadChecksum (under Verify).
  static Parsed<UdpRepr> parse(const UdpPacket& p, const PseudoHeader& ip,
                               ChecksumPolicy policy = ChecksumPolicy::Verify);
  size_t buffer_len() const { return UdpPacket::kHeaderLen + payload.size(); }
  // Writes header and payload with the checksum. `payload` may already lie
  // at out[8...]. Precondition: out.size() >= buffer_len() <= 65535.
  void emit(std::span<uint8_t> out, const PseudoHeader& ip) const;

  friend bool operator==(const UdpRepr& a, const UdpRepr& b) {
    return a.src_port == b.src_port && a.dst_port == b.dst_port && same_bytes(a.payload, b.payload);
  }
};

}  // namespace berth::net::wire
