// Theory of operation: UDP NAT.
//
// A flow is one conversation: (guest IP, guest port, destination IP,
// destination port). Keying on the whole 4-tuple rather than on the guest's
// (IP, port) alone costs a socket per destination, and buys:
//  - a *connected* host socket per flow, so the kernel reports "port
//    unreachable" for exactly that flow as ECONNREFUSED, which we turn into
//    an ICMP error quoting the guest's own datagram. An unconnected socket
//    would need IP_RECVERR and the error queue to learn which destination
//    refused.
//  - the kernel filters replies to the flow's remote, and the reply's
//    source as the guest must see it is simply the destination the guest
//    used (the host alias stays the host alias, though the host socket talks
//    to 127.0.0.1), with no reverse lookup.
//  - one line per flow in /net/flows with one host end.
// The price is an address-and-port-dependent mapping (RFC 4787): a guest
// port talking to two peers uses two host ports, and peers the guest never
// sent to cannot reach it. For a translator whose guests are clients that
// is the safe behaviour (it is also what connected sockets give passt).
//
// Flows live in a bounded FlowTable ordered by last activity; a datagram
// either way refreshes a flow (RFC 4787 REQ-6), and poll(now) closes those
// idle for 60 s, oldest first, so both poll() and poll_at() are O(1) per
// flow expired. Host events come back through DgramSink tagged with the
// flow's ID as cookie; a stale cookie (flow closed, slot reused) finds
// nothing and the event is ignored.
//
// Datagrams to the gateway or a broadcast address are offered to the
// in-process services first (DNS, DHCP). Anything with no host target gets
// an ICMP unreachable from the gateway: port unreachable for the gateway
// itself, administratively prohibited for a denied host alias or a full
// table, host unreachable for other addresses in the subnet.
#include "net/udp.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>

#include "net/wire/udp.h"

