// IPv4 packets (RFC 791).
//
// Ipv4Packet is a view checked once: at least 20 bytes, version 4, IHL >= 5,
// the header (options included) inside the buffer, total length covering the
// header and not beyond the buffer. After check() no accessor can fail, and
// payload() ends at the total length, so Ethernet padding never reaches the
// layer above. The header checksum is not part of check(): verify_checksum()
// reports it, and Ipv4Repr::parse refuses a bad one under ChecksumPolicy::Verify.
//
// Ipv4Repr describes the header only. emit() writes buffer_len() bytes (20
// plus options) with a correct checksum; the caller puts payload_len bytes of
// payload right after. Options are carried as opaque bytes (a multiple of 4,
// at most 40), so a parsed header re-emits byte for byte.
#pragma once

#include <cstdint>
#include <span>

#include "common/bytes.h"
#include "net/wire/addr.h"
#include "net/wire/ip.h"
#include "net/wire/parsed.h"

namespace berth::net::wire {

class Ipv4Packet {
 public:
  static constexpr size_t kMinHeaderLen = 20;
  static constexpr size_t kMaxHeaderLen = 60;

  // Truncated: shorter than 20 bytes, than IHL*4, or than the total length.
  // BadVersion: version != 4. BadHeaderLength: IHL < 5.
  // BadLength: total length < IHL*4.
  static Parsed<Ipv4Packet> check(Bytes packet);

  uint8_t version() const { return b_[0] >> 4; }
  size_t header_len() const { return size_t(b_[0] & 0x0f) * 4; }
  uint8_t dscp() const { return b_[1] >> 2; }
  uint8_t ecn() const { return b_[1] & 0x03; }
  uint16_t total_len() const { return load_be16(&b_[2]); }
  uint16_t ident() const { return load_be16(&b_[4]); }
  bool reserved_flag() const { return b_[6] & 0x80; }
  bool dont_frag() const { return b_[6] & 0x40; }
  bool more_frags() const { return b_[6] & 0x20; }
  // In bytes (the field counts 8-byte units).
  uint16_t frag_offset() const { return uint16_t((load_be16(&b_[6]) & 0x1fff) * 8); }
  uint8_t ttl() const { return b_[8]; }
  IpProtocol protocol() const { return IpProtocol(b_[9]); }
  uint16_t checksum() const { return load_be16(&b_[10]); }
  Ipv4Addr src() const { return Ipv4Addr::from_bytes(&b_[12]); }
  Ipv4Addr dst() const { return Ipv4Addr::from_bytes(&b_[16]); }
  Bytes options() const { return b_.subspan(kMinHeaderLen, header_len() - kMinHeaderLen); }
  Bytes header() const { return b_.first(header_len()); }
  // From the end of the header to the total length.
  Bytes payload() const { return b_.subspan(header_len(), total_len() - header_len()); }
  // The whole packet, header to total length (no padding).
  Bytes packet() const { return b_.first(total_len()); }

  bool verify_checksum() const { return checksum_verifies(header()); }

 private:
  explicit Ipv4Packet(Bytes b) : b_(b) {}
  Bytes b_;
};

struct Ipv4Repr {
  Ipv4Addr src;
  Ipv4Addr dst;
  IpProtocol protocol = IpProtocol::Udp;
  uint16_t payload_len = 0;
  uint8_t ttl = 64;
  uint8_t dscp = 0;         // 6 bits
  uint8_t ecn = 0;          // 2 bits
  uint16_t ident = 0;
  bool dont_frag = false;
  bool more_frags = false;
  uint16_t frag_offset = 0; // bytes, a multiple of 8, at most 65528
  Bytes options;            // a view; multiple of 4, at most 40 bytes

  // BadChecksum (under Verify), BadField: the reserved flag bit is set.
  static Parsed<Ipv4Repr> parse(const Ipv4Packet& p, ChecksumPolicy policy = ChecksumPolicy::Verify);
  // The header quoted inside an ICMP error (RFC 792): `quoted` starts with an
  // IPv4 header, but its total length describes the original datagram, of
  // which only the start follows. The checksum is not verified (the quoting
  // router saw the packet before any NAT rewrote it). Same errors as check()
  // and parse(), except that the total length may exceed the buffer.
  static Parsed<Ipv4Repr> parse_quoted(Bytes quoted);

  size_t header_len() const { return Ipv4Packet::kMinHeaderLen + options.size(); }
  size_t buffer_len() const { return header_len(); }
  // header_len() + payload_len; the caller keeps it <= 65535.
  size_t total_len() const { return header_len() + payload_len; }
  bool is_fragment() const { return more_frags || frag_offset != 0; }

  // Writes the header with its checksum. Preconditions: out.size() >=
  // buffer_len(), options and frag_offset as documented, total_len() <= 65535.
  void emit(std::span<uint8_t> out) const;

  friend bool operator==(const Ipv4Repr& a, const Ipv4Repr& b);
};

}  // namespace berth::net::wire
