// libFuzzer target: the packet codecs (net/wire/).
//
// Each input is one Ethernet frame. Every layer that checks is parsed:
// Ethernet → ARP | IPv4 → (ICMPv4 | UDP | TCP) | IPv6 → (UDP | TCP | ICMPv6).
// Checksums are ignored when parsing the input, so that random bytes reach
// the deeper layers, and verified on everything we emit.
// Invariants checked (abort on violation, so libFuzzer reports a crash):
//   - no view or parse reads out of bounds (ASan), and views stay inside
//     their buffer;
//   - parse(Verify) succeeds exactly when parse(Ignore) does and the
//     checksum verifies;
//   - when a Repr parses, emit() into exactly buffer_len() bytes writes no
//     byte past them, the result checks and parses again under Verify, to an
//     equal Repr, and re-emitting that gives the same bytes (a fixed point);
//   - where the wire form is canonical the round trip is exact: Ethernet,
//     ARP and IPv6 headers always, the IPv4 header, ICMP echo and UDP when
//     their checksum verified (up to 0x0000 vs 0xffff, both of which verify
//     when the right checksum is 0).
// The input is also fed, as text, to the address parsers (parse ∘ to_string
// is the identity on what parses), and to the checksum against a plain
// RFC 1071 loop.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "net/wire/addr.h"
#include "net/wire/arp.h"
#include "net/wire/checksum.h"
#include "net/wire/ethernet.h"
#include "net/wire/icmpv4.h"
#include "net/wire/ip.h"
#include "net/wire/ipv4.h"
#include "net/wire/ipv6.h"
#include "net/wire/tcp.h"
#include "net/wire/udp.h"

using namespace berth;
using namespace berth::net::wire;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_net_wire invariant violated: %s\n", what);
  std::abort();
}

void check(bool cond, const char* what) {
  if (!cond) fail(what);
}

