// DHCP: the codec (net/wire/dhcp.h) from byte fixtures, and the server
// (net/dhcp.h) driven through a real Stack and UdpNat with fake links, a
// fake DgramHost (DHCP never opens host sockets) and a fake wall clock.
// Every reply is parsed back from the Ethernet frame the guest would get.
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/clock.h"
#include "net/dhcp.h"
#include "net/host/dgram_host.h"
#include "net/stack.h"
#include "net/udp.h"
#include "net/wire/dhcp.h"
#include "net/wire/ethernet.h"
#include "net/wire/icmpv4.h"
#include "net/wire/ipv4.h"
#include "net/wire/udp.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

using namespace berth;
using namespace berth::net;
using namespace berth::net::wire;

namespace {

const MacAddr kMac1{{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
const MacAddr kMac2{{0x52, 0x54, 0x00, 0x12, 0x34, 0x57}};
const MacAddr kMac3{{0x52, 0x54, 0x00, 0x12, 0x34, 0x58}};
const Ipv4Addr kGateway{192, 168, 65, 1};
const Ipv4Addr kFirst{192, 168, 65, 3};
const Instant kNow{5'000'000'000};

std::string str(Bytes b) { return std::string(as_chars(b)); }

// ---- Codec fixtures ---------------------------------------------------------------

// A DISCOVER as a Linux dhclient sends it, built byte by byte.
std::vector<uint8_t> discover_fixture() {
  std::vector<uint8_t> b(240, 0);
  b[0] = 1;  // BOOTREQUEST
  b[1] = 1;  // Ethernet
  b[2] = 6;
  b[3] = 0;
  store_be32(&b[4], 0xdeadbeef);  // xid
  store_be16(&b[8], 3);           // secs
  store_be16(&b[10], 0x8000);     // broadcast flag
  kMac1.write(&b[28]);
  store_be32(&b[236], 0x63825363);
  const uint8_t opts[] = {
      53, 1, 1,                                        // DISCOVER
      61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56,    // client id: type 1 + MAC
      12, 5, 'g', 'u', 'e', 's', 't',                  // hostname
      55, 7, 1, 3, 6, 15, 119, 26, 28,                 // parameter request list
      57, 2, 0x05, 0xdc,                               // max message size 1500
      50, 4, 192, 168, 65, 9,                          // requested IP
      0, 0,                                            // pads
      255,                                             // end
  };
  b.insert(b.end(), std::begin(opts), std::end(opts));
  return b;
}

TEST_CASE("a DISCOVER fixture parses into every field and option", "[dhcp][wire]") {
  auto bytes = discover_fixture();
  auto pk = DhcpPacket::check(bytes);
  REQUIRE(pk);
  CHECK(pk->xid() == 0xdeadbeef);
  auto m = DhcpRepr::parse(*pk);
  REQUIRE(m);
  CHECK(m->op == BootpOp::Request);
  CHECK(m->htype == 1);
  CHECK(m->hlen == 6);
  CHECK(m->xid == 0xdeadbeef);
  CHECK(m->secs == 3);
  CHECK(m->broadcast_flag());
  CHECK(m->ciaddr.is_unspecified());
  CHECK(m->chaddr == kMac1);
  CHECK(m->message_type == DhcpMessageType::Discover);
  CHECK(m->client_id.size() == 7);
  CHECK(m->client_id[0] == 1);
  CHECK(str(m->hostname) == "guest");
  CHECK(m->parameter_request_list.size() == 7);
  CHECK(m->requested(DhcpOption::DomainSearch));
  CHECK(m->requested(DhcpOption::InterfaceMtu));
  CHECK(!m->requested(DhcpOption::Hostname));
  CHECK(m->max_message_size == 1500);
  CHECK(m->requested_ip == Ipv4Addr(192, 168, 65, 9));
  CHECK(!m->server_id);
  CHECK(!m->lease_time);
  CHECK(m->domain_search.empty());
}

TEST_CASE("emit then parse gives the same message back, exactly buffer_len bytes", "[dhcp][wire]") {
  DhcpRepr r;
  r.op = BootpOp::Reply;
  r.xid = 0x01020304;
  r.flags = DhcpPacket::kFlagBroadcast;
  r.ciaddr = Ipv4Addr(10, 0, 0, 1);
  r.yiaddr = Ipv4Addr(192, 168, 65, 3);
  r.siaddr = Ipv4Addr(192, 168, 65, 1);
  r.chaddr = kMac2;
  r.message_type = DhcpMessageType::Ack;
  r.subnet_mask = Ipv4Addr(255, 255, 255, 0);
  r.router = kGateway;
  r.dns_servers[0] = kGateway;
  r.dns_servers[1] = Ipv4Addr(8, 8, 8, 8);
  r.dns_count = 2;
  std::string host = "box", dom = "berth.internal", msg = "why not";
  r.hostname = as_bytes(host);
  r.domain_name = as_bytes(dom);
  r.interface_mtu = 65520;
  r.broadcast_address = Ipv4Addr(192, 168, 65, 255);
  r.requested_ip = Ipv4Addr(192, 168, 65, 3);
  r.lease_time = 3600;
  r.server_id = kGateway;
  const uint8_t prl[] = {1, 3, 6};
  r.parameter_request_list = prl;
  r.message = as_bytes(msg);
  r.max_message_size = 1400;
  r.renewal_time = 1800;
  r.rebinding_time = 3150;
  const uint8_t cid[] = {1, 2, 3};
  r.client_id = cid;
  std::string_view names[] = {"berth.internal"};
  auto search = encode_domain_search(names);
  REQUIRE(search);
  r.domain_search = *search;

  std::vector<uint8_t> out(r.buffer_len() + 16, 0xa5);
  r.emit(out);
  CHECK(out[r.buffer_len()] == 0xa5);  // nothing past buffer_len
  auto back = DhcpRepr::parse(Bytes(out.data(), r.buffer_len()));
  REQUIRE(back);
  CHECK(back->op == BootpOp::Reply);
  CHECK(back->xid == r.xid);
  CHECK(back->flags == r.flags);
  CHECK(back->ciaddr == r.ciaddr);
  CHECK(back->yiaddr == r.yiaddr);
  CHECK(back->siaddr == r.siaddr);
  CHECK(back->chaddr == r.chaddr);
  CHECK(back->message_type == r.message_type);
  CHECK(back->subnet_mask == r.subnet_mask);
  CHECK(back->router == r.router);
  CHECK(back->dns_count == 2);
  CHECK(back->dns_servers[1] == Ipv4Addr(8, 8, 8, 8));
  CHECK(str(back->hostname) == host);
  CHECK(str(back->domain_name) == dom);
  CHECK(back->interface_mtu == 65520);
  CHECK(back->broadcast_address == r.broadcast_address);
  CHECK(back->requested_ip == r.requested_ip);
  CHECK(back->lease_time == 3600);
  CHECK(back->server_id == kGateway);
  CHECK(same_bytes(back->parameter_request_list, r.parameter_request_list));
  CHECK(str(back->message) == msg);
  CHECK(back->max_message_size == 1400);
  CHECK(back->renewal_time == 1800);
  CHECK(back->rebinding_time == 3150);
  CHECK(same_bytes(back->client_id, r.client_id));
  CHECK(same_bytes(back->domain_search, r.domain_search));
  // The message type comes first, right after the cookie.
  CHECK(out[240] == 53);
  CHECK(out[241] == 1);
  CHECK(out[242] == uint8_t(DhcpMessageType::Ack));
}

TEST_CASE("a short message is padded to the 300-byte BOOTP minimum with zeros", "[dhcp][wire]") {
  DhcpRepr r;
  r.message_type = DhcpMessageType::Discover;
  CHECK(r.buffer_len() == 300);
  std::vector<uint8_t> out(300, 0xa5);
  r.emit(out);
  CHECK(out[240] == 53);
  CHECK(out[243] == 255);
  for (size_t i = 244; i < 300; i++) CHECK(out[i] == 0);
  for (size_t i = 44; i < 236; i++) CHECK(out[i] == 0);  // sname and file
}

TEST_CASE("a value longer than 255 bytes is split into consecutive instances", "[dhcp][wire]") {
  std::string long_name(300, 'x');
  DhcpRepr r;
  r.message_type = DhcpMessageType::Ack;
  r.domain_name = as_bytes(long_name);
  std::vector<uint8_t> out(r.buffer_len());
  r.emit(out);
  CHECK(r.buffer_len() == 240 + 3 + (2 + 255) + (2 + 45) + 1);
  DhcpOptionReader rd(Bytes(out).subspan(240));
  DhcpOptionView o;
  std::vector<size_t> sizes;
  while (rd.next(o))
    if (o.code == 15) sizes.push_back(o.data.size());
  CHECK(!rd.failed());
  CHECK(sizes == std::vector<size_t>{255, 45});
  auto back = DhcpRepr::parse(out);
  REQUIRE(back);
  CHECK(back->domain_name.size() == 255);  // the first instance counts
}

TEST_CASE("truncated, cookie-less and overlong messages are refused with a reason", "[dhcp][wire]") {
  auto good = discover_fixture();
  SECTION("shorter than the fixed header and cookie") {
    CHECK(DhcpPacket::check(Bytes(good).first(239)).error() == WireError::Truncated);
    CHECK(DhcpPacket::check(Bytes()).error() == WireError::Truncated);
  }
  SECTION("plain BOOTP: no magic cookie") {
    good[236] = 0;
    CHECK(DhcpPacket::check(good).error() == WireError::Unsupported);
  }
  SECTION("bad op, hardware address longer than 16") {
    good[0] = 3;
    CHECK(DhcpPacket::check(good).error() == WireError::BadField);
    good[0] = 1;
    good[2] = 17;
    CHECK(DhcpPacket::check(good).error() == WireError::BadField);
  }
  SECTION("an option running past the end") {
    std::vector<uint8_t> b(good.begin(), good.begin() + 240);
    b.insert(b.end(), {53, 1, 1, 12, 10, 'a', 'b'});
    CHECK(DhcpRepr::parse(b).error() == WireError::BadOption);
  }
  SECTION("an option without its length byte") {
    std::vector<uint8_t> b(good.begin(), good.begin() + 240);
    b.insert(b.end(), {53, 1, 1, 12});
    CHECK(DhcpRepr::parse(b).error() == WireError::BadOption);
  }
  SECTION("known options with the wrong length") {
    std::vector<uint8_t> b(good.begin(), good.begin() + 240);
    auto with = [&](std::initializer_list<uint8_t> o) {
      std::vector<uint8_t> x = b;
      x.insert(x.end(), o);
      x.push_back(255);
      return DhcpRepr::parse(x);
    };
    CHECK(with({53, 2, 1, 1}).error() == WireError::BadOption);
    CHECK(with({50, 3, 1, 2, 3}).error() == WireError::BadOption);
    CHECK(with({3, 6, 1, 2, 3, 4, 5, 6}).error() == WireError::BadOption);
    CHECK(with({51, 2, 0, 1}).error() == WireError::BadOption);
    CHECK(with({61, 1, 1}).error() == WireError::BadOption);
    CHECK(with({12, 0}).error() == WireError::BadOption);
    CHECK(with({53, 1, 0}).error() == WireError::BadField);
    CHECK(with({53, 1, 9}).error() == WireError::BadField);
    CHECK(with({26, 2, 0, 67}).error() == WireError::BadField);
    // Overload is recorded, its fields not read; unknown options skipped.
    auto ok = with({53, 1, 1, 52, 1, 3, 200, 3, 1, 2, 3});
    REQUIRE(ok);
    CHECK(ok->overload == 3);
  }
  SECTION("no End option: the area simply ends") {
    std::vector<uint8_t> b(good.begin(), good.begin() + 240);
    b.insert(b.end(), {53, 1, 3});
    auto m = DhcpRepr::parse(b);
    REQUIRE(m);
    CHECK(m->message_type == DhcpMessageType::Request);
  }
}

TEST_CASE("option 119 encodes names per RFC 1035 with compression, as RFC 3397's example", "[dhcp][wire]") {
  std::string_view one[] = {"berth.internal"};
  auto a = encode_domain_search(one);
  REQUIRE(a);
  const uint8_t want_a[] = {5, 'b', 'e', 'r', 't', 'h', 8, 'i', 'n', 't', 'e', 'r', 'n', 'a', 'l', 0};
  CHECK(same_bytes(*a, want_a));

  std::string_view two[] = {"eng.apple.com.", "marketing.apple.com."};
  auto b = encode_domain_search(two);
  REQUIRE(b);
  const uint8_t want_b[] = {3, 'e', 'n', 'g', 5, 'a', 'p', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0,
                            9, 'm', 'a', 'r', 'k', 'e', 't', 'i', 'n', 'g', 0xc0, 0x04};
  CHECK(same_bytes(*b, want_b));
  auto names = decode_domain_search(*b);
  REQUIRE(names);
  CHECK(*names == std::vector<std::string>{"eng.apple.com", "marketing.apple.com"});

  std::string_view bad1[] = {"a..b"};
  CHECK(!encode_domain_search(bad1));
  std::string label64(64, 'x');
  std::string_view bad2[] = {label64};
  CHECK(!encode_domain_search(bad2));
  std::string_view bad3[] = {""};
  CHECK(!encode_domain_search(bad3));
  std::string_view fits[] = {"berth.internal"};
  CHECK(!encode_domain_search(fits, 10));

  // Decoding refuses forward pointers, loops, reserved label types, truncation.
  const uint8_t forward[] = {0xc0, 0x02, 1, 'a', 0};
  CHECK(decode_domain_search(forward).error() == WireError::BadOption);
  const uint8_t self[] = {1, 'a', 0xc0, 0x00};
  CHECK(decode_domain_search(self).error() == WireError::BadOption);
  const uint8_t loop[] = {1, 'a', 0, 1, 'b', 0xc0, 0x03};
  CHECK(decode_domain_search(loop).error() == WireError::BadOption);
  const uint8_t reserved[] = {0x41, 'a', 0};
  CHECK(decode_domain_search(reserved).error() == WireError::BadOption);
  const uint8_t cut[] = {5, 'a', 'b'};
  CHECK(decode_domain_search(cut).error() == WireError::BadOption);
}

// ---- Server fixtures ----------------------------------------------------------------

class FakeLink final : public FrameLink {
 public:
  std::string type() const override { return "fake"; }
  std::string peer() const override { return "test"; }
  Result<void> start(Receive) override { return {}; }
  bool send(Bytes f) override {
    sent.emplace_back(f.begin(), f.end());
    return true;
  }
  void close() override {}
  size_t max_frame() const override { return 65535 + 14; }
  std::vector<std::vector<uint8_t>> sent;
};

// DHCP is served in process: any host socket would be a bug.
class NoHost final : public DgramHost {
 public:
  Result<DgramSocket> open_udp(SockAddr4, DgramSink&, uint64_t) override {
    opened++;
    return make_error(EPERM, "no host sockets in this test");
  }
  Result<DgramSocket> open_icmp_echo(Ipv4Addr, DgramSink&, uint64_t) override {
    opened++;
    return make_error(EPERM, "no host sockets in this test");
  }
  Result<void> send(DgramSocket, Bytes) override { return make_error(EBADF, "none"); }
  void close(DgramSocket) override {}
  IcmpMode icmp_mode() const override { return IcmpMode::None; }
  int opened = 0;
};

// What a guest received: the frame's layers and the DHCP message.
struct Got {
  EthernetRepr eth;
  Ipv4Repr ip;
  uint16_t sport = 0, dport = 0;
  std::vector<uint8_t> payload;
  DhcpRepr msg() const {
    auto m = DhcpRepr::parse(payload);
    REQUIRE(m);
    return *m;
  }
};

std::vector<uint8_t> frame_for(MacAddr mac, Ipv4Addr src, Ipv4Addr dst, MacAddr dst_mac, IpProtocol proto,
                               Bytes l4) {
  Ipv4Repr ip;
  ip.src = src;
  ip.dst = dst;
  ip.protocol = proto;
  ip.payload_len = uint16_t(l4.size());
  ip.ident = 99;
  std::vector<uint8_t> f(14 + 20 + l4.size());
  EthernetRepr{mac, dst_mac, EtherType::Ipv4}.emit(f);
  ip.emit(std::span<uint8_t>(f).subspan(14));
  std::copy(l4.begin(), l4.end(), f.begin() + 34);
  return f;
}

std::vector<uint8_t> udp_frame(MacAddr mac, Ipv4Addr src, Ipv4Addr dst, MacAddr dst_mac, uint16_t sport,
                               uint16_t dport, Bytes payload) {
  UdpRepr u{sport, dport, payload};
  std::vector<uint8_t> l4(u.buffer_len());
  u.emit(l4, PseudoHeader::v4(src, dst));
  return frame_for(mac, src, dst, dst_mac, IpProtocol::Udp, l4);
}

DhcpRepr client_msg(MacAddr mac, DhcpMessageType t, uint32_t xid = 0x1234) {
  DhcpRepr m;
  m.op = BootpOp::Request;
  m.xid = xid;
  m.chaddr = mac;
  m.message_type = t;
  return m;
}

std::string temp_dir() {
  char tmpl[] = "/tmp/berth-dhcp-test-XXXXXX";
  REQUIRE(mkdtemp(tmpl));
  return tmpl;
}

struct Rig {
  FakeClock wall;
  Stack stack;
  FakeLink links[3];
  NoHost host;
  UdpNat udp{stack, host};
  std::unique_ptr<DhcpServer> dhcp;
  std::string dir;

  explicit Rig(std::string state_dir = "", NetConfig cfg = NetConfig{}) : stack(cfg), dir(std::move(state_dir)) {
    for (auto& l : links) REQUIRE(stack.add_port(&l));
    stack.set_handler(IpProtocol::Udp, &udp);
    restart();
  }
  void restart() {
    dhcp.reset();
    dhcp = std::make_unique<DhcpServer>(stack, udp, wall, dir);
  }
  int64_t now() const { return wall.t.sec; }
  void advance(int64_t secs) { wall.t.sec += secs; }

  // Send `m` from the guest on `port` (chaddr is the sender's MAC unless the
  // test set another); returns what that guest's link received.
  std::vector<Got> send(uint32_t port, MacAddr mac, const DhcpRepr& m, Ipv4Addr src = Ipv4Addr(),
                        Ipv4Addr dst = Ipv4Addr::broadcast()) {
    std::vector<uint8_t> payload(m.buffer_len());
    m.emit(payload);
    links[port].sent.clear();
    MacAddr dst_mac = dst.is_broadcast() ? MacAddr::broadcast() : stack.config().gateway_mac;
    stack.receive(port, udp_frame(mac, src, dst, dst_mac, 68, 67, payload), kNow);
    std::vector<Got> out;
    for (auto& f : links[port].sent) {
      auto e = EthernetFrame::check(f);
      REQUIRE(e);
      Got g{*EthernetRepr::parse(*e), {}, 0, 0, {}};
      if (g.eth.ethertype != EtherType::Ipv4) continue;
      auto pk = Ipv4Packet::check(e->payload());
      REQUIRE(pk);
      g.ip = *Ipv4Repr::parse(*pk);
      if (g.ip.protocol != IpProtocol::Udp) continue;
      auto u = UdpPacket::check(pk->payload());
      REQUIRE(u);
      REQUIRE(u->verify_checksum(PseudoHeader::v4(g.ip.src, g.ip.dst)));
      g.sport = u->src_port();
      g.dport = u->dst_port();
      g.payload.assign(u->payload().begin(), u->payload().end());
      out.push_back(std::move(g));
    }
    return out;
  }

  // DISCOVER, OFFER, REQUEST, ACK; returns the address acknowledged.
  Ipv4Addr dora(uint32_t port, MacAddr mac, std::string hostname = "") {
    auto d = client_msg(mac, DhcpMessageType::Discover);
    auto offer = send(port, mac, d);
    REQUIRE(offer.size() == 1);
    DhcpRepr o = offer[0].msg();
    REQUIRE(o.message_type == DhcpMessageType::Offer);
    auto r = client_msg(mac, DhcpMessageType::Request);
    r.server_id = o.server_id;
    r.requested_ip = o.yiaddr;
    if (!hostname.empty()) r.hostname = as_bytes(hostname);
    auto ack = send(port, mac, r);
    REQUIRE(ack.size() == 1);
    DhcpRepr a = ack[0].msg();
    REQUIRE(a.message_type == DhcpMessageType::Ack);
    REQUIRE(a.yiaddr == o.yiaddr);
    return a.yiaddr;
  }

  uint64_t drops(Drop d) const { return stack.stats().drops[size_t(d)]; }
};

}  // namespace

// ---- Server -------------------------------------------------------------------------

TEST_CASE("DISCOVER gets a broadcast OFFER with the network's options, REQUEST an ACK", "[dhcp]") {
  Rig r;
  auto d = client_msg(kMac1, DhcpMessageType::Discover, 0xabcd);
  auto offers = r.send(0, kMac1, d);
  REQUIRE(offers.size() == 1);
  const Got& g = offers[0];
  CHECK(g.eth.dst == MacAddr::broadcast());
  CHECK(g.eth.src == r.stack.config().gateway_mac);
  CHECK(g.ip.src == kGateway);
  CHECK(g.ip.dst == Ipv4Addr::broadcast());
  CHECK(g.sport == 67);
  CHECK(g.dport == 68);
  DhcpRepr o = g.msg();
  CHECK(o.op == BootpOp::Reply);
  CHECK(o.xid == 0xabcd);
  CHECK(o.chaddr == kMac1);
  CHECK(o.message_type == DhcpMessageType::Offer);
  CHECK(o.yiaddr == kFirst);
  CHECK(o.server_id == kGateway);
  CHECK(o.subnet_mask == Ipv4Addr(255, 255, 255, 0));
  CHECK(o.router == kGateway);
  CHECK(o.dns_count == 1);
  CHECK(o.dns_servers[0] == kGateway);
  CHECK(o.broadcast_address == Ipv4Addr(192, 168, 65, 255));
  CHECK(str(o.domain_name) == "berth.internal");
  auto search = decode_domain_search(o.domain_search);
  REQUIRE(search);
  CHECK(*search == std::vector<std::string>{"berth.internal"});
  CHECK(o.interface_mtu == 1500);  // no request list: everything
  CHECK(o.lease_time == DhcpServer::kDefaultLeaseSeconds);
  CHECK(o.renewal_time == 1800);
  CHECK(o.rebinding_time == 3150);
  CHECK(r.dhcp->leases().empty());  // an offer is not a lease

  auto req = client_msg(kMac1, DhcpMessageType::Request, 0xabce);
  req.server_id = kGateway;
  req.requested_ip = o.yiaddr;
  auto acks = r.send(0, kMac1, req);
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].ip.dst == Ipv4Addr::broadcast());
  DhcpRepr a = acks[0].msg();
  CHECK(a.message_type == DhcpMessageType::Ack);
  CHECK(a.xid == 0xabce);
  CHECK(a.yiaddr == kFirst);
  CHECK(a.lease_time == 3600);
  CHECK(r.stack.port(0).ip == kFirst);

  auto leases = r.dhcp->leases();
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].mac == "52:54:00:12:34:56");
  CHECK(leases[0].ip == "192.168.65.3");
  CHECK(r.dhcp->render_leases() == "52:54:00:12:34:56 192.168.65.3 - 2023-11-14T23:13:20Z\n");
  const DhcpStats& s = r.dhcp->stats();
  CHECK(s.discovers == 1);
  CHECK(s.offers == 1);
  CHECK(s.requests == 1);
  CHECK(s.acks == 1);
  CHECK(s.naks == 0);
  CHECK(r.host.opened == 0);
  CHECK(r.dhcp->render_stats().find("acks 1\n") != std::string::npos);
}

