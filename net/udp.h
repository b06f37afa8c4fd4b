// UDP translation: a NAT from guest datagrams to host UDP sockets, plus the
// hook for UDP services the gateway answers in-process (DNS, DHCP).
//
// Guarantees:
//  - One flow per (guest IP, guest port, destination IP, destination port),
//    each with its own host socket connected to host_target(destination).
//    Replies reach the guest from the destination it used (so from the host
//    alias, not 127.0.0.1).
//  - At most NetConfig::max_udp_flows flows. When full, a new flow is
//    refused (Drop::FlowTableFull, ICMP "administratively prohibited");
//    existing flows keep working.
//  - A flow idle (no datagram either way) for kIdleTimeout is closed by
//    poll(now); poll_at() says when that is due.
//  - A host "port unreachable" (ECONNREFUSED) becomes an ICMP port
//    unreachable to the guest quoting the flow's last datagram.
//  - Bad input is counted (Drop::L4Malformed, Drop::L4BadChecksum) and
//    dropped; nothing a guest sends can crash or grow memory without bound.
//
// FlowId and FlowTable are shared with net/icmp.h.
#pragma once

#include <array>
#include <cassert>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/bytes.h"
#include "common/clock.h"
#include "net/host/dgram_host.h"
#include "net/stack.h"

namespace berth::net {

// A typed flow ID (STYLE.md §7): a slot index and a generation, so a stale
// ID never names a reused slot. cookie() packs it for DgramHost callbacks.
template <class Tag>
struct FlowId {
  uint32_t index = UINT32_MAX;
  uint32_t gen = 0;
  bool valid() const { return index != UINT32_MAX; }
  uint64_t cookie() const { return (uint64_t(gen) << 32) | index; }
  static FlowId from_cookie(uint64_t c) { return FlowId{uint32_t(c), uint32_t(c >> 32)}; }
  auto operator<=>(const FlowId&) const = default;
};

// A bounded table of flows addressed by FlowId<Tag>, kept in order of last
// activity (least recent first), so the next idle expiry is O(1) to find.
// Pointers from find() stay valid until the next insert() or erase().
template <class Tag, class Flow>
class FlowTable {
 public:
  using Id = FlowId<Tag>;

  explicit FlowTable(size_t capacity) : capacity_(capacity) {}

  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  bool full() const { return size_ >= capacity_; }

  // nullopt when full.
  std::optional<Id> insert(Flow f, Instant now) {
    if (full()) return std::nullopt;
    uint32_t i;
    if (!free_.empty()) {
      i = free_.back();
      free_.pop_back();
    } else {
      i = uint32_t(slots_.size());
      slots_.emplace_back();
    }
    Slot& s = slots_[i];
    s.flow.emplace(std::move(f));
    s.gen++;
    size_++;
    link_tail(i, now);
    return Id{i, s.gen};
  }

  Flow* find(Id id) { return live(id) ? &*slots_[id.index].flow : nullptr; }
  const Flow* find(Id id) const { return live(id) ? &*slots_[id.index].flow : nullptr; }

  // Mark the flow active at `now`: it becomes the most recent.
  void touch(Id id, Instant now) {
    if (!live(id)) return;
    unlink(id.index);
    link_tail(id.index, now);
  }

  void erase(Id id) {
    if (!live(id)) return;
    unlink(id.index);
    slots_[id.index].flow.reset();
    free_.push_back(id.index);
    size_--;
  }

  std::optional<Id> oldest() const {
    if (head_ == kNil) return std::nullopt;
    return Id{head_, slots_[head_].gen};
  }
  Instant last_active(Id id) const { return live(id) ? slots_[id.index].last : Instant{}; }

  // f(Id, const Flow&, Instant last_active), least recently active first.
  template <class F>
  void for_each(F&& f) const {
    for (uint32_t i = head_; i != kNil; i = slots_[i].next) f(Id{i, slots_[i].gen}, *slots_[i].flow, slots_[i].last);
  }

