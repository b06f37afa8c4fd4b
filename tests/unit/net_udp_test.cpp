// UDP NAT and ICMP echo translation (net/udp.h, net/icmp.h).
//
// Component tests drive the handlers with a fake GuestTx that records every
// packet toward the guest, a fake DgramHost that records host sockets and
// lets the test inject replies and errors, and a fake clock. Everything the
// guest receives is parsed back with net/wire, checksums verified.
//
// The [uv] tests use the real UvDgramHost on a libuv loop against loopback
// peers in the same loop. They wait for events, never for wall time: each
// waits for a condition with a bounded number of loop iterations, which a
// short repeating timer keeps from blocking.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "net/host/dgram_host.h"
#include "net/host/uv_dgram_host.h"
#include "net/icmp.h"
#include "net/udp.h"
#include "net/wire/icmpv4.h"
#include "net/wire/ipv4.h"
#include "net/wire/udp.h"

using namespace berth;
using namespace berth::net;
using namespace berth::net::wire;
using namespace std::chrono_literals;

namespace {

const Ipv4Addr kGuest{192, 168, 65, 3};
const Ipv4Addr kGuest2{192, 168, 65, 4};
const Ipv4Addr kGateway{192, 168, 65, 1};
const Ipv4Addr kAlias{192, 168, 65, 2};
const Ipv4Addr kLoopback{127, 0, 0, 1};
const Ipv4Addr kOutside{203, 0, 113, 7};

Bytes text(const char* s) { return as_bytes(std::string_view(s)); }
std::string str(Bytes b) { return std::string(as_chars(b)); }

// What the translator sent toward a guest.
struct Sent {
  Ipv4Addr src, dst;
  IpProtocol proto;
  std::vector<uint8_t> l4;
};

class FakeTx final : public GuestTx {
 public:
  bool send_ipv4(Ipv4Addr src, Ipv4Addr dst, IpProtocol proto, size_t l4_len, Fill fill) override {
    if (!accept) return false;
    std::vector<uint8_t> l4(l4_len, 0xa5);  // bytes fill forgets to write show up
    fill(l4, PseudoHeader::v4(src, dst));
    sent.push_back(Sent{src, dst, proto, std::move(l4)});
    return true;
  }
  void send_icmp_error(Bytes, Icmpv4Type, uint8_t, uint16_t) override { icmp_error_calls++; }
  bool can_send(Ipv4Addr) const override { return accept; }
  const NetConfig& config() const override { return cfg; }
  void count_drop(Drop d) override { drops[size_t(d)]++; }

  uint64_t drop(Drop d) const { return drops[size_t(d)]; }
  uint64_t total_drops() const {
    uint64_t n = 0;
    for (auto d : drops) n += d;
    return n;
  }

  NetConfig cfg;
  std::vector<Sent> sent;
  std::array<uint64_t, size_t(Drop::kCount)> drops{};
  int icmp_error_calls = 0;
  bool accept = true;
};

class FakeHost final : public DgramHost {
 public:
  struct Sock {
    bool open = true;
    bool icmp = false;
    SockAddr4 remote;
    DgramSink* sink = nullptr;
    uint64_t cookie = 0;
    uint16_t ident = 0;  // ICMP: the identifier the "kernel" writes (as ping sockets do)
    std::vector<std::vector<uint8_t>> sent;
  };

  Result<DgramSocket> open_udp(SockAddr4 remote, DgramSink& sink, uint64_t cookie) override {
    if (fail_open) return make_error(*fail_open, "fake open failure");
    socks.push_back(Sock{true, false, remote, &sink, cookie, 0, {}});
    return DgramSocket{uint32_t(socks.size() - 1), 7};
  }
  Result<DgramSocket> open_icmp_echo(Ipv4Addr remote, DgramSink& sink, uint64_t cookie) override {
    if (fail_open) return make_error(*fail_open, "fake open failure");
    socks.push_back(Sock{true, true, SockAddr4{remote, 0}, &sink, cookie, uint16_t(0xbe00 + socks.size()), {}});
    return DgramSocket{uint32_t(socks.size() - 1), 7};
  }
  Result<void> send(DgramSocket s, Bytes data) override {
    REQUIRE(s.gen == 7);
    Sock& k = socks.at(s.index);
    REQUIRE(k.open);
    if (fail_send) {
      int e = *fail_send;
      fail_send.reset();
      return make_error(e, {});
    }
    std::vector<uint8_t> d(data.begin(), data.end());
    if (k.icmp) store_be16(&d[4], k.ident);
    k.sent.push_back(std::move(d));
    return {};
  }
  void close(DgramSocket s) override {
    if (s.index < socks.size()) socks[s.index].open = false;
  }
  IcmpMode icmp_mode() const override { return IcmpMode::Ping; }

  size_t open_count() const {
    size_t n = 0;
    for (auto& s : socks) n += s.open;
    return n;
  }
  // The host end answers on socket i (events reach sinks even for closed
  // sockets, to check that stale cookies are ignored).
  void reply(size_t i, Bytes data, Instant now) {
    Sock& k = socks.at(i);
    k.sink->on_datagram(k.cookie, k.remote, data, now);
  }
  void error(size_t i, int err, Instant now) { socks.at(i).sink->on_error(socks.at(i).cookie, err, now); }
  // Answer the last echo request sent on socket i as the remote's kernel would.
  void echo_reply(size_t i, Instant now) {
    std::vector<uint8_t> m = socks.at(i).sent.back();
    m[0] = 0;
    store_be16(&m[2], 0);
    store_be16(&m[2], internet_checksum(m));
    reply(i, m, now);
  }

