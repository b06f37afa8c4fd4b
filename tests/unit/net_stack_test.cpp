// The switch and IPv4 front end, driven with fake links and a fake clock.
#include <catch2/catch.hpp>

#include <vector>

#include "net/stack.h"
#include "net/wire/arp.h"
#include "net/wire/ethernet.h"
#include "net/wire/icmpv4.h"
#include "net/wire/ipv4.h"

using namespace berth;
using namespace berth::net;
using namespace berth::net::wire;

namespace {

class FakeLink final : public FrameLink {
 public:
  std::string type() const override { return "fake"; }
  std::string peer() const override { return "test"; }
  Result<void> start(Receive) override { return {}; }
  bool send(Bytes f) override {
    if (full) return false;
    sent.emplace_back(f.begin(), f.end());
    return true;
  }
  void close() override {}
  size_t max_frame() const override { return 65535 + 14; }
  bool writable() const override { return !full; }
  std::vector<std::vector<uint8_t>> sent;
  bool full = false;
};

struct RecordingHandler final : L4Handler {
  void input(const GuestPacket& p, Instant) override {
    packets.push_back(p.ip);
    payloads.emplace_back(p.payload.begin(), p.payload.end());
  }
  std::vector<Ipv4Repr> packets;
  std::vector<std::vector<uint8_t>> payloads;
};

const MacAddr kGuestMac{{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
const MacAddr kGuest2Mac{{0x52, 0x54, 0x00, 0x12, 0x34, 0x57}};
const Ipv4Addr kGuestIp{192, 168, 65, 3};
const Ipv4Addr kGuest2Ip{192, 168, 65, 4};
const Ipv4Addr kGateway{192, 168, 65, 1};
const Ipv4Addr kHostAlias{192, 168, 65, 2};
const Instant kNow{5'000'000'000};

std::vector<uint8_t> eth_frame(MacAddr src, MacAddr dst, EtherType type, Bytes payload) {
  std::vector<uint8_t> f(14 + payload.size(), 0xa5);
  EthernetRepr{src, dst, type}.emit(f);
  std::copy(payload.begin(), payload.end(), f.begin() + 14);
  return f;
}

std::vector<uint8_t> arp_request(MacAddr mac, Ipv4Addr ip, Ipv4Addr target) {
  std::vector<uint8_t> a(ArpRepr::kLen);
  ArpRepr{ArpOperation::Request, mac, ip, MacAddr{}, target}.emit(a);
  return eth_frame(mac, MacAddr::broadcast(), EtherType::Arp, a);
}

// An IPv4 packet carrying `l4` (no fragmentation unless asked).
std::vector<uint8_t> ipv4_packet(Ipv4Addr src, Ipv4Addr dst, IpProtocol proto, Bytes l4, uint8_t ttl = 64,
                                 uint16_t ident = 7, uint16_t frag_offset = 0, bool more = false) {
  Ipv4Repr ip;
  ip.src = src;
  ip.dst = dst;
  ip.protocol = proto;
  ip.payload_len = uint16_t(l4.size());
  ip.ttl = ttl;
  ip.ident = ident;
  ip.frag_offset = frag_offset;
  ip.more_frags = more;
  std::vector<uint8_t> b(20 + l4.size());
  ip.emit(b);
  std::copy(l4.begin(), l4.end(), b.begin() + 20);
  return b;
}

std::vector<uint8_t> echo_request(uint16_t id, uint16_t seq, size_t len) {
  std::vector<uint8_t> data(len);
  for (size_t i = 0; i < len; i++) data[i] = uint8_t(i * 7);
  Icmpv4Repr r;
  r.type = Icmpv4Type::EchoRequest;
  r.ident = id;
  r.seq = seq;
  r.data = data;
  std::vector<uint8_t> out(r.buffer_len());
  r.emit(out);
  return out;
}

struct Rig {
  Stack stack{NetConfig{}};
  FakeLink link, link2;
  uint32_t p0 = 0, p1 = 0;
  Rig() {
    p0 = stack.add_port(&link).value();
    p1 = stack.add_port(&link2).value();
  }
  void from_guest(Bytes frame, uint32_t port = 0) { stack.receive(port, frame, kNow); }
  void ip_from_guest(Bytes ip, uint32_t port = 0, MacAddr mac = kGuestMac) {
    from_guest(eth_frame(mac, stack.config().gateway_mac, EtherType::Ipv4, ip), port);
  }
  uint64_t drops(Drop d) const { return stack.stats().drops[size_t(d)]; }
  // The guest announces itself, as a real stack does before anything else.
  void announce(uint32_t port = 0, MacAddr mac = kGuestMac, Ipv4Addr ip = kGuestIp) {
    from_guest(arp_request(mac, ip, kGateway), port);
  }
};

// Parse a frame the stack sent: Ethernet + IPv4 + payload.
struct Sent {
  EthernetRepr eth;
  Ipv4Repr ip;
  std::vector<uint8_t> payload;
};
Sent parse_sent(const std::vector<uint8_t>& f) {
  auto e = EthernetFrame::check(f);
  REQUIRE(e);
  Sent s{*EthernetRepr::parse(*e), {}, {}};
  auto pk = Ipv4Packet::check(e->payload());
  REQUIRE(pk);
  auto ip = Ipv4Repr::parse(*pk);
  REQUIRE(ip);
  s.ip = *ip;
  s.payload.assign(pk->payload().begin(), pk->payload().end());
  return s;
}

}  // namespace

TEST_CASE("ARP request for the gateway is answered with the gateway MAC", "[stack]") {
  Rig r;
  r.announce();
  REQUIRE(r.link.sent.size() == 1);
  auto e = EthernetFrame::check(r.link.sent[0]);
  REQUIRE(e);
  CHECK(e->dst() == kGuestMac);
  CHECK(e->src() == r.stack.config().gateway_mac);
  auto a = ArpRepr::parse(*ArpPacket::check(e->payload()));
  REQUIRE(a);
  CHECK(a->op == ArpOperation::Reply);
  CHECK(a->sender_mac == r.stack.config().gateway_mac);
  CHECK(a->sender_ip == kGateway);
  CHECK(a->target_ip == kGuestIp);
  CHECK(r.stack.port(0).ip == kGuestIp);
  CHECK(r.stack.port(0).mac == kGuestMac);
}

TEST_CASE("ARP request for the host alias is answered, for another address it is not", "[stack]") {
  Rig r;
  r.from_guest(arp_request(kGuestMac, kGuestIp, kHostAlias));
  CHECK(r.link.sent.size() == 1);
  r.from_guest(arp_request(kGuestMac, kGuestIp, Ipv4Addr(192, 168, 65, 77)));
  CHECK(r.link.sent.size() == 1);
  CHECK(r.stack.stats().arp_replies == 1);
}

TEST_CASE("a second source MAC on a learned port is dropped as spoofed", "[stack]") {
  Rig r;
  r.announce();
  r.from_guest(arp_request(kGuest2Mac, kGuest2Ip, kGateway));
  CHECK(r.drops(Drop::SpoofedMac) == 1);
  CHECK(r.link.sent.size() == 1);
}

TEST_CASE("an IPv4 source other than the port's is dropped as spoofed", "[stack]") {
  Rig r;
  r.announce();
  auto echo = echo_request(1, 1, 8);
  r.ip_from_guest(ipv4_packet(Ipv4Addr(192, 168, 65, 99), kGateway, IpProtocol::Icmp, echo));
  CHECK(r.drops(Drop::SpoofedIp) == 1);
  CHECK(r.stack.stats().icmp_echo_replies == 0);
}

TEST_CASE("a guest claiming another port's address is dropped as a conflict", "[stack]") {
  Rig r;
  r.announce();
  r.from_guest(arp_request(kGuest2Mac, kGuestIp, kGateway), r.p1);
  CHECK(r.drops(Drop::IpConflict) == 1);
  CHECK(!r.stack.port(1).ip);
}

TEST_CASE("ICMP echo to the gateway is answered with the same id, sequence and data", "[stack]") {
  Rig r;
  r.announce();
  auto echo = echo_request(0x1234, 9, 56);
  r.ip_from_guest(ipv4_packet(kGuestIp, kGateway, IpProtocol::Icmp, echo));
  REQUIRE(r.link.sent.size() == 2);
  Sent s = parse_sent(r.link.sent[1]);
  CHECK(s.eth.dst == kGuestMac);
  CHECK(s.ip.src == kGateway);
  CHECK(s.ip.dst == kGuestIp);
  auto icmp = Icmpv4Repr::parse(*Icmpv4Packet::check(s.payload));  // verifies the checksum
  REQUIRE(icmp);
  CHECK(icmp->type == Icmpv4Type::EchoReply);
  CHECK(icmp->ident == 0x1234);
  CHECK(icmp->seq == 9);
  CHECK(std::equal(icmp->data.begin(), icmp->data.end(), echo.begin() + 8, echo.end()));
}

TEST_CASE("an IPv4 header with a bad checksum is dropped and counted", "[stack]") {
  Rig r;
  r.announce();
  auto pkt = ipv4_packet(kGuestIp, kGateway, IpProtocol::Icmp, echo_request(1, 1, 8));
  pkt[10] ^= 0x55;
  r.ip_from_guest(pkt);
  CHECK(r.drops(Drop::Ipv4BadChecksum) == 1);
  CHECK(r.link.sent.size() == 1);
}

TEST_CASE("malformed frames are dropped under named reasons", "[stack]") {
  Rig r;
  std::vector<uint8_t> runt(10, 0);
  r.from_guest(runt);
  CHECK(r.drops(Drop::EthMalformed) == 1);
  r.announce();
  std::vector<uint8_t> junk(9, 0x45);
  r.ip_from_guest(junk);
  CHECK(r.drops(Drop::Ipv4Malformed) == 1);
  r.from_guest(eth_frame(kGuestMac, r.stack.config().gateway_mac, EtherType::Ipv6, junk));
  CHECK(r.drops(Drop::Ipv6) == 1);
  CHECK(r.stack.stats().render().find("drop_ipv4_malformed 1\n") != std::string::npos);
}

TEST_CASE("TTL 1 toward the outside gets ICMP time exceeded quoting the packet", "[stack]") {
  Rig r;
  RecordingHandler h;
  r.stack.set_handler(IpProtocol::Udp, &h);
  r.announce();
  std::vector<uint8_t> udp(12, 1);
  auto pkt = ipv4_packet(kGuestIp, Ipv4Addr(10, 9, 8, 7), IpProtocol::Udp, udp, /*ttl=*/1);
  r.ip_from_guest(pkt);
  CHECK(h.packets.empty());
  CHECK(r.drops(Drop::TtlExpired) == 1);
  REQUIRE(r.link.sent.size() == 2);
  Sent s = parse_sent(r.link.sent[1]);
  auto icmp = Icmpv4Repr::parse(*Icmpv4Packet::check(s.payload));
  REQUIRE(icmp);
  CHECK(icmp->type == Icmpv4Type::TimeExceeded);
  CHECK(icmp->quoted.dst == Ipv4Addr(10, 9, 8, 7));
  CHECK(icmp->quoted.ident == 7);
}

TEST_CASE("an address in the subnet with nobody there gets host unreachable", "[stack]") {
  Rig r;
  r.announce();
  r.ip_from_guest(ipv4_packet(kGuestIp, Ipv4Addr(192, 168, 65, 200), IpProtocol::Udp, std::vector<uint8_t>(8, 0)));
  CHECK(r.drops(Drop::NoRoute) == 1);
  REQUIRE(r.link.sent.size() == 2);
  Sent s = parse_sent(r.link.sent[1]);
  auto icmp = Icmpv4Repr::parse(*Icmpv4Packet::check(s.payload));
  REQUIRE(icmp);
  CHECK(icmp->type == Icmpv4Type::DstUnreachable);
  CHECK(icmp->code == uint8_t(Icmpv4Unreachable::Host));
  CHECK(s.ip.src == kGateway);
}

TEST_CASE("packets for the host alias and the outside reach the protocol handler", "[stack]") {
  Rig r;
  RecordingHandler h;
  r.stack.set_handler(IpProtocol::Tcp, &h);
  r.announce();
  std::vector<uint8_t> seg(20, 0);
  r.ip_from_guest(ipv4_packet(kGuestIp, kHostAlias, IpProtocol::Tcp, seg));
  r.ip_from_guest(ipv4_packet(kGuestIp, Ipv4Addr(203, 0, 113, 5), IpProtocol::Tcp, seg));
  r.ip_from_guest(ipv4_packet(kGuestIp, kGateway, IpProtocol::Tcp, seg));
  REQUIRE(h.packets.size() == 3);
  CHECK(h.packets[0].dst == kHostAlias);
  CHECK(h.packets[1].dst == Ipv4Addr(203, 0, 113, 5));
  CHECK(h.packets[2].dst == kGateway);
}

TEST_CASE("a protocol without a handler gets protocol unreachable", "[stack]") {
  Rig r;
  r.announce();
  r.ip_from_guest(ipv4_packet(kGuestIp, Ipv4Addr(203, 0, 113, 5), IpProtocol(132), std::vector<uint8_t>(8, 0)));
  CHECK(r.drops(Drop::NoHandler) == 1);
  REQUIRE(r.link.sent.size() == 2);
  auto icmp = Icmpv4Repr::parse(*Icmpv4Packet::check(parse_sent(r.link.sent[1]).payload));
  REQUIRE(icmp);
  CHECK(icmp->code == uint8_t(Icmpv4Unreachable::Protocol));
}

TEST_CASE("fragments are reassembled, and a reply larger than the MTU is fragmented", "[stack]") {
  NetConfig cfg;
  REQUIRE(cfg.set_mtu(576));
  Stack stack(cfg);
  FakeLink link;
  REQUIRE(stack.add_port(&link));
  stack.receive(0, arp_request(kGuestMac, kGuestIp, kGateway), kNow);
  auto echo = echo_request(5, 6, 1000);  // 1008 bytes of ICMP
  auto send_frag = [&](size_t off, size_t len, bool more) {
    auto pkt = ipv4_packet(kGuestIp, kGateway, IpProtocol::Icmp, Bytes(echo).subspan(off, len), 64, 99,
                           uint16_t(off), more);
    stack.receive(0, eth_frame(kGuestMac, cfg.gateway_mac, EtherType::Ipv4, pkt), kNow);
  };
  send_frag(552, echo.size() - 552, false);  // last first: order must not matter
  CHECK(stack.stats().icmp_echo_replies == 0);
  send_frag(0, 552, true);
  CHECK(stack.stats().reassembled == 1);
  CHECK(stack.stats().icmp_echo_replies == 1);
  // The 1028-byte reply leaves as fragments of at most 576 bytes.
  REQUIRE(link.sent.size() == 1 + 2);
  std::vector<uint8_t> joined;
  for (size_t i = 1; i < link.sent.size(); i++) {
    Sent s = parse_sent(link.sent[i]);
    CHECK(s.ip.total_len() <= 576);
    CHECK(s.ip.frag_offset == joined.size());
    CHECK(s.ip.more_frags == (i + 1 < link.sent.size()));
    joined.insert(joined.end(), s.payload.begin(), s.payload.end());
  }
  auto icmp = Icmpv4Repr::parse(*Icmpv4Packet::check(joined));
  REQUIRE(icmp);
  CHECK(icmp->type == Icmpv4Type::EchoReply);
  CHECK(icmp->data.size() == 1000);
  CHECK(stack.stats().fragments_out == 2);
}

TEST_CASE("an unfinished datagram is dropped when reassembly times out", "[stack]") {
  Rig r;
  r.announce();
  auto echo = echo_request(5, 6, 100);
  r.ip_from_guest(ipv4_packet(kGuestIp, kGateway, IpProtocol::Icmp, Bytes(echo).first(64), 64, 3, 0, true));
  auto at = r.stack.poll_at();
  REQUIRE(at);
  r.stack.poll(*at - std::chrono::milliseconds(1));
  CHECK(r.drops(Drop::FragmentLimit) == 0);
  r.stack.poll(*at);
  CHECK(r.drops(Drop::FragmentLimit) == 1);
  CHECK(!r.stack.poll_at());
}

TEST_CASE("the reassembly table is bounded", "[stack]") {
  Rig r;
  r.announce();
  auto echo = echo_request(5, 6, 100);
  for (uint16_t id = 0; id < 20; id++)
    r.ip_from_guest(ipv4_packet(kGuestIp, kGateway, IpProtocol::Icmp, Bytes(echo).first(64), 64, id, 0, true));
  CHECK(r.drops(Drop::FragmentLimit) == 20 - NetConfig{}.max_reassembly);
}

TEST_CASE("frames for another guest's MAC are forwarded, broadcasts are flooded", "[stack]") {
  Rig r;
  r.announce(0, kGuestMac, kGuestIp);
  r.announce(1, kGuest2Mac, kGuest2Ip);
  // Each ARP broadcast was flooded to the other port as well as answered.
  CHECK(r.link.sent.size() == 2);   // reply to guest 1 + guest 2's broadcast
  CHECK(r.link2.sent.size() == 1);  // reply to guest 2 (guest 1 announced before guest 2 had a MAC)
  auto pkt = ipv4_packet(kGuestIp, kGuest2Ip, IpProtocol::Udp, std::vector<uint8_t>(8, 0));
  r.from_guest(eth_frame(kGuestMac, kGuest2Mac, EtherType::Ipv4, pkt), 0);
  REQUIRE(r.link2.sent.size() == 2);
  CHECK(r.link2.sent[1] == eth_frame(kGuestMac, kGuest2Mac, EtherType::Ipv4, pkt));
  CHECK(r.stack.stats().forwarded >= 2);
}

TEST_CASE("send_ipv4 toward an unknown guest fails and counts, a full link reports backpressure", "[stack]") {
  Rig r;
  CHECK(!r.stack.send_ipv4(kGateway, kGuestIp, IpProtocol::Udp, 8, [](std::span<uint8_t>, const PseudoHeader&) {}));
  CHECK(r.stack.stats().tx_no_arp == 1);
  r.announce();
  CHECK(r.stack.can_send(kGuestIp));
  r.link.full = true;
  CHECK(!r.stack.can_send(kGuestIp));
  CHECK(!r.stack.send_ipv4(kGateway, kGuestIp, IpProtocol::Udp, 8, [](std::span<uint8_t>, const PseudoHeader&) {}));
  CHECK(r.stack.stats().tx_link_full == 1);
}

TEST_CASE("the port table is bounded", "[stack]") {
  NetConfig cfg;
  cfg.max_ports = 1;
  Stack s(cfg);
  FakeLink a, b;
  CHECK(s.add_port(&a));
  auto second = s.add_port(&b);
  REQUIRE(!second);
  CHECK(second.error().code == ENOSPC);
  CHECK(s.stats().drops[size_t(Drop::PortTableFull)] == 1);
}
