// Switch and IPv4 front end. See stack.h for the theory of operation.
#include "net/stack.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "net/wire/arp.h"
#include "net/wire/ethernet.h"

namespace berth::net {

using namespace wire;

namespace {
constexpr size_t kEthLen = EthernetFrame::kHeaderLen;
constexpr size_t kIpLen = Ipv4Packet::kMinHeaderLen;
constexpr Instant kReassemblyTimeout = std::chrono::seconds(15);  // RFC 791 suggests 15 s as the lower bound
constexpr size_t kMaxQuote = 576 - kIpLen - 8 - kIpLen;           // RFC 1812 §4.3.2.3: fit in 576 bytes
}  // namespace

const char* drop_name(Drop d) {
  switch (d) {
    case Drop::EthMalformed: return "eth_malformed";
    case Drop::VlanTagged: return "vlan_tagged";
    case Drop::SpoofedMac: return "spoofed_mac";
    case Drop::SpoofedIp: return "spoofed_ip";
    case Drop::IpConflict: return "ip_conflict";
    case Drop::ArpMalformed: return "arp_malformed";
    case Drop::Ipv4Malformed: return "ipv4_malformed";
    case Drop::Ipv4BadChecksum: return "ipv4_bad_checksum";
    case Drop::TtlExpired: return "ttl_expired";
    case Drop::FragmentLimit: return "fragment_limit";
    case Drop::NoHandler: return "no_handler";
    case Drop::NoRoute: return "no_route";
    case Drop::Ipv6: return "ipv6";
    case Drop::UnknownEthertype: return "unknown_ethertype";
    case Drop::PortTableFull: return "port_table_full";
    case Drop::L4Malformed: return "l4_malformed";
    case Drop::L4BadChecksum: return "l4_bad_checksum";
    case Drop::FlowTableFull: return "flow_table_full";
    case Drop::kCount: break;
  }
  return "?";
}

std::string NetStats::render() const {
  std::string out = fmt::format(
      "frames_in {}\nbytes_in {}\nframes_out {}\nbytes_out {}\narp_replies {}\nicmp_echo_replies {}\n"
      "forwarded {}\nfragments_in {}\nreassembled {}\nfragments_out {}\ntx_no_arp {}\ntx_link_full {}\n",
      frames_in, bytes_in, frames_out, bytes_out, arp_replies, icmp_echo_replies, forwarded, fragments_in,
      reassembled, fragments_out, tx_no_arp, tx_link_full);
  for (size_t i = 0; i < drops.size(); i++) out += fmt::format("drop_{} {}\n", drop_name(Drop(i)), drops[i]);
  return out;
}

Stack::Stack(NetConfig cfg) : cfg_(std::move(cfg)) { tx_.reserve(kEthLen + 65535); }

Result<uint32_t> Stack::add_port(FrameLink* link) {
  if (ports_.size() >= cfg_.max_ports) {
    count_drop(Drop::PortTableFull);
    return make_error(ENOSPC, fmt::format("switch has {} ports already", cfg_.max_ports));
  }
  ports_.push_back(Port{link, std::nullopt, std::nullopt});
  return uint32_t(ports_.size() - 1);
}

void Stack::set_handler(IpProtocol proto, L4Handler* h) { handlers_[uint8_t(proto)] = h; }

std::optional<uint32_t> Stack::port_for_ip(Ipv4Addr ip) const {
  for (uint32_t i = 0; i < ports_.size(); i++)
    if (ports_[i].ip == ip) return i;
  return std::nullopt;
}

std::optional<uint32_t> Stack::port_for_mac(const MacAddr& mac) const {
  for (uint32_t i = 0; i < ports_.size(); i++)
    if (ports_[i].mac == mac) return i;
  return std::nullopt;
}

void Stack::bind_ip(uint32_t port, Ipv4Addr ip) {
  for (auto& p : ports_)
    if (p.ip == ip) p.ip.reset();
  ports_.at(port).ip = ip;
}

// A port's MAC is the source of its first frame; any other source after
// that is a spoofing attempt (or a second guest behind one port).
bool Stack::learn(uint32_t port, const MacAddr& src) {
  Port& p = ports_[port];
  if (!src.is_unicast() || src == cfg_.gateway_mac) {
    count_drop(Drop::SpoofedMac);
    return false;
  }
  if (!p.mac) {
    if (auto other = port_for_mac(src); other && *other != port) {
      count_drop(Drop::SpoofedMac);
      return false;
    }
    p.mac = src;
    spdlog::debug("net: port {} is {}", port, src.to_string());
    return true;
  }
  if (*p.mac != src) {
    count_drop(Drop::SpoofedMac);
    return false;
  }
  return true;
}

// 0.0.0.0 is allowed (DHCP before a lease). Otherwise the first address a
// port uses is its own, unless another port or the gateway owns it.
bool Stack::check_source_ip(uint32_t port, Ipv4Addr src) {
  if (src.is_unspecified()) return true;
  Port& p = ports_[port];
  if (p.ip) {
    if (*p.ip == src) return true;
    count_drop(Drop::SpoofedIp);
    return false;
  }
  if (!cfg_.subnet.contains(src) || src == cfg_.gateway || src == cfg_.host_alias || !src.is_unicast() ||
      src == cfg_.subnet.broadcast() || src == cfg_.subnet.network()) {
    count_drop(Drop::SpoofedIp);
    return false;
  }
  if (port_for_ip(src)) {
    count_drop(Drop::IpConflict);
    return false;
  }
  p.ip = src;
  spdlog::debug("net: port {} uses {}", port, src.to_string());
  return true;
}

bool Stack::send_frame(uint32_t port, Bytes frame) {
  if (!ports_[port].link->send(frame)) {
    stats_.tx_link_full++;
    return false;
  }
  stats_.frames_out++;
  stats_.bytes_out += frame.size();
  return true;
}

void Stack::receive(uint32_t port, Bytes frame, Instant now) {
  stats_.frames_in++;
  stats_.bytes_in += frame.size();
  auto eth = EthernetFrame::check(frame);
  if (!eth) return count_drop(Drop::EthMalformed);
  auto er = EthernetRepr::parse(*eth);
  if (!er) return count_drop(er.error() == WireError::VlanTagged ? Drop::VlanTagged : Drop::EthMalformed);
  if (!learn(port, er->src)) return;

  // Layer 2: frames for another guest go to it; broadcasts go to everyone
  // else and are also processed here; frames for the gateway stay here.
  bool local = er->dst == cfg_.gateway_mac;
  if (er->dst.is_multicast()) {
    for (uint32_t i = 0; i < ports_.size(); i++)
      if (i != port && ports_[i].mac && send_frame(i, frame)) stats_.forwarded++;
    local = true;
  } else if (!local) {
    auto to = port_for_mac(er->dst);
    if (!to) return count_drop(Drop::NoRoute);
    // Forwarded frames still may not carry a spoofed IPv4 source.
    if (er->ethertype == EtherType::Ipv4) {
      auto pk = Ipv4Packet::check(eth->payload());
      if (!pk) return count_drop(Drop::Ipv4Malformed);
      if (!check_source_ip(port, pk->src())) return;
    }
    if (send_frame(*to, frame)) stats_.forwarded++;
    return;
  }
  if (!local) return;
  switch (er->ethertype) {
    case EtherType::Arp: return on_arp(port, eth->payload(), now);
    case EtherType::Ipv4: return on_ipv4(port, eth->payload(), now);
    case EtherType::Ipv6: return count_drop(Drop::Ipv6);
    default: return count_drop(Drop::UnknownEthertype);
  }
}

// RFC 826: answer requests for the gateway and the host alias with the
// gateway's MAC; learn the sender's address as the port's.
void Stack::on_arp(uint32_t port, Bytes payload, Instant) {
  auto pk = ArpPacket::check(payload);
  if (!pk) return count_drop(Drop::ArpMalformed);
  auto arp = ArpRepr::parse(*pk);
  if (!arp) return count_drop(Drop::ArpMalformed);
  if (arp->sender_mac != *ports_[port].mac) return count_drop(Drop::SpoofedMac);
  if (!check_source_ip(port, arp->sender_ip)) return;
  if (arp->op != ArpOperation::Request) return;
  if (arp->target_ip != cfg_.gateway && arp->target_ip != cfg_.host_alias) return;  // another guest answers itself
  ArpRepr reply{ArpOperation::Reply, cfg_.gateway_mac, arp->target_ip, arp->sender_mac, arp->sender_ip};
  tx_.assign(kEthLen + ArpRepr::kLen, 0);
  EthernetRepr{cfg_.gateway_mac, arp->sender_mac, EtherType::Arp}.emit(tx_);
  reply.emit(std::span<uint8_t>(tx_).subspan(kEthLen));
  if (send_frame(port, tx_)) stats_.arp_replies++;
}

void Stack::on_ipv4(uint32_t port, Bytes payload, Instant now) {
  auto pk = Ipv4Packet::check(payload);
  if (!pk) return count_drop(Drop::Ipv4Malformed);
  auto ip = Ipv4Repr::parse(*pk);
  if (!ip) return count_drop(ip.error() == WireError::BadChecksum ? Drop::Ipv4BadChecksum : Drop::Ipv4Malformed);
  if (!check_source_ip(port, ip->src)) return;
  GuestPacket p{port, *ip, pk->payload(), pk->packet()};
  if (!ip->is_fragment()) return deliver(p, now);

  // RFC 791 §3.2 reassembly, bounded: at most max_reassembly datagrams at
  // once, each at most 65535 bytes, each finished within the timeout.
  stats_.fragments_in++;
  FragKey key{ip->src.v, ip->dst.v, ip->ident, uint8_t(ip->protocol)};
  auto it = frags_.find(key);
  if (it == frags_.end()) {
    if (frags_.size() >= cfg_.max_reassembly) return count_drop(Drop::FragmentLimit);
    it = frags_.emplace(key, Fragments{}).first;
    it->second.deadline = now + kReassemblyTimeout;
  }
  Fragments& f = it->second;
  size_t begin = ip->frag_offset, end = begin + p.payload.size();
  bool bad = end > 65535 - ip->header_len() || (ip->more_frags && p.payload.size() % 8 != 0) ||
             (f.total && end > f.total) || (!ip->more_frags && f.total && end != f.total);
  if (bad) {
    frags_.erase(it);
    return count_drop(Drop::FragmentLimit);
  }
  if (!ip->more_frags) f.total = uint32_t(end);
  if (f.data.size() < end) f.data.resize(end);
  std::copy(p.payload.begin(), p.payload.end(), f.data.begin() + long(begin));
  f.have.emplace_back(uint16_t(begin), uint16_t(end));
  if (begin == 0) {
    f.first = *ip;
    f.have_first = true;
  }
  if (!f.total || !f.have_first) return;
  std::sort(f.have.begin(), f.have.end());
  uint32_t covered = 0;
  for (auto [b, e] : f.have) {
    if (b > covered) return;  // a hole remains
    covered = std::max<uint32_t>(covered, e);
  }
  if (covered < f.total) return;

  // Rebuild the whole datagram so handlers (and ICMP quotes) see one packet.
  Fragments done = std::move(f);
  frags_.erase(it);
  Ipv4Repr whole = done.first;
  whole.more_frags = false;
  whole.frag_offset = 0;
  whole.payload_len = uint16_t(done.total);
  std::vector<uint8_t> buf(whole.header_len() + done.total);
  whole.emit(buf);
  std::copy_n(done.data.begin(), done.total, buf.begin() + long(whole.header_len()));
  stats_.reassembled++;
  GuestPacket rp{port, whole, Bytes(buf).subspan(whole.header_len()), buf};
  deliver(rp, now);
}

void Stack::deliver(const GuestPacket& p, Instant now) {
  Ipv4Addr dst = p.ip.dst;
  L4Handler* h = handlers_[uint8_t(p.ip.protocol)];
  if (dst == cfg_.gateway) {
    if (p.ip.protocol == IpProtocol::Icmp) return answer_echo(p);
    if (h) return h->input(p, now);  // gateway services (9P, DHCP, DNS) live in the handlers
    count_drop(Drop::NoHandler);
    return send_icmp_error(p.packet, Icmpv4Type::DstUnreachable, uint8_t(Icmpv4Unreachable::Protocol));
  }
  if (dst.is_broadcast() || dst == cfg_.subnet.broadcast() || dst.is_multicast()) {
    if (h && p.ip.protocol == IpProtocol::Udp) return h->input(p, now);  // DHCP discover/request
    return;  // other broadcasts and multicast stay on the segment
  }
  if (cfg_.subnet.contains(dst) && dst != cfg_.host_alias) {
    count_drop(Drop::NoRoute);
    return send_icmp_error(p.packet, Icmpv4Type::DstUnreachable, uint8_t(Icmpv4Unreachable::Host));
  }
  // Leaving the segment: RFC 1812 §5.3.1, a router does not forward TTL <= 1.
  if (p.ip.ttl <= 1) {
    count_drop(Drop::TtlExpired);
    return send_icmp_error(p.packet, Icmpv4Type::TimeExceeded, uint8_t(Icmpv4TimeExceeded::TtlExpired));
  }
  if (!cfg_.host_target(dst)) {
    count_drop(Drop::NoRoute);
    return send_icmp_error(p.packet, Icmpv4Type::DstUnreachable, uint8_t(Icmpv4Unreachable::AdminProhibited));
  }
  if (h) return h->input(p, now);
  if (p.ip.protocol == IpProtocol::Icmp && dst == cfg_.host_alias) return answer_echo(p);
  count_drop(Drop::NoHandler);
  send_icmp_error(p.packet, Icmpv4Type::DstUnreachable, uint8_t(Icmpv4Unreachable::Protocol));
}

// RFC 792: an echo request gets an echo reply with the same id, sequence
// number and data.
void Stack::answer_echo(const GuestPacket& p) {
  auto pk = Icmpv4Packet::check(p.payload);
  if (!pk) return count_drop(Drop::L4Malformed);
  auto icmp = Icmpv4Repr::parse(*pk);
  if (!icmp) return count_drop(icmp.error() == WireError::BadChecksum ? Drop::L4BadChecksum : Drop::L4Malformed);
  if (icmp->type != Icmpv4Type::EchoRequest) return;
  Icmpv4Repr reply = *icmp;
  reply.type = Icmpv4Type::EchoReply;
  reply.code = 0;
  if (send_ipv4(p.ip.dst, p.ip.src, IpProtocol::Icmp, reply.buffer_len(),
                [&](std::span<uint8_t> out, const PseudoHeader&) { reply.emit(out); }))
    stats_.icmp_echo_replies++;
}

bool Stack::can_send(Ipv4Addr dst) const {
  auto port = port_for_ip(dst);
  return port && ports_[*port].link->writable();
}

bool Stack::has_guest(Ipv4Addr dst) const {
  auto port = port_for_ip(dst);
  return port && ports_[*port].mac.has_value();
}

bool Stack::send_ipv4(Ipv4Addr src, Ipv4Addr dst, IpProtocol proto, size_t l4_len, Fill fill) {
  if (l4_len > 65535 - kIpLen) return false;
  // One guest, or every guest with a known MAC for a broadcast; no
  // allocation on this path.
  const bool bcast = dst.is_broadcast() || dst == cfg_.subnet.broadcast();
  uint32_t first = 0, last = 0;  // ports [first, last) are candidates
  if (bcast) {
    last = uint32_t(ports_.size());
  } else if (auto port = port_for_ip(dst); port && ports_[*port].mac) {
    first = *port;
    last = *port + 1;
  }
  bool any = false;
  for (uint32_t i = first; i < last; i++) any = any || ports_[i].mac.has_value();
  if (!any) {
    stats_.tx_no_arp++;
    return false;
  }
  size_t total = kIpLen + l4_len;
  tx_.resize(kEthLen + total);
  std::span<uint8_t> frame(tx_);
  Ipv4Repr ip;
  ip.src = src;
  ip.dst = dst;
  ip.protocol = proto;
  ip.payload_len = uint16_t(l4_len);
  ip.ident = next_ident_++;
  ip.dont_frag = total <= cfg_.mtu;
  fill(frame.subspan(kEthLen + kIpLen, l4_len), PseudoHeader::v4(src, dst));

  bool ok = true;
  for (uint32_t port = first; port < last; port++) {
    if (!ports_[port].mac) continue;
    MacAddr mac = bcast ? MacAddr::broadcast() : *ports_[port].mac;
    EthernetRepr{cfg_.gateway_mac, mac, EtherType::Ipv4}.emit(frame);
    if (total <= cfg_.mtu) {
      ip.emit(frame.subspan(kEthLen));
      ok = send_frame(port, frame) && ok;
      continue;
    }
    // RFC 791 §2.3: fragment into pieces of the MTU, 8-byte aligned.
    size_t chunk = (cfg_.mtu - kIpLen) & ~size_t(7);
    std::vector<uint8_t>& frag = frag_;  // reused scratch: no allocation per datagram
    frag.resize(kEthLen + kIpLen + chunk);
    std::copy_n(frame.begin(), kEthLen, frag.begin());
    for (size_t off = 0; off < l4_len; off += chunk) {
      size_t n = std::min(chunk, l4_len - off);
      Ipv4Repr fi = ip;
      fi.payload_len = uint16_t(n);
      fi.frag_offset = uint16_t(off);
      fi.more_frags = off + n < l4_len;
      fi.emit(std::span<uint8_t>(frag).subspan(kEthLen));
      std::copy_n(frame.begin() + long(kEthLen + kIpLen + off), n, frag.begin() + long(kEthLen + kIpLen));
      ok = send_frame(port, Bytes(frag.data(), kEthLen + kIpLen + n)) && ok;
      stats_.fragments_out++;
    }
  }
  return ok;
}

// RFC 1122 §3.2.2: never answer an ICMP error with one, nor a broadcast, a
// non-first fragment, or a packet from an unspecified source.
void Stack::send_icmp_error(Bytes offending, Icmpv4Type type, uint8_t code, uint16_t mtu) {
  auto pk = Ipv4Packet::check(offending);
  if (!pk) return;
  auto orig = Ipv4Repr::parse(*pk, ChecksumPolicy::Ignore);
  if (!orig || orig->src.is_unspecified() || !orig->dst.is_unicast() || orig->frag_offset != 0) return;
  if (orig->protocol == IpProtocol::Icmp) {
    auto ic = Icmpv4Packet::check(pk->payload());
    if (!ic) return;
    uint8_t t = ic->msg_type();
    if (t != uint8_t(Icmpv4Type::EchoRequest) && t != uint8_t(Icmpv4Type::EchoReply)) return;
  }
  Icmpv4Repr err;
  err.type = type;
  err.code = code;
  err.next_hop_mtu = mtu;
  err.quoted = *orig;
  err.quoted_data = pk->payload().first(std::min(pk->payload().size(), kMaxQuote));
  if (err.quoted_data.size() < Icmpv4Packet::kMinQuotedData) return;
  // The error comes from where the packet was going, so the guest's stack
  // matches it to its socket; from the gateway for addresses it refuses.
  Ipv4Addr from = cfg_.host_target(orig->dst) ? orig->dst : cfg_.gateway;
  send_ipv4(from, orig->src, IpProtocol::Icmp, err.buffer_len(),
            [&](std::span<uint8_t> out, const PseudoHeader&) { err.emit(out); });
}

void Stack::poll(Instant now) {
  for (auto it = frags_.begin(); it != frags_.end();) {
    if (it->second.deadline <= now) {
      count_drop(Drop::FragmentLimit);
      it = frags_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto* h : handlers_)
    if (h) h->poll(now);
}

std::optional<Instant> Stack::poll_at() const {
  std::optional<Instant> at;
  auto take = [&](std::optional<Instant> t) {
    if (t && (!at || *t < *at)) at = t;
  };
  for (auto& [k, f] : frags_) take(f.deadline);
  for (auto* h : handlers_)
    if (h) take(h->poll_at());
  return at;
}

std::string Stack::render_link(uint32_t i) const {
  const Port& p = ports_.at(i);
  const LinkStats& s = p.link->stats();
  return fmt::format(
      "type {}\npeer {}\nmac {}\nip {}\nmax_frame {}\nrx_frames {}\nrx_bytes {}\ntx_frames {}\ntx_bytes {}\n"
      "rx_dropped_oversize {}\nrx_dropped_runt {}\ntx_dropped_full {}\ntx_dropped_no_peer {}\ntx_dropped_invalid {}\n"
      "disconnects {}\npeers_refused {}\n",
      p.link->type(), p.link->peer(), p.mac ? p.mac->to_string() : "-", p.ip ? p.ip->to_string() : "-",
      p.link->max_frame(), s.rx_frames, s.rx_bytes, s.tx_frames, s.tx_bytes, s.rx_dropped_oversize,
      s.rx_dropped_runt, s.tx_dropped_full, s.tx_dropped_no_peer, s.tx_dropped_invalid, s.disconnects, s.peers_refused);
}

std::string Stack::render_links() const {
  std::string out;
  for (uint32_t i = 0; i < ports_.size(); i++) {
    const Port& p = ports_[i];
    out += fmt::format("{} {} {} {} {}\n", i, p.link->type(), p.link->peer(), p.mac ? p.mac->to_string() : "-",
                       p.ip ? p.ip->to_string() : "-");
  }
  return out;
}

std::string Stack::render_stats() const {
  std::string out = stats_.render();
  for (auto* h : handlers_)
    if (h) h->describe_stats(out);
  return out;
}

std::string Stack::render_flows(Instant now) const {
  std::string out;
  for (auto* h : handlers_)
    if (h) h->describe_flows(out, now);
  return out;
}

}  // namespace berth::net
