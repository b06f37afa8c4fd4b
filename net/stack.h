// The switch and the IPv4 front end of the translator.
//
// Theory of operation: every FrameLink is a switch port. Frames from a port
// are checked (Ethernet, then ARP or IPv4), the port's MAC and IP are learned
// from its first frames, and later frames with other sources are dropped as
// spoofed. ARP requests for the gateway and the host alias are answered with
// the gateway MAC; frames for another port's MAC are forwarded to it.
// IPv4 packets for the gateway MAC are validated (header checksum, lengths,
// TTL), reassembled when fragmented (bounded), and handed to the L4Handler
// registered for their protocol. Handlers answer through GuestTx, which
// builds the IPv4 and Ethernet headers, fragments to the MTU, and queues the
// frame on the guest's port.
//
// Everything runs on the main loop thread; time comes in as `now`.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/clock.h"
#include "common/function_ref.h"
#include "net/config.h"
#include "net/link/frame_link.h"
#include "net/wire/addr.h"
#include "net/wire/icmpv4.h"
#include "net/wire/ip.h"
#include "net/wire/ipv4.h"

namespace berth::net {

// Reasons a frame or packet from a guest is dropped; each has a counter in
// /net/stats under its name.
enum class Drop : uint8_t {
  EthMalformed,     // shorter than 14 bytes, or an 802.3 length frame
  VlanTagged,
  SpoofedMac,       // source MAC is not the port's
  SpoofedIp,        // source IPv4 is not the port's
  IpConflict,       // the source IPv4 belongs to another port
  ArpMalformed,
  Ipv4Malformed,    // fails Ipv4Packet::check or its header checksum
  Ipv4BadChecksum,
  TtlExpired,
  FragmentLimit,    // reassembly table full, datagram too large, or timed out
  NoHandler,        // a protocol we do not translate
  NoRoute,          // destination in the subnet but nobody there
  Ipv6,             // IPv6 is not translated yet
  UnknownEthertype,
  PortTableFull,
  L4Malformed,      // handlers report bad TCP/UDP/ICMP here
  L4BadChecksum,
  FlowTableFull,    // handlers report a full flow table here
  kCount
};
const char* drop_name(Drop d);

struct NetStats {
  uint64_t frames_in = 0, bytes_in = 0, frames_out = 0, bytes_out = 0;
  uint64_t arp_replies = 0, icmp_echo_replies = 0, forwarded = 0;
  uint64_t fragments_in = 0, reassembled = 0, fragments_out = 0;
  uint64_t tx_no_arp = 0, tx_link_full = 0;
  std::array<uint64_t, size_t(Drop::kCount)> drops{};
  std::string render() const;  // /net/stats
};

// An IPv4 packet from a guest, validated and reassembled.
struct GuestPacket {
  uint32_t port = 0;
  wire::Ipv4Repr ip;
  Bytes payload;  // the transport layer: ip.payload_len bytes
  Bytes packet;   // the whole IPv4 packet (header + payload), for ICMP quotes
};

// How handlers send IPv4 to guests.
class GuestTx {
 public:
  virtual ~GuestTx() = default;
  using Fill = FunctionRef<void(std::span<uint8_t> l4, const wire::PseudoHeader& ph)>;
  // Send `l4_len` transport bytes from `src` to guest `dst`; `fill` writes
  // them (checksums included) into the span it gets. Fragmented when larger
  // than the MTU. False when `dst` has no port or the port's queue is full.
  virtual bool send_ipv4(wire::Ipv4Addr src, wire::Ipv4Addr dst, wire::IpProtocol proto, size_t l4_len,
                         Fill fill) = 0;
  // An ICMP error about `offending` (an IPv4 packet a guest sent), to its source.
  virtual void send_icmp_error(Bytes offending, wire::Icmpv4Type type, uint8_t code, uint16_t mtu = 0) = 0;
  // Whether a frame toward `dst` would be queued now (backpressure).
  virtual bool can_send(wire::Ipv4Addr dst) const = 0;
  // Whether a guest with address `dst` is known (its port and MAC learned).
  virtual bool has_guest(wire::Ipv4Addr dst) const { return can_send(dst); }
  virtual const NetConfig& config() const = 0;
  virtual void count_drop(Drop d) = 0;
};

// A transport protocol's translator (TCP, UDP, ICMP).
class L4Handler {
 public:
  virtual ~L4Handler() = default;
  virtual void input(const GuestPacket& p, Instant now) = 0;
  // Timers: poll_at() says when poll() next needs to run.
  virtual void poll(Instant) {}
  virtual std::optional<Instant> poll_at() const { return std::nullopt; }
  // One line per live flow for /net/flows.
  virtual void describe_flows(std::string&, Instant) const {}
  // "name value" lines of the handler's counters, appended to /net/stats.
  virtual void describe_stats(std::string&) const {}
};

class Stack final : public GuestTx {
 public:
  explicit Stack(NetConfig cfg);