  std::vector<Sock> socks;
  std::optional<int> fail_open, fail_send;
};

// An IPv4 packet from a guest, as the stack hands it to a handler. The
// GuestPacket's views point into buf.
struct GuestDatagram {
  std::vector<uint8_t> buf;
  GuestPacket packet() const {
    auto ip = Ipv4Packet::check(buf);
    REQUIRE(ip);
    auto repr = Ipv4Repr::parse(*ip);
    REQUIRE(repr);
    return GuestPacket{0, *repr, ip->payload(), ip->packet()};
  }
};

GuestDatagram ipv4(Ipv4Addr src, Ipv4Addr dst, IpProtocol proto, size_t l4_len,
                   const std::function<void(std::span<uint8_t>)>& fill, uint16_t ident = 0x4d2) {
  Ipv4Repr ip;
  ip.src = src;
  ip.dst = dst;
  ip.protocol = proto;
  ip.payload_len = uint16_t(l4_len);
  ip.ident = ident;
  ip.dont_frag = true;
  GuestDatagram d{std::vector<uint8_t>(20 + l4_len)};
  ip.emit(d.buf);
  fill(std::span<uint8_t>(d.buf).subspan(20));
  return d;
}

GuestDatagram udp(Ipv4Addr src, uint16_t sport, Ipv4Addr dst, uint16_t dport, Bytes payload) {
  UdpRepr u{sport, dport, payload};
  return ipv4(src, dst, IpProtocol::Udp, u.buffer_len(),
              [&](std::span<uint8_t> out) { u.emit(out, PseudoHeader::v4(src, dst)); });
}

GuestDatagram echo(Ipv4Addr src, Ipv4Addr dst, uint16_t ident, uint16_t seq, Bytes data) {
  Icmpv4Repr r;
  r.type = Icmpv4Type::EchoRequest;
  r.ident = ident;
  r.seq = seq;
  r.data = data;
  return ipv4(src, dst, IpProtocol::Icmp, r.buffer_len(), [&](std::span<uint8_t> out) { r.emit(out); });
}

// Parse what was sent to a guest, checksums verified.
UdpRepr as_udp(const Sent& s) {
  REQUIRE(s.proto == IpProtocol::Udp);
  auto p = UdpPacket::check(s.l4);
  REQUIRE(p);
  REQUIRE(p->len() == s.l4.size());
  auto r = UdpRepr::parse(*p, PseudoHeader::v4(s.src, s.dst));
  REQUIRE(r);
  return *r;
}

Icmpv4Repr as_icmp(const Sent& s) {
  REQUIRE(s.proto == IpProtocol::Icmp);
  auto p = Icmpv4Packet::check(s.l4);
  REQUIRE(p);
  auto r = Icmpv4Repr::parse(*p);
  REQUIRE(r);
  return *r;
}

// An ICMP destination unreachable with `code`, quoting `orig`'s header and
// the first 8 bytes after it.
void require_unreachable(const Sent& s, Ipv4Addr from, Icmpv4Unreachable code, const GuestDatagram& orig) {
  CHECK(s.src == from);
  CHECK(s.dst == kGuest);
  Icmpv4Repr r = as_icmp(s);
  REQUIRE(r.type == Icmpv4Type::DstUnreachable);
  CHECK(r.code == uint8_t(code));
  GuestPacket o = orig.packet();
  CHECK(r.quoted == o.ip);
  REQUIRE(r.quoted_data.size() == 8);
  CHECK(std::equal(r.quoted_data.begin(), r.quoted_data.end(), o.payload.begin()));
}

const Instant t0 = 1000s;

}  // namespace

// ---------------------------------------------------------------- UDP

TEST_CASE("udp: a guest datagram to the host alias opens a flow to 127.0.0.1", "[udp]") {
  FakeTx tx;
  FakeHost host;
  UdpNat nat(tx, host);
  nat.input(udp(kGuest, 40000, kAlias, 5353, text("hello")).packet(), t0);

  REQUIRE(host.socks.size() == 1);
  CHECK_FALSE(host.socks[0].icmp);
  CHECK(host.socks[0].remote == SockAddr4{kLoopback, 5353});
  REQUIRE(host.socks[0].sent.size() == 1);
  CHECK(str(host.socks[0].sent[0]) == "hello");
  CHECK(nat.flow_count() == 1);
  CHECK(tx.sent.empty());
  CHECK(tx.total_drops() == 0);

  SECTION("the next datagram of the conversation reuses the flow") {
    nat.input(udp(kGuest, 40000, kAlias, 5353, text("again")).packet(), t0 + 1s);
    CHECK(host.socks.size() == 1);
    REQUIRE(host.socks[0].sent.size() == 2);
    CHECK(str(host.socks[0].sent[1]) == "again");
    std::string flows;
    nat.describe_flows(flows, t0 + 3s);
    CHECK(flows == "udp 192.168.65.3:40000 127.0.0.1:5353 unreplied tx=10 rx=0 age=3\n");
  }
  SECTION("another destination port, or another guest port, is another flow") {
    nat.input(udp(kGuest, 40000, kAlias, 5354, text("x")).packet(), t0);
    nat.input(udp(kGuest, 40001, kAlias, 5353, text("y")).packet(), t0);
    REQUIRE(host.socks.size() == 3);
    CHECK(host.socks[1].remote == SockAddr4{kLoopback, 5354});
    CHECK(host.socks[2].remote == SockAddr4{kLoopback, 5353});
    CHECK(nat.flow_count() == 3);
    CHECK(nat.stats().flows_opened == 3);
  }
}

TEST_CASE("udp: a datagram to an outside address goes to that address", "[udp]") {
  FakeTx tx;
  FakeHost host;
  UdpNat nat(tx, host);
  nat.input(udp(kGuest, 40000, kOutside, 53, text("q")).packet(), t0);
  REQUIRE(host.socks.size() == 1);
  CHECK(host.socks[0].remote == SockAddr4{kOutside, 53});
}

