// TCP translation: connections from guests become host socket connections,
// without a second TCP stack (issue 3; the idea of passt's tcp.c).
//
// Guarantees:
//  - One flow per (guest IP, guest port, destination IP, destination port).
//    Its guest half is tracked from the guest's segments (sequence numbers,
//    acknowledgements, window with scaling, MSS); its host half is a
//    TcpHost connection to host_target(destination), or an in-process
//    gateway service (add_service) for the gateway's own ports.
//  - The SYN-ACK goes to the guest only once the host connect succeeded. A
//    refusal becomes a RST at once; unreachable or timed-out hosts an ICMP
//    destination unreachable. Retransmitted SYNs meanwhile are absorbed.
//  - Guest data is acknowledged only once the host socket took it, and the
//    window the guest sees is the host socket's free send space, so a slow
//    host reader throttles the guest. Host data stays in the host socket's
//    receive buffer until the guest acknowledges it (peek, then consume).
//    No flow keeps an unbounded buffer in user space.
//  - Toward the guest: segments of at most min(guest MSS, MTU - 40), within
//    the guest's window, while GuestTx::can_send() allows; retransmission on
//    timeout (RFC 6298, with backoff) and after three duplicate ACKs
//    (RFC 5681); persist probes while the guest's window is zero.
//  - FIN and RST both ways; half-close both ways; simultaneous close.
//  - Established flows never expire for idleness (host keepalives find dead
//    peers). Handshakes and unacknowledged data do time out.
//  - At most NetConfig::max_tcp_flows flows; when full a SYN gets a RST and
//    Drop::FlowTableFull is counted; existing flows keep working.
//  - Malformed segments are counted (Drop::L4Malformed, L4BadChecksum) and
//    dropped.
//
// Everything runs on the loop thread. Time comes in as `now` (input, poll,
// host events); the clock given at construction is read only for events from
// in-process services.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/bytes.h"
#include "common/clock.h"
#include "net/host/tcp_host.h"
#include "net/stack.h"
#include "net/wire/tcp.h"

