// Theory of operation: TCP translation without a second TCP stack.
//
// A guest connection is two half-connections, each driven by its own events
// (the idea of passt's tcp.c):
//
//  - The guest half is what the guest sees of its peer. We track only what
//    the guest's segments tell us: its initial sequence number, how far its
//    data has been taken (rcv_nxt), what it acknowledged of ours (snd_una),
//    its window (scaled, RFC 7323) and MSS. We never queue its data: a
//    segment's bytes go straight into the host socket, and the ACK covers
//    only what the socket took. The window we advertise is the socket's free
//    send space, so a host reader that stalls stalls the guest.
//
//  - The host half is a non-blocking host socket (or a gateway service)
//    behind TcpHost. Its receive buffer doubles as our retransmission queue:
//    bytes are peeked at offset snd_nxt - data_una and sent to the guest, and
//    only consumed (really read) once the guest acknowledges them. A timeout
//    rewinds snd_nxt to snd_una and peeks again (go-back-N, RFC 6298 §5.4);
//    three duplicate ACKs resend the first unacknowledged segment
//    (RFC 5681 §3.2). Per-flow memory is a few counters; the only buffer is
//    one shared scratch batch.
//
// The state enum follows RFC 9293 from the point of view of the guest's
// peer: host EOF is our "CLOSE" (FIN to the guest), the guest's FIN becomes
// shutdown(SHUT_WR) on the host socket. The host socket is closed once both
// directions are done and the guest has acknowledged everything (TIME-WAIT or
// CLOSED), because until then its receive buffer holds our unacknowledged
// data. Every transition goes through set_state(), which logs it.
//
// Flows live in a bounded slot table addressed by TcpFlowId (index plus
// generation), which is also the cookie TcpHost events carry. One timer per
// flow (the earliest of RTO, persist, connect timeout and linger) sits in an
// ordered set, so poll_at() is O(1).
//
// Gateway services implement the host half in-process: TcpServiceHost is a
// TcpHost whose "socket" is a bounded byte ring toward the guest and a
// service object taking bytes from it. Its events are queued and delivered
// when the translator is not in the middle of handling something else.
#include "net/tcp.h"

#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <deque>

#include "net/wire/ipv4.h"
#include "net/wire/tcp.h"

namespace berth::net {

using wire::Ipv4Addr;
using wire::TcpRepr;
using namespace wire;  // kTcp* flags

namespace {

// Sequence-number comparisons modulo 2^32 (RFC 9293 §3.4).
bool seq_lt(uint32_t a, uint32_t b) { return int32_t(a - b) < 0; }
bool seq_le(uint32_t a, uint32_t b) { return int32_t(a - b) <= 0; }
bool seq_gt(uint32_t a, uint32_t b) { return int32_t(a - b) > 0; }
bool seq_ge(uint32_t a, uint32_t b) { return int32_t(a - b) >= 0; }

constexpr uint16_t kDefaultMss = 536;  // RFC 9293 §3.7.1, when the SYN has no MSS option
constexpr uint16_t kMinMss = 88;       // Linux's floor: a tiny MSS only burns CPU
constexpr size_t kMaxSynQuote = 576;   // bytes of the guest's SYN kept for ICMP errors (RFC 1812 §4.3.2.3)
constexpr size_t kServiceBuffer = size_t(256) << 10;  // per service connection, toward the guest

uint64_t mix64(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

std::string endpoint(uint32_t ip, uint16_t port) { return fmt::format("{}:{}", Ipv4Addr(ip).to_string(), port); }

}  // namespace

const char* tcp_state_name(TcpState s) {
  switch (s) {
    case TcpState::Connecting: return "CONNECTING";
    case TcpState::SynSent: return "SYN_SENT";
    case TcpState::SynReceived: return "SYN_RECEIVED";
    case TcpState::Established: return "ESTABLISHED";
    case TcpState::FinWait1: return "FIN_WAIT_1";
    case TcpState::FinWait2: return "FIN_WAIT_2";
    case TcpState::CloseWait: return "CLOSE_WAIT";
    case TcpState::Closing: return "CLOSING";
    case TcpState::LastAck: return "LAST_ACK";
    case TcpState::TimeWait: return "TIME_WAIT";
    case TcpState::Closed: return "CLOSED";
  }
  return "UNKNOWN";
}

std::string TcpStats::render() const {
  return fmt::format(
      "tcp_opened {}\ntcp_refused {}\ntcp_unreachable {}\ntcp_connect_errors {}\ntcp_resets_to_guest {}\n"
      "tcp_resets_from_guest {}\ntcp_retransmits {}\ntcp_fast_retransmits {}\ntcp_window_probes {}\n"
      "tcp_timeouts {}\ntcp_bytes_to_host {}\ntcp_bytes_to_guest {}\ntcp_forwarded_opened {}\n"
      "tcp_forwarded_refused {}\n",
      opened, refused, unreachable, connect_errors, resets_to_guest, resets_from_guest, retransmits,
      fast_retransmits, window_probes, timeouts, data_to_host, data_to_guest, forwarded_opened, forwarded_refused);
}

size_t Tcp::KeyHash::operator()(const Key& k) const {
  return size_t(mix64((uint64_t(k.guest_ip) << 32 | k.dst_ip) ^ mix64(uint64_t(k.guest_port) << 16 | k.dst_port)));
}

// A parsed guest segment.
struct Tcp::Segment {
  TcpRepr r;
  bool has(uint16_t f) const { return r.has(f); }
  uint32_t seq() const { return r.seq; }
  uint32_t ack() const { return r.ack; }
  uint32_t len() const { return r.segment_len(); }  // payload + SYN + FIN
};

// ---------------------------------------------------------------------------
// In-process gateway services.

class TcpServiceHost final : public TcpHost {
 public:
  explicit TcpServiceHost(Tcp& tcp) : tcp_(tcp) {}

  bool has(uint16_t port) const { return factories_.count(port) != 0; }
  void add(uint16_t port, TcpServiceFactory f) { factories_[port] = std::move(f); }

  Result<HostConnId> connect(Ipv4Addr, uint16_t port, TcpHostSink& sink, uint64_t cookie) override {
    auto it = factories_.find(port);
    if (it == factories_.end()) return make_error(ECONNREFUSED, "no service on that port");
    uint32_t i;
    if (!free_.empty()) {
      i = free_.back();
      free_.pop_back();
    } else {
      i = uint32_t(slots_.size());
      slots_.emplace_back();
    }
    Slot& s = slots_[i];
    s.gen++;
    s.conn = std::make_unique<Conn>(*this, HostConnId{i, s.gen}, sink, cookie);
    s.conn->service = it->second(*s.conn);
    if (!s.conn->service) {
      release(i);
      return make_error(ECONNREFUSED, "service refused the connection");
    }
    queue(s.conn->id, Event::Connected);
    return s.conn->id;
  }

  Result<size_t> send(HostConnId c, Bytes data) override {
    Conn* k = get(c);
    if (!k || k->aborted) return make_error(ECONNRESET, "service connection reset");
    if (k->guest_fin) return make_error(EPIPE, "write after shutdown");
    size_t offer = std::min(data.size(), k->service->input_space());
    size_t took = offer ? std::min(k->service->on_data(data.first(offer)), offer) : 0;
    return took;
  }