TEST_CASE("udp: a host reply reaches the guest from the address and port it used", "[udp]") {
  FakeTx tx;
  FakeHost host;
  UdpNat nat(tx, host);
  nat.input(udp(kGuest, 40000, kAlias, 5353, text("ping")).packet(), t0);
  host.reply(0, text("pong!"), t0 + 1s);

  REQUIRE(tx.sent.size() == 1);
  CHECK(tx.sent[0].src == kAlias);  // not 127.0.0.1
  CHECK(tx.sent[0].dst == kGuest);
  UdpRepr r = as_udp(tx.sent[0]);   // checksum verified
  CHECK(r.src_port == 5353);
  CHECK(r.dst_port == 40000);
  CHECK(str(r.payload) == "pong!");

  std::string flows;
  nat.describe_flows(flows, t0 + 2s);
  CHECK(flows == "udp 192.168.65.3:40000 127.0.0.1:5353 replied tx=4 rx=5 age=2\n");

  SECTION("a reply larger than the MTU is handed over whole; GuestTx fragments it") {
    std::vector<uint8_t> big(9000, 0x5c);
    host.reply(0, big, t0 + 2s);
    REQUIRE(tx.sent.size() == 2);
    CHECK(tx.sent[1].l4.size() == 8 + big.size());
    CHECK(as_udp(tx.sent[1]).payload.size() == big.size());
  }
  SECTION("a reply the guest cannot take now is counted") {
    tx.accept = false;
    host.reply(0, text("lost"), t0 + 2s);
    CHECK(nat.stats().to_guest_dropped == 1);
  }
}

TEST_CASE("udp: host ECONNREFUSED becomes ICMP port unreachable quoting the guest's datagram", "[udp]") {
  FakeTx tx;
  FakeHost host;
  UdpNat nat(tx, host);
  auto first = udp(kGuest, 40000, kAlias, 9, text("first"));
  auto second = udp(kGuest, 40000, kAlias, 9, text("second datagram"));
  nat.input(first.packet(), t0);
  nat.input(second.packet(), t0);

  SECTION("reported asynchronously on the socket") {
    host.error(0, ECONNREFUSED, t0 + 1ms);
    REQUIRE(tx.sent.size() == 1);
    // From the destination the guest used, about the flow's last datagram.
    require_unreachable(tx.sent[0], kAlias, Icmpv4Unreachable::Port, second);
  }
  SECTION("reported by the next send") {
    auto third = udp(kGuest, 40000, kAlias, 9, text("third"));
    host.fail_send = ECONNREFUSED;
    nat.input(third.packet(), t0 + 1ms);
    REQUIRE(tx.sent.size() == 1);
    require_unreachable(tx.sent[0], kAlias, Icmpv4Unreachable::Port, third);
  }
  SECTION("host and network unreachable map to their codes") {
    host.error(0, EHOSTUNREACH, t0);
    host.error(0, ENETUNREACH, t0);
    REQUIRE(tx.sent.size() == 2);
    require_unreachable(tx.sent[0], kAlias, Icmpv4Unreachable::Host, second);
    require_unreachable(tx.sent[1], kAlias, Icmpv4Unreachable::Net, second);
  }
  SECTION("other errors only count") {
    host.error(0, ENOBUFS, t0);
    host.fail_send = EAGAIN;
    nat.input(first.packet(), t0);
    CHECK(tx.sent.empty());
    CHECK(nat.stats().send_errors == 2);
  }
  std::string flows;
  nat.describe_flows(flows, t0);
  CHECK(flows.find("udp 192.168.65.3:40000 127.0.0.1:9 ") == 0);
  CHECK(nat.flow_count() == 1);  // the flow stays; the guest may try again
}

TEST_CASE("udp: an idle flow closes at 60 s and not before; traffic either way refreshes it", "[udp]") {
  FakeTx tx;
  FakeHost host;
  UdpNat nat(tx, host);
  CHECK_FALSE(nat.poll_at());
  nat.input(udp(kGuest, 40000, kOutside, 123, text("ntp")).packet(), t0);
  REQUIRE(nat.poll_at() == t0 + 60s);

  SECTION("expiry") {
    nat.poll(t0 + 60s - 1ns);
    CHECK(nat.flow_count() == 1);
    CHECK(host.open_count() == 1);
    nat.poll(t0 + 60s);
    CHECK(nat.flow_count() == 0);
    CHECK(host.open_count() == 0);
    CHECK(nat.stats().flows_expired == 1);
    CHECK_FALSE(nat.poll_at());

    // A late event for the closed flow is ignored.
    host.reply(0, text("late"), t0 + 61s);
    host.error(0, ECONNREFUSED, t0 + 61s);
    CHECK(tx.sent.empty());

    // The same conversation again gets a new socket.
    nat.input(udp(kGuest, 40000, kOutside, 123, text("ntp")).packet(), t0 + 62s);
    CHECK(host.socks.size() == 2);
    CHECK(host.open_count() == 1);
  }
  SECTION("a reply refreshes") {
    host.reply(0, text("time"), t0 + 30s);
    CHECK(nat.poll_at() == t0 + 90s);
    nat.poll(t0 + 89s);
    CHECK(nat.flow_count() == 1);
    nat.poll(t0 + 90s);
    CHECK(nat.flow_count() == 0);
  }
  SECTION("a guest datagram refreshes") {
    nat.input(udp(kGuest, 40000, kOutside, 123, text("ntp")).packet(), t0 + 50s);
    nat.poll(t0 + 100s);
    CHECK(nat.flow_count() == 1);
    CHECK(nat.poll_at() == t0 + 110s);
  }
  SECTION("flows expire oldest first") {
    nat.input(udp(kGuest, 40001, kOutside, 123, text("b")).packet(), t0 + 10s);
    nat.input(udp(kGuest, 40002, kOutside, 123, text("c")).packet(), t0 + 20s);
    nat.input(udp(kGuest, 40000, kOutside, 123, text("a")).packet(), t0 + 30s);  // refreshes the first
    CHECK(nat.poll_at() == t0 + 70s);
    nat.poll(t0 + 80s);
    CHECK(nat.flow_count() == 1);
    CHECK(host.socks[0].open);
    CHECK(nat.poll_at() == t0 + 90s);
  }
}

