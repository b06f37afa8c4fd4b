// Fuzz DHCP: the codec (net/wire/dhcp.h) and the server (net/dhcp.h).
//
// Every record's bytes go to the codec: a message that parses must emit
// exactly buffer_len() bytes that parse back to the same fields, and option
// 119 values must decode without looping. The same bytes then reach a
// DhcpServer as the UDP payload of a real frame through a real Stack and
// UdpNat (three guest links), with a fake wall clock moving forward, so
// offers lapse, leases expire and declined addresses come back.
//
// Input: a sequence of records, each op[1] arg[1] len[2 LE] data[len]:
//   op & 3:        the guest link (3 means 0)
//   op & 4:        to the gateway by unicast (from the link's address) instead of broadcast
//   op & 8:        overwrite chaddr (bytes 28..33) with the link's MAC, to get past anti-spoofing
//   (op >> 4) & 3: 0 a DHCP datagram; 1 only advance the clock arg * 61 s;
//                  2 set_statics(data); 3 add_static(data) and lookup_hostname(data)
//   arg:           seconds the clock advances before the record
//
// Invariants checked after every record: every frame the gateway sent is a
// well-formed DHCP reply from gateway:67 to port 68 whose yiaddr, if any,
// is assignable; live leases are bounded by pool plus reservations, sit on
// distinct assignable addresses, and render one line each; hostnames of
// live leases are found by lookup_hostname; sent counts never exceed the
// received counts they answer.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "net/dhcp.h"
#include "net/host/dgram_host.h"
#include "net/stack.h"
#include "net/udp.h"
#include "net/wire/dhcp.h"
#include "net/wire/ethernet.h"
#include "net/wire/ipv4.h"
#include "net/wire/udp.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

using namespace berth;
using namespace berth::net;
using namespace berth::net::wire;