namespace berth::net {

// The translator's side of a connection, named as in RFC 9293 §3.3.2 from
// the point of view of the guest's peer (which is what we play). Connecting
// is ours: the guest's SYN is in, the host connect is not done, and nothing
// has been answered yet.
enum class TcpState : uint8_t {
  Connecting,
  SynSent,    // a port forward's active open: our SYN is out to the guest
  SynReceived,
  Established,
  FinWait1,   // host EOF: our FIN sent, not yet acknowledged
  FinWait2,   // our FIN acknowledged; the guest may still send
  CloseWait,  // the guest's FIN received (host socket shut for writing)
  Closing,    // FINs crossed: both sent, ours not yet acknowledged
  LastAck,    // the guest's FIN, then ours; waiting for its ACK
  TimeWait,   // both closed; a short linger to re-ACK a retransmitted FIN
  Closed,
};
const char* tcp_state_name(TcpState s);

struct TcpFlowId {
  uint32_t index = UINT32_MAX;
  uint32_t gen = 0;
  bool valid() const { return index != UINT32_MAX; }
  uint64_t cookie() const { return (uint64_t(gen) << 32) | index; }
  static TcpFlowId from_cookie(uint64_t c) { return TcpFlowId{uint32_t(c), uint32_t(c >> 32)}; }
  auto operator<=>(const TcpFlowId&) const = default;
};

// Gateway services: in-process byte-stream servers on the gateway's ports
// (564 for 9P). The service talks to its stream; the translator runs the
// guest half of the connection exactly as for a host socket.
class TcpServiceStream {
 public:
  virtual ~TcpServiceStream() = default;
  // Queue bytes toward the guest. Returns how many were taken (the stream
  // holds a bounded buffer); when fewer, on_writable() follows once there
  // is room.
  virtual size_t write(Bytes data) = 0;
  virtual size_t write_space() const = 0;
  // Nothing more toward the guest: a FIN follows the queued bytes.
  virtual void close() = 0;
  // Abort: the guest gets a RST.
  virtual void reset() = 0;
  // After on_data() took less than it was given (or input_space() was 0):
  // the service can take input again; the guest is told its window opened.
  virtual void resume_input() = 0;
};

class TcpService {
 public:
  virtual ~TcpService() = default;
  // Bytes from the guest, in order. Returns how many were taken; the rest
  // are not acknowledged, and the guest sends them again.
  virtual size_t on_data(Bytes data) = 0;
  // The guest closed its side: no more on_data().
  virtual void on_guest_fin() {}
  // Room toward the guest after write() took less than it was given.
  virtual void on_writable() {}
  // How much on_data() would take now: the window the guest sees. A service
  // that must pause input returns 0 here, then calls resume_input().
  virtual size_t input_space() const { return size_t(64) << 10; }
};

// Called once per guest connection to the service's port. The stream lives
// as long as the connection; the service is destroyed when the connection
// ends (after a RST, or once both sides closed).
using TcpServiceFactory = std::function<std::unique_ptr<TcpService>(TcpServiceStream& stream)>;

struct TcpStats {
  uint64_t opened = 0;           // SYN-ACKs for new flows
  uint64_t refused = 0;          // SYNs answered with RST (refused, no target, table full)
  uint64_t unreachable = 0;      // SYNs answered with ICMP unreachable
  uint64_t connect_errors = 0;   // host connects that could not start (EMFILE...)
  uint64_t resets_to_guest = 0;
  uint64_t resets_from_guest = 0;
  uint64_t retransmits = 0;      // segments sent again after a timeout
  uint64_t fast_retransmits = 0;
  uint64_t window_probes = 0;
  uint64_t timeouts = 0;         // flows aborted by a timer
  uint64_t forwarded_opened = 0;   // port-forward connections the guest accepted
  uint64_t forwarded_refused = 0;  // ... that the guest refused, or never answered
  uint64_t data_to_host = 0, data_to_guest = 0;  // bytes, acknowledged
  std::string render() const;
};

class TcpServiceHost;

class Tcp final : public L4Handler, private TcpHostSink {
 public:
  using Duration = std::chrono::nanoseconds;
  // Timers (RFC 6298 for the retransmission timeout).
  static constexpr Duration kInitialRto = std::chrono::seconds(1);       // RFC 6298 §2.1
  static constexpr Duration kMinRto = std::chrono::milliseconds(200);    // Linux's; RFC 6298 §2.4 allows it
  static constexpr Duration kMaxRto = std::chrono::seconds(60);          // RFC 6298 §2.5
  static constexpr Duration kConnectTimeout = std::chrono::seconds(75);
  static constexpr Duration kTimeWait = std::chrono::seconds(2);         // a short linger, not 2*MSL
  static constexpr Duration kLinkRetry = std::chrono::milliseconds(1);   // while the guest link is full
  static constexpr int kMaxRetries = 10;        // data timeouts in a row before the flow is aborted
  static constexpr int kMaxSynAckRetries = 5;
  static constexpr uint8_t kWindowScale = 7;    // ours: windows up to 8 MiB
  static constexpr size_t kBatch = size_t(64) << 10;  // bytes peeked from the host at once

  // `isn_secret` keys the initial sequence numbers (RFC 6528); tests fix it.
  Tcp(GuestTx& tx, TcpHost& host, const MonoClock& clock, uint64_t isn_secret);
  ~Tcp() override;
  Tcp(const Tcp&) = delete;
  Tcp& operator=(const Tcp&) = delete;

  // Serve gateway port `port` in-process. Replaces an earlier factory.
  void add_service(uint16_t port, TcpServiceFactory factory);
  // Called after in-process services produced events outside input()/poll()
  // (for the loop driver to re-arm its timer).
  void set_after_service_event(std::function<void()> cb) { after_service_event_ = std::move(cb); }