TEST_CASE("udp: a full flow table refuses new flows, counted, and existing flows keep working", "[udp]") {
  FakeTx tx;
  tx.cfg.max_udp_flows = 2;
  FakeHost host;
  UdpNat nat(tx, host);
  nat.input(udp(kGuest, 1, kOutside, 53, text("a")).packet(), t0);
  nat.input(udp(kGuest, 2, kOutside, 53, text("b")).packet(), t0 + 1s);
  auto third = udp(kGuest, 3, kOutside, 53, text("c"));
  nat.input(third.packet(), t0 + 2s);

  CHECK(tx.drop(Drop::FlowTableFull) == 1);
  CHECK(host.socks.size() == 2);
  REQUIRE(tx.sent.size() == 1);
  require_unreachable(tx.sent[0], kGateway, Icmpv4Unreachable::AdminProhibited, third);

  host.reply(1, text("b-reply"), t0 + 3s);
  REQUIRE(tx.sent.size() == 2);
  CHECK(str(as_udp(tx.sent[1]).payload) == "b-reply");
  nat.input(udp(kGuest, 1, kOutside, 53, text("a2")).packet(), t0 + 4s);
  CHECK(host.socks[0].sent.size() == 2);
  CHECK(tx.drop(Drop::FlowTableFull) == 1);

  // Once one expires there is room again.
  nat.poll(t0 + 63s);
  CHECK(nat.flow_count() == 1);
  nat.input(third.packet(), t0 + 63s);
  CHECK(host.socks.size() == 3);
  CHECK(nat.flow_count() == 2);
}

TEST_CASE("udp: malformed datagrams and bad checksums are dropped and counted", "[udp]") {
  FakeTx tx;
  FakeHost host;
  UdpNat nat(tx, host);

  SECTION("shorter than a UDP header") {
    auto d = ipv4(kGuest, kOutside, IpProtocol::Udp, 4, [](std::span<uint8_t> o) { std::fill(o.begin(), o.end(), 1); });
    nat.input(d.packet(), t0);
    CHECK(tx.drop(Drop::L4Malformed) == 1);
  }
  SECTION("length field beyond the packet") {
    auto d = udp(kGuest, 40000, kOutside, 53, text("abcd"));
    store_be16(&d.buf[20 + 4], 100);
    nat.input(d.packet(), t0);
    CHECK(tx.drop(Drop::L4Malformed) == 1);
  }
  SECTION("length field below 8") {
    auto d = udp(kGuest, 40000, kOutside, 53, text("abcd"));
    store_be16(&d.buf[20 + 4], 7);
    nat.input(d.packet(), t0);
    CHECK(tx.drop(Drop::L4Malformed) == 1);
  }
  SECTION("destination port 0") {
    nat.input(udp(kGuest, 40000, kOutside, 0, text("abcd")).packet(), t0);
    CHECK(tx.drop(Drop::L4Malformed) == 1);
  }
  SECTION("bad checksum") {
    auto d = udp(kGuest, 40000, kOutside, 53, text("abcd"));
    d.buf[20 + 8] ^= 0x01;  // payload changed after the checksum was computed
    nat.input(d.packet(), t0);
    CHECK(tx.drop(Drop::L4BadChecksum) == 1);
    CHECK(tx.drop(Drop::L4Malformed) == 0);
  }
  CHECK(host.socks.empty());
  CHECK(nat.flow_count() == 0);
  CHECK(tx.sent.empty());

  SECTION("a zero checksum means none was sent, and is accepted (RFC 768)") {
    auto d = udp(kGuest, 40000, kOutside, 53, text("abcd"));
    store_be16(&d.buf[20 + 6], 0);
    nat.input(d.packet(), t0);
    CHECK(tx.total_drops() == 0);
    CHECK(host.socks.size() == 1);
  }
}

TEST_CASE("udp: gateway services answer in process; other gateway ports are unreachable", "[udp]") {
  FakeTx tx;
  FakeHost host;
  UdpNat nat(tx, host);
  std::vector<std::string> got;
  std::optional<UdpNat::Reply> saved;
  nat.add_service(53, [&](const GuestPacket& p, UdpNat::Reply reply) {
    got.push_back(str(UdpNat::udp_payload(p)));
    CHECK(reply.guest_addr() == kGuest);
    CHECK(reply.guest_port() == 40000);
    CHECK(reply.local_addr() == kGateway);
    CHECK(reply.local_port() == 53);
    saved = reply;  // a forwarder answers later
  });
  nat.add_service(67, [&](const GuestPacket& p, UdpNat::Reply reply) {
    got.push_back(str(UdpNat::udp_payload(p)));
    CHECK(reply.guest_addr() == Ipv4Addr::unspecified());
    CHECK(reply.local_addr() == kGateway);
    CHECK(reply.send_to(Ipv4Addr::broadcast(), 68, text("offer")));
  });

  nat.input(udp(kGuest, 40000, kGateway, 53, text("query")).packet(), t0);
  REQUIRE(got == std::vector<std::string>{"query"});
  CHECK(tx.sent.empty());
  REQUIRE(saved);
  CHECK(saved->send(text("answer")));
  REQUIRE(tx.sent.size() == 1);
  CHECK(tx.sent[0].src == kGateway);
  CHECK(tx.sent[0].dst == kGuest);
  UdpRepr r = as_udp(tx.sent[0]);
  CHECK(r.src_port == 53);
  CHECK(r.dst_port == 40000);
  CHECK(str(r.payload) == "answer");

  // DHCP: from 0.0.0.0 to the broadcast address.
  nat.input(udp(Ipv4Addr::unspecified(), 68, Ipv4Addr::broadcast(), 67, text("discover")).packet(), t0);
  REQUIRE(got.size() == 2);
  CHECK(got[1] == "discover");
  REQUIRE(tx.sent.size() == 2);
  CHECK(tx.sent[1].src == kGateway);
  CHECK(tx.sent[1].dst == Ipv4Addr::broadcast());
  CHECK(as_udp(tx.sent[1]).dst_port == 68);
  CHECK(nat.stats().service_datagrams == 2);

  // A broadcast for a port nobody serves is dropped silently (no ICMP about broadcasts).
  nat.input(udp(kGuest, 137, Ipv4Addr(192, 168, 65, 255), 137, text("netbios")).packet(), t0);
  CHECK(tx.sent.size() == 2);
  CHECK(tx.drop(Drop::NoRoute) == 1);

  // A gateway port with no service: port unreachable from the gateway.
  auto closed = udp(kGuest, 40000, kGateway, 5000, text("nobody"));
  nat.input(closed.packet(), t0);
  REQUIRE(tx.sent.size() == 3);
  require_unreachable(tx.sent[2], kGateway, Icmpv4Unreachable::Port, closed);
  CHECK(host.socks.empty());
  CHECK(nat.flow_count() == 0);
}