bool inside(Bytes part, Bytes whole) {
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

bool equal(Bytes a, Bytes b) { return same_bytes(a, b); }

// a == b, except that the 16-bit checksum at `at` may be 0x0000 in `a` where
// `b` has 0xffff: both verify when the correct checksum is 0.
bool equal_up_to_zero_checksum(Bytes a, Bytes b, size_t at) {
  if (a.size() != b.size()) return false;
  if (equal(a, b)) return true;
  if (load_be16(&a[at]) != 0 || load_be16(&b[at]) != 0xffff) return false;
  return std::memcmp(a.data(), b.data(), at) == 0 &&
         std::memcmp(a.data() + at + 2, b.data() + at + 2, a.size() - at - 2) == 0;
}

constexpr size_t kCanary = 32;

// Runs emit(span of exactly len bytes) over a 0xa5-filled buffer and checks
// that nothing past len was written.
template <class F>
std::vector<uint8_t> emitted(size_t len, F&& emit) {
  std::vector<uint8_t> buf(len + kCanary, 0xa5);
  emit(std::span<uint8_t>(buf.data(), len));
  for (size_t i = len; i < buf.size(); i++) check(buf[i] == 0xa5, "emit wrote past buffer_len()");
  buf.resize(len);
  return buf;
}

uint16_t reference_sum(Bytes b) {
  uint32_t sum = 0;
  for (size_t i = 0; i < b.size(); i += 2) {
    sum += uint32_t(b[i] << 8) | (i + 1 < b.size() ? b[i + 1] : 0);
    sum = (sum & 0xffff) + (sum >> 16);
  }
  return uint16_t((sum & 0xffff) + (sum >> 16));
}

// ------------------------------------------------------------ transport

void fuzz_udp(Bytes x, const PseudoHeader& ph) {
  auto p = UdpPacket::check(x);
  if (!p) return;
  check(inside(p->payload(), x) && inside(p->datagram(), x), "udp view outside its buffer");
  auto r = UdpRepr::parse(*p, ph, ChecksumPolicy::Ignore);
  check(r.ok(), "udp parse(Ignore) failed on a checked view");
  bool verified = p->verify_checksum(ph);
  check(UdpRepr::parse(*p, ph).ok() == verified, "udp parse(Verify) disagrees with verify_checksum");
  check(r->buffer_len() == p->len(), "udp buffer_len != length field");

  auto y = emitted(r->buffer_len(), [&](std::span<uint8_t> out) { r->emit(out, ph); });
  check(load_be16(&y[6]) != 0, "udp emitted a zero checksum");
  if (verified && p->checksum() != 0) check(equal(y, p->datagram()), "udp re-emit differs from a valid input");
  auto q = UdpPacket::check(y);
  check(q.ok(), "emitted udp does not check");
  auto r2 = UdpRepr::parse(*q, ph);
  check(r2.ok(), "emitted udp does not verify");
  check(*r2 == *r, "udp repr changed in a round trip");
  auto z = emitted(r2->buffer_len(), [&](std::span<uint8_t> out) { r2->emit(out, ph); });
  check(z == y, "udp emit is not a fixed point");
}

void fuzz_tcp(Bytes x, const PseudoHeader& ph) {
  auto p = TcpPacket::check(x);
  if (!p) return;
  check(inside(p->options(), x) && inside(p->payload(), x), "tcp view outside its buffer");
  check(p->header_len() >= 20 && p->header_len() <= 60, "tcp header length out of range");

  // The option walker terminates, stays inside, and agrees with parse.
  TcpOptionReader reader(p->options());
  TcpOption o;
  size_t n = 0;
  while (reader.next(o)) {
    check(inside(o.data, p->options()), "tcp option outside the options area");
    check(++n <= 20, "more tcp options than 40 bytes can hold");
  }

  auto r = TcpRepr::parse(*p, ph, ChecksumPolicy::Ignore);
  if (reader.failed()) check(!r.ok() && r.error() == WireError::BadOption, "malformed tcp options accepted");
  bool verified = p->verify_checksum(ph);
  auto rv = TcpRepr::parse(*p, ph);
  check(rv.ok() == (r.ok() && verified), "tcp parse(Verify) disagrees with verify_checksum");
  if (!r) return;
  check(r->sack_count <= TcpRepr::kMaxSackBlocks, "too many sack blocks");
  check(r->options_len() % 4 == 0 && r->options_len() <= 40, "tcp options_len out of range");

  auto y = emitted(r->buffer_len(), [&](std::span<uint8_t> out) { r->emit(out, ph); });
  auto q = TcpPacket::check(y);
  check(q.ok(), "emitted tcp does not check");
  auto r2 = TcpRepr::parse(*q, ph);
  check(r2.ok(), "emitted tcp does not parse and verify");
  check(*r2 == *r, "tcp repr changed in a round trip");
  auto z = emitted(r2->buffer_len(), [&](std::span<uint8_t> out) { r2->emit(out, ph); });
  check(z == y, "tcp emit is not a fixed point");
}

void fuzz_icmpv4(Bytes x) {
  auto p = Icmpv4Packet::check(x);
  if (!p) return;
  auto r = Icmpv4Repr::parse(*p, ChecksumPolicy::Ignore);
  bool verified = p->verify_checksum();
  check(Icmpv4Repr::parse(*p).ok() == (r.ok() && verified), "icmp parse(Verify) disagrees with verify_checksum");
  if (!r) return;
  if (r->is_error()) {
    check(inside(r->quoted.options, x) && inside(r->quoted_data, x), "icmp quoted views outside the message");
    check(r->quoted_data.size() >= 8, "icmp error quoting fewer than 8 bytes");
  } else {
    check(inside(r->data, x), "icmp echo data outside the message");
  }
  check(r->buffer_len() == x.size(), "icmp buffer_len != message size");

  auto y = emitted(r->buffer_len(), [&](std::span<uint8_t> out) { r->emit(out); });
  if (verified && !r->is_error()) check(equal_up_to_zero_checksum(y, x, 2), "icmp echo re-emit differs from a valid input");
  auto q = Icmpv4Packet::check(y);
  check(q.ok(), "emitted icmp does not check");
  auto r2 = Icmpv4Repr::parse(*q);
  check(r2.ok(), "emitted icmp does not parse and verify");
  check(*r2 == *r, "icmp repr changed in a round trip");
  auto z = emitted(r2->buffer_len(), [&](std::span<uint8_t> out) { r2->emit(out); });
  check(z == y, "icmp emit is not a fixed point");
}

void fuzz_icmpv6(Bytes x, const Ipv6Addr& src, const Ipv6Addr& dst) {
  auto p = Icmpv6Packet::check(x);
  if (!p) return;
  std::vector<uint8_t> y(x.begin(), x.end());
  fill_icmpv6_checksum(y, src, dst);
  auto q = Icmpv6Packet::check(y);
  check(q.ok() && q->verify_checksum(src, dst), "filled icmpv6 checksum does not verify");
  if (p->verify_checksum(src, dst)) check(equal_up_to_zero_checksum(y, x, 2), "icmpv6 checksum differs from a valid one");
}

// ------------------------------------------------------------ network

void fuzz_ipv4(Bytes x) {
  // The quoted-header parser accepts a superset of what check+parse accept.
  auto quoted = Ipv4Repr::parse_quoted(x);

  auto p = Ipv4Packet::check(x);
  if (!p) return;
  check(inside(p->packet(), x) && inside(p->payload(), x) && inside(p->options(), x), "ipv4 view outside its buffer");
  auto r = Ipv4Repr::parse(*p, ChecksumPolicy::Ignore);
  bool verified = p->verify_checksum();
  check(Ipv4Repr::parse(*p).ok() == (r.ok() && verified), "ipv4 parse(Verify) disagrees with verify_checksum");
  check(quoted.ok() == r.ok(), "ipv4 parse_quoted disagrees with parse");
  if (!r) return;
  check(*quoted == *r, "ipv4 parse_quoted gives another repr");
  check(r->header_len() == p->header_len() && r->total_len() == p->total_len(), "ipv4 lengths changed");

  auto y = emitted(r->buffer_len(), [&](std::span<uint8_t> out) { r->emit(out); });
  if (verified) check(equal_up_to_zero_checksum(y, p->header(), 10), "ipv4 header re-emit differs from a valid input");
  std::vector<uint8_t> whole = y;
  whole.insert(whole.end(), p->payload().begin(), p->payload().end());
  auto q = Ipv4Packet::check(whole);
  check(q.ok(), "emitted ipv4 does not check");
  auto r2 = Ipv4Repr::parse(*q);
  check(r2.ok(), "emitted ipv4 does not parse and verify");
  check(*r2 == *r, "ipv4 repr changed in a round trip");
  auto z = emitted(r2->buffer_len(), [&](std::span<uint8_t> out) { r2->emit(out); });
  check(z == y, "ipv4 emit is not a fixed point");

  if (r->is_fragment() && r->frag_offset != 0) return;  // no transport header here
  auto ph = PseudoHeader::v4(r->src, r->dst);
  switch (r->protocol) {
    case IpProtocol::Icmp: fuzz_icmpv4(p->payload()); break;
    case IpProtocol::Udp: fuzz_udp(p->payload(), ph); break;
    case IpProtocol::Tcp: fuzz_tcp(p->payload(), ph); break;
    default: break;
  }
}

void fuzz_ipv6(Bytes x) {
  auto p = Ipv6Packet::check(x);
  if (!p) return;
  check(inside(p->packet(), x) && inside(p->payload(), x), "ipv6 view outside its buffer");
  auto r = Ipv6Repr::parse(*p);
  check(r.ok(), "ipv6 parse failed on a checked view");
  auto y = emitted(r->buffer_len(), [&](std::span<uint8_t> out) { r->emit(out); });
  check(equal(y, x.first(40)), "ipv6 header re-emit differs");
  std::vector<uint8_t> whole = y;
  whole.insert(whole.end(), p->payload().begin(), p->payload().end());
  auto q = Ipv6Packet::check(whole);
  check(q.ok() && *Ipv6Repr::parse(*q) == *r, "ipv6 repr changed in a round trip");

  auto ph = PseudoHeader::v6(r->src, r->dst);
  switch (r->next_header) {
    case IpProtocol::Icmpv6: fuzz_icmpv6(p->payload(), r->src, r->dst); break;
    case IpProtocol::Udp: fuzz_udp(p->payload(), ph); break;
    case IpProtocol::Tcp: fuzz_tcp(p->payload(), ph); break;
    default: break;
  }
}

void fuzz_arp(Bytes x) {
  auto p = ArpPacket::check(x);
  if (!p) return;
  check(p->len() <= x.size() && inside(p->target_protocol_addr(), x), "arp view outside its buffer");
  auto r = ArpRepr::parse(*p);
  if (!r) return;
  auto y = emitted(r->buffer_len(), [&](std::span<uint8_t> out) { r->emit(out); });
  check(equal(y, x.first(28)), "arp re-emit differs");
  check(*ArpRepr::parse(*ArpPacket::check(y)) == *r, "arp repr changed in a round trip");
}

void fuzz_ethernet(Bytes x) {
  auto f = EthernetFrame::check(x);
  if (!f) return;
  auto r = EthernetRepr::parse(*f);
  if (r) {
    auto y = emitted(r->buffer_len(), [&](std::span<uint8_t> out) { r->emit(out); });
    check(equal(y, x.first(14)), "ethernet header re-emit differs");
    check(*EthernetRepr::parse(*EthernetFrame::check(y)) == *r, "ethernet repr changed in a round trip");
  } else {
    check(r.error() == WireError::VlanTagged || r.error() == WireError::Unsupported, "unexpected ethernet error");
    check((r.error() == WireError::VlanTagged) == f->is_vlan_tagged(), "vlan_tagged disagrees with the view");
    return;
  }
  switch (r->ethertype) {
    case EtherType::Arp: fuzz_arp(f->payload()); break;
    case EtherType::Ipv4: fuzz_ipv4(f->payload()); break;
    case EtherType::Ipv6: fuzz_ipv6(f->payload()); break;
    default: break;
  }
}

// ------------------------------------------------------------ text and sums

void fuzz_text(Bytes x) {
  if (x.size() > 64) return;
  std::string_view s = as_chars(x);
  if (auto m = MacAddr::parse(s)) check(MacAddr::parse(m->to_string()) == *m, "mac text round trip");
  if (auto a = Ipv4Addr::parse(s)) check(a->to_string() == s, "ipv4 text is not canonical");
  if (auto c = Ipv4Cidr::parse(s)) {
    check(c->to_string() == s, "cidr text is not canonical");
    check(c->prefix_len <= 32 && c->contains(c->addr) && c->contains(c->network()) && c->contains(c->broadcast()),
          "cidr does not contain its own addresses");
  }
  if (auto a = Ipv6Addr::parse(s)) check(Ipv6Addr::parse(a->to_string()) == *a, "ipv6 text round trip");
}

void fuzz_sum(Bytes x) {
  check(ones_sum(x) == reference_sum(x), "ones_sum disagrees with RFC 1071");
  if (x.size() >= 2) check(ones_sum(x.subspan(1)) == reference_sum(x.subspan(1)), "ones_sum (unaligned) disagrees");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes x(data, size);
  fuzz_ethernet(x);
  fuzz_text(x);
  fuzz_sum(x);
  return 0;
}
