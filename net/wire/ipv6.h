// IPv6 fixed headers (RFC 8200 §3) and the ICMPv6 checksum (RFC 4443 §2.3).
//
// Ipv6Packet is a view checked once: at least 40 bytes, version 6, and the
// payload length within the buffer; payload() ends at the payload length,
// so link padding is excluded. Jumbograms (payload length 0 with a Jumbo
// Payload option, RFC 2675) are not supported: such a packet reads as an
// empty payload. Extension headers are not walked: next_header() reports
// whatever follows, and is_ipv6_extension_header() (ip.h) recognises them.
//
// Ipv6Repr is the header only; emit() writes 40 bytes and the payload goes
// after them.
#pragma once

#include <cstdint>
#include <span>

#include "common/bytes.h"
#include "net/wire/addr.h"
#include "net/wire/ip.h"
#include "net/wire/parsed.h"

namespace berth::net::wire {

class Ipv6Packet {
 public:
  static constexpr size_t kHeaderLen = 40;

  // Truncated: shorter than 40 bytes or than 40 + payload length.
  // BadVersion: version != 6.
  static Parsed<Ipv6Packet> check(Bytes packet);

  uint8_t version() const { return b_[0] >> 4; }
  uint8_t traffic_class() const { return uint8_t(load_be16(&b_[0]) >> 4); }
  uint32_t flow_label() const { return load_be32(&b_[0]) & 0xfffff; }
  uint16_t payload_len() const { return load_be16(&b_[4]); }
  IpProtocol next_header() const { return IpProtocol(b_[6]); }
  uint8_t hop_limit() const { return b_[7]; }
  Ipv6Addr src() const { return Ipv6Addr::from_bytes(&b_[8]); }
  Ipv6Addr dst() const { return Ipv6Addr::from_bytes(&b_[24]); }
  Bytes payload() const { return b_.subspan(kHeaderLen, payload_len()); }
  Bytes packet() const { return b_.first(kHeaderLen + payload_len()); }

 private:
  explicit Ipv6Packet(Bytes b) : b_(b) {}
  Bytes b_;
};

struct Ipv6Repr {
  Ipv6Addr src;
  Ipv6Addr dst;
  IpProtocol next_header = IpProtocol::Udp;
  uint16_t payload_len = 0;
  uint8_t hop_limit = 64;
  uint8_t traffic_class = 0;
  uint32_t flow_label = 0;  // 20 bits

  // Cannot fail once the view is checked; Parsed for uniformity.
  static Parsed<Ipv6Repr> parse(const Ipv6Packet& p);
  size_t buffer_len() const { return Ipv6Packet::kHeaderLen; }
  // Precondition: out.size() >= buffer_len(), flow_label < 2^20.
  void emit(std::span<uint8_t> out) const;

  bool operator==(const Ipv6Repr&) const = default;
};

// ICMPv6 message types (RFC 4443 §2.1, RFC 4861 §4).
enum class Icmpv6Type : uint8_t {
  DstUnreachable = 1,
  PacketTooBig = 2,
  TimeExceeded = 3,
  ParamProblem = 4,
  EchoRequest = 128,
  EchoReply = 129,
  RouterSolicit = 133,
  RouterAdvert = 134,
  NeighborSolicit = 135,
  NeighborAdvert = 136,
  Redirect = 137,
};

// The common 4 bytes of every ICMPv6 message (RFC 4443 §2.1): enough to
// dispatch and to check the checksum, which covers the IPv6 pseudo-header.
class Icmpv6Packet {
 public:
  static constexpr size_t kHeaderLen = 4;

  // Truncated when shorter than 4 bytes.
  static Parsed<Icmpv6Packet> check(Bytes message);

  uint8_t msg_type() const { return b_[0]; }
  uint8_t code() const { return b_[1]; }
  uint16_t checksum() const { return load_be16(&b_[2]); }
  Bytes body() const { return b_.subspan(kHeaderLen); }
  Bytes bytes() const { return b_; }

  bool verify_checksum(const Ipv6Addr& src, const Ipv6Addr& dst) const {
    return PseudoHeader::v6(src, dst).verify(IpProtocol::Icmpv6, b_);
  }

 private:
  explicit Icmpv6Packet(Bytes b) : b_(b) {}
  Bytes b_;
};

// Computes and stores the checksum of a whole ICMPv6 message in place
// (bytes 2..3; their previous content is ignored). Precondition: size >= 4.
void fill_icmpv6_checksum(std::span<uint8_t> message, const Ipv6Addr& src, const Ipv6Addr& dst);

}  // namespace berth::net::wire