TEST_CASE("udp: destinations without a host target get ICMP unreachable and no socket", "[udp]") {
  FakeTx tx;
  FakeHost host;
  SECTION("another address in the subnet: host unreachable") {
    UdpNat nat(tx, host);
    auto d = udp(kGuest, 40000, Ipv4Addr(192, 168, 65, 77), 53, text("x"));
    nat.input(d.packet(), t0);
    REQUIRE(tx.sent.size() == 1);
    require_unreachable(tx.sent[0], kGateway, Icmpv4Unreachable::Host, d);
  }
  SECTION("the host alias with --host-loopback deny: administratively prohibited") {
    tx.cfg.host_loopback = false;
    UdpNat nat(tx, host);
    auto d = udp(kGuest, 40000, kAlias, 53, text("x"));
    nat.input(d.packet(), t0);
    REQUIRE(tx.sent.size() == 1);
    require_unreachable(tx.sent[0], kGateway, Icmpv4Unreachable::AdminProhibited, d);
  }
  SECTION("the host cannot open a socket: ICMP, no flow") {
    UdpNat nat(tx, host);
    host.fail_open = EMFILE;
    auto d = udp(kGuest, 40000, kOutside, 53, text("x"));
    nat.input(d.packet(), t0);
    REQUIRE(tx.sent.size() == 1);
    require_unreachable(tx.sent[0], kGateway, Icmpv4Unreachable::AdminProhibited, d);
    CHECK(nat.flow_count() == 0);
    CHECK(nat.stats().open_errors == 1);
    host.fail_open = ENETUNREACH;
    nat.input(d.packet(), t0);
    REQUIRE(tx.sent.size() == 2);
    require_unreachable(tx.sent[1], kGateway, Icmpv4Unreachable::Net, d);
  }
  CHECK(host.open_count() == 0);
}

TEST_CASE("udp: closing the translator closes its host sockets", "[udp]") {
  FakeTx tx;
  FakeHost host;
  {
    UdpNat nat(tx, host);
    nat.input(udp(kGuest, 1, kOutside, 53, text("a")).packet(), t0);
    nat.input(udp(kGuest, 2, kOutside, 53, text("b")).packet(), t0);
    CHECK(host.open_count() == 2);
  }
  CHECK(host.open_count() == 0);
}

TEST_CASE("udp: FlowTable keeps IDs stable, rejects stale IDs and stays bounded", "[udp]") {
  struct Tag {};
  FlowTable<Tag, int> t(3);
  auto a = t.insert(1, 1s), b = t.insert(2, 2s), c = t.insert(3, 3s);
  REQUIRE((a && b && c));
  CHECK_FALSE(t.insert(4, 4s));
  CHECK(*t.oldest() == *a);
  t.touch(*a, 5s);
  CHECK(*t.oldest() == *b);
  t.erase(*b);
  CHECK(t.find(*b) == nullptr);
  auto d = t.insert(4, 6s);
  REQUIRE(d);
  CHECK(d->index == b->index);  // slot reused, with a new generation
  CHECK(t.find(*b) == nullptr);
  CHECK(*t.find(*d) == 4);
  CHECK(FlowId<Tag>::from_cookie(d->cookie()) == *d);
  std::vector<int> order;
  t.for_each([&](FlowId<Tag>, int v, Instant) { order.push_back(v); });
  CHECK(order == std::vector<int>{3, 1, 4});
}

// ---------------------------------------------------------------- ICMP

TEST_CASE("icmp: echo id and sequence survive the host's identifier rewriting", "[icmp]") {
  FakeTx tx;
  FakeHost host;
  IcmpEcho icmp(tx, host);
  icmp.input(echo(kGuest, kOutside, 0x1234, 7, text("abcdefgh-payload")).packet(), t0);

  REQUIRE(host.socks.size() == 1);
  CHECK(host.socks[0].icmp);
  CHECK(host.socks[0].remote.addr == kOutside);
  REQUIRE(host.socks[0].sent.size() == 1);
  CHECK(load_be16(&host.socks[0].sent[0][4]) == host.socks[0].ident);  // the fake kernel rewrote it
  CHECK(load_be16(&host.socks[0].sent[0][6]) == 7);

  host.echo_reply(0, t0 + 20ms);
  REQUIRE(tx.sent.size() == 1);
  CHECK(tx.sent[0].src == kOutside);
  CHECK(tx.sent[0].dst == kGuest);
  Icmpv4Repr r = as_icmp(tx.sent[0]);  // checksum verified
  CHECK(r.type == Icmpv4Type::EchoReply);
  CHECK(r.ident == 0x1234);
  CHECK(r.seq == 7);
  CHECK(str(r.data) == "abcdefgh-payload");

  std::string flows;
  icmp.describe_flows(flows, t0 + 1s);
  CHECK(flows == fmt::format("icmp 192.168.65.3:4660 203.0.113.7:{} replied tx=24 rx=24 age=1\n", host.socks[0].ident));

  SECTION("later pings of the session use the same socket") {
    icmp.input(echo(kGuest, kOutside, 0x1234, 8, text("x")).packet(), t0 + 1s);
    CHECK(host.socks.size() == 1);
    host.echo_reply(0, t0 + 1s);
    REQUIRE(tx.sent.size() == 2);
    CHECK(as_icmp(tx.sent[1]).seq == 8);
    CHECK(as_icmp(tx.sent[1]).ident == 0x1234);
  }
  SECTION("another identifier, guest or destination is another flow") {
    icmp.input(echo(kGuest, kOutside, 0x1235, 1, text("x")).packet(), t0);
    icmp.input(echo(kGuest2, kOutside, 0x1234, 1, text("x")).packet(), t0);
    icmp.input(echo(kGuest, kAlias, 0x1234, 1, text("x")).packet(), t0);
    REQUIRE(host.socks.size() == 4);
    CHECK(host.socks[3].remote.addr == kLoopback);  // the host alias is the host's loopback
    host.echo_reply(2, t0);
    REQUIRE(tx.sent.size() == 2);
    CHECK(tx.sent[1].dst == kGuest2);
    CHECK(as_icmp(tx.sent[1]).ident == 0x1234);
    host.echo_reply(3, t0);
    REQUIRE(tx.sent.size() == 3);
    CHECK(tx.sent[2].src == kAlias);
  }
}