  // Attach a link as a new port; returns the port number or an error when
  // the port table is full.
  [[nodiscard]] Result<uint32_t> add_port(FrameLink* link);
  void set_handler(wire::IpProtocol proto, L4Handler* h);

  // A frame from port `port`'s guest.
  void receive(uint32_t port, Bytes frame, Instant now);
  void poll(Instant now);
  std::optional<Instant> poll_at() const;

  // GuestTx
  bool send_ipv4(wire::Ipv4Addr src, wire::Ipv4Addr dst, wire::IpProtocol proto, size_t l4_len, Fill fill) override;
  void send_icmp_error(Bytes offending, wire::Icmpv4Type type, uint8_t code, uint16_t mtu = 0) override;
  bool can_send(wire::Ipv4Addr dst) const override;
  bool has_guest(wire::Ipv4Addr dst) const override;
  const NetConfig& config() const override { return cfg_; }
  void count_drop(Drop d) override { stats_.drops[size_t(d)]++; }

  const NetStats& stats() const { return stats_; }
  std::string render_links() const;       // summary of every port
  std::string render_link(uint32_t port) const;
  std::string render_flows(Instant now) const;
  std::string render_stats() const;  // /net/stats: the switch's counters and every handler's
  size_t port_count() const { return ports_.size(); }

  struct Port {
    FrameLink* link = nullptr;
    std::optional<wire::MacAddr> mac;  // learned from the first frame
    std::optional<wire::Ipv4Addr> ip;  // learned from the first IPv4 source or ARP sender
  };
  const Port& port(uint32_t i) const { return ports_.at(i); }
  // Bind an address to a port (DHCP does this when it leases).
  void bind_ip(uint32_t port, wire::Ipv4Addr ip);

 private:
  struct Fragments {
    wire::Ipv4Repr first;          // header of the fragment at offset 0
    std::vector<uint8_t> data;     // payload bytes, up to 65535
    std::vector<std::pair<uint16_t, uint16_t>> have;  // [begin, end) ranges received
    uint32_t total = 0;            // payload length once the last fragment arrived
    bool have_first = false;
    Instant deadline{};
  };
  using FragKey = std::tuple<uint32_t, uint32_t, uint16_t, uint8_t>;  // src, dst, ident, proto

  void on_arp(uint32_t port, Bytes payload, Instant now);
  void on_ipv4(uint32_t port, Bytes payload, Instant now);
  void deliver(const GuestPacket& p, Instant now);
  bool learn(uint32_t port, const wire::MacAddr& src_mac);
  bool check_source_ip(uint32_t port, wire::Ipv4Addr src);
  std::optional<uint32_t> port_for_ip(wire::Ipv4Addr ip) const;
  std::optional<uint32_t> port_for_mac(const wire::MacAddr& mac) const;
  bool send_frame(uint32_t port, Bytes frame);
  void answer_echo(const GuestPacket& p);

  NetConfig cfg_;
  NetStats stats_;
  std::vector<Port> ports_;
  std::array<L4Handler*, 256> handlers_{};
  std::map<FragKey, Fragments> frags_;
  std::vector<uint8_t> tx_;    // scratch for outgoing frames
  std::vector<uint8_t> frag_;  // scratch for fragments of an oversized datagram
  uint16_t next_ident_ = 1;
};

}  // namespace berth::net