  Result<PeekResult> peek(HostConnId c, size_t offset, std::span<uint8_t> out) override {
    Conn* k = get(c);
    if (!k || k->aborted) return make_error(ECONNRESET, "service connection reset");
    PeekResult r;
    if (offset < k->size) {
      r.n = std::min(out.size(), k->size - offset);
      std::memcpy(out.data(), k->buf.data() + k->head + offset, r.n);
    }
    r.eof = k->closed && offset + r.n >= k->size;
    k->peeked_end = std::max(k->peeked_end, offset + r.n);
    return r;
  }

  void consume(HostConnId c, size_t n) override {
    Conn* k = get(c);
    if (!k) return;
    n = std::min(n, k->size);
    k->head += n;
    k->size -= n;
    k->peeked_end -= std::min(k->peeked_end, n);
    if (k->size == 0) k->head = 0;
    if (n && k->service_blocked) {
      k->service_blocked = false;
      queue(c, Event::ServiceWritable);
    }
  }

  size_t send_space(HostConnId c) override {
    Conn* k = get(c);
    return k && !k->guest_fin ? k->service->input_space() : 0;
  }

  void shutdown_write(HostConnId c) override {
    Conn* k = get(c);
    if (!k || k->guest_fin) return;
    k->guest_fin = true;
    k->service->on_guest_fin();
  }

  void close(HostConnId c, bool) override {
    if (get(c)) release(c.index);
  }

  void set_interest(HostConnId c, bool read, bool write) override {
    Conn* k = get(c);
    if (!k) return;
    bool was_reading = k->want_read;
    k->want_read = read;
    k->want_write = write;
    if (read && !was_reading && (k->size > k->peeked_end || k->closed)) queue(c, Event::Readable);
    if (write && k->service->input_space() > 0) queue(c, Event::Writable);
  }

  // Deliver queued events. Events for the service itself (on_writable) are
  // delivered only when `to_services`, so a service is never re-entered from
  // inside one of its own calls into its stream.
  void drain(Instant now, bool to_services) {
    std::deque<Pending> keep;
    while (!events_.empty()) {
      Pending e = events_.front();
      events_.pop_front();
      Conn* k = get(e.id);
      if (!k) continue;
      switch (e.kind) {
        case Event::Connected: k->sink.on_host_connected(k->cookie, 0, now); break;
        case Event::Readable:
          k->readable_queued = false;
          if (k->want_read) k->sink.on_host_readable(k->cookie, now);
          break;
        case Event::Writable:
          if (k->want_write) {
            k->want_write = false;
            k->sink.on_host_writable(k->cookie, now);
          }
          break;
        case Event::Error: k->sink.on_host_error(k->cookie, ECONNRESET, now); break;
        case Event::ServiceWritable:
          if (to_services) k->service->on_writable();
          else keep.push_back(e);
          break;
      }
    }
    events_ = std::move(keep);
    if (to_services) graveyard_.clear();
  }
  bool pending() const { return !events_.empty(); }

 private:
  enum class Event : uint8_t { Connected, Readable, Writable, Error, ServiceWritable };
  struct Pending {
    HostConnId id;
    Event kind;
  };

  struct Conn final : TcpServiceStream {
    Conn(TcpServiceHost& h, HostConnId i, TcpHostSink& s, uint64_t c) : host(h), id(i), sink(s), cookie(c) {}
    ~Conn() override { service.reset(); }  // the service goes before its stream

    size_t write(Bytes data) override {
      if (closed || aborted) return 0;
      size_t n = std::min(data.size(), kServiceBuffer - size);
      if (n < data.size()) service_blocked = true;
      if (n == 0) return 0;
      if (head + size + n > buf.size()) {
        if (size) std::memmove(buf.data(), buf.data() + head, size);
        head = 0;
        if (size + n > buf.size()) buf.resize(std::min(kServiceBuffer, std::max(size + n, buf.size() * 2)));
      }
      std::memcpy(buf.data() + head + size, data.data(), n);
      size += n;
      readable();
      return n;
    }
    size_t write_space() const override { return closed || aborted ? 0 : kServiceBuffer - size; }
    void close() override {
      if (closed) return;
      closed = true;
      readable();
    }
    void reset() override {
      if (aborted) return;
      aborted = true;
      host.queue(id, Event::Error);
      host.tcp_.service_wake();
    }
    void resume_input() override {
      if (want_write) {
        host.queue(id, Event::Writable);
        host.tcp_.service_wake();
      }
    }
    void readable() {
      if (want_read && !readable_queued) {
        readable_queued = true;
        host.queue(id, Event::Readable);
      }
      host.tcp_.service_wake();
    }

    TcpServiceHost& host;
    HostConnId id;
    TcpHostSink& sink;
    uint64_t cookie;
    std::unique_ptr<TcpService> service;
    std::vector<uint8_t> buf;  // toward the guest: [head, head + size)
    size_t head = 0, size = 0, peeked_end = 0;
    bool closed = false, guest_fin = false, want_read = false, want_write = false;
    bool readable_queued = false, service_blocked = false;
    bool aborted = false;
  };
  struct Slot {
    std::unique_ptr<Conn> conn;
    uint32_t gen = 0;
  };

  Conn* get(HostConnId c) {
    if (c.index >= slots_.size()) return nullptr;
    Slot& s = slots_[c.index];
    return s.conn && s.gen == c.gen ? s.conn.get() : nullptr;
  }
  // A closed connection's service may still be on the stack (it reset its
  // stream): it is destroyed at the end of the translator's entry point.
  void release(uint32_t i) {
    graveyard_.push_back(std::move(slots_[i].conn));
    free_.push_back(i);
  }
  void queue(HostConnId id, Event e) { events_.push_back({id, e}); }