TEST_CASE("a parameter request list limits the optional options, never the essential ones", "[dhcp]") {
  Rig r;
  auto d = client_msg(kMac1, DhcpMessageType::Discover);
  const uint8_t prl[] = {1, 3};
  d.parameter_request_list = prl;
  auto offers = r.send(0, kMac1, d);
  REQUIRE(offers.size() == 1);
  DhcpRepr o = offers[0].msg();
  CHECK(o.subnet_mask);
  CHECK(o.router);
  CHECK(o.dns_count == 1);
  CHECK(o.lease_time);
  CHECK(o.server_id);
  CHECK(o.domain_search.empty());
  CHECK(!o.interface_mtu);  // 1500 and not asked for
}

TEST_CASE("a large MTU is always sent; the reply fits the client's maximum message size", "[dhcp]") {
  NetConfig cfg;
  REQUIRE(cfg.set_mtu(65520));
  cfg.domain = std::string(60, 'a') + "." + std::string(60, 'b') + "." + std::string(60, 'c') + "." +
               std::string(60, 'd');
  Rig r("", cfg);
  auto d = client_msg(kMac1, DhcpMessageType::Discover);
  const uint8_t prl[] = {1, 3, 6, 15, 119};
  d.parameter_request_list = prl;
  auto offers = r.send(0, kMac1, d);
  REQUIRE(offers.size() == 1);
  DhcpRepr o = offers[0].msg();
  CHECK(o.interface_mtu == 65520);
  CHECK(offers[0].payload.size() <= 576 - 28);
  CHECK(o.domain_search.empty());  // dropped first to fit
  CHECK(o.domain_name.size() == cfg.domain.size());
}

