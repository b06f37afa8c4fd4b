// Theory of operation: ICMPv4 messages.
//
// Every ICMP message starts with type, code and a checksum over the whole
// message (RFC 792); the next four bytes depend on the type. The view checks
// only those 8 bytes. The representation dispatches on the type:
//   - echo: identifier and sequence number, then opaque data to be echoed;
//   - errors: four mostly unused bytes, then the start of the datagram that
//     caused the error. That quoted header is parsed without bounding its
//     total length by the buffer, since only its first bytes are present.
// The "unused" bytes of errors are ignored on parse and written as zero on
// emit, except the next-hop MTU of "fragmentation needed" (RFC 1191 §4). So
// RFC 4884 extension lengths are dropped, which no peer of ours depends on.
#include "net/wire/icmpv4.h"

#include <cassert>
#include <cstring>

namespace berth::net::wire {

Parsed<Icmpv4Packet> Icmpv4Packet::check(Bytes message) {
  if (message.size() < kHeaderLen) return WireError::Truncated;
  return Icmpv4Packet(message);
}

Parsed<Icmpv4Repr> Icmpv4Repr::parse(const Icmpv4Packet& p, ChecksumPolicy policy) {
  if (policy == ChecksumPolicy::Verify && !p.verify_checksum()) return WireError::BadChecksum;
  Icmpv4Repr r;
  r.type = Icmpv4Type(p.msg_type());
  r.code = p.code();
  switch (r.type) {
    case Icmpv4Type::EchoRequest:  // RFC 792 p.14 "Echo or Echo Reply Message"
    case Icmpv4Type::EchoReply:
      r.ident = p.echo_ident();
      r.seq = p.echo_seq();
      r.data = p.payload();
      return r;
    case Icmpv4Type::DstUnreachable:  // RFC 792 p.4; RFC 1191 §4 for the MTU
    case Icmpv4Type::TimeExceeded: {  // RFC 792 p.6
      auto quoted = Ipv4Repr::parse_quoted(p.payload());
      if (!quoted) return quoted.error();
      r.quoted = *quoted;
      r.quoted_data = p.payload().subspan(quoted->header_len());
      if (r.quoted_data.size() < Icmpv4Packet::kMinQuotedData) return WireError::Truncated;
      if (r.type == Icmpv4Type::DstUnreachable && r.code == uint8_t(Icmpv4Unreachable::FragNeeded))
        r.next_hop_mtu = p.next_hop_mtu();
      return r;
    }
    default:  // redirect, parameter problem, timestamps, router discovery: not ours
      return WireError::Unsupported;
  }
}

size_t Icmpv4Repr::buffer_len() const {
  if (is_error()) return Icmpv4Packet::kHeaderLen + quoted.header_len() + quoted_data.size();
  return Icmpv4Packet::kHeaderLen + data.size();
}

void Icmpv4Repr::emit(std::span<uint8_t> out) const {
  size_t len = buffer_len();
  assert(out.size() >= len);
  out[0] = uint8_t(type);
  out[1] = code;
  store_be16(&out[2], 0);
  if (is_error()) {
    store_be16(&out[4], 0);
    bool frag_needed = type == Icmpv4Type::DstUnreachable && code == uint8_t(Icmpv4Unreachable::FragNeeded);
    store_be16(&out[6], frag_needed ? next_hop_mtu : 0);
    size_t qh = quoted.header_len();
    // quoted_data first: when it already lies in place, emitting the header
    // with its options cannot overwrite it.
    if (!quoted_data.empty()) std::memmove(&out[8 + qh], quoted_data.data(), quoted_data.size());
    quoted.emit(out.subspan(8, qh));
  } else {
    store_be16(&out[4], ident);
    store_be16(&out[6], seq);
    if (!data.empty()) std::memmove(&out[8], data.data(), data.size());
  }
  store_be16(&out[2], internet_checksum(Bytes(out.data(), len)));
}

bool operator==(const Icmpv4Repr& a, const Icmpv4Repr& b) {
  if (a.type != b.type || a.code != b.code) return false;
  if (a.is_error())
    return a.next_hop_mtu == b.next_hop_mtu && a.quoted == b.quoted && same_bytes(a.quoted_data, b.quoted_data);
  return a.ident == b.ident && a.seq == b.seq && same_bytes(a.data, b.data);
}

}  // namespace berth::net::wire