TEST_CASE("icmp: replies that do not match a request sent are ignored", "[icmp]") {
  FakeTx tx;
  FakeHost host;
  IcmpEcho icmp(tx, host);
  icmp.input(echo(kGuest, kOutside, 0x1234, 7, text("data")).packet(), t0);
  REQUIRE(host.socks.size() == 1);
  std::vector<uint8_t> m = host.socks[0].sent.back();
  m[0] = 0;

  SECTION("unknown sequence number") { store_be16(&m[6], 99); }
  SECTION("not an echo reply") { m[0] = 8; }
  SECTION("from another address") {
    store_be16(&m[2], 0);
    store_be16(&m[2], internet_checksum(m));
    host.socks[0].sink->on_datagram(host.socks[0].cookie, SockAddr4{kLoopback, 0}, m, t0);
    CHECK(tx.sent.empty());
    CHECK(icmp.stats().unmatched_replies == 1);
    return;
  }
  SECTION("truncated") { m.resize(5); }
  if (m.size() >= 8) {
    store_be16(&m[2], 0);
    store_be16(&m[2], internet_checksum(m));
  }
  host.reply(0, m, t0);
  CHECK(tx.sent.empty());
  CHECK(icmp.stats().unmatched_replies == 1);
}

TEST_CASE("icmp: the flow table is bounded, and idle flows expire", "[icmp]") {
  FakeTx tx;
  tx.cfg.max_icmp_flows = 2;
  FakeHost host;
  IcmpEcho icmp(tx, host);
  icmp.input(echo(kGuest, kOutside, 1, 1, text("a")).packet(), t0);
  icmp.input(echo(kGuest, kOutside, 2, 1, text("b")).packet(), t0 + 1s);
  auto third = echo(kGuest, kOutside, 3, 1, text("c"));
  icmp.input(third.packet(), t0 + 2s);

  CHECK(tx.drop(Drop::FlowTableFull) == 1);
  CHECK(host.socks.size() == 2);
  REQUIRE(tx.sent.size() == 1);
  require_unreachable(tx.sent[0], kGateway, Icmpv4Unreachable::AdminProhibited, third);

  // Existing sessions continue.
  icmp.input(echo(kGuest, kOutside, 1, 2, text("a")).packet(), t0 + 3s);
  host.echo_reply(0, t0 + 3s);
  REQUIRE(tx.sent.size() == 2);
  CHECK(as_icmp(tx.sent[1]).ident == 1);
  CHECK(as_icmp(tx.sent[1]).seq == 2);

  // Flow 2 was last active at t0+1s, flow 1 at t0+3s.
  CHECK(icmp.poll_at() == t0 + 1s + IcmpEcho::kIdleTimeout);
  icmp.poll(t0 + 1s + IcmpEcho::kIdleTimeout - 1ns);
  CHECK(icmp.flow_count() == 2);
  icmp.poll(t0 + 1s + IcmpEcho::kIdleTimeout);
  CHECK(icmp.flow_count() == 1);
  CHECK_FALSE(host.socks[1].open);
  CHECK(host.socks[0].open);
  icmp.input(third.packet(), t0 + 40s);
  CHECK(host.socks.size() == 3);
  icmp.poll(t0 + 100s);
  CHECK(icmp.flow_count() == 0);
  CHECK(host.open_count() == 0);
  CHECK(icmp.stats().flows_expired == 3);
}

TEST_CASE("icmp: bad input is counted, other ICMP types ignored, the gateway answered here", "[icmp]") {
  FakeTx tx;
  FakeHost host;
  IcmpEcho icmp(tx, host);

  SECTION("truncated") {
    auto d = ipv4(kGuest, kOutside, IpProtocol::Icmp, 6, [](std::span<uint8_t> o) { std::fill(o.begin(), o.end(), 8); });
    icmp.input(d.packet(), t0);
    CHECK(tx.drop(Drop::L4Malformed) == 1);
  }
  SECTION("bad checksum") {
    auto d = echo(kGuest, kOutside, 1, 1, text("abc"));
    d.buf[20 + 8] ^= 0xff;
    icmp.input(d.packet(), t0);
    CHECK(tx.drop(Drop::L4BadChecksum) == 1);
  }
  SECTION("echo request with a nonzero code") {
    auto d = echo(kGuest, kOutside, 1, 1, text("abc"));
    d.buf[20 + 1] = 1;
    store_be16(&d.buf[20 + 2], 0);
    store_be16(&d.buf[20 + 2], internet_checksum(Bytes(d.buf).subspan(20)));
    icmp.input(d.packet(), t0);
    CHECK(tx.drop(Drop::L4Malformed) == 1);
  }
  SECTION("an echo reply from the guest") {
    auto d = echo(kGuest, kOutside, 1, 1, text("abc"));
    d.buf[20] = 0;
    store_be16(&d.buf[20 + 2], 0);
    store_be16(&d.buf[20 + 2], internet_checksum(Bytes(d.buf).subspan(20)));
    icmp.input(d.packet(), t0);
    CHECK(icmp.stats().unsupported == 1);
    CHECK(tx.total_drops() == 0);
  }
  CHECK(host.socks.empty());
  CHECK(tx.sent.empty());

  SECTION("echo to the gateway") {
    icmp.input(echo(kGuest, kGateway, 0x77, 3, text("gw")).packet(), t0);
    CHECK(host.socks.empty());
    REQUIRE(tx.sent.size() == 1);
    CHECK(tx.sent[0].src == kGateway);
    Icmpv4Repr r = as_icmp(tx.sent[0]);
    CHECK(r.type == Icmpv4Type::EchoReply);
    CHECK(r.ident == 0x77);
    CHECK(r.seq == 3);
    CHECK(str(r.data) == "gw");
  }
}