TEST_CASE("a bound client renews by unicast and gets a unicast ACK with a new expiry", "[dhcp]") {
  Rig r;
  Ipv4Addr ip = r.dora(0, kMac1);
  int64_t granted = r.now();
  r.advance(1800);
  auto renew = client_msg(kMac1, DhcpMessageType::Request, 77);
  renew.ciaddr = ip;
  auto acks = r.send(0, kMac1, renew, ip, kGateway);
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].eth.dst == kMac1);
  CHECK(acks[0].ip.dst == ip);
  DhcpRepr a = acks[0].msg();
  CHECK(a.message_type == DhcpMessageType::Ack);
  CHECK(a.yiaddr == ip);
  CHECK(a.ciaddr == ip);
  auto leases = r.dhcp->leases();
  REQUIRE(leases.size() == 1);
  CHECK(leases[0].expires == "2023-11-14T23:43:20Z");  // renewal time + 3600 s
  // Past the first expiry, still leased: the renewal moved it.
  r.advance(int64_t(DhcpServer::kDefaultLeaseSeconds) - 1800 + 10);
  r.dhcp->poll();
  CHECK(r.dhcp->lease_count() == 1);
  CHECK(r.now() > granted + 3600);

  // Rebinding (broadcast, ciaddr set) is ACKed as well, still unicast.
  auto rebind = client_msg(kMac1, DhcpMessageType::Request, 78);
  rebind.ciaddr = ip;
  acks = r.send(0, kMac1, rebind, ip, Ipv4Addr::broadcast());
  REQUIRE(acks.size() == 1);
  CHECK(acks[0].ip.dst == ip);
}

