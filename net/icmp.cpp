// Theory of operation: ICMP echo translation.
//
// A flow is one ping session: (guest IP, echo identifier, destination IP).
// Each gets a host echo socket toward host_target(destination), through
// which the guest's echo request goes out unchanged except for what the host
// rewrites: a ping socket replaces the identifier with its own "port", and
// UvDgramHost's raw mode gives each socket an identifier of its choosing.
// Either way the reply carries the host's identifier, so on the way back the
// guest's identifier is written back and the checksum recomputed; the
// sequence number and data pass through untouched (RFC 792 "Echo or Echo
// Reply Message": the reply returns identifier, sequence and data as sent).
//
// A reply counts only if it is an echo reply whose sequence number is one of
// the flow's last kSeqWindow requests. With ping sockets the kernel already
// demultiplexes by identifier; with a raw socket the host demultiplexes by
// (remote, identifier), and this check adds the sequence number, so stray
// replies meant for other programs on the host never reach a guest.
//
// Flows live in a FlowTable ordered by last activity (a request or a
// matching reply) and expire after kIdleTimeout. An ICMP error the host
// socket reports (a connected ping socket gets "host unreachable") is passed
// to the guest quoting its last request.
#include "net/icmp.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cassert>
#include <cstring>

#include "net/wire/icmpv4.h"