 private:
  static constexpr uint32_t kNil = UINT32_MAX;
  struct Slot {
    std::optional<Flow> flow;
    uint32_t gen = 0;
    uint32_t prev = kNil, next = kNil;
    Instant last{};
  };

  bool live(Id id) const { return id.index < slots_.size() && slots_[id.index].flow && slots_[id.index].gen == id.gen; }

  void link_tail(uint32_t i, Instant now) {
    Slot& s = slots_[i];
    // Keep the list sorted even if two clocks disagree by a hair.
    s.last = tail_ != kNil && slots_[tail_].last > now ? slots_[tail_].last : now;
    s.prev = tail_;
    s.next = kNil;
    if (tail_ != kNil) slots_[tail_].next = i; else head_ = i;
    tail_ = i;
  }
  void unlink(uint32_t i) {
    Slot& s = slots_[i];
    if (s.prev != kNil) slots_[s.prev].next = s.next; else head_ = s.next;
    if (s.next != kNil) slots_[s.next].prev = s.prev; else tail_ = s.prev;
    s.prev = s.next = kNil;
  }

  size_t capacity_;
  size_t size_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  uint32_t head_ = kNil, tail_ = kNil;
};

// The start of an IPv4 datagram a guest sent: its header and the first 8
// bytes after it, as an ICMP error quotes it (RFC 792).
struct QuotedDatagram {
  std::array<uint8_t, 60 + 8> bytes{};
  uint8_t len = 0;
  void set(Bytes packet, size_t header_len);
  Bytes view() const { return Bytes(bytes.data(), len); }
};

// Send an ICMP destination unreachable (RFC 792) from `src` to the sender of
// `quote`. Nothing is sent when the quote does not parse, or when RFC 1122
// §3.2.2 forbids an error (the quoted datagram went to a broadcast or
// multicast address, or came from a non-unicast source). True when sent.
bool send_icmp_unreachable(GuestTx& tx, wire::Ipv4Addr src, Bytes quote, wire::Icmpv4Unreachable code);
// The ICMP unreachable code a host socket error (errno) stands for, if any.
std::optional<wire::Icmpv4Unreachable> unreachable_for_errno(int err);

struct UdpTag {};
using UdpFlowId = FlowId<UdpTag>;

enum class UdpFlowState : uint8_t {
  Unreplied,  // datagrams went out, none came back yet
  Replied,    // the host end has answered at least once
  Refused,    // the last event was an ICMP error (port unreachable...)
};
const char* udp_flow_state_name(UdpFlowState s);

// Counters of the UDP translator, beyond the Drop reasons in NetStats.
struct UdpStats {
  uint64_t flows_opened = 0, flows_expired = 0;
  uint64_t open_errors = 0;        // host socket could not be opened
  uint64_t send_errors = 0;        // host send failed (EAGAIN, ENOBUFS...): datagram lost
  uint64_t to_guest_dropped = 0;   // reply could not be queued toward the guest
  uint64_t unreachable_sent = 0;   // ICMP unreachables sent to guests
  uint64_t service_datagrams = 0;  // handed to gateway services
  std::string render() const;      // "udp_flows_opened N\n..." lines for /net/stats
};

class UdpNat final : public L4Handler, private DgramSink {
 public:
  static constexpr Instant kIdleTimeout = std::chrono::seconds(60);

  // How a gateway service answers: a datagram from the address and port the
  // guest sent to (the gateway when that was a broadcast) back to the
  // guest's address and port. A Reply is a small value the service may keep
  // to answer later (a DNS forwarder does); it must not outlive the UdpNat.
  class Reply {
   public:
    wire::Ipv4Addr guest_addr() const { return guest_.addr; }
    uint16_t guest_port() const { return guest_.port; }
    wire::Ipv4Addr local_addr() const { return local_.addr; }
    uint16_t local_port() const { return local_.port; }
    // False when the guest cannot be reached now or the payload is too big.
    bool send(Bytes payload) const { return send_to(guest_.addr, guest_.port, payload); }
    // To another destination (DHCP replies to the broadcast address).
    bool send_to(wire::Ipv4Addr dst, uint16_t dst_port, Bytes payload) const;