  // A port forward's connection: adopt the accepted host socket `fd` (the
  // TcpHost owns it from here, also on failure) and open a connection to
  // guest:guest_port from the gateway (an active open, RFC 9293 §3.10.1).
  // Host bytes wait in the socket until the guest accepted. A guest RST, or
  // no SYN-ACK after kMaxSynAckRetries tries, resets the host connection.
  // `tag` (non-zero) names the forward in tag_totals() and /net/flows.
  [[nodiscard]] Result<TcpFlowId> open_to_guest(int fd, wire::Ipv4Addr guest, uint16_t guest_port, uint32_t tag,
                                                Instant now);
  struct TagTotals {
    uint64_t active = 0, to_guest = 0, to_host = 0;  // live flows and their bytes
  };
  // Live flows with `tag` (closed flows are reported through on_tag_closed).
  TagTotals tag_totals(uint32_t tag) const;
  // Called as a tagged flow ends, with its byte counts.
  void set_on_tag_closed(std::function<void(uint32_t tag, uint64_t to_guest, uint64_t to_host)> cb) {
    on_tag_closed_ = std::move(cb);
  }

  // L4Handler
  void input(const GuestPacket& p, Instant now) override;
  void poll(Instant now) override;
  std::optional<Instant> poll_at() const override;
  void describe_flows(std::string& out, Instant now) const override;
  void describe_stats(std::string& out) const override { out += stats().render(); }

  size_t flow_count() const { return by_key_.size(); }
  const TcpStats& stats() const { return stats_; }
  // The state of the flow for a guest connection, if there is one.
  std::optional<TcpState> state_of(wire::Ipv4Addr guest, uint16_t guest_port, wire::Ipv4Addr dst,
                                   uint16_t dst_port) const;

 private:
  friend class TcpServiceHost;

  struct Key {
    uint32_t guest_ip, dst_ip;
    uint16_t guest_port, dst_port;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };

  // One translated connection. Sequence numbers are the guest half's: rcv_*
  // for what the guest sends, snd_* for what we send it (RFC 9293 §3.3.1).
  struct Flow {
    Flow() {}  // user-provided: clang 14 otherwise misjudges is_constructible for optional<Flow>
    TcpFlowId id;
    TcpState state = TcpState::Closed;
    Key key{};
    wire::Ipv4Addr host_ip;  // where the host half goes (127.0.0.1 for the alias)
    bool service = false;    // host half is a gateway service
    uint32_t tag = 0;        // the port forward that opened it (active open), or 0
    HostConnId host;         // invalid once closed
    Instant created{};

    // Receive side (guest -> host).
    uint32_t irs = 0, rcv_nxt = 0;
    uint32_t rcv_adv = 0;    // right edge of the window last advertised
    uint8_t rcv_ws = 0;      // our shift (0 unless the guest offered window scaling)
    bool guest_fin = false;  // its FIN accepted (host socket shut for writing)
    size_t host_space = 0;   // last known send space of the host socket

    // Send side (host -> guest).
    uint32_t iss = 0, snd_una = 0, snd_nxt = 0, snd_max = 0;
    uint32_t snd_wnd = 0, snd_wl1 = 0, snd_wl2 = 0;
    uint8_t snd_ws = 0;      // the guest's shift
    uint16_t mss = 536;      // effective: min(guest's MSS option, MTU - 40)
    uint32_t data_una = 0;   // sequence number of the first unconsumed host byte
    bool host_eof = false;   // the host closed its side; our FIN goes at fin_seq
    uint32_t fin_seq = 0;

    // Retransmission (RFC 6298) and persist state.
    Duration rto = kInitialRto, srtt{}, rttvar{};
    bool have_rtt = false;
    bool timing = false;     // timed_seq/timed_at measure one segment (Karn)
    uint32_t timed_seq = 0;
    Instant timed_at{};
    std::optional<Instant> rto_at, persist_at, linger_at;
    Duration persist_backoff{};
    int retries = 0;
    int dupacks = 0;