TEST_CASE("a REQUEST for an address the client may not have gets a broadcast NAK", "[dhcp]") {
  Rig r;
  Ipv4Addr ip1 = r.dora(0, kMac1);
  // Another guest asks for the first one's address (INIT-REBOOT).
  auto req = client_msg(kMac2, DhcpMessageType::Request);
  req.requested_ip = ip1;
  auto got = r.send(1, kMac2, req);
  REQUIRE(got.size() == 1);
  CHECK(got[0].ip.dst == Ipv4Addr::broadcast());
  DhcpRepr n = got[0].msg();
  CHECK(n.message_type == DhcpMessageType::Nak);
  CHECK(n.yiaddr.is_unspecified());
  CHECK(n.server_id == kGateway);
  CHECK(!n.lease_time);
  CHECK(!n.message.empty());
  // An address from another network, and the gateway itself.
  req.requested_ip = Ipv4Addr(10, 0, 0, 5);
  CHECK(r.send(1, kMac2, req)[0].msg().message_type == DhcpMessageType::Nak);
  req.requested_ip = kGateway;
  CHECK(r.send(1, kMac2, req)[0].msg().message_type == DhcpMessageType::Nak);
  CHECK(r.dhcp->stats().naks == 3);
  CHECK(r.dhcp->lease_count() == 1);
  // The authoritative server ACKs a free pool address without a record.
  req.requested_ip = Ipv4Addr(192, 168, 65, 77);
  CHECK(r.send(1, kMac2, req)[0].msg().message_type == DhcpMessageType::Ack);
  CHECK(r.dhcp->lease_count() == 2);
}