namespace {

class SinkLink final : public FrameLink {
 public:
  std::string type() const override { return "fuzz"; }
  std::string peer() const override { return "fuzz"; }
  Result<void> start(Receive) override { return {}; }
  bool send(Bytes f) override {
    sent.emplace_back(f.begin(), f.end());
    return true;
  }
  void close() override {}
  size_t max_frame() const override { return 65535 + 14; }
  std::vector<std::vector<uint8_t>> sent;
};

class NoHost final : public DgramHost {
 public:
  Result<DgramSocket> open_udp(SockAddr4, DgramSink&, uint64_t) override { return make_error(EPERM, "fuzz"); }
  Result<DgramSocket> open_icmp_echo(Ipv4Addr, DgramSink&, uint64_t) override { return make_error(EPERM, "fuzz"); }
  Result<void> send(DgramSocket, Bytes) override { return make_error(EBADF, "fuzz"); }
  void close(DgramSocket) override {}
  IcmpMode icmp_mode() const override { return IcmpMode::None; }
};

#define CHECK_OR_TRAP(c) \
  do {                   \
    if (!(c)) __builtin_trap(); \
  } while (0)

bool assignable(const NetConfig& c, Ipv4Addr ip) {
  return c.subnet.contains(ip) && ip != c.subnet.network() && ip != c.subnet.broadcast() && ip != c.gateway &&
         ip != c.host_alias;
}

void check_codec(Bytes data) {
  auto m = DhcpRepr::parse(data);
  if (!m) return;
  std::vector<uint8_t> out(m->buffer_len() + 1, 0xa5);
  m->emit(out);
  CHECK_OR_TRAP(out.back() == 0xa5);
  auto back = DhcpRepr::parse(Bytes(out.data(), m->buffer_len()));
  CHECK_OR_TRAP(back);
  const DhcpRepr &a = *m, &b = *back;
  CHECK_OR_TRAP(a.op == b.op && a.xid == b.xid && a.flags == b.flags && a.htype == b.htype && a.hlen == b.hlen);
  CHECK_OR_TRAP(a.ciaddr == b.ciaddr && a.yiaddr == b.yiaddr && a.siaddr == b.siaddr && a.giaddr == b.giaddr);
  CHECK_OR_TRAP(a.chaddr == b.chaddr && a.message_type == b.message_type && a.requested_ip == b.requested_ip);
  CHECK_OR_TRAP(a.server_id == b.server_id && a.lease_time == b.lease_time && a.interface_mtu == b.interface_mtu);
  CHECK_OR_TRAP(a.router == b.router && a.dns_count == b.dns_count && a.subnet_mask == b.subnet_mask);
  CHECK_OR_TRAP(same_bytes(a.hostname, b.hostname) && same_bytes(a.client_id, b.client_id));
  CHECK_OR_TRAP(same_bytes(a.domain_search, b.domain_search) && same_bytes(a.domain_name, b.domain_name));
  CHECK_OR_TRAP(same_bytes(a.parameter_request_list, b.parameter_request_list));
  if (!a.domain_search.empty()) (void)decode_domain_search(a.domain_search);
}

std::vector<uint8_t> frame(MacAddr mac, MacAddr dst_mac, Ipv4Addr src, Ipv4Addr dst, Bytes payload) {
  UdpRepr u{68, 67, payload};
  std::vector<uint8_t> f(14 + 20 + u.buffer_len());
  EthernetRepr{mac, dst_mac, EtherType::Ipv4}.emit(f);
  Ipv4Repr ip;
  ip.src = src;
  ip.dst = dst;
  ip.protocol = IpProtocol::Udp;
  ip.payload_len = uint16_t(u.buffer_len());
  ip.ident = 1;
  ip.emit(std::span<uint8_t>(f).subspan(14));
  u.emit(std::span<uint8_t>(f).subspan(34), PseudoHeader::v4(src, dst));
  return f;
}

void check_replies(const NetConfig& cfg, SinkLink& link) {
  for (const auto& f : link.sent) {
    auto e = EthernetFrame::check(f);
    CHECK_OR_TRAP(e);
    auto er = EthernetRepr::parse(*e);
    CHECK_OR_TRAP(er);
    if (er->src != cfg.gateway_mac) continue;  // another guest's broadcast, flooded by the switch
    CHECK_OR_TRAP(er->ethertype == EtherType::Ipv4);
    auto pk = Ipv4Packet::check(e->payload());
    CHECK_OR_TRAP(pk);
    auto ip = Ipv4Repr::parse(*pk);
    CHECK_OR_TRAP(ip && ip->src == cfg.gateway && ip->protocol == IpProtocol::Udp);
    auto u = UdpPacket::check(pk->payload());
    CHECK_OR_TRAP(u && u->verify_checksum(PseudoHeader::v4(ip->src, ip->dst)));
    CHECK_OR_TRAP(u->src_port() == 67 && u->dst_port() == 68);
    auto m = DhcpRepr::parse(u->payload());
    CHECK_OR_TRAP(m && m->op == BootpOp::Reply && m->message_type && m->server_id == cfg.gateway);
    CHECK_OR_TRAP(*m->message_type == DhcpMessageType::Offer || *m->message_type == DhcpMessageType::Ack ||
                  *m->message_type == DhcpMessageType::Nak);
    CHECK_OR_TRAP(m->yiaddr.is_unspecified() || assignable(cfg, m->yiaddr));
    CHECK_OR_TRAP(u->payload().size() <= 65535);
  }
  link.sent.clear();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // leases granted and expired are logged at info
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  NetConfig cfg;
  cfg.dhcp_last = Ipv4Addr(192, 168, 65, 10);  // a small pool, so exhaustion and reuse happen
  FakeClock wall;
  Stack stack(cfg);
  SinkLink links[3];
  const MacAddr macs[3] = {{{0x52, 0x54, 0, 0, 0, 1}}, {{0x52, 0x54, 0, 0, 0, 2}}, {{0x52, 0x54, 0, 0, 0, 3}}};
  for (auto& l : links) (void)stack.add_port(&l);
  NoHost host;
  UdpNat udp(stack, host);
  stack.set_handler(IpProtocol::Udp, &udp);
  DhcpServer dhcp(stack, udp, wall, "");
  p9::Tree tree;
  p9::MetricsRegistry metrics;
  mount_dhcp_tree(tree, metrics, dhcp);
  const Instant now{1'000'000'000};
  const size_t pool = 8;

  size_t pos = 0;
  while (size - pos >= 4) {
    uint8_t op = data[pos], arg = data[pos + 1];
    size_t len = std::min<size_t>(size_t(data[pos + 2]) | (size_t(data[pos + 3]) << 8), size - pos - 4);
    std::vector<uint8_t> rec(data + pos + 4, data + pos + 4 + len);
    pos += 4 + len;
    check_codec(rec);
    (void)decode_domain_search(rec);
    wall.t.sec += arg;
    const uint32_t port = (op & 3) == 3 ? 0 : op & 3;
    switch ((op >> 4) & 3) {
      case 0: {
        if ((op & 8) && rec.size() >= 34) macs[port].write(&rec[28]);
        auto bound = stack.port(port).ip;
        const bool unicast = (op & 4) && bound;
        Ipv4Addr src = unicast ? *bound : Ipv4Addr();
        Ipv4Addr dst = unicast ? cfg.gateway : Ipv4Addr::broadcast();
        MacAddr dst_mac = unicast ? cfg.gateway_mac : MacAddr::broadcast();
        stack.receive(port, frame(macs[port], dst_mac, src, dst, rec), now);
        break;
      }
      case 1: wall.t.sec += int64_t(arg) * 61; break;
      case 2: (void)dhcp.set_statics(as_chars(rec)); break;
      case 3:
        (void)dhcp.add_static(as_chars(rec));
        (void)dhcp.lookup_hostname(as_chars(rec));
        break;
    }
    for (auto& l : links) check_replies(cfg, l);

    // The server's own invariants.
    auto leases = dhcp.leases();
    CHECK_OR_TRAP(leases.size() <= pool + dhcp.reservations().size());
    std::set<std::string> ips;
    for (const auto& l : leases) {
      auto ip = Ipv4Addr::parse(l.ip);
      CHECK_OR_TRAP(ip && assignable(cfg, *ip));
      CHECK_OR_TRAP(ips.insert(l.ip).second);
      if (!l.hostname.empty()) CHECK_OR_TRAP(dhcp.lookup_hostname(l.hostname).has_value());
    }
    std::string text = dhcp.render_leases();
    CHECK_OR_TRAP(size_t(std::count(text.begin(), text.end(), '\n')) == leases.size());
    const DhcpStats& s = dhcp.stats();
    CHECK_OR_TRAP(s.offers <= s.discovers && s.naks <= s.requests && s.acks <= s.requests + s.informs);
    CHECK_OR_TRAP(dhcp.reservations().size() <= DhcpServer::kMaxReservations);
  }
  // Not render_leases_json(): the system rapidjson under cereal trips UBSan
  // ("applying non-zero offset to null pointer" in internal/stack.h) on any
  // document; that is the library's, and the JSON is plain data anyway.
  (void)dhcp.render_stats();
  (void)metrics.render();
  if (auto n = tree.resolve("/dhcp/static"))
    if (auto h = n->open(p9::Access::Read, false)) (void)h.value()->size();
  return 0;
}