namespace berth::net {

using wire::Icmpv4Type;
using wire::Icmpv4Unreachable;
using wire::Ipv4Addr;

std::string IcmpStats::render() const {
  return fmt::format(
      "icmp_flows_opened {}\nicmp_flows_expired {}\nicmp_open_errors {}\nicmp_send_errors {}\n"
      "icmp_to_guest_dropped {}\nicmp_unmatched_replies {}\nicmp_unsupported {}\nicmp_unreachable_sent {}\n"
      "icmp_gateway_echoes {}\n",
      flows_opened, flows_expired, open_errors, send_errors, to_guest_dropped, unmatched_replies, unsupported,
      unreachable_sent, gateway_echoes);
}

namespace {

constexpr size_t kMaxIcmpToGuest = 65535 - wire::Ipv4Packet::kMinHeaderLen;

// Send the ICMP message `msg` (an echo message) to the guest with its
// identifier replaced by `ident` and a fresh checksum.
bool send_echo(GuestTx& tx, Ipv4Addr src, Ipv4Addr dst, Icmpv4Type type, uint16_t ident, Bytes msg) {
  if (msg.size() < wire::Icmpv4Packet::kHeaderLen || msg.size() > kMaxIcmpToGuest) return false;
  return tx.send_ipv4(src, dst, wire::IpProtocol::Icmp, msg.size(),
                      [&](std::span<uint8_t> l4, const wire::PseudoHeader&) {
                        std::memcpy(l4.data(), msg.data(), msg.size());
                        l4[0] = uint8_t(type);
                        l4[1] = 0;
                        store_be16(&l4[2], 0);
                        store_be16(&l4[4], ident);
                        store_be16(&l4[2], wire::internet_checksum(Bytes(l4.data(), msg.size())));
                      });
}

}  // namespace

bool IcmpEcho::Flow::sent_seq(uint16_t seq) const {
  size_t n = std::min(seq_count, seqs.size());
  return std::find(seqs.begin(), seqs.begin() + n, seq) != seqs.begin() + n;
}

IcmpEcho::IcmpEcho(GuestTx& tx, DgramHost& host) : tx_(tx), host_(host), flows_(tx.config().max_icmp_flows) {}

IcmpEcho::~IcmpEcho() {
  flows_.for_each([&](IcmpFlowId, const Flow& f, Instant) { host_.close(f.sock); });
}

void IcmpEcho::input(const GuestPacket& p, Instant now) {
  auto pkt = wire::Icmpv4Packet::check(p.payload);
  if (!pkt) {
    spdlog::debug("icmp: malformed message from {}", p.ip.src.to_string());
    tx_.count_drop(Drop::L4Malformed);
    return;
  }
  if (!pkt->verify_checksum()) {
    spdlog::debug("icmp: bad checksum from {}", p.ip.src.to_string());
    tx_.count_drop(Drop::L4BadChecksum);
    return;
  }
  if (pkt->msg_type() != uint8_t(Icmpv4Type::EchoRequest)) {
    // Echo replies, errors about what the guest received, timestamps...:
    // nothing on the host side to pass them to.
    stats_.unsupported++;
    return;
  }
  if (pkt->code() != 0) {  // RFC 792: echo code is 0 (ping sockets refuse others)
    tx_.count_drop(Drop::L4Malformed);
    return;
  }
  const NetConfig& cfg = tx_.config();
  const Ipv4Addr dst = p.ip.dst;
  if (dst == cfg.gateway) {
    answer_gateway(p, pkt->bytes());
    return;
  }
  if (!dst.is_unicast() || dst == cfg.subnet.broadcast()) {  // broadcast ping: nobody answers
    tx_.count_drop(Drop::NoRoute);
    return;
  }

  const Key key{p.ip.src.v, dst.v, pkt->echo_ident()};
  IcmpFlowId id;
  if (auto it = index_.find(key); it != index_.end()) {
    id = it->second;
  } else {
    auto target = cfg.host_target(dst);
    if (!target) {
      unreachable(cfg.gateway, p.packet,
                  dst == cfg.host_alias ? Icmpv4Unreachable::AdminProhibited : Icmpv4Unreachable::Host);
      return;
    }
    if (flows_.full()) {
      spdlog::debug("icmp: flow table full ({}), refusing {} -> {}", flows_.capacity(), p.ip.src.to_string(),
                    dst.to_string());
      tx_.count_drop(Drop::FlowTableFull);
      unreachable(cfg.gateway, p.packet, Icmpv4Unreachable::AdminProhibited);
      return;
    }
    Flow f;
    f.key = key;
    f.host = *target;
    f.opened = now;
    auto nid = flows_.insert(std::move(f), now);
    assert(nid);
    auto sock = host_.open_icmp_echo(*target, *this, nid->cookie());
    if (!sock) {
      spdlog::debug("icmp: cannot open echo socket to {}: {}", target->to_string(), sock.error().message);
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
  f->seqs[f->seq_count++ % kSeqWindow] = pkt->echo_seq();
  f->last.set(p.packet, p.ip.header_len());
  auto sent = host_.send(f->sock, pkt->bytes());
  if (sent) {
    f->tx_bytes += pkt->bytes().size();
    return;
  }
  if (auto code = unreachable_for_errno(sent.error().code)) {
    f->state = State::Unreachable;
    unreachable(dst, f->last.view(), *code);
  } else {
    stats_.send_errors++;
  }
}

void IcmpEcho::on_datagram(uint64_t cookie, SockAddr4 from, Bytes data, Instant now) {
  auto id = IcmpFlowId::from_cookie(cookie);
  Flow* f = flows_.find(id);
  if (!f) return;
  auto pkt = wire::Icmpv4Packet::check(data);
  if (!pkt || pkt->msg_type() != uint8_t(Icmpv4Type::EchoReply) || from.addr != f->host ||
      !f->sent_seq(pkt->echo_seq())) {
    stats_.unmatched_replies++;
    return;
  }
  flows_.touch(id, now);
  f->state = State::Replied;
  f->host_ident = pkt->echo_ident();
  f->rx_bytes += data.size();
  if (!send_echo(tx_, Ipv4Addr(f->key.dst_ip), Ipv4Addr(f->key.guest_ip), Icmpv4Type::EchoReply, f->key.ident, data))
    stats_.to_guest_dropped++;
}

void IcmpEcho::on_error(uint64_t cookie, int err, Instant) {
  Flow* f = flows_.find(IcmpFlowId::from_cookie(cookie));
  if (!f) return;
  auto code = unreachable_for_errno(err);
  if (!code) {
    spdlog::debug("icmp: host socket error {} on echo to {}", err, f->host.to_string());
    stats_.send_errors++;
    return;
  }
  f->state = State::Unreachable;
  unreachable(Ipv4Addr(f->key.dst_ip), f->last.view(), *code);
}

void IcmpEcho::answer_gateway(const GuestPacket& p, Bytes message) {
  stats_.gateway_echoes++;
  if (!send_echo(tx_, p.ip.dst, p.ip.src, Icmpv4Type::EchoReply, load_be16(&message[4]), message))
    stats_.to_guest_dropped++;
}

void IcmpEcho::unreachable(Ipv4Addr src, Bytes quote, Icmpv4Unreachable code) {
  if (send_icmp_unreachable(tx_, src, quote, code)) stats_.unreachable_sent++;
}

void IcmpEcho::close_flow(IcmpFlowId id) {
  const Flow* f = flows_.find(id);
  if (!f) return;
  host_.close(f->sock);
  index_.erase(f->key);
  flows_.erase(id);
}

void IcmpEcho::poll(Instant now) {
  while (auto id = flows_.oldest()) {
    if (flows_.last_active(*id) + kIdleTimeout > now) break;
    stats_.flows_expired++;
    close_flow(*id);
  }
}

std::optional<Instant> IcmpEcho::poll_at() const {
  auto id = flows_.oldest();
  if (!id) return std::nullopt;
  return flows_.last_active(*id) + kIdleTimeout;
}

const char* IcmpEcho::state_name(State s) {
  switch (s) {
    case State::Unreplied: return "unreplied";
    case State::Replied: return "replied";
    case State::Unreachable: return "unreachable";
  }
  return "unknown";
}

void IcmpEcho::describe_flows(std::string& out, Instant now) const {
  flows_.for_each([&](IcmpFlowId, const Flow& f, Instant) {
    auto age = std::chrono::duration_cast<std::chrono::seconds>(now - f.opened).count();
    fmt::format_to(std::back_inserter(out), "icmp {}:{} {}:{} {} tx={} rx={} age={}\n",
                   Ipv4Addr(f.key.guest_ip).to_string(), f.key.ident, f.host.to_string(), f.host_ident,
                   state_name(f.state), f.tx_bytes, f.rx_bytes, age);
  });
}

}  // namespace berth::net