TEST_CASE("a REQUEST naming another server withdraws our offer and gets no reply", "[dhcp]") {
  Rig r;
  auto offer = r.send(0, kMac1, client_msg(kMac1, DhcpMessageType::Discover))[0].msg();
  auto req = client_msg(kMac1, DhcpMessageType::Request);
  req.server_id = Ipv4Addr(192, 168, 65, 250);
  req.requested_ip = Ipv4Addr(192, 168, 65, 100);
  CHECK(r.send(0, kMac1, req).empty());
  CHECK(r.dhcp->lease_count() == 0);
  // The withdrawn offer's address is free for another client's REQUEST.
  auto other = client_msg(kMac2, DhcpMessageType::Request);
  other.requested_ip = offer.yiaddr;
  CHECK(r.send(1, kMac2, other)[0].msg().message_type == DhcpMessageType::Ack);
}

TEST_CASE("RELEASE ends the lease; the client gets its address back later", "[dhcp]") {
  Rig r;
  Ipv4Addr ip = r.dora(0, kMac1);
  auto rel = client_msg(kMac1, DhcpMessageType::Release);
  rel.ciaddr = ip;
  rel.server_id = kGateway;
  CHECK(r.send(0, kMac1, rel, ip, kGateway).empty());
  CHECK(r.dhcp->stats().releases == 1);
  CHECK(r.dhcp->leases().empty());
  CHECK(r.dhcp->render_leases().empty());
  // A new client gets a never-used address; the first gets its own back.
  Ipv4Addr ip2 = r.dora(1, kMac2);
  CHECK(ip2 != ip);
  CHECK(r.dora(0, kMac1) == ip);
}

TEST_CASE("a RELEASE for someone else's address changes nothing", "[dhcp]") {
  Rig r;
  Ipv4Addr ip = r.dora(0, kMac1);
  r.dora(1, kMac2);
  auto rel = client_msg(kMac2, DhcpMessageType::Release);
  rel.ciaddr = ip;
  r.send(1, kMac2, rel);
  CHECK(r.dhcp->lease_count() == 2);
}

TEST_CASE("DECLINE rests the address: other addresses are offered until the hold ends", "[dhcp]") {
  NetConfig cfg;
  cfg.dhcp_last = Ipv4Addr(192, 168, 65, 4);  // a pool of two
  Rig r("", cfg);
  Ipv4Addr ip = r.dora(0, kMac1);
  auto dec = client_msg(kMac1, DhcpMessageType::Decline);
  dec.requested_ip = ip;
  dec.server_id = kGateway;
  CHECK(r.send(0, kMac1, dec).empty());
  CHECK(r.dhcp->stats().declines == 1);
  CHECK(r.dhcp->leases().empty());
  Ipv4Addr next = r.dora(0, kMac1);
  CHECK(next != ip);
  // The pool's other address is declined: a second client finds nothing.
  CHECK(r.send(1, kMac2, client_msg(kMac2, DhcpMessageType::Discover)).empty());
  CHECK(r.dhcp->stats().pool_exhausted == 1);
  r.advance(DhcpServer::kDeclineHoldSeconds + 1);
  CHECK(r.dora(1, kMac2) == ip);
}

TEST_CASE("INFORM gets an ACK with configuration but no lease, unicast to ciaddr", "[dhcp]") {
  Rig r;
  const Ipv4Addr own{192, 168, 65, 50};  // configured by hand
  auto inf = client_msg(kMac1, DhcpMessageType::Inform);
  inf.ciaddr = own;
  auto got = r.send(0, kMac1, inf, own, kGateway);
  REQUIRE(got.size() == 1);
  CHECK(got[0].ip.dst == own);
  DhcpRepr a = got[0].msg();
  CHECK(a.message_type == DhcpMessageType::Ack);
  CHECK(a.yiaddr.is_unspecified());
  CHECK(a.ciaddr == own);
  CHECK(!a.lease_time);
  CHECK(!a.renewal_time);
  CHECK(!a.rebinding_time);
  CHECK(a.router == kGateway);
  CHECK(a.dns_count == 1);
  CHECK(r.dhcp->stats().informs == 1);
  CHECK(r.dhcp->lease_count() == 0);
}