namespace berth::net {

using wire::Icmpv4Unreachable;
using wire::Ipv4Addr;

void QuotedDatagram::set(Bytes packet, size_t header_len) {
  size_t n = std::min({packet.size(), header_len + 8, bytes.size()});
  std::copy_n(packet.begin(), n, bytes.begin());
  len = uint8_t(n);
}

bool send_icmp_unreachable(GuestTx& tx, Ipv4Addr src, Bytes quote, Icmpv4Unreachable code) {
  auto q = wire::Ipv4Repr::parse_quoted(quote);
  if (!q) return false;
  Bytes data = quote.subspan(q->header_len());
  if (data.size() < wire::Icmpv4Packet::kMinQuotedData) return false;
  // RFC 1122 §3.2.2: no ICMP error about a datagram sent to a broadcast or
  // multicast address, or from an address that does not name one host.
  const NetConfig& cfg = tx.config();
  if (!q->dst.is_unicast() || q->dst == cfg.subnet.broadcast()) return false;
  if (!q->src.is_unicast() || q->src == cfg.subnet.broadcast()) return false;
  wire::Icmpv4Repr r;
  r.type = wire::Icmpv4Type::DstUnreachable;
  r.code = uint8_t(code);
  r.quoted = *q;
  r.quoted_data = data.first(wire::Icmpv4Packet::kMinQuotedData);
  return tx.send_ipv4(src, q->src, wire::IpProtocol::Icmp, r.buffer_len(),
                      [&](std::span<uint8_t> l4, const wire::PseudoHeader&) { r.emit(l4); });
}

const char* udp_flow_state_name(UdpFlowState s) {
  switch (s) {
    case UdpFlowState::Unreplied: return "unreplied";
    case UdpFlowState::Replied: return "replied";
    case UdpFlowState::Refused: return "refused";
  }
  return "unknown";
}

std::string UdpStats::render() const {
  return fmt::format(
      "udp_flows_opened {}\nudp_flows_expired {}\nudp_open_errors {}\nudp_send_errors {}\n"
      "udp_to_guest_dropped {}\nudp_unreachable_sent {}\nudp_service_datagrams {}\n",
      flows_opened, flows_expired, open_errors, send_errors, to_guest_dropped, unreachable_sent,
      service_datagrams);
}

// RFC 1122 §4.1.3.3 and Linux's icmp_err_convert, read backwards.
std::optional<Icmpv4Unreachable> unreachable_for_errno(int err) {
  switch (err) {
    case ECONNREFUSED: return Icmpv4Unreachable::Port;
    case EHOSTUNREACH: return Icmpv4Unreachable::Host;
    case ENETUNREACH: return Icmpv4Unreachable::Net;
    case EACCES:
    case EPERM: return Icmpv4Unreachable::AdminProhibited;
    default: return std::nullopt;
  }
}

namespace {

constexpr size_t kMaxUdpToGuest = 65535 - wire::Ipv4Packet::kMinHeaderLen;

}  // namespace

bool UdpNat::Reply::send_to(Ipv4Addr dst, uint16_t dst_port, Bytes payload) const {
  return nat_->send_udp(local_.addr, local_.port, dst, dst_port, payload);
}

UdpNat::UdpNat(GuestTx& tx, DgramHost& host) : tx_(tx), host_(host), flows_(tx.config().max_udp_flows) {}

UdpNat::~UdpNat() {
  flows_.for_each([&](UdpFlowId, const Flow& f, Instant) { host_.close(f.sock); });
}

void UdpNat::add_service(uint16_t port, Service service) { services_[port] = std::move(service); }

bool UdpNat::send_from_gateway(uint16_t sport, Ipv4Addr dst, uint16_t dport, Bytes payload) {
  return send_udp(tx_.config().gateway, sport, dst, dport, payload);
}

Bytes UdpNat::udp_payload(const GuestPacket& p) {
  auto u = wire::UdpPacket::check(p.payload);
  return u ? u->payload() : Bytes();
}

void UdpNat::input(const GuestPacket& p, Instant now) {
  auto u = wire::UdpPacket::check(p.payload);
  if (!u) {
    spdlog::debug("udp: malformed datagram from {} ({})", p.ip.src.to_string(), wire::wire_error_name(u.error()));
    tx_.count_drop(Drop::L4Malformed);
    return;
  }
  if (!u->verify_checksum(wire::PseudoHeader::v4(p.ip.src, p.ip.dst))) {
    spdlog::debug("udp: bad checksum from {}", p.ip.src.to_string());
    tx_.count_drop(Drop::L4BadChecksum);
    return;
  }
  const NetConfig& cfg = tx_.config();
  const uint16_t sport = u->src_port(), dport = u->dst_port();
  const Ipv4Addr dst = p.ip.dst;
  const bool broadcast = dst.is_broadcast() || dst == cfg.subnet.broadcast();

  if (dst == cfg.gateway || broadcast) {
    if (auto it = services_.find(dport); it != services_.end()) {
      stats_.service_datagrams++;
      it->second(p, Reply(this, SockAddr4{cfg.gateway, dport}, SockAddr4{p.ip.src, sport}));
      return;
    }
  }
  if (broadcast || dst.is_multicast()) {  // nobody to hand it to, and no ICMP about it (RFC 1122 §3.2.2)
    tx_.count_drop(Drop::NoRoute);
    return;
  }
  if (dport == 0) {  // reserved; a host socket cannot send to it
    tx_.count_drop(Drop::L4Malformed);
    return;
  }

  const Key key{p.ip.src.v, dst.v, sport, dport};
  UdpFlowId id;
  if (auto it = index_.find(key); it != index_.end()) {
    id = it->second;
  } else {
    auto target = cfg.host_target(dst);
    if (!target) {
      // RFC 1812 §5.2.7.1: port unreachable from the gateway itself, host
      // unreachable for nobody there, prohibited for a denied host alias.
      Icmpv4Unreachable code = dst == cfg.gateway      ? Icmpv4Unreachable::Port
                               : dst == cfg.host_alias ? Icmpv4Unreachable::AdminProhibited
                                                       : Icmpv4Unreachable::Host;
      unreachable(cfg.gateway, p.packet, code);
      return;
    }
    if (flows_.full()) {
      spdlog::debug("udp: flow table full ({}), refusing {}:{} -> {}:{}", flows_.capacity(), p.ip.src.to_string(),
                    sport, dst.to_string(), dport);
      tx_.count_drop(Drop::FlowTableFull);
      unreachable(cfg.gateway, p.packet, Icmpv4Unreachable::AdminProhibited);
      return;
    }
    Flow f;
    f.key = key;
    f.host = SockAddr4{*target, dport};
    f.opened = now;
    auto nid = flows_.insert(std::move(f), now);
    assert(nid);
    auto sock = host_.open_udp(SockAddr4{*target, dport}, *this, nid->cookie());
    if (!sock) {
      spdlog::debug("udp: cannot open socket to {}:{}: {}", target->to_string(), dport, sock.error().message);
      flows_.erase(*nid);
      stats_.open_errors++;
      unreachable(cfg.gateway, p.packet,
                  unreachable_for_errno(sock.error().code).value_or(Icmpv4Unreachable::AdminProhibited));
      return;
    }
    flows_.find(*nid)->sock = *sock;
    index_.emplace(key, *nid);
    stats_.flows_opened++;
    id = *nid;
  }

  Flow* f = flows_.find(id);
  assert(f);
  flows_.touch(id, now);
  f->last.set(p.packet, p.ip.header_len());
  Bytes payload = u->payload();
  auto sent = host_.send(f->sock, payload);
  if (sent) {
    f->tx_bytes += payload.size();
    return;
  }
  if (auto code = unreachable_for_errno(sent.error().code)) {
    // A pending error from an earlier datagram (Linux reports it on the next
    // send); this datagram was not sent either.
    f->state = UdpFlowState::Refused;
    unreachable(dst, f->last.view(), *code);
  } else {
    stats_.send_errors++;
  }
}

void UdpNat::on_datagram(uint64_t cookie, SockAddr4, Bytes data, Instant now) {
  // The socket is connected: the kernel delivers only the flow's remote.
  auto id = UdpFlowId::from_cookie(cookie);
  Flow* f = flows_.find(id);
  if (!f) return;
  flows_.touch(id, now);
  f->state = UdpFlowState::Replied;
  f->rx_bytes += data.size();
  if (!send_udp(Ipv4Addr(f->key.dst_ip), f->key.dst_port, Ipv4Addr(f->key.guest_ip), f->key.guest_port, data))
    stats_.to_guest_dropped++;
}

void UdpNat::on_error(uint64_t cookie, int err, Instant) {
  Flow* f = flows_.find(UdpFlowId::from_cookie(cookie));
  if (!f) return;
  auto code = unreachable_for_errno(err);
  if (!code) {
    spdlog::debug("udp: host socket error {} on flow to {}:{}", err, f->host.addr.to_string(), f->host.port);
    stats_.send_errors++;
    return;
  }
  // The host's kernel got an ICMP error about what this flow sent; the guest
  // gets the same error, as if from the destination it used.
  f->state = UdpFlowState::Refused;
  unreachable(Ipv4Addr(f->key.dst_ip), f->last.view(), *code);
}

bool UdpNat::send_udp(Ipv4Addr src, uint16_t sport, Ipv4Addr dst, uint16_t dport, Bytes payload) {
  wire::UdpRepr r{sport, dport, payload};
  if (r.buffer_len() > kMaxUdpToGuest) return false;
  return tx_.send_ipv4(src, dst, wire::IpProtocol::Udp, r.buffer_len(),
                       [&](std::span<uint8_t> l4, const wire::PseudoHeader& ph) { r.emit(l4, ph); });
}

void UdpNat::unreachable(Ipv4Addr src, Bytes quote, Icmpv4Unreachable code) {
  if (send_icmp_unreachable(tx_, src, quote, code)) stats_.unreachable_sent++;
}

void UdpNat::close_flow(UdpFlowId id) {
  const Flow* f = flows_.find(id);
  if (!f) return;
  host_.close(f->sock);
  index_.erase(f->key);
  flows_.erase(id);
}

void UdpNat::poll(Instant now) {
  while (auto id = flows_.oldest()) {
    if (flows_.last_active(*id) + kIdleTimeout > now) break;
    const Flow* f = flows_.find(*id);
    spdlog::debug("udp: flow {}:{} -> {}:{} idle, closing", Ipv4Addr(f->key.guest_ip).to_string(), f->key.guest_port,
                  f->host.addr.to_string(), f->host.port);
    stats_.flows_expired++;
    close_flow(*id);
  }
}

std::optional<Instant> UdpNat::poll_at() const {
  auto id = flows_.oldest();
  if (!id) return std::nullopt;
  return flows_.last_active(*id) + kIdleTimeout;
}

void UdpNat::describe_flows(std::string& out, Instant now) const {
  flows_.for_each([&](UdpFlowId, const Flow& f, Instant) {
    auto age = std::chrono::duration_cast<std::chrono::seconds>(now - f.opened).count();
    fmt::format_to(std::back_inserter(out), "udp {}:{} {}:{} {} tx={} rx={} age={}\n",
                   Ipv4Addr(f.key.guest_ip).to_string(), f.key.guest_port, f.host.addr.to_string(), f.host.port,
                   udp_flow_state_name(f.state), f.tx_bytes, f.rx_bytes, age);
  });
}

}  // namespace berth::net
