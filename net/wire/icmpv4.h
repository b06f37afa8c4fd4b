// ICMP for IPv4 (RFC 792): echo, destination unreachable, time exceeded.
//
// Icmpv4Packet is a view over a whole ICMP message (the IPv4 payload, already
// bounded by the total length), checked once for the 8-byte header.
// Icmpv4Repr represents the four message types the translator answers or
// generates; every other type parses as Unsupported.
//
// For echo, `data` is the payload after the 8-byte header. For the two error
// types, the message carries the offending datagram's IPv4 header and at
// least 8 bytes of what followed it (RFC 792; RFC 1812 §4.3.2.3 allows
// more): `quoted` and `quoted_data`. Both are views into the parsed buffer.
#pragma once

#include <cstdint>
#include <span>

#include "common/bytes.h"
#include "net/wire/ipv4.h"
#include "net/wire/parsed.h"

namespace berth::net::wire {

enum class Icmpv4Type : uint8_t {
  EchoReply = 0,
  DstUnreachable = 3,
  Redirect = 5,
  EchoRequest = 8,
  TimeExceeded = 11,
  ParamProblem = 12,
};

// Codes of DstUnreachable (RFC 792, RFC 1191, RFC 1812 §5.2.7.1).
enum class Icmpv4Unreachable : uint8_t {
  Net = 0,
  Host = 1,
  Protocol = 2,
  Port = 3,
  FragNeeded = 4,  // "fragmentation needed and DF set"; carries the next-hop MTU
  SourceRouteFailed = 5,
  NetProhibited = 9,
  HostProhibited = 10,
  AdminProhibited = 13,
};

// Codes of TimeExceeded (RFC 792).
enum class Icmpv4TimeExceeded : uint8_t { TtlExpired = 0, FragReassembly = 1 };

class Icmpv4Packet {
 public:
  static constexpr size_t kHeaderLen = 8;
  // The quoted datagram's minimum: an IPv4 header plus 8 bytes.
  static constexpr size_t kMinQuotedData = 8;

  // Truncated when shorter than 8 bytes.
  static Parsed<Icmpv4Packet> check(Bytes message);

  uint8_t msg_type() const { return b_[0]; }
  uint8_t code() const { return b_[1]; }
  uint16_t checksum() const { return load_be16(&b_[2]); }
  uint16_t echo_ident() const { return load_be16(&b_[4]); }
  uint16_t echo_seq() const { return load_be16(&b_[6]); }
  uint16_t next_hop_mtu() const { return load_be16(&b_[6]); }
  Bytes payload() const { return b_.subspan(kHeaderLen); }
  Bytes bytes() const { return b_; }

  bool verify_checksum() const { return checksum_verifies(b_); }

 private:
  explicit Icmpv4Packet(Bytes b) : b_(b) {}
  Bytes b_;
};

struct Icmpv4Repr {
  Icmpv4Type type = Icmpv4Type::EchoRequest;
  uint8_t code = 0;
  // EchoRequest / EchoReply
  uint16_t ident = 0;
  uint16_t seq = 0;
  Bytes data;
  // DstUnreachable / TimeExceeded
  uint16_t next_hop_mtu = 0;  // DstUnreachable code FragNeeded only; 0 otherwise
  Ipv4Repr quoted;
  Bytes quoted_data;          // at least 8 bytes

  bool is_error() const { return type == Icmpv4Type::DstUnreachable || type == Icmpv4Type::TimeExceeded; }

  // BadChecksum (under Verify); Unsupported for other types; for errors, any
  // error of Ipv4Repr::parse_quoted, or Truncated when fewer than 8 bytes
  // follow the quoted header.
  static Parsed<Icmpv4Repr> parse(const Icmpv4Packet& p, ChecksumPolicy policy = ChecksumPolicy::Verify);
  size_t buffer_len() const;
  // Writes the whole message with its checksum (and, for errors, the quoted
  // header with its own). `data` / `quoted_data` may already lie at their
  // place in `out`. Precondition: out.size() >= buffer_len().
  void emit(std::span<uint8_t> out) const;

  friend bool operator==(const Icmpv4Repr& a, const Icmpv4Repr& b);
};

}  // namespace berth::net::wire