   private:
    friend class UdpNat;
    Reply(UdpNat* nat, SockAddr4 local, SockAddr4 guest) : nat_(nat), local_(local), guest_(guest) {}
    UdpNat* nat_;
    SockAddr4 local_, guest_;
  };
  // Gets the packet (its UDP header already checked; see udp_payload()).
  using Service = std::function<void(const GuestPacket&, Reply)>;

  UdpNat(GuestTx& tx, DgramHost& host);
  ~UdpNat() override;
  UdpNat(const UdpNat&) = delete;
  UdpNat& operator=(const UdpNat&) = delete;

  // Serve UDP `port` on the gateway (and on broadcast destinations) in
  // process instead of through host sockets. Replaces an earlier service.
  void add_service(uint16_t port, Service service);
  void remove_service(uint16_t port) { services_.erase(port); }
  bool has_service(uint16_t port) const { return services_.count(port) != 0; }
  // A datagram from the gateway's port `sport` to a guest, unprompted (UDP
  // port forwards). False when the guest cannot be reached now.
  bool send_from_gateway(uint16_t sport, wire::Ipv4Addr dst, uint16_t dport, Bytes payload);
  // The UDP payload of a packet a Service was given.
  static Bytes udp_payload(const GuestPacket& p);

  // L4Handler
  void input(const GuestPacket& p, Instant now) override;
  void poll(Instant now) override;
  std::optional<Instant> poll_at() const override;
  // "udp GUESTIP:PORT HOSTIP:PORT STATE tx=BYTES rx=BYTES age=SECONDS\n" per
  // flow; tx counts payload bytes guest->host, rx host->guest; age is since
  // the flow was opened.
  void describe_flows(std::string& out, Instant now) const override;
  void describe_stats(std::string& out) const override { out += stats().render(); }

  size_t flow_count() const { return flows_.size(); }
  const UdpStats& stats() const { return stats_; }

 private:
  struct Key {
    uint32_t guest_ip, dst_ip;
    uint16_t guest_port, dst_port;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      uint64_t a = (uint64_t(k.guest_ip) << 32) | k.dst_ip;
      uint64_t b = (uint64_t(k.guest_port) << 16) | k.dst_port;
      return std::hash<uint64_t>()(a * 0x9e3779b97f4a7c15ull ^ b);
    }
  };
  struct Flow {
    Key key;
    uint32_t port = 0;     // the guest's switch port
    SockAddr4 host;        // host_target(destination), destination port
    DgramSocket sock;
    UdpFlowState state = UdpFlowState::Unreplied;
    uint64_t tx_bytes = 0, rx_bytes = 0;
    Instant opened{};
    QuotedDatagram last;   // for ICMP errors
  };

  // DgramSink
  void on_datagram(uint64_t cookie, SockAddr4 from, Bytes data, Instant now) override;
  void on_error(uint64_t cookie, int err, Instant now) override;

  bool send_udp(wire::Ipv4Addr src, uint16_t sport, wire::Ipv4Addr dst, uint16_t dport, Bytes payload);
  void unreachable(wire::Ipv4Addr src, Bytes quote, wire::Icmpv4Unreachable code);
  void close_flow(UdpFlowId id);

  GuestTx& tx_;
  DgramHost& host_;
  FlowTable<UdpTag, Flow> flows_;
  std::unordered_map<Key, UdpFlowId, KeyHash> index_;
  std::unordered_map<uint16_t, Service> services_;
  UdpStats stats_;
};

}  // namespace berth::net
