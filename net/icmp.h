// ICMP echo translation: a guest's ping to any address becomes a host ICMP
// echo (DgramHost::open_icmp_echo: a ping socket, or a shared raw socket).
//
// Guarantees:
//  - One flow per (guest IP, echo identifier, destination IP), bounded by
//    NetConfig::max_icmp_flows; when full, new flows are refused
//    (Drop::FlowTableFull, ICMP "administratively prohibited") and existing
//    ones keep working. A flow idle for kIdleTimeout is closed by poll().
//  - Replies reach the guest from the destination it pinged, with the
//    guest's own identifier and sequence number (the host may rewrite the
//    identifier) and a correct checksum. A reply is delivered only when its
//    sequence number is among the flow's last kSeqWindow requests, so
//    unrelated ICMP that reaches a raw socket is ignored.
//  - Echo requests to the gateway are answered here directly, should the
//    stack pass them on.
//  - Other ICMP types from a guest are counted (IcmpStats::unsupported) and
//    ignored; bad input is counted under Drop::L4Malformed/L4BadChecksum.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>

#include "net/host/dgram_host.h"
#include "net/stack.h"
#include "net/udp.h"  // FlowId, FlowTable, QuotedDatagram, send_icmp_unreachable

namespace berth::net {

struct IcmpTag {};
using IcmpFlowId = FlowId<IcmpTag>;

struct IcmpStats {
  uint64_t flows_opened = 0, flows_expired = 0;
  uint64_t open_errors = 0;        // no host ICMP socket (none permitted, or out of fds)
  uint64_t send_errors = 0;
  uint64_t to_guest_dropped = 0;
  uint64_t unmatched_replies = 0;  // not an echo reply, or a sequence we did not send
  uint64_t unsupported = 0;        // guest ICMP other than echo request
  uint64_t unreachable_sent = 0;
  uint64_t gateway_echoes = 0;     // echo requests to the gateway answered here
  std::string render() const;      // "icmp_... N" lines for /net/stats
};

class IcmpEcho final : public L4Handler, private DgramSink {
 public:
  // Linux conntrack's ICMP timeout (nf_conntrack_icmp_timeout).
  static constexpr Instant kIdleTimeout = std::chrono::seconds(30);
  static constexpr size_t kSeqWindow = 64;

  IcmpEcho(GuestTx& tx, DgramHost& host);
  ~IcmpEcho() override;
  IcmpEcho(const IcmpEcho&) = delete;
  IcmpEcho& operator=(const IcmpEcho&) = delete;

  // L4Handler
  void input(const GuestPacket& p, Instant now) override;
  void poll(Instant now) override;
  std::optional<Instant> poll_at() const override;
  // "icmp GUESTIP:ID HOSTIP:HOSTID STATE tx=BYTES rx=BYTES age=SECONDS\n" per
  // flow: ID is the guest's echo identifier, HOSTID the host's (0 until the
  // first reply shows it); bytes are ICMP message bytes.
  void describe_flows(std::string& out, Instant now) const override;
  void describe_stats(std::string& out) const override { out += stats().render(); }

  size_t flow_count() const { return flows_.size(); }
  const IcmpStats& stats() const { return stats_; }

 private:
  struct Key {
    uint32_t guest_ip, dst_ip;
    uint16_t ident;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      uint64_t a = (uint64_t(k.guest_ip) << 32) | k.dst_ip;
      return std::hash<uint64_t>()(a * 0x9e3779b97f4a7c15ull ^ k.ident);
    }
  };
  enum class State : uint8_t { Unreplied, Replied, Unreachable };
  static const char* state_name(State s);
  struct Flow {
    Key key;
    wire::Ipv4Addr host;  // host_target(destination)
    DgramSocket sock;
    State state = State::Unreplied;
    uint16_t host_ident = 0;
    uint64_t tx_bytes = 0, rx_bytes = 0;
    Instant opened{};
    std::array<uint16_t, kSeqWindow> seqs{};  // ring of the last requests' sequence numbers
    size_t seq_count = 0;
    QuotedDatagram last;
    bool sent_seq(uint16_t seq) const;
  };

  // DgramSink
  void on_datagram(uint64_t cookie, SockAddr4 from, Bytes data, Instant now) override;
  void on_error(uint64_t cookie, int err, Instant now) override;

  void answer_gateway(const GuestPacket& p, Bytes message);
  void unreachable(wire::Ipv4Addr src, Bytes quote, wire::Icmpv4Unreachable code);
  void close_flow(IcmpFlowId id);

  GuestTx& tx_;
  DgramHost& host_;
  FlowTable<IcmpTag, Flow> flows_;
  std::unordered_map<Key, IcmpFlowId, KeyHash> index_;
  IcmpStats stats_;
};

}  // namespace berth::net