TEST_CASE("icmp: host errors and refusals become ICMP unreachable quoting the request", "[icmp]") {
  FakeTx tx;
  FakeHost host;
  IcmpEcho icmp(tx, host);
  auto req = echo(kGuest, kOutside, 9, 1, text("abc"));

  SECTION("no echo socket permitted on the host") {
    host.fail_open = EPERM;
    icmp.input(req.packet(), t0);
    REQUIRE(tx.sent.size() == 1);
    require_unreachable(tx.sent[0], kGateway, Icmpv4Unreachable::AdminProhibited, req);
    CHECK(icmp.flow_count() == 0);
    CHECK(icmp.stats().open_errors == 1);
  }
  SECTION("the host's kernel reports host unreachable") {
    icmp.input(req.packet(), t0);
    host.error(0, EHOSTUNREACH, t0 + 1s);
    REQUIRE(tx.sent.size() == 1);
    require_unreachable(tx.sent[0], kOutside, Icmpv4Unreachable::Host, req);
  }
  SECTION("an address in the subnet with nobody there") {
    auto d = echo(kGuest, Ipv4Addr(192, 168, 65, 99), 9, 1, text("abc"));
    icmp.input(d.packet(), t0);
    REQUIRE(tx.sent.size() == 1);
    require_unreachable(tx.sent[0], kGateway, Icmpv4Unreachable::Host, d);
    CHECK(host.socks.empty());
  }
}

// ---------------------------------------------------------------- real sockets

namespace {

// A libuv loop with a repeating wake-up timer, so that waiting for a
// condition is a bounded number of iterations even when nothing happens.
class TestLoop {
 public:
  TestLoop() {
    REQUIRE(uv_loop_init(&loop) == 0);
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, [](uv_timer_t*) {}, 20, 20);
  }
  ~TestLoop() {
    uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT) != 0; i++) {
    }
    CHECK(uv_loop_close(&loop) == 0);
  }
  // Runs the loop until cond() holds, at most `iterations` turns.
  bool run_until(const std::function<bool()>& cond, int iterations = 500) {
    for (int i = 0; i < iterations; i++) {
      if (cond()) return true;
      uv_run(&loop, UV_RUN_ONCE);
    }
    return cond();
  }
  uv_loop_t loop;
  uv_timer_t tick;
};