  Tcp& tcp_;
  std::unordered_map<uint16_t, TcpServiceFactory> factories_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  std::deque<Pending> events_;
  std::vector<std::unique_ptr<Conn>> graveyard_;
};

// ---------------------------------------------------------------------------
// Construction, lookup, state.

Tcp::Tcp(GuestTx& tx, TcpHost& host, const MonoClock& clock, uint64_t isn_secret)
    : tx_(tx), host_(host), clock_(clock), isn_secret_(isn_secret),
      services_(std::make_unique<TcpServiceHost>(*this)), scratch_(kBatch) {}

Tcp::~Tcp() {
  for (auto& s : slots_)
    if (s.flow && s.flow->host.valid()) host_of(*s.flow).close(s.flow->host, true);
  slots_.clear();
  services_.reset();
}

void Tcp::add_service(uint16_t port, TcpServiceFactory factory) { services_->add(port, std::move(factory)); }

Tcp::Flow* Tcp::find(TcpFlowId id) {
  if (id.index >= slots_.size()) return nullptr;
  Slot& s = slots_[id.index];
  return s.flow && s.gen == id.gen ? &*s.flow : nullptr;
}

TcpHost& Tcp::host_of(const Flow& f) { return f.service ? static_cast<TcpHost&>(*services_) : host_; }

std::optional<TcpState> Tcp::state_of(Ipv4Addr guest, uint16_t guest_port, Ipv4Addr dst, uint16_t dst_port) const {
  auto it = by_key_.find(Key{guest.v, dst.v, guest_port, dst_port});
  if (it == by_key_.end()) return std::nullopt;
  return slots_[it->second].flow->state;
}

void Tcp::set_state(Flow& f, TcpState to) {
  if (f.state == to) return;
  spdlog::debug("tcp {} -> {}: {} => {}", endpoint(f.key.guest_ip, f.key.guest_port),
                endpoint(f.key.dst_ip, f.key.dst_port), tcp_state_name(f.state), tcp_state_name(to));
  f.state = to;
}

void Tcp::free_flow(Flow& f, bool reset_host) {
  if (f.tag && on_tag_closed_) on_tag_closed_(f.tag, f.to_guest, f.to_host);
  if (f.host.valid()) host_of(f).close(f.host, reset_host);
  f.host = {};
  set_state(f, TcpState::Closed);
  if (f.armed) timers_.erase({f.deadline, f.id.index});
  by_key_.erase(f.key);
  uint32_t i = f.id.index;
  slots_[i].flow.reset();
  free_.push_back(i);
}

void Tcp::abort_flow(Flow& f, const char* why) {
  spdlog::debug("tcp {} -> {}: abort: {}", endpoint(f.key.guest_ip, f.key.guest_port),
                endpoint(f.key.dst_ip, f.key.dst_port), why);
  // RFC 9293 §3.10.7.4: a reset from the host side becomes a RST with our
  // next sequence number.
  emit(f, kTcpRst | kTcpAck, f.snd_nxt, {});
  stats_.resets_to_guest++;
  free_flow(f, true);
}

// ---------------------------------------------------------------------------
// Segments from the guest.

void Tcp::input(const GuestPacket& p, Instant now) {
  depth_++;
  last_now_ = now;
  auto pkt = TcpPacket::check(p.payload);
  if (!pkt) {
    spdlog::debug("tcp: malformed segment from {}: {}", p.ip.src.to_string(), wire_error_name(pkt.error()));
    tx_.count_drop(Drop::L4Malformed);
    return after_entry(now);
  }
  auto repr = TcpRepr::parse(*pkt, PseudoHeader::v4(p.ip.src, p.ip.dst));
  if (!repr) {
    spdlog::debug("tcp: bad segment from {}: {}", p.ip.src.to_string(), wire_error_name(repr.error()));
    tx_.count_drop(repr.error() == WireError::BadChecksum ? Drop::L4BadChecksum : Drop::L4Malformed);
    return after_entry(now);
  }
  Segment s{*repr};
  // Port 0 is reserved; SYN with FIN or RST is nonsense (a scan or an attack).
  if (s.r.src_port == 0 || s.r.dst_port == 0 || (s.has(kTcpSyn) && (s.r.flags & (kTcpFin | kTcpRst)))) {
    tx_.count_drop(Drop::L4Malformed);
    return after_entry(now);
  }
  // RFC 1122 §4.2.3.10: no TCP to broadcast or multicast addresses.
  const NetConfig& cfg = tx_.config();
  if (!p.ip.dst.is_unicast() || p.ip.dst == cfg.subnet.broadcast()) {
    tx_.count_drop(Drop::NoRoute);
    return after_entry(now);
  }
  auto it = by_key_.find(Key{p.ip.src.v, p.ip.dst.v, s.r.src_port, s.r.dst_port});
  if (it != by_key_.end()) {
    Flow& f = *slots_[it->second].flow;
    // RFC 9293 §3.10.7.4 TIME-WAIT, RFC 6191: a new SYN above the old
    // sequence space may reuse the tuple at once.
    if (f.state == TcpState::TimeWait && s.has(kTcpSyn) && !s.has(kTcpAck) && seq_gt(s.seq(), f.rcv_nxt)) {
      free_flow(f, false);
      on_syn(p, s, now);
    } else {
      on_segment(f, s, now);
    }
  } else if (s.has(kTcpSyn) && !s.has(kTcpAck)) {
    on_syn(p, s, now);
  } else if (!s.has(kTcpRst)) {
    // RFC 9293 §3.10.7.1: anything else for a connection that does not
    // exist (CLOSED) is answered with a RST; a RST is dropped.
    send_reset_for(p, s);
  }
  after_entry(now);
}

void Tcp::send_reset_for(const GuestPacket& p, const Segment& s) {
  // RFC 9293 §3.10.7.1: with ACK, <SEQ=SEG.ACK><CTL=RST>; without,
  // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
  if (s.has(kTcpAck)) send_rst(p.ip.dst, p.ip.src, s.r.dst_port, s.r.src_port, s.ack(), std::nullopt);
  else send_rst(p.ip.dst, p.ip.src, s.r.dst_port, s.r.src_port, 0, s.seq() + s.len());
}

void Tcp::send_rst(Ipv4Addr src, Ipv4Addr dst, uint16_t sport, uint16_t dport, uint32_t seq,
                   std::optional<uint32_t> ack) {
  TcpRepr r;
  r.src_port = sport;
  r.dst_port = dport;
  r.seq = seq;
  r.ack = ack.value_or(0);
  r.flags = ack ? kTcpRst | kTcpAck : kTcpRst;
  stats_.resets_to_guest++;
  tx_.send_ipv4(src, dst, IpProtocol::Tcp, r.buffer_len(),
                [&](std::span<uint8_t> l4, const PseudoHeader& ph) { r.emit(l4, ph); });
}

void Tcp::on_syn(const GuestPacket& p, const Segment& s, Instant now) {
  const NetConfig& cfg = tx_.config();
  uint16_t port = s.r.dst_port;
  bool service = p.ip.dst == cfg.gateway;
  std::optional<Ipv4Addr> target = service ? std::optional(cfg.gateway) : cfg.host_target(p.ip.dst);
  if ((service && !services_->has(port)) || !target) {
    // Nothing listens there: refuse as a closed port would (RFC 9293 §3.10.7.1).
    stats_.refused++;
    return send_reset_for(p, s);
  }
  if (by_key_.size() >= cfg.max_tcp_flows) {
    spdlog::debug("tcp: flow table full ({}), refusing {}:{}", cfg.max_tcp_flows, p.ip.src.to_string(),
                  s.r.src_port);
    tx_.count_drop(Drop::FlowTableFull);
    stats_.refused++;
    return send_reset_for(p, s);
  }

  Flow& f = new_flow(Key{p.ip.src.v, p.ip.dst.v, s.r.src_port, port}, now);
  f.host_ip = *target;
  f.service = service;

  // The guest half, from its SYN (RFC 9293 §3.10.7.2).
  f.irs = s.seq();
  f.rcv_nxt = f.irs + 1;
  f.rcv_adv = f.rcv_nxt;
  uint32_t our_mss = cfg.mtu - 40;
  f.mss = uint16_t(std::clamp<uint32_t>(s.r.mss.value_or(kDefaultMss), kMinMss, our_mss));
  if (s.r.window_scale) {  // RFC 7323 §1.3: scaling only when both SYNs carry the option
    f.snd_ws = std::min<uint8_t>(*s.r.window_scale, 14);  // RFC 7323 §2.3
    f.rcv_ws = kWindowScale;
  }
  f.snd_wnd = s.r.window;  // RFC 7323 §2.2: the SYN's window is never scaled
  f.snd_wl1 = f.irs;
  // RFC 6528: ISN = M + F(4-tuple, secret), M a 4 µs clock.
  uint64_t tuple = (uint64_t(f.key.guest_ip) << 32 | f.key.dst_ip) ^ (uint64_t(f.key.guest_port) << 16 | port);
  f.iss = uint32_t(now.count() / 4000) + uint32_t(mix64(tuple ^ isn_secret_));
  f.snd_una = f.snd_nxt = f.snd_max = f.iss;
  f.data_una = f.iss + 1;
  // Kept for an ICMP error; a longer SYN (with data) is cut, and its total
  // length made to match so the copy is still a well-formed packet.
  f.syn.assign(p.packet.begin(), p.packet.begin() + std::min(p.packet.size(), kMaxSynQuote));
  if (f.syn.size() < p.packet.size() && f.syn.size() >= Ipv4Packet::kMinHeaderLen)
    store_be16(&f.syn[2], uint16_t(f.syn.size()));
  set_state(f, TcpState::Connecting);

  auto c = host_of(f).connect(*target, port, *this, f.id.cookie());
  if (!c) {
    spdlog::debug("tcp: connect to {}:{} failed at once: {}", target->to_string(), port, c.error().message);
    stats_.connect_errors++;
    return connect_failed(f, c.error().code);
  }
  f.host = *c;
  f.linger_at = now + kConnectTimeout;
  rearm(f, now);
}

Tcp::Flow& Tcp::new_flow(const Key& key, Instant now) {
  uint32_t i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = uint32_t(slots_.size());
    slots_.emplace_back();
  }
  Slot& slot = slots_[i];
  slot.gen++;
  Flow& f = slot.flow.emplace();
  f.id = TcpFlowId{i, slot.gen};
  f.key = key;
  by_key_.emplace(f.key, i);
  f.created = now;
  return f;
}

// ---------------------------------------------------------------------------
// Port forwards: active opens toward the guest.

Result<TcpFlowId> Tcp::open_to_guest(int fd, Ipv4Addr guest, uint16_t guest_port, uint32_t tag, Instant now) {
  depth_++;
  last_now_ = now;
  struct Exit {
    Tcp* t;
    Instant now;
    ~Exit() { t->after_entry(now); }
  } exit{this, now};
  const NetConfig& cfg = tx_.config();
  auto refuse = [&](int code, std::string why) -> Result<TcpFlowId> {
    ::close(fd);
    stats_.forwarded_refused++;
    return make_error(code, std::move(why));
  };
  if (!cfg.subnet.contains(guest) || guest == cfg.gateway || guest == cfg.host_alias || guest_port == 0)
    return refuse(EINVAL, fmt::format("{}:{} is not a guest address", guest.to_string(), guest_port));
  if (!tx_.has_guest(guest)) return refuse(EHOSTUNREACH, fmt::format("no guest has {}", guest.to_string()));
  if (by_key_.size() >= cfg.max_tcp_flows) {
    tx_.count_drop(Drop::FlowTableFull);
    return refuse(ENOSPC, fmt::format("TCP flow table full ({})", cfg.max_tcp_flows));
  }
  // A source port on the gateway that no flow with this guest end uses.
  constexpr uint32_t kFirst = 32768, kCount = 61000 - 32768;
  Key key{guest.v, cfg.gateway.v, guest_port, 0};
  for (uint32_t tries = 0; tries < kCount; tries++) {
    key.dst_port = uint16_t(kFirst + next_ephemeral_++ % kCount);
    if (next_ephemeral_ >= kCount) next_ephemeral_ = 0;
    if (!by_key_.count(key)) break;
    key.dst_port = 0;
  }
  if (!key.dst_port) return refuse(EADDRNOTAVAIL, "no free source port toward the guest");

  Flow& f = new_flow(key, now);
  f.host_ip = cfg.gateway;
  f.tag = tag;
  uint64_t tuple = (uint64_t(key.guest_ip) << 32 | key.dst_ip) ^ (uint64_t(key.guest_port) << 16 | key.dst_port);
  f.iss = uint32_t(now.count() / 4000) + uint32_t(mix64(tuple ^ isn_secret_));  // RFC 6528
  f.snd_una = f.snd_nxt = f.snd_max = f.iss;
  f.data_una = f.iss + 1;
  f.rcv_ws = kWindowScale;  // offered; dropped again if the SYN-ACK has no window scale
  TcpFlowId id = f.id;
  auto c = host_.adopt(fd, *this, id.cookie());
  if (!c) {
    stats_.forwarded_refused++;
    free_flow(f, false);
    return c.error();
  }
  f.host = *c;
  refresh_space(f);
  set_state(f, TcpState::SynSent);
  send_syn(f, now);
  rearm(f, now);
  return id;
}

bool Tcp::send_syn(Flow& f, Instant now) {
  // RFC 9293 §3.10.1: <SEQ=ISS><CTL=SYN>, with our MSS and window scale.
  bool ok = emit(f, kTcpSyn, f.iss, {}, true);
  f.snd_nxt = f.snd_max = f.iss + 1;
  if (!f.timing && f.retries == 0) {
    f.timing = true;
    f.timed_seq = f.iss;
    f.timed_at = now;
  }
  if (!f.rto_at) f.rto_at = now + f.rto;
  return ok;
}

// RFC 9293 §3.10.7.3 SYN-SENT.
void Tcp::on_syn_sent(Flow& f, const Segment& s, Instant now) {
  if (s.has(kTcpAck) && s.ack() != f.iss + 1) {
    if (!s.has(kTcpRst))
      send_rst(Ipv4Addr(f.key.dst_ip), Ipv4Addr(f.key.guest_ip), f.key.dst_port, f.key.guest_port, s.ack(),
               std::nullopt);
    return;
  }
  if (s.has(kTcpRst)) {
    if (s.has(kTcpAck)) {  // refused: nothing listens on the guest's port
      stats_.forwarded_refused++;
      stats_.resets_from_guest++;
      free_flow(f, true);
    }
    return;
  }
  if (!s.has(kTcpSyn) || !s.has(kTcpAck)) return;  // a simultaneous open is not expected from a guest
  const NetConfig& cfg = tx_.config();
  f.irs = s.seq();
  f.rcv_nxt = f.rcv_adv = f.irs + 1;
  f.mss = uint16_t(std::clamp<uint32_t>(s.r.mss.value_or(kDefaultMss), kMinMss, cfg.mtu - 40));
  if (s.r.window_scale) {
    f.snd_ws = std::min<uint8_t>(*s.r.window_scale, 14);  // RFC 7323 §2.3
  } else {
    f.snd_ws = f.rcv_ws = 0;  // RFC 7323 §1.3: both SYNs or neither
  }
  f.snd_wnd = s.r.window;  // RFC 7323 §2.2: never scaled in a SYN
  f.snd_una = f.iss + 1;
  f.snd_wl1 = s.seq();
  f.snd_wl2 = s.ack();
  if (f.timing && f.retries == 0) rtt_sample(f, now - f.timed_at);
  f.timing = false;
  f.rto_at.reset();
  f.retries = 0;
  set_state(f, TcpState::Established);
  stats_.forwarded_opened++;
  stats_.opened++;
  refresh_space(f);
  send_ack(f);
  TcpFlowId id = f.id;
  push(f, now);
  if (Flow* g = find(id)) rearm(*g, now);
}

Tcp::TagTotals Tcp::tag_totals(uint32_t tag) const {
  TagTotals t;
  for (const auto& s : slots_) {
    if (!s.flow || s.flow->tag != tag) continue;
    t.active++;
    t.to_guest += s.flow->to_guest;
    t.to_host += s.flow->to_host;
  }
  return t;
}

void Tcp::connect_failed(Flow& f, int err) {
  Bytes syn(f.syn.data(), f.syn.size());
  switch (err) {
    case ENETUNREACH:
      stats_.unreachable++;
      tx_.send_icmp_error(syn, Icmpv4Type::DstUnreachable, uint8_t(Icmpv4Unreachable::Net));
      break;
    case EHOSTUNREACH:
    case EHOSTDOWN:
    case ETIMEDOUT:
      stats_.unreachable++;
      tx_.send_icmp_error(syn, Icmpv4Type::DstUnreachable, uint8_t(Icmpv4Unreachable::Host));
      break;
    case EACCES:
    case EPERM:
      stats_.unreachable++;
      tx_.send_icmp_error(syn, Icmpv4Type::DstUnreachable, uint8_t(Icmpv4Unreachable::AdminProhibited));
      break;
    default: {
      // ECONNREFUSED and anything else: refuse at once, as the host's port
      // did (RFC 9293 §3.10.7.1 form for a SYN: RST,ACK acknowledging it).
      stats_.refused++;
      send_rst(Ipv4Addr(f.key.dst_ip), Ipv4Addr(f.key.guest_ip), f.key.dst_port, f.key.guest_port, 0, f.irs + 1);
      break;
    }
  }
  free_flow(f, false);
}

void Tcp::on_segment(Flow& f, const Segment& s, Instant now) {
  switch (f.state) {
    case TcpState::SynSent:
      return on_syn_sent(f, s, now);

    case TcpState::Connecting:
      // No SYN-ACK yet: the host connect is still running.
      if (s.has(kTcpRst)) {
        if (s.seq() == f.rcv_nxt) {  // RFC 5961 §3.2: only an exact RST
          stats_.resets_from_guest++;
          free_flow(f, true);
        }
      } else if (s.has(kTcpSyn) && !s.has(kTcpAck)) {
        // A retransmitted SYN is absorbed. A new ISN means the guest gave up
        // the old attempt and reuses the port: follow it.
        f.irs = s.seq();
        f.rcv_nxt = f.rcv_adv = f.irs + 1;
        f.snd_wl1 = f.irs;
      }
      return;

    case TcpState::SynReceived:
      if (s.has(kTcpRst)) {
        // RFC 9293 §3.10.7.4 SYN-RECEIVED: an acceptable RST ends a passive open.
        if (s.seq() == f.rcv_nxt) {
          stats_.resets_from_guest++;
          free_flow(f, true);
        }
        return;
      }
      if (s.has(kTcpSyn)) {
        // Its SYN again: our SYN-ACK was lost, send it again.
        if (!s.has(kTcpAck) && s.seq() == f.irs) send_syn_ack(f, now);
        return;
      }
      if (!s.has(kTcpAck)) return;
      if (s.ack() != f.iss + 1) {
        // RFC 9293 §3.10.7.4 SYN-RECEIVED: unacceptable ACK -> <SEQ=SEG.ACK><CTL=RST>.
        send_rst(Ipv4Addr(f.key.dst_ip), Ipv4Addr(f.key.guest_ip), f.key.dst_port, f.key.guest_port, s.ack(),
                 std::nullopt);
        return;
      }
      // RFC 9293 §3.10.7.4 SYN-RECEIVED: SND.UNA < SEG.ACK =< SND.NXT -> ESTABLISHED,
      // SND.WND <- SEG.WND, SND.WL1 <- SEG.SEQ, SND.WL2 <- SEG.ACK.
      if (f.timing && f.retries == 0) rtt_sample(f, now - f.timed_at);
      f.timing = false;
      f.snd_una = f.iss + 1;
      break;

    case TcpState::TimeWait:
      if (s.has(kTcpRst)) {
        if (s.seq() == f.rcv_nxt) free_flow(f, false);
        return;
      }
      // RFC 9293 §3.10.7.4 TIME-WAIT: a retransmitted FIN is acknowledged
      // again and the linger restarts.
      if (s.has(kTcpFin)) {
        send_ack(f);
        f.linger_at = now + kTimeWait;
        rearm(f, now);
      }
      return;

    case TcpState::Closed:
      return;

    default:
      break;
  }

  if (f.state != TcpState::SynReceived) {
    // RFC 5961 §3.2: a RST must carry exactly RCV.NXT; one elsewhere in the
    // window gets a challenge ACK, anything else is dropped.
    uint32_t wnd = std::max<uint32_t>(receive_window(f), 1);
    if (s.has(kTcpRst)) {
      if (s.seq() == f.rcv_nxt) {
        spdlog::debug("tcp {}: reset by guest", endpoint(f.key.guest_ip, f.key.guest_port));
        stats_.resets_from_guest++;
        free_flow(f, true);  // RST toward the host too (SO_LINGER 0)
      } else if (seq_gt(s.seq(), f.rcv_nxt) && seq_lt(s.seq(), f.rcv_nxt + wnd)) {
        send_ack(f);
      }
      return;
    }
    // RFC 5961 §4.2: a SYN in a synchronized state gets a challenge ACK.
    if (s.has(kTcpSyn)) {
      send_ack(f);
      return;
    }
    // RFC 9293 §3.10.7.4: segments without ACK are dropped.
    if (!s.has(kTcpAck)) return;
  }

  // ACK processing (RFC 9293 §3.10.7.4, fifth check).
  TcpFlowId id = f.id;
  if (seq_gt(s.ack(), f.snd_max)) {
    // It acknowledges something not yet sent: ACK, drop.
    send_ack(f);
    return;
  }
  if (f.state == TcpState::SynReceived) {
    f.snd_wnd = uint32_t(s.r.window) << f.snd_ws;
    f.snd_wl1 = s.seq();
    f.snd_wl2 = s.ack();
    f.rto_at.reset();
    f.retries = 0;
    set_state(f, TcpState::Established);
    f.snd_nxt = f.snd_max = f.snd_una;
  } else {
    on_ack(f, s, now);
    if (!find(id)) return;  // LAST-ACK completed and the flow is gone
  }

  // Data and FIN (sixth to eighth checks).
  on_data(f, s, now);
  if (!find(id)) return;  // aborted: the host refused the data
  push(f, now);
  if (!find(id)) return;
  if (f.ack_owed) send_ack(f);
  rearm(f, now);
}

void Tcp::on_ack(Flow& f, const Segment& s, Instant now) {
  uint32_t ack = s.ack();
  uint32_t old_wnd = f.snd_wnd;
  // RFC 9293 §3.10.7.4: update the send window only from segments newer than
  // the last one that did (SND.WL1/SND.WL2).
  if (seq_lt(f.snd_wl1, s.seq()) || (f.snd_wl1 == s.seq() && seq_le(f.snd_wl2, ack))) {
    if (seq_ge(ack, f.snd_una)) {
      f.snd_wnd = uint32_t(s.r.window) << f.snd_ws;
      f.snd_wl1 = s.seq();
      f.snd_wl2 = ack;
    }
  }
  if (seq_lt(ack, f.snd_una)) return;  // an old duplicate: ignore its ACK

  if (seq_gt(ack, f.snd_una)) {
    // New data acknowledged: drop it from the host socket's receive buffer.
    uint32_t data_end = ack;
    if (f.host_eof && seq_gt(ack, f.fin_seq)) data_end = f.fin_seq;
    uint32_t n = data_end - f.data_una;
    if (seq_gt(data_end, f.data_una) && n > 0) {
      if (f.host.valid()) host_of(f).consume(f.host, n);
      f.data_una = data_end;
      f.to_guest += n;
      stats_.data_to_guest += n;
    }
    // RFC 6298 §2/§3: one timed segment at a time, never a retransmitted one (Karn).
    if (f.timing && seq_gt(ack, f.timed_seq)) {
      rtt_sample(f, now - f.timed_at);
      f.timing = false;
    }
    f.snd_una = ack;
    if (seq_lt(f.snd_nxt, f.snd_una)) f.snd_nxt = f.snd_una;  // acked beyond a go-back point
    f.retries = 0;
    f.dupacks = 0;
    // RFC 6298 §5.2/§5.3: stop the timer when all is acknowledged, else restart it.
    if (f.snd_una == f.snd_nxt) f.rto_at.reset();
    else f.rto_at = now + f.rto;
    if (f.host_eof && seq_gt(ack, f.fin_seq)) {
      // Our FIN is acknowledged.
      switch (f.state) {
        case TcpState::FinWait1:  // RFC 9293 §3.10.7.4 FIN-WAIT-1: FIN acked -> FIN-WAIT-2
          set_state(f, TcpState::FinWait2);
          break;
        case TcpState::Closing:  // RFC 9293 §3.10.7.4 CLOSING: FIN acked -> TIME-WAIT
          set_state(f, TcpState::TimeWait);
          host_of(f).close(f.host, false);
          f.host = {};
          f.linger_at = now + kTimeWait;
          break;
        case TcpState::LastAck:  // RFC 9293 §3.10.7.4 LAST-ACK: FIN acked -> CLOSED
          free_flow(f, false);
          return;
        default:
          break;
      }
    }
  } else if (ack == f.snd_una && s.r.payload.empty() && !s.has(kTcpSyn) && !s.has(kTcpFin) &&
             f.snd_wnd == old_wnd && f.snd_una != f.snd_nxt) {
    // RFC 5681 §2: a duplicate ACK. The third triggers a fast retransmit (§3.2).
    if (++f.dupacks == 3) retransmit_first(f, now);
  }
  if (f.snd_wnd > 0 && old_wnd == 0) {
    f.persist_at.reset();  // the window opened: stop probing
  }
}

void Tcp::on_data(Flow& f, const Segment& s, Instant now) {
  Bytes payload = s.r.payload;
  uint32_t seq = s.seq();
  if (!payload.empty()) {
    if (f.guest_fin) {
      // RFC 9293 §3.10.7.4: data after the guest's FIN cannot be.
      f.ack_owed = true;
      return;
    }
    if (seq_gt(seq, f.rcv_nxt)) {
      // Out of order (something before it was lost or not taken): we keep
      // nothing, so drop it and repeat our ACK; the guest resends.
      f.ack_owed = true;
      return;
    }
    uint32_t skip = f.rcv_nxt - seq;
    if (skip >= payload.size() || !f.host.valid()) {
      // All old: a retransmission of what the host already has.
      f.ack_owed = true;
    } else {
      Bytes fresh = payload.subspan(skip);
      TcpHost& h = host_of(f);
      auto r = h.send(f.host, fresh);
      if (!r) {
        spdlog::debug("tcp {}: host send failed: {}", endpoint(f.key.guest_ip, f.key.guest_port),
                      r.error().message);
        return abort_flow(f, "host send failed");
      }
      size_t took = *r;
      f.rcv_nxt += uint32_t(took);
      f.to_host += took;
      stats_.data_to_host += took;
      f.ack_owed = true;
      refresh_space(f);
      // Only what the socket took is acknowledged; ask to hear when it has
      // room again if the window we can offer got small.
      if (took < fresh.size() || f.host_space < f.mss) request_write(f);
    }
  }
  // RFC 9293 §3.10.7.4 eighth check: a FIN counts once everything before it
  // has been taken.
  if (s.has(kTcpFin)) {
    uint32_t fin_at = seq + uint32_t(payload.size());
    if (!f.guest_fin && fin_at == f.rcv_nxt) on_guest_fin(f, now);
    else f.ack_owed = true;
  }
}

void Tcp::on_guest_fin(Flow& f, Instant now) {
  f.rcv_nxt++;
  f.guest_fin = true;
  f.ack_owed = true;
  if (f.host.valid()) host_of(f).shutdown_write(f.host);
  switch (f.state) {
    case TcpState::Established:  // RFC 9293 §3.10.7.4: ESTABLISHED + FIN -> CLOSE-WAIT
      set_state(f, TcpState::CloseWait);
      break;
    case TcpState::FinWait1:  // FIN-WAIT-1 + FIN, ours not yet acked -> CLOSING
      set_state(f, TcpState::Closing);
      break;
    case TcpState::FinWait2:  // FIN-WAIT-2 + FIN -> TIME-WAIT
      set_state(f, TcpState::TimeWait);
      if (f.host.valid()) host_of(f).close(f.host, false);
      f.host = {};
      f.linger_at = now + kTimeWait;
      break;
    default:
      break;
  }
}

// ---------------------------------------------------------------------------
// Toward the guest.

uint32_t Tcp::receive_window(const Flow& f) const {
  return seq_gt(f.rcv_adv, f.rcv_nxt) ? f.rcv_adv - f.rcv_nxt : 0;
}

bool Tcp::emit(Flow& f, uint16_t flags, uint32_t seq, Bytes payload, bool syn_options) {
  TcpRepr r;
  r.src_port = f.key.dst_port;
  r.dst_port = f.key.guest_port;
  r.seq = seq;
  r.flags = flags;
  r.payload = payload;
  if (flags & (kTcpAck | kTcpSyn)) {
    if (flags & kTcpAck) r.ack = f.rcv_nxt;
    // The window is the host socket's free space, but never shrinks
    // (RFC 9293 §3.8.6.2.2): the right edge only moves forward.
    uint64_t wnd = f.guest_fin ? 0 : f.host_space;
    uint32_t held = receive_window(f);
    uint8_t shift = syn_options ? 0 : f.rcv_ws;  // RFC 7323 §2.2: SYNs are unscaled
    // Scaling rounds down; a held edge rounds up so it does not creep back
    // (RFC 7323 §2.4).
    uint64_t field = wnd >= held ? wnd >> shift : (uint64_t(held) + (1u << shift) - 1) >> shift;
    field = std::min<uint64_t>(field, 0xffff);
    r.window = uint16_t(field);
    uint32_t adv_end = f.rcv_nxt + uint32_t(field << shift);
    if (seq_gt(adv_end, f.rcv_adv)) f.rcv_adv = adv_end;
  }
  if (syn_options) {
    r.mss = uint16_t(tx_.config().mtu - 40);  // RFC 9293 §3.7.1
    if (f.rcv_ws) r.window_scale = f.rcv_ws;  // RFC 7323 §2.2, only when offered
  }
  bool ok = tx_.send_ipv4(Ipv4Addr(f.key.dst_ip), Ipv4Addr(f.key.guest_ip), IpProtocol::Tcp, r.buffer_len(),
                          [&](std::span<uint8_t> l4, const PseudoHeader& ph) { r.emit(l4, ph); });
  if (ok && (flags & kTcpAck)) f.ack_owed = false;
  return ok;
}

bool Tcp::send_syn_ack(Flow& f, Instant now) {
  // RFC 9293 §3.10.7.2: <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>, with our MSS and,
  // when the guest offered it, our window scale.
  f.rcv_adv = f.rcv_nxt;  // the SYN-ACK states the first window
  bool ok = emit(f, kTcpSyn | kTcpAck, f.iss, {}, true);
  f.snd_nxt = f.snd_max = f.iss + 1;
  if (!f.timing && f.retries == 0) {
    f.timing = true;
    f.timed_seq = f.iss;
    f.timed_at = now;
  }
  if (!f.rto_at) f.rto_at = now + f.rto;
  return ok;
}

void Tcp::refresh_space(Flow& f) {
  if (f.host.valid()) f.host_space = host_of(f).send_space(f.host);
}

void Tcp::update_read_interest(Flow& f, bool want) {
  if (f.want_read == want || !f.host.valid()) return;
  f.want_read = want;
  host_of(f).set_interest(f.host, f.want_read, f.want_write);
}

void Tcp::request_write(Flow& f) {
  if (f.want_write || !f.host.valid()) return;
  f.want_write = true;
  host_of(f).set_interest(f.host, f.want_read, true);
}

void Tcp::block(Flow& f) {
  if (f.link_blocked) return;
  f.link_blocked = true;
  blocked_.push_back(f.id);
}

void Tcp::push(Flow& f, Instant now) {
  switch (f.state) {
    case TcpState::Established:
    case TcpState::CloseWait:
    case TcpState::FinWait1:  // these three: only resends (the FIN is out)
    case TcpState::Closing:
    case TcpState::LastAck:
      break;
    default:
      return;
  }
  if (!f.host.valid()) return;
  Ipv4Addr guest(f.key.guest_ip);
  TcpHost& h = host_of(f);
  TcpFlowId id = f.id;
  for (;;) {
    if (f.host_eof && f.snd_nxt == f.fin_seq) {
      // Everything before it is out: send our FIN (window or not).
      if (!tx_.can_send(guest)) return block(f);
      if (!emit(f, kTcpFin | kTcpAck, f.fin_seq, {})) return block(f);
      f.snd_nxt = f.fin_seq + 1;
      if (seq_gt(f.snd_nxt, f.snd_max)) f.snd_max = f.snd_nxt;
      if (!f.rto_at) f.rto_at = now + f.rto;
      // RFC 9293 §3.10.4 CLOSE: ESTABLISHED -> FIN-WAIT-1, CLOSE-WAIT -> LAST-ACK.
      if (f.state == TcpState::Established) set_state(f, TcpState::FinWait1);
      else if (f.state == TcpState::CloseWait) set_state(f, TcpState::LastAck);
      update_read_interest(f, false);
      return;
    }
    if (f.host_eof && seq_gt(f.snd_nxt, f.fin_seq)) return update_read_interest(f, false);

    uint32_t wnd_end = f.snd_una + f.snd_wnd;
    uint32_t usable = seq_gt(wnd_end, f.snd_nxt) ? wnd_end - f.snd_nxt : 0;
    size_t offset = f.snd_nxt - f.data_una;
    if (offset >= TcpHost::kMaxPeekOffset) usable = 0;
    else usable = uint32_t(std::min<size_t>(usable, TcpHost::kMaxPeekOffset - offset));
    if (f.host_eof) usable = std::min(usable, f.fin_seq - f.snd_nxt);
    if (usable == 0) return update_read_interest(f, false);  // window full: wait for an ACK
    if (!tx_.can_send(guest)) {
      update_read_interest(f, false);
      return block(f);
    }

    size_t want = std::min<size_t>(usable, scratch_.size());
    auto r = h.peek(f.host, offset, std::span(scratch_.data(), want));
    if (!find(id)) return;
    if (!r) return abort_flow(f, "host read failed");
    size_t n = r->n;
    size_t sent = 0;
    while (sent < n) {
      size_t len = std::min<size_t>(n - sent, f.mss);
      bool last = sent + len == n;
      if (!tx_.can_send(guest)) break;
      if (!emit(f, kTcpAck | (last ? kTcpPsh : 0), f.snd_nxt, Bytes(scratch_.data() + sent, len))) break;
      if (!f.timing && seq_ge(f.snd_nxt, f.snd_max)) {  // Karn: time new data only
        f.timing = true;
        f.timed_seq = f.snd_nxt;
        f.timed_at = now;
      }
      f.snd_nxt += uint32_t(len);
      if (seq_gt(f.snd_nxt, f.snd_max)) f.snd_max = f.snd_nxt;
      if (!f.rto_at) f.rto_at = now + f.rto;  // RFC 6298 §5.1
      sent += len;
    }
    if (sent < n) {
      update_read_interest(f, false);
      return block(f);
    }
    if (r->eof) {
      if (!f.host_eof) {
        // The host closed its side after these bytes: our FIN goes next.
        f.host_eof = true;
        f.fin_seq = f.snd_nxt;
      } else if (n == 0 && f.snd_nxt != f.fin_seq) {
        return abort_flow(f, "host stream ended early");  // cannot be; never loop on it
      }
      continue;
    }
    if (n < want) return update_read_interest(f, true);  // drained: wait for more
  }
}

void Tcp::retransmit_first(Flow& f, Instant now) {
  // RFC 5681 §3.2: resend the first unacknowledged segment; RFC 6298 §3:
  // never time a retransmission (Karn).
  stats_.fast_retransmits++;
  f.timing = false;
  if (!f.host.valid()) return;
  if (f.host_eof && f.snd_una == f.fin_seq) {
    emit(f, kTcpFin | kTcpAck, f.fin_seq, {});
    return;
  }
  uint32_t outstanding = f.snd_nxt - f.snd_una;
  if (f.host_eof && seq_gt(f.snd_nxt, f.fin_seq)) outstanding = f.fin_seq - f.snd_una;
  size_t want = std::min<size_t>({outstanding, f.mss, scratch_.size()});
  if (want == 0) return;
  TcpFlowId id = f.id;
  auto r = host_of(f).peek(f.host, f.snd_una - f.data_una, std::span(scratch_.data(), want));
  if (!find(id)) return;
  if (!r) return abort_flow(f, "host read failed");
  if (r->n) emit(f, kTcpAck | kTcpPsh, f.snd_una, Bytes(scratch_.data(), r->n));
  f.rto_at = now + f.rto;
}

// ---------------------------------------------------------------------------
// Host events.

void Tcp::on_host_connected(uint64_t cookie, int err, Instant now) {
  depth_++;
  last_now_ = now;
  Flow* f = find(cookie);
  if (f && f->state == TcpState::Connecting) {
    if (err) {
      spdlog::debug("tcp {} -> {}:{}: connect failed: {}", endpoint(f->key.guest_ip, f->key.guest_port),
                    f->host_ip.to_string(), f->key.dst_port, std::strerror(err));
      connect_failed(*f, err);
    } else {
      // RFC 9293 §3.10.7.2 LISTEN + SYN -> SYN-RECEIVED, sending SYN,ACK;
      // deferred until the host accepted the connection.
      f->linger_at.reset();
      f->syn.clear();
      f->syn.shrink_to_fit();
      refresh_space(*f);
      set_state(*f, TcpState::SynReceived);
      send_syn_ack(*f, now);
      stats_.opened++;
      rearm(*f, now);
    }
  }
  after_entry(now);
}

void Tcp::on_host_readable(uint64_t cookie, Instant now) {
  depth_++;
  last_now_ = now;
  if (Flow* f = find(cookie)) {
    push(*f, now);
    if ((f = find(cookie))) rearm(*f, now);
  }
  after_entry(now);
}

void Tcp::on_host_writable(uint64_t cookie, Instant now) {
  depth_++;
  last_now_ = now;
  if (Flow* f = find(cookie)) {
    f->want_write = false;  // one-shot
    uint32_t held = receive_window(*f);
    refresh_space(*f);
    // RFC 9293 §3.8.6.2.2 (receiver SWS avoidance): announce the window once
    // it grew by at least an MSS.
    if (!f->guest_fin && f->host_space >= size_t(held) + f->mss) send_ack(*f);
    if ((f = find(cookie))) rearm(*f, now);
  }
  after_entry(now);
}

void Tcp::on_host_error(uint64_t cookie, int err, Instant now) {
  depth_++;
  last_now_ = now;
  if (Flow* f = find(cookie)) {
    spdlog::debug("tcp {}: host connection failed: {}", endpoint(f->key.guest_ip, f->key.guest_port),
                  std::strerror(err));
    if (f->state == TcpState::Connecting) {
      connect_failed(*f, err);
    } else if (f->state == TcpState::SynSent) {
      // The forward's client went away before the guest answered.
      send_rst(Ipv4Addr(f->key.dst_ip), Ipv4Addr(f->key.guest_ip), f->key.dst_port, f->key.guest_port, f->snd_nxt,
               std::nullopt);
      free_flow(*f, false);
    }
    else if (f->state == TcpState::TimeWait) free_flow(*f, false);
    else if (f->state != TcpState::SynSent) abort_flow(*f, "host connection reset");  // RFC 9293 §3.10.7.4: reset -> RST to the guest
  }
  after_entry(now);
}

// ---------------------------------------------------------------------------
// Timers.

void Tcp::rtt_sample(Flow& f, Duration r) {
  // RFC 6298 §2.2/§2.3 (alpha 1/8, beta 1/4, K 4), clamped by §2.4/§2.5.
  if (!f.have_rtt) {
    f.srtt = r;
    f.rttvar = r / 2;
    f.have_rtt = true;
  } else {
    Duration delta = f.srtt > r ? f.srtt - r : r - f.srtt;
    f.rttvar = (3 * f.rttvar + delta) / 4;
    f.srtt = (7 * f.srtt + r) / 8;
  }
  f.rto = std::clamp(f.srtt + std::max<Duration>(4 * f.rttvar, std::chrono::milliseconds(1)), kMinRto, kMaxRto);
}

void Tcp::rearm(Flow& f, Instant now) {
  // Persist (RFC 9293 §3.8.6.1): probe a zero window while nothing is in
  // flight and we still have a send direction.
  bool sending = f.state == TcpState::Established || f.state == TcpState::CloseWait;
  if (sending && f.snd_wnd == 0 && f.snd_una == f.snd_nxt && !(f.host_eof && seq_gt(f.snd_nxt, f.fin_seq))) {
    if (!f.persist_at) {
      f.persist_backoff = std::max(f.rto, kMinRto);
      f.persist_at = now + f.persist_backoff;
    }
  } else {
    f.persist_at.reset();
  }
  std::optional<Instant> at;
  for (const auto& t : {f.rto_at, f.persist_at, f.linger_at})
    if (t && (!at || *t < *at)) at = t;
  if (f.armed && (!at || *at != f.deadline)) {
    timers_.erase({f.deadline, f.id.index});
    f.armed = false;
  }
  if (at && !f.armed) {
    f.deadline = *at;
    f.armed = true;
    timers_.insert({f.deadline, f.id.index});
  }
}

void Tcp::on_timer(Flow& f, Instant now) {
  TcpFlowId id = f.id;
  if (f.linger_at && now >= *f.linger_at) {
    f.linger_at.reset();
    if (f.state == TcpState::Connecting) {
      stats_.timeouts++;
      return connect_failed(f, ETIMEDOUT);
    }
    if (f.state == TcpState::TimeWait) return free_flow(f, false);  // linger over
  }
  if (f.rto_at && now >= *f.rto_at) {
    f.rto_at.reset();
    f.timing = false;  // Karn: nothing retransmitted is timed
    if (f.state == TcpState::SynReceived || f.state == TcpState::SynSent) {
      if (++f.retries > kMaxSynAckRetries) {
        stats_.timeouts++;
        if (f.state == TcpState::SynSent) stats_.forwarded_refused++;
        return free_flow(f, true);
      }
      f.rto = std::min(f.rto * 2, kMaxRto);  // RFC 6298 §5.5
      stats_.retransmits++;
      if (f.state == TcpState::SynSent) send_syn(f, now);
      else send_syn_ack(f, now);
    } else if (f.snd_una != f.snd_nxt) {
      if (++f.retries > kMaxRetries) {
        stats_.timeouts++;
        return abort_flow(f, "retransmission timeout");
      }
      f.rto = std::min(f.rto * 2, kMaxRto);  // RFC 6298 §5.5
      stats_.retransmits++;
      f.dupacks = 0;
      f.snd_nxt = f.snd_una;  // RFC 6298 §5.4: resend from the first unacknowledged byte
      push(f, now);
      if (!find(id)) return;
      if (f.snd_una != f.snd_nxt && !f.rto_at) f.rto_at = now + f.rto;
    }
  }
  if (f.persist_at && now >= *f.persist_at) {
    // RFC 9293 §3.8.6.1, RFC 1122 §4.2.2.17: probe the zero window with a
    // segment just below it, which the guest must answer with an ACK.
    stats_.window_probes++;
    emit(f, kTcpAck, f.snd_una - 1, {});
    f.persist_backoff = std::min(f.persist_backoff * 2, kMaxRto);
    f.persist_at = now + f.persist_backoff;
  }
  rearm(f, now);
}

void Tcp::poll(Instant now) {
  depth_++;
  last_now_ = now;
  // Flows that stopped because the guest link was full try again.
  std::vector<TcpFlowId> blocked;
  blocked.swap(blocked_);
  for (TcpFlowId id : blocked) {
    Flow* f = find(id);
    if (!f) continue;
    f->link_blocked = false;
    push(*f, now);
    if ((f = find(id)) && f->ack_owed) send_ack(*f);
    if ((f = find(id))) {
      if (f->ack_owed) block(*f);
      rearm(*f, now);
    }
  }
  while (!timers_.empty() && timers_.begin()->first <= now) {
    auto [at, index] = *timers_.begin();
    timers_.erase(timers_.begin());
    Flow& f = *slots_[index].flow;
    f.armed = false;
    on_timer(f, now);
  }
  after_entry(now);
}

std::optional<Instant> Tcp::poll_at() const {
  std::optional<Instant> at;
  if (!timers_.empty()) at = timers_.begin()->first;
  if (!blocked_.empty() && (!at || last_now_ + kLinkRetry < *at)) at = last_now_ + kLinkRetry;
  if (services_->pending() && (!at || last_now_ < *at)) at = last_now_;
  return at;
}

void Tcp::describe_flows(std::string& out, Instant now) const {
  for (const auto& s : slots_) {
    if (!s.flow) continue;
    const Flow& f = *s.flow;
    auto age = std::chrono::duration_cast<std::chrono::seconds>(now - f.created).count();
    out += fmt::format("tcp {} {}:{} {} tx={} rx={} age={}", endpoint(f.key.guest_ip, f.key.guest_port),
                       f.host_ip.to_string(), f.key.dst_port, tcp_state_name(f.state), f.to_host, f.to_guest,
                       age);
    if (f.tag) out += fmt::format(" forward={}", f.tag);
    out += '\n';
  }
}

// ---------------------------------------------------------------------------
// Service events.

void Tcp::drain_services(Instant now) {
  if (draining_) return;
  draining_ = true;
  services_->drain(now, depth_ > 0 && !in_wake_);
  draining_ = false;
}

void Tcp::after_entry(Instant now) {
  if (depth_ == 1) drain_services(now);
  depth_--;
}

void Tcp::service_wake() {
  if (depth_ > 0) return;  // delivered when the current entry point ends
  Instant now = clock_.now();
  depth_++;
  in_wake_ = true;
  last_now_ = now;
  drain_services(now);
  in_wake_ = false;
  depth_--;
  if (after_service_event_) after_service_event_();
}

}  // namespace berth::net