    bool want_read = false, want_write = false;
    bool link_blocked = false;  // on blocked_ until the guest link has room
    bool ack_owed = false;
    Instant deadline{};         // the entry in timers_, when armed
    bool armed = false;

    uint64_t to_host = 0, to_guest = 0;  // bytes, for /net/flows
    std::vector<uint8_t> syn;            // the guest's SYN packet, quoted in ICMP errors
  };

  struct Segment;

  // Host events (TcpHostSink).
  void on_host_connected(uint64_t cookie, int err, Instant now) override;
  void on_host_readable(uint64_t cookie, Instant now) override;
  void on_host_writable(uint64_t cookie, Instant now) override;
  void on_host_error(uint64_t cookie, int err, Instant now) override;

  Flow* find(TcpFlowId id);
  Flow* find(uint64_t cookie) { return find(TcpFlowId::from_cookie(cookie)); }
  TcpHost& host_of(const Flow& f);
  void set_state(Flow& f, TcpState to);
  void free_flow(Flow& f, bool reset_host);
  void abort_flow(Flow& f, const char* why);

  void on_syn(const GuestPacket& p, const Segment& s, Instant now);
  void on_segment(Flow& f, const Segment& s, Instant now);
  void on_ack(Flow& f, const Segment& s, Instant now);
  void on_data(Flow& f, const Segment& s, Instant now);
  void on_guest_fin(Flow& f, Instant now);
  void connect_failed(Flow& f, int err);

  // Toward the guest.
  void push(Flow& f, Instant now);
  bool emit(Flow& f, uint16_t flags, uint32_t seq, Bytes payload, bool syn_options = false);
  bool send_syn_ack(Flow& f, Instant now);
  bool send_syn(Flow& f, Instant now);
  void on_syn_sent(Flow& f, const Segment& s, Instant now);
  Flow& new_flow(const Key& key, Instant now);
  void send_ack(Flow& f) { f.ack_owed = !emit(f, wire::kTcpAck, f.snd_nxt, {}); }
  void send_reset_for(const GuestPacket& p, const Segment& s);
  void send_rst(wire::Ipv4Addr src, wire::Ipv4Addr dst, uint16_t sport, uint16_t dport, uint32_t seq,
                std::optional<uint32_t> ack);
  void retransmit_first(Flow& f, Instant now);
  void refresh_space(Flow& f);
  uint32_t receive_window(const Flow& f) const;
  void update_read_interest(Flow& f, bool want);
  void request_write(Flow& f);
  void block(Flow& f);

  // Timers.
  void rearm(Flow& f, Instant now);
  void on_timer(Flow& f, Instant now);
  void rtt_sample(Flow& f, Duration rtt);

  // In-process service events: delivered when an entry point (input, poll,
  // a host event) ends, or at once when a service acts on its own.
  void drain_services(Instant now);
  void after_entry(Instant now);
  void service_wake();

  GuestTx& tx_;
  TcpHost& host_;
  const MonoClock& clock_;
  uint64_t isn_secret_;
  std::unique_ptr<TcpServiceHost> services_;
  std::function<void()> after_service_event_;
  std::function<void(uint32_t, uint64_t, uint64_t)> on_tag_closed_;
  uint16_t next_ephemeral_ = 0;     // port-forward source ports cycle through 32768..60999

  struct Slot {
    std::optional<Flow> flow;
    uint32_t gen = 0;
  };
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  std::unordered_map<Key, uint32_t, KeyHash> by_key_;
  std::set<std::pair<Instant, uint32_t>> timers_;
  std::vector<TcpFlowId> blocked_;  // flows waiting for room on the guest link
  std::vector<uint8_t> scratch_;    // host bytes peeked for one batch
  Instant last_now_{};
  int depth_ = 0;                   // entry points on the stack (service events wait)
  bool draining_ = false, in_wake_ = false;
  TcpStats stats_;
};

}  // namespace berth::net