TEST_CASE("a reservation is honoured, with its hostname; add_static works the same", "[dhcp]") {
  Rig r;
  REQUIRE(r.dhcp->set_statics("# guests\n52:54:00:12:34:56 192.168.65.200 web\n\n52:54:00:12:34:57 192.168.65.201\n"));
  CHECK(r.dhcp->render_statics() == "52:54:00:12:34:56 192.168.65.200 web\n52:54:00:12:34:57 192.168.65.201\n");
  CHECK(r.dora(0, kMac1) == Ipv4Addr(192, 168, 65, 200));
  CHECK(r.dora(1, kMac2) == Ipv4Addr(192, 168, 65, 201));
  CHECK(r.dhcp->leases()[0].hostname == "web");
  CHECK(r.dhcp->lookup_hostname("web") == Ipv4Addr(192, 168, 65, 200));
  // Nobody else gets a reserved address, even when asking for it.
  auto req = client_msg(kMac3, DhcpMessageType::Request);
  req.requested_ip = Ipv4Addr(192, 168, 65, 201);
  CHECK(r.send(2, kMac3, req)[0].msg().message_type == DhcpMessageType::Nak);

  REQUIRE(r.dhcp->add_static("52:54:00:12:34:58=192.168.65.9=db"));
  CHECK(r.dora(2, kMac3) == Ipv4Addr(192, 168, 65, 9));
  CHECK(r.dhcp->lookup_hostname("DB") == Ipv4Addr(192, 168, 65, 9));
  // Replacing one MAC's reservation; an IP already reserved for another MAC.
  REQUIRE(r.dhcp->add_static("52:54:00:12:34:58=192.168.65.10"));
  auto dup = r.dhcp->add_static("52:54:00:12:34:58=192.168.65.200");
  REQUIRE(!dup);
  CHECK(dup.error().code == EINVAL);
  CHECK(r.dhcp->reservations().size() == 3);
}

TEST_CASE("a client moves to its new reservation at its next renewal", "[dhcp]") {
  Rig r;
  Ipv4Addr dyn = r.dora(0, kMac1);
  REQUIRE(r.dhcp->add_static("52:54:00:12:34:56=192.168.65.100"));
  auto renew = client_msg(kMac1, DhcpMessageType::Request);
  renew.ciaddr = dyn;
  auto got = r.send(0, kMac1, renew, dyn, kGateway);
  REQUIRE(got.size() == 1);
  CHECK(got[0].msg().message_type == DhcpMessageType::Nak);
  CHECK(r.dora(0, kMac1) == Ipv4Addr(192, 168, 65, 100));
  CHECK(r.dhcp->lease_count() == 1);
}

TEST_CASE("bad reservations fail with EINVAL naming the line and change nothing", "[dhcp]") {
  Rig r;
  REQUIRE(r.dhcp->set_statics("52:54:00:12:34:56 192.168.65.200\n"));
  auto bad = [&](const std::string& text, const std::string& needle) {
    auto res = r.dhcp->set_statics(text);
    REQUIRE(!res);
    CHECK(res.error().code == EINVAL);
    INFO(res.error().message);
    CHECK(res.error().message.find(needle) != std::string::npos);
    CHECK(r.dhcp->render_statics() == "52:54:00:12:34:56 192.168.65.200\n");
  };
  bad("52:54:00:12:34:57 192.168.65.10\nnonsense 192.168.65.11\n", "line 2");
  bad("52:54:00:12:34:57 192.168.65.1\n", "gateway");
  bad("52:54:00:12:34:57 192.168.65.2\n", "host alias");
  bad("52:54:00:12:34:57 192.168.65.0\n", "network");
  bad("52:54:00:12:34:57 192.168.65.255\n", "broadcast");
  bad("52:54:00:12:34:57 10.1.1.1\n", "outside");
  bad("52:54:00:12:34:57 192.168.65.10 bad_name!\n", "hostname");
  bad("52:54:00:12:34:57 192.168.65.10\n52:54:00:12:34:58 192.168.65.10\n", "line 2");
  bad("52:54:00:12:34:57 192.168.65.10 a b\n", "line 1");
  bad("ff:ff:ff:ff:ff:ff 192.168.65.10\n", "unicast");
  CHECK(!r.dhcp->add_static("52:54:00:12:34:57"));
  CHECK(!r.dhcp->add_static("52:54:00:12:34:57=192.168.65.1"));
  CHECK(!r.dhcp->add_static("52:54:00:12:34:57=192.168.65.10="));
  // Writing nothing clears them.
  REQUIRE(r.dhcp->set_statics(""));
  CHECK(r.dhcp->render_statics().empty());
}

TEST_CASE("pool exhaustion sends no OFFER and is counted; lapsed offers free addresses", "[dhcp]") {
  NetConfig cfg;
  cfg.dhcp_last = Ipv4Addr(192, 168, 65, 4);
  Rig r("", cfg);
  CHECK(r.send(0, kMac1, client_msg(kMac1, DhcpMessageType::Discover)).size() == 1);
  CHECK(r.send(1, kMac2, client_msg(kMac2, DhcpMessageType::Discover)).size() == 1);
  CHECK(r.send(2, kMac3, client_msg(kMac3, DhcpMessageType::Discover)).empty());
  CHECK(r.send(2, kMac3, client_msg(kMac3, DhcpMessageType::Discover)).empty());
  CHECK(r.dhcp->stats().pool_exhausted == 2);
  CHECK(r.dhcp->stats().offers == 2);
  // The first two never REQUEST: their offers lapse after a minute.
  r.advance(DhcpServer::kOfferTimeoutSeconds + 1);
  auto got = r.send(2, kMac3, client_msg(kMac3, DhcpMessageType::Discover));
  REQUIRE(got.size() == 1);
  CHECK(got[0].msg().message_type == DhcpMessageType::Offer);
  // Repeated DISCOVERs from one client reuse its one record.
  for (int i = 0; i < 10; i++) r.send(2, kMac3, client_msg(kMac3, DhcpMessageType::Discover));
  CHECK(r.dhcp->stats().pool_exhausted == 2);
}