// A UDP echo server on 127.0.0.1, on the test's loop.
class EchoServer {
 public:
  explicit EchoServer(uv_loop_t* loop) {
    REQUIRE(uv_udp_init(loop, &udp) == 0);
    udp.data = this;
    sockaddr_in sa{};
    uv_ip4_addr("127.0.0.1", 0, &sa);
    REQUIRE(uv_udp_bind(&udp, reinterpret_cast<sockaddr*>(&sa), 0) == 0);
    int len = sizeof sa;
    REQUIRE(uv_udp_getsockname(&udp, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
    port = ntohs(sa.sin_port);
    REQUIRE(uv_udp_recv_start(
                &udp, [](uv_handle_t*, size_t, uv_buf_t* b) { static char buf[65536]; *b = uv_buf_init(buf, sizeof buf); },
                [](uv_udp_t* u, ssize_t n, const uv_buf_t* b, const sockaddr* from, unsigned) {
                  if (n <= 0 || !from) return;
                  auto* self = static_cast<EchoServer*>(u->data);
                  self->received++;
                  uv_buf_t out = uv_buf_init(b->base, unsigned(n));
                  (void)uv_udp_try_send(u, &out, 1, from);
                }) == 0);
  }
  ~EchoServer() { uv_close(reinterpret_cast<uv_handle_t*>(&udp), nullptr); }
  uv_udp_t udp;
  uint16_t port = 0;
  int received = 0;
};

// A loopback UDP port nobody listens on (bound, read, then closed).
uint16_t closed_udp_port() {
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  socklen_t len = sizeof sa;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  ::close(fd);
  return ntohs(sa.sin_port);
}

bool loopback_echo_ignored() {
  std::ifstream f("/proc/sys/net/ipv4/icmp_echo_ignore_all");
  int v = 0;
  return (f >> v) && v != 0;
}

}  // namespace

TEST_CASE("udp: a guest datagram to the host alias is echoed by a server on 127.0.0.1", "[udp][uv]") {
  TestLoop l;
  SystemMonoClock clock;
  FakeTx tx;
  EchoServer server(&l.loop);
  {
    UvDgramHost host(&l.loop, clock);
    UdpNat nat(tx, host);
    std::vector<uint8_t> big(3000);
    for (size_t i = 0; i < big.size(); i++) big[i] = uint8_t(i * 7);

    nat.input(udp(kGuest, 40000, kAlias, server.port, text("hello host")).packet(), clock.now());
    nat.input(udp(kGuest, 40000, kAlias, server.port, big).packet(), clock.now());
    REQUIRE(l.run_until([&] { return tx.sent.size() >= 2; }));
    CHECK(server.received == 2);
    CHECK(host.open_sockets() == 1);
    for (const Sent& s : tx.sent) {
      CHECK(s.src == kAlias);
      CHECK(s.dst == kGuest);
      UdpRepr r = as_udp(s);
      CHECK(r.src_port == server.port);
      CHECK(r.dst_port == 40000);
    }
    CHECK(str(as_udp(tx.sent[0]).payload) == "hello host");
    Bytes echoed = as_udp(tx.sent[1]).payload;
    CHECK(std::equal(echoed.begin(), echoed.end(), big.begin(), big.end()));

    std::string flows;
    nat.describe_flows(flows, clock.now());
    CHECK(flows.find(fmt::format("udp 192.168.65.3:40000 127.0.0.1:{} replied tx=3010 rx=3010 ", server.port)) == 0);
  }
}

TEST_CASE("udp: a datagram to a closed 127.0.0.1 port yields ICMP port unreachable", "[udp][uv]") {
  TestLoop l;
  SystemMonoClock clock;
  FakeTx tx;
  uint16_t port = closed_udp_port();
  UvDgramHost host(&l.loop, clock);
  UdpNat nat(tx, host);
  auto d = udp(kGuest, 40000, kAlias, port, text("anyone?"));
  nat.input(d.packet(), clock.now());
  REQUIRE(l.run_until([&] { return !tx.sent.empty(); }));
  require_unreachable(tx.sent[0], kAlias, Icmpv4Unreachable::Port, d);
  CHECK(nat.stats().unreachable_sent == 1);
}

TEST_CASE("udp: UvDgramHost bounds its sockets and ignores stale handles", "[udp][uv]") {
  TestLoop l;
  SystemMonoClock clock;
  UvDgramHost::Options opts;
  opts.max_sockets = 2;
  UvDgramHost host(&l.loop, clock, opts);
  struct NullSink final : DgramSink {
    void on_datagram(uint64_t, SockAddr4, Bytes, Instant) override {}
    void on_error(uint64_t, int, Instant) override {}
  } sink;
  auto a = host.open_udp(SockAddr4{kLoopback, 9}, sink, 1);
  auto b = host.open_udp(SockAddr4{kLoopback, 9}, sink, 2);
  REQUIRE((a && b));
  auto c = host.open_udp(SockAddr4{kLoopback, 9}, sink, 3);
  REQUIRE_FALSE(c);
  CHECK(c.error().code == EMFILE);
  REQUIRE(host.local_addr(*a));
  CHECK(host.local_addr(*a)->addr == kLoopback);
  host.close(*a);
  CHECK(host.open_sockets() == 1);
  auto send = host.send(*a, text("x"));
  REQUIRE_FALSE(send);
  CHECK(send.error().code == EBADF);
  host.close(*a);  // twice: ignored
  auto d = host.open_udp(SockAddr4{kLoopback, 9}, sink, 4);
  REQUIRE(d);
  CHECK(d->index == a->index);
  CHECK_FALSE(host.send(*a, text("x")));
  CHECK(host.send(*d, text("x")));
}

namespace {

// Two guests ping the host alias with the same identifier; each must get
// exactly its own reply, with its identifier and sequence.
void ping_host_alias(std::optional<IcmpMode> mode) {
  TestLoop l;
  SystemMonoClock clock;
  FakeTx tx;
  UvDgramHost::Options opts;
  opts.icmp = mode;
  UvDgramHost host(&l.loop, clock, opts);
  if (host.icmp_mode() == IcmpMode::None) {
    WARN("skipped: neither ICMP ping sockets nor raw sockets are permitted here");
    return;
  }
  if (loopback_echo_ignored()) {
    WARN("skipped: net.ipv4.icmp_echo_ignore_all is set");
    return;
  }
  INFO("ICMP mode " << icmp_mode_name(host.icmp_mode()));
  IcmpEcho icmp(tx, host);
  icmp.input(echo(kGuest, kAlias, 0x4242, 1, text("berth ping payload")).packet(), clock.now());
  icmp.input(echo(kGuest2, kAlias, 0x4242, 5, text("second guest")).packet(), clock.now());
  REQUIRE(l.run_until([&] { return tx.sent.size() >= 2; }));
  l.run_until([] { return false; }, 5);  // no duplicates or strays may follow
  REQUIRE(tx.sent.size() == 2);
  std::sort(tx.sent.begin(), tx.sent.end(), [](const Sent& a, const Sent& b) { return a.dst < b.dst; });
  CHECK(tx.sent[0].dst == kGuest);
  CHECK(tx.sent[1].dst == kGuest2);
  for (const Sent& s : tx.sent) {
    CHECK(s.src == kAlias);
    Icmpv4Repr r = as_icmp(s);  // checksum verified
    CHECK(r.type == Icmpv4Type::EchoReply);
    CHECK(r.ident == 0x4242);
  }
  CHECK(as_icmp(tx.sent[0]).seq == 1);
  CHECK(str(as_icmp(tx.sent[0]).data) == "berth ping payload");
  CHECK(as_icmp(tx.sent[1]).seq == 5);
  CHECK(str(as_icmp(tx.sent[1]).data) == "second guest");
  CHECK(icmp.flow_count() == 2);
}

}  // namespace

TEST_CASE("icmp: an echo to the host alias is answered by the host (mode probed)", "[icmp][uv]") {
  ping_host_alias(std::nullopt);
}

TEST_CASE("icmp: echo through a raw socket, when permitted", "[icmp][uv]") {
  int fd = ::socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
  if (fd < 0) {
    WARN("skipped: raw ICMP sockets not permitted");
    return;
  }
  ::close(fd);
  ping_host_alias(IcmpMode::Raw);
}

TEST_CASE("icmp: echo through a ping socket, when permitted", "[icmp][uv]") {
  if (UvDgramHost::probe_icmp() != IcmpMode::Ping) {
    WARN("skipped: ICMP ping sockets not permitted (net.ipv4.ping_group_range)");
    return;
  }
  ping_host_alias(IcmpMode::Ping);
}