TEST_CASE("hostnames are recorded and found case-insensitively, with or without the domain", "[dhcp]") {
  Rig r;
  Ipv4Addr ip = r.dora(0, kMac1, "Guest-One");
  r.dora(1, kMac2, "weird name!");  // not a valid label: no hostname
  r.dora(2, kMac3, "db.example.com");  // an FQDN: its first label
  CHECK(r.dhcp->lookup_hostname("guest-one") == ip);
  CHECK(r.dhcp->lookup_hostname("GUEST-ONE.berth.internal") == ip);
  CHECK(r.dhcp->lookup_hostname("guest-one.berth.internal.") == ip);
  CHECK(r.dhcp->lookup_hostname("db"));
  CHECK(!r.dhcp->lookup_hostname("guest"));
  CHECK(!r.dhcp->lookup_hostname(""));
  CHECK(r.dhcp->render_leases().find("192.168.65.3 Guest-One ") != std::string::npos);
  CHECK(r.dhcp->render_leases().find("192.168.65.4 - ") != std::string::npos);
  // A renewal without option 12 keeps the name.
  auto renew = client_msg(kMac1, DhcpMessageType::Request);
  renew.ciaddr = ip;
  r.send(0, kMac1, renew, ip, kGateway);
  CHECK(r.dhcp->lookup_hostname("guest-one") == ip);
  // Expired leases are neither listed nor found.
  r.advance(DhcpServer::kDefaultLeaseSeconds + 1);
  CHECK(!r.dhcp->lookup_hostname("guest-one"));
  CHECK(r.dhcp->render_leases().empty());
  r.dhcp->poll();
  CHECK(r.dhcp->lease_count() == 0);
}

TEST_CASE("an expired lease's address goes back to its client when nobody took it", "[dhcp]") {
  Rig r;
  Ipv4Addr ip = r.dora(0, kMac1);
  r.advance(DhcpServer::kDefaultLeaseSeconds * 2);
  Ipv4Addr other = r.dora(1, kMac2);
  CHECK(other != ip);
  CHECK(r.dora(0, kMac1) == ip);
}

TEST_CASE("a client identifier keys the lease, not the MAC", "[dhcp]") {
  Rig r;
  const uint8_t cid_a[] = {0xff, 1, 2, 3, 4}, cid_b[] = {0xff, 9, 9, 9, 9};
  auto d = client_msg(kMac1, DhcpMessageType::Discover);
  d.client_id = cid_a;
  Ipv4Addr a = r.send(0, kMac1, d)[0].msg().yiaddr;
  auto req = client_msg(kMac1, DhcpMessageType::Request);
  req.client_id = cid_a;
  req.requested_ip = a;
  req.server_id = kGateway;
  REQUIRE(r.send(0, kMac1, req)[0].msg().message_type == DhcpMessageType::Ack);
  // Same MAC, another identifier (another OS on the same VM): another address.
  d.client_id = cid_b;
  Ipv4Addr b = r.send(0, kMac1, d)[0].msg().yiaddr;
  CHECK(b != a);
  CHECK(r.dhcp->leases()[0].client_id == "ff01020304");
}

TEST_CASE("a client identifier that is just the MAC counts as the MAC", "[dhcp]") {
  Rig r;
  // udhcpc sends 01 + MAC; dhclient on the same guest later sends nothing.
  const uint8_t cid[] = {1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  auto d = client_msg(kMac1, DhcpMessageType::Discover);
  d.client_id = cid;
  Ipv4Addr a = r.send(0, kMac1, d)[0].msg().yiaddr;
  auto req = client_msg(kMac1, DhcpMessageType::Request);
  req.client_id = cid;
  req.requested_ip = a;
  req.server_id = kGateway;
  REQUIRE(r.send(0, kMac1, req)[0].msg().message_type == DhcpMessageType::Ack);
  CHECK(r.dora(0, kMac1).to_string() == a.to_string());
  CHECK(r.dhcp->lease_count() == 1);
}

TEST_CASE("anti-spoofing: chaddr must be the link's MAC, the ACK binds the address to the link", "[dhcp]") {
  Rig r;
  // A DISCOVER whose chaddr is not the sender's MAC is dropped and counted.
  auto d = client_msg(kMac2, DhcpMessageType::Discover);
  CHECK(r.send(0, kMac1, d).empty());
  CHECK(r.dhcp->stats().chaddr_mismatch == 1);
  CHECK(r.dhcp->stats().offers == 0);

  Ipv4Addr ip = r.dora(0, kMac1);
  CHECK(r.stack.port(0).ip == ip);
  // An echo from the leased address is answered; from another one it is dropped.
  Icmpv4Repr echo;
  echo.type = Icmpv4Type::EchoRequest;
  echo.ident = 1;
  echo.seq = 1;
  std::vector<uint8_t> l4(echo.buffer_len());
  echo.emit(l4);
  r.links[0].sent.clear();
  r.stack.receive(0, frame_for(kMac1, ip, kGateway, r.stack.config().gateway_mac, IpProtocol::Icmp, l4), kNow);
  CHECK(r.links[0].sent.size() == 1);
  r.stack.receive(0, frame_for(kMac1, Ipv4Addr(192, 168, 65, 99), kGateway, r.stack.config().gateway_mac,
                               IpProtocol::Icmp, l4),
                  kNow);
  CHECK(r.drops(Drop::SpoofedIp) == 1);
  CHECK(r.links[0].sent.size() == 1);
  // Another link may not be handed an address a link is using.
  auto req = client_msg(kMac2, DhcpMessageType::Request);
  req.requested_ip = ip;
  CHECK(r.send(1, kMac2, req)[0].msg().message_type == DhcpMessageType::Nak);
}

TEST_CASE("malformed and non-DHCP datagrams to port 67 are counted and dropped", "[dhcp]") {
  Rig r;
  const uint8_t junk[] = {1, 2, 3};
  r.stack.receive(0, udp_frame(kMac1, Ipv4Addr(), Ipv4Addr::broadcast(), MacAddr::broadcast(), 68, 67, junk), kNow);
  CHECK(r.dhcp->stats().malformed == 1);
  // BOOTP (no message type), a server's message, a relayed one.
  auto bootp = client_msg(kMac1, DhcpMessageType::Discover);
  bootp.message_type.reset();
  r.send(0, kMac1, bootp);
  auto offer = client_msg(kMac1, DhcpMessageType::Offer);
  r.send(0, kMac1, offer);
  auto relayed = client_msg(kMac1, DhcpMessageType::Discover);
  relayed.giaddr = Ipv4Addr(10, 0, 0, 1);
  r.send(0, kMac1, relayed);
  CHECK(r.dhcp->stats().malformed == 4);
  CHECK(r.dhcp->stats().offers == 0);
}

TEST_CASE("leases and reservations survive a restart; expired leases do not", "[dhcp][state]") {
  std::string dir = temp_dir();
  {
    Rig r(dir);
    REQUIRE(r.dhcp->set_statics("52:54:00:12:34:58 192.168.65.9 db\n"));
    Ipv4Addr ip = r.dora(0, kMac1, "one");
    CHECK(ip == kFirst);
    REQUIRE(std::filesystem::exists(dir + "/dhcp.json"));

    r.restart();  // same stack and clock, new server from the saved state
    auto leases = r.dhcp->leases();
    REQUIRE(leases.size() == 1);
    CHECK(leases[0].ip == "192.168.65.3");
    CHECK(leases[0].hostname == "one");
    CHECK(r.dhcp->render_statics() == "52:54:00:12:34:58 192.168.65.9 db\n");
    CHECK(r.dhcp->lookup_hostname("one") == ip);
    // The restored lease is still the client's: another gets another address.
    CHECK(r.dora(1, kMac2) != ip);
    // The client renews and is bound to its link again.
    auto renew = client_msg(kMac1, DhcpMessageType::Request);
    renew.ciaddr = ip;
    CHECK(r.send(0, kMac1, renew, ip, kGateway)[0].msg().message_type == DhcpMessageType::Ack);

    r.advance(DhcpServer::kDefaultLeaseSeconds + 5);
    r.restart();
    CHECK(r.dhcp->leases().empty());
    CHECK(r.dhcp->reservations().size() == 1);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("a damaged state file is moved aside and the server starts empty", "[dhcp][state]") {
  std::string dir = temp_dir();
  {
    std::ofstream(dir + "/dhcp.json") << "{\"dhcp\": {\"reservations\": [ broken";
  }
  {
    Rig r(dir);
    CHECK(r.dhcp->leases().empty());
    CHECK(r.dhcp->reservations().empty());
    bool aside = false;
    for (auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().filename().string().rfind("dhcp.json.damaged-", 0) == 0) aside = true;
    CHECK(aside);
    CHECK(!std::filesystem::exists(dir + "/dhcp.json"));
    // And it works, saving a fresh file.
    r.dora(0, kMac1);
    CHECK(std::filesystem::exists(dir + "/dhcp.json"));
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("saved entries that do not fit the configuration are dropped on load", "[dhcp][state]") {
  std::string dir = temp_dir();
  {
    std::ofstream(dir + "/dhcp.json") << R"({"dhcp": {"reservations": [
        {"mac": "52:54:00:12:34:56", "ip": "192.168.65.1", "hostname": ""},
        {"mac": "52:54:00:12:34:57", "ip": "192.168.65.20", "hostname": "ok"}],
      "leases": [
        {"mac": "52:54:00:12:34:58", "ip": "10.0.0.1", "hostname": "", "client_id": "", "expires": "2099-01-01T00:00:00Z"},
        {"mac": "52:54:00:12:34:59", "ip": "192.168.65.30", "hostname": "x", "client_id": "zz", "expires": "2099-01-01T00:00:00Z"},
        {"mac": "52:54:00:12:34:5a", "ip": "192.168.65.31", "hostname": "y", "client_id": "0102", "expires": "2099-01-01T00:00:00Z"},
        {"mac": "52:54:00:12:34:5b", "ip": "192.168.65.32", "hostname": "z", "client_id": "", "expires": "2000-01-01T00:00:00Z"}]}})";
  }
  {
    Rig r(dir);
    CHECK(r.dhcp->render_statics() == "52:54:00:12:34:57 192.168.65.20 ok\n");
    CHECK(r.dhcp->render_leases() == "52:54:00:12:34:5a 192.168.65.31 y 2099-01-01T00:00:00Z\n");
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("the /dhcp tree: leases, leases.json, static (read-write), stats, metrics", "[dhcp][tree]") {
  Rig r;
  p9::Tree tree;
  p9::MetricsRegistry metrics;
  mount_dhcp_tree(tree, metrics, *r.dhcp);
  r.dora(0, kMac1, "alpha");

  auto read_node = [&](const char* path) {
    auto n = tree.resolve(path);
    REQUIRE(n);
    auto h = n->open(p9::Access::Read, false);
    REQUIRE(h);
    std::vector<uint8_t> buf(65536);
    auto got = h.value()->read(0, buf);
    REQUIRE(got);
    return std::string(reinterpret_cast<char*>(buf.data()), got.value());
  };
  CHECK(read_node("/dhcp/leases") == "52:54:00:12:34:56 192.168.65.3 alpha 2023-11-14T23:13:20Z\n");
  std::string json = read_node("/dhcp/leases.json");
  CHECK(json.find("\"leases\"") != std::string::npos);
  CHECK(json.find("\"hostname\": \"alpha\"") != std::string::npos);
  CHECK(json.find("\"expires\": \"2023-11-14T23:13:20Z\"") != std::string::npos);
  CHECK(read_node("/dhcp/stats").find("acks 1\n") != std::string::npos);

  auto st = tree.resolve("/dhcp/static");
  REQUIRE(st);
  CHECK(st->perm() == 0644);
  auto write_static = [&](const std::string& text) {
    auto h = st->open(p9::Access::Write, true);
    REQUIRE(h);
    // Whole lines apply at the write (a bad one fails it), the rest at close.
    auto w = h.value()->write(0, as_bytes(text));
    if (!w) return Result<void>(w.error());
    return h.value()->close();
  };
  REQUIRE(write_static("52:54:00:12:34:57 192.168.65.40 beta\n"));
  CHECK(read_node("/dhcp/static") == "52:54:00:12:34:57 192.168.65.40 beta\n");
  auto bad = write_static("52:54:00:12:34:57 192.168.65.1\n");
  REQUIRE(!bad);
  CHECK(bad.error().code == EINVAL);
  CHECK(read_node("/dhcp/static") == "52:54:00:12:34:57 192.168.65.40 beta\n");
  CHECK(tree.resolve("/dhcp/leases")->perm() == 0444);

  std::string prom = metrics.render();
  CHECK(prom.find("berth_dhcp_messages_total{type=\"ack\"} 1") != std::string::npos);
  CHECK(prom.find("berth_dhcp_leases 1") != std::string::npos);
}

TEST_CASE("set_lease_time changes the offered lease and its T1/T2", "[dhcp]") {
  Rig r;
  CHECK(!r.dhcp->set_lease_time(10));
  REQUIRE(r.dhcp->set_lease_time(600));
  auto o = r.send(0, kMac1, client_msg(kMac1, DhcpMessageType::Discover))[0].msg();
  CHECK(o.lease_time == 600);
  CHECK(o.renewal_time == 300);
  CHECK(o.rebinding_time == 525);
}
