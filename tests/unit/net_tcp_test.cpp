// Component tests of the TCP translator (net/tcp.h): a fake TcpHost, a fake
// GuestTx that parses every segment sent to the guest with net/wire, and a
// fake clock. Then UvTcpHost against real sockets on 127.0.0.1, alone and
// under the translator, driven by bounded loop iterations.
#include <unistd.h>
#include <uv.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "net/host/tcp_host.h"
#include "net/host/uv_tcp_host.h"
#include "net/tcp.h"
#include "net/wire/ipv4.h"
#include "net/wire/tcp.h"

using namespace berth;
using namespace berth::net;
using namespace berth::net::wire;
using namespace std::chrono_literals;

namespace {

// A segment the translator sent to the guest, parsed (checksum verified).
struct Sent {
  Ipv4Addr src, dst;
  TcpRepr r;  // payload points into `data`
  std::vector<uint8_t> data;
  std::string text() const { return std::string(data.begin(), data.end()); }
  bool is(uint16_t flags) const { return (r.flags & 0x3f) == flags; }
};

struct IcmpSent {
  std::vector<uint8_t> offending;
  Icmpv4Type type;
  uint8_t code;
};

class FakeGuestTx final : public GuestTx {
 public:
  bool send_ipv4(Ipv4Addr src, Ipv4Addr dst, IpProtocol proto, size_t l4_len, Fill fill) override {
    if (!can_send(dst)) return false;
    REQUIRE(proto == IpProtocol::Tcp);
    std::vector<uint8_t> buf(l4_len, 0xa5);  // bytes never written show (STYLE.md §12)
    auto ph = PseudoHeader::v4(src, dst);
    fill(buf, ph);
    auto pkt = TcpPacket::check(buf);
    REQUIRE(pkt.ok());
    auto r = TcpRepr::parse(*pkt, ph);
    REQUIRE(r.ok());
    Sent s{src, dst, *r, std::vector<uint8_t>(r->payload.begin(), r->payload.end())};
    s.r.payload = {};
    segs.push_back(std::move(s));
    if (room) (*room)--;
    return true;
  }
  void send_icmp_error(Bytes offending, Icmpv4Type type, uint8_t code, uint16_t) override {
    icmps.push_back({std::vector<uint8_t>(offending.begin(), offending.end()), type, code});
  }
  bool can_send(Ipv4Addr) const override { return !room || *room > 0; }
  const NetConfig& config() const override { return cfg; }
  void count_drop(Drop d) override { drops[size_t(d)]++; }

  std::vector<Sent> take() {
    auto out = std::move(segs);
    segs.clear();
    return out;
  }
  uint64_t dropped(Drop d) const { return drops[size_t(d)]; }

  NetConfig cfg;
  std::vector<Sent> segs;
  std::vector<IcmpSent> icmps;
  std::array<uint64_t, size_t(Drop::kCount)> drops{};
  std::optional<size_t> room;  // frames the guest link takes before it is full; nullopt: unlimited
};

// A host whose sockets are plain buffers the test fills and inspects.
class FakeTcpHost final : public TcpHost {
 public:
  struct Conn {
    Ipv4Addr addr;
    uint16_t port = 0;
    TcpHostSink* sink = nullptr;
    uint64_t cookie = 0;
    bool open = true, reset = false, shut_wr = false;
    std::string received;   // what the guest sent that the socket took
    size_t space = 65536;   // free send buffer
    std::string rx;         // from the host, not yet consumed
    size_t consumed = 0;
    bool eof = false;
    int error = 0;
    bool want_read = false, want_write = false;
    bool adopted = false;
  };

  Result<HostConnId> connect(Ipv4Addr addr, uint16_t port, TcpHostSink& sink, uint64_t cookie) override {
    if (connect_error) return make_error(*connect_error, "fake connect error");
    Conn c;
    c.addr = addr;
    c.port = port;
    c.sink = &sink;
    c.cookie = cookie;
    c.space = default_space;
    conns.push_back(c);
    return HostConnId{uint32_t(conns.size() - 1), 1};
  }
  Result<HostConnId> adopt(int fd, TcpHostSink& sink, uint64_t cookie) override {
    if (fd >= 0) ::close(fd);
    if (connect_error) return make_error(*connect_error, "fake adopt error");
    Conn c;
    c.sink = &sink;
    c.cookie = cookie;
    c.space = default_space;
    c.adopted = true;
    conns.push_back(c);
    return HostConnId{uint32_t(conns.size() - 1), 1};
  }
  Result<size_t> send(HostConnId id, Bytes data) override {
    Conn& c = at(id);
    if (c.error) return make_error(c.error, "fake send error");
    size_t n = std::min(data.size(), c.space);
    c.received.append(reinterpret_cast<const char*>(data.data()), n);
    c.space -= n;
    return n;
  }
  Result<PeekResult> peek(HostConnId id, size_t offset, std::span<uint8_t> out) override {
    Conn& c = at(id);
    if (c.error) return make_error(c.error, "fake peek error");
    PeekResult r;
    if (offset < c.rx.size()) {
      r.n = std::min(out.size(), c.rx.size() - offset);
      std::memcpy(out.data(), c.rx.data() + offset, r.n);
    }
    r.eof = c.eof && offset + r.n >= c.rx.size();
    peeks++;
    return r;
  }
  void consume(HostConnId id, size_t n) override {
    Conn& c = at(id);
    REQUIRE(n <= c.rx.size());
    c.rx.erase(0, n);
    c.consumed += n;
  }
  size_t send_space(HostConnId id) override { return at(id).space; }
  void shutdown_write(HostConnId id) override { at(id).shut_wr = true; }
  void close(HostConnId id, bool reset) override {
    Conn& c = at(id);
    c.open = false;
    c.reset = reset;
  }
  void set_interest(HostConnId id, bool read, bool write) override {
    Conn& c = at(id);
    c.want_read = read;
    c.want_write = write;
  }

  Conn& at(HostConnId id) {
    REQUIRE(id.index < conns.size());
    REQUIRE(conns[id.index].open);
    return conns[id.index];
  }
  Conn& last() {
    REQUIRE(!conns.empty());
    return conns.back();
  }

  // Host side actions, delivered as a real host would (from the loop).
  void connected(Conn& c, int err, Instant now) { c.sink->on_host_connected(c.cookie, err, now); }
  void data(Conn& c, std::string_view bytes, Instant now) {
    c.rx += bytes;
    if (c.want_read) c.sink->on_host_readable(c.cookie, now);
  }
  void end(Conn& c, Instant now) {
    c.eof = true;
    if (c.want_read) c.sink->on_host_readable(c.cookie, now);
  }
  void drain(Conn& c, size_t bytes, Instant now) {
    c.space += bytes;
    if (c.want_write) {
      c.want_write = false;
      c.sink->on_host_writable(c.cookie, now);
    }
  }

  std::vector<Conn> conns;
  std::optional<int> connect_error;
  size_t default_space = 65536;
  size_t peeks = 0;
};

GuestPacket make_packet(Ipv4Addr src, Ipv4Addr dst, const TcpRepr& r, std::vector<uint8_t>& storage) {
  size_t l4 = r.buffer_len();
  Ipv4Repr ip;
  ip.src = src;
  ip.dst = dst;
  ip.protocol = IpProtocol::Tcp;
  ip.payload_len = uint16_t(l4);
  storage.assign(ip.header_len() + l4, 0);
  ip.emit(storage);
  r.emit(std::span(storage).subspan(ip.header_len()), PseudoHeader::v4(src, dst));
  GuestPacket p;
  p.ip = ip;
  p.payload = Bytes(storage).subspan(ip.header_len());
  p.packet = storage;
  return p;
}

// The translator between a fake guest and a fake host. The guest side is
// one connection from guest:40000 to dst:dport, with its own sequence state.
struct Harness {
  FakeMonoClock clock;
  FakeGuestTx tx;
  FakeTcpHost host;
  std::unique_ptr<Tcp> tcp;

  Ipv4Addr guest{192, 168, 65, 3};
  Ipv4Addr dst{192, 168, 65, 2};  // the host alias
  uint16_t gport = 40000, dport = 80;
  uint32_t giss = 1000;  // the guest's ISN
  uint32_t gnxt = 0;     // the guest's next sequence number
  uint32_t peer_iss = 0; // the translator's ISN, from its SYN-ACK
  uint32_t gack = 0;     // what the guest acknowledges (next byte it expects)

  Harness() { tcp = std::make_unique<Tcp>(tx, host, clock, 0x5eed); }

  Instant now() const { return clock.t; }
  void advance(Instant d) {
    clock.advance(d);
    tcp->poll(clock.t);
  }
  // Advance to the translator's next deadline and poll.
  void run_timer() {
    auto at = tcp->poll_at();
    REQUIRE(at);
    if (*at > clock.t) clock.t = *at;
    tcp->poll(clock.t);
  }

  void input(const TcpRepr& r, Ipv4Addr from, Ipv4Addr to) {
    std::vector<uint8_t> storage;
    tcp->input(make_packet(from, to, r, storage), clock.t);
  }
  TcpRepr seg(uint16_t flags, uint32_t seq, uint32_t ack, std::string_view data = {}, uint16_t window = 65535) {
    TcpRepr r;
    r.src_port = gport;
    r.dst_port = dport;
    r.seq = seq;
    r.ack = ack;
    r.flags = flags;
    r.window = window;
    r.payload = as_bytes(data);
    return r;
  }
  void send(uint16_t flags, uint32_t seq, uint32_t ack, std::string_view data = {}, uint16_t window = 65535) {
    input(seg(flags, seq, ack, data, window), guest, dst);
  }
  // Guest data at its next sequence number, acknowledging gack.
  void send_data(std::string_view data, uint16_t window = 65535) {
    send(kTcpAck | kTcpPsh, gnxt, gack, data, window);
  }
  void ack(uint32_t ack_no, uint16_t window = 65535) { send(kTcpAck, gnxt, ack_no, {}, window); }
  void ack_all(uint16_t window = 65535) { ack(gack, window); }

  void syn(std::optional<uint16_t> mss = 1460, std::optional<uint8_t> ws = 7, uint16_t window = 65535) {
    TcpRepr r = seg(kTcpSyn, giss, 0, {}, window);
    r.mss = mss;
    r.window_scale = ws;
    input(r, guest, dst);
    gnxt = giss + 1;
  }
  // SYN, host connect, SYN-ACK, ACK: ESTABLISHED. The guest's window is
  // `window` (unscaled field, ws 0 unless given).
  Sent establish(std::optional<uint16_t> mss = 1460, std::optional<uint8_t> ws = {}, uint16_t window = 65535) {
    syn(mss, ws, window);
    REQUIRE(tx.segs.empty());
    host.connected(host.last(), 0, now());
    auto out = tx.take();
    REQUIRE(out.size() == 1);
    REQUIRE(out[0].is(kTcpSyn | kTcpAck));
    peer_iss = out[0].r.seq;
    gack = peer_iss + 1;
    ack(gack, window);
    REQUIRE(state() == TcpState::Established);
    return out[0];
  }
  std::optional<TcpState> state() const { return tcp->state_of(guest, gport, dst, dport); }
  // The guest takes in-order data segments it received.
  std::string receive(const std::vector<Sent>& segs) {
    std::string got;
    for (const auto& s : segs) {
      if (s.data.empty()) continue;
      REQUIRE(s.r.seq == gack);
      got += s.text();
      gack += uint32_t(s.data.size());
    }
    return got;
  }
};

// An in-process service that echoes, then closes when the guest does.
class EchoService final : public TcpService {
 public:
  explicit EchoService(TcpServiceStream& s, std::string* log) : s_(s), log_(log) {}
  size_t on_data(Bytes data) override {
    *log_ += as_chars(data);
    return s_.write(data);
  }
  void on_guest_fin() override {
    *log_ += "<fin>";
    s_.close();
  }

 private:
  TcpServiceStream& s_;
  std::string* log_;
};

}  // namespace

// ---------------------------------------------------------------------------
// Handshake.

TEST_CASE("guest SYN starts a host connect and the SYN-ACK waits for it", "[tcp]") {
  Harness h;
  h.syn(1460, 7);
  REQUIRE(h.state() == TcpState::Connecting);
  REQUIRE(h.host.conns.size() == 1);
  CHECK(h.host.last().addr == Ipv4Addr(127, 0, 0, 1));  // the host alias is the host's loopback
  CHECK(h.host.last().port == 80);
  CHECK(h.tx.segs.empty());

  // A retransmitted SYN while connecting is absorbed: no answer, no new connect.
  h.syn(1460, 7);
  CHECK(h.tx.segs.empty());
  CHECK(h.host.conns.size() == 1);

  h.host.connected(h.host.last(), 0, h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  const Sent& sa = out[0];
  CHECK(sa.is(kTcpSyn | kTcpAck));
  CHECK(sa.src == h.dst);  // from the address the guest used
  CHECK(sa.dst == h.guest);
  CHECK(sa.r.src_port == 80);
  CHECK(sa.r.dst_port == 40000);
  CHECK(sa.r.ack == h.giss + 1);
  CHECK(sa.r.mss == uint16_t(1460));           // MTU 1500 - 40
  CHECK(sa.r.window_scale == uint8_t(Tcp::kWindowScale));
  CHECK(sa.r.window == 65535);                  // SYN windows are unscaled; 64 KiB free
  CHECK_FALSE(sa.r.sack_permitted);
  REQUIRE(h.state() == TcpState::SynReceived);

  h.gack = sa.r.seq + 1;
  h.gnxt = h.giss + 1;
  h.ack_all();
  CHECK(h.state() == TcpState::Established);
  CHECK(h.tx.segs.empty());
  CHECK(h.tcp->stats().opened == 1);
}

TEST_CASE("SYN without window scale gets a SYN-ACK without it, and MSS follows the MTU", "[tcp]") {
  Harness h;
  REQUIRE(h.tx.cfg.set_mtu(9000).ok());
  h.syn(8960, std::nullopt);
  h.host.connected(h.host.last(), 0, h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.mss == uint16_t(8960));
  CHECK_FALSE(out[0].r.window_scale.has_value());
}

TEST_CASE("retransmitted SYN in SYN_RECEIVED resends the SYN-ACK", "[tcp]") {
  Harness h;
  h.syn();
  h.host.connected(h.host.last(), 0, h.now());
  auto first = h.tx.take();
  REQUIRE(first.size() == 1);
  h.syn();
  auto again = h.tx.take();
  REQUIRE(again.size() == 1);
  CHECK(again[0].is(kTcpSyn | kTcpAck));
  CHECK(again[0].r.seq == first[0].r.seq);
  CHECK(h.state() == TcpState::SynReceived);
}

TEST_CASE("unanswered SYN-ACK is retransmitted with backoff, then the flow is dropped", "[tcp]") {
  Harness h;
  h.syn();
  h.host.connected(h.host.last(), 0, h.now());
  REQUIRE(h.tx.take().size() == 1);
  Instant start = h.now();
  h.run_timer();
  auto r1 = h.tx.take();
  REQUIRE(r1.size() == 1);
  CHECK(r1[0].is(kTcpSyn | kTcpAck));
  CHECK(h.now() - start == Tcp::kInitialRto);
  Instant t1 = h.now();
  h.run_timer();
  REQUIRE(h.tx.take().size() == 1);
  CHECK(h.now() - t1 == 2 * Tcp::kInitialRto);  // RFC 6298 §5.5 backoff
  for (int i = 2; i < Tcp::kMaxSynAckRetries; i++) {
    h.run_timer();
    REQUIRE(h.tx.take().size() == 1);
  }
  h.run_timer();
  CHECK(h.tx.take().empty());
  CHECK_FALSE(h.state());
  CHECK_FALSE(h.host.last().open);
  CHECK(h.tcp->stats().timeouts == 1);
}

TEST_CASE("host refusal in CONNECTING sends a RST to the guest at once", "[tcp]") {
  Harness h;
  h.syn();
  h.host.connected(h.host.last(), ECONNREFUSED, h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst | kTcpAck));
  CHECK(out[0].r.seq == 0);
  CHECK(out[0].r.ack == h.giss + 1);  // RFC 9293 §3.10.7.1: SEG.SEQ + SEG.LEN
  CHECK_FALSE(h.state());
  CHECK(h.tcp->flow_count() == 0);
  CHECK(h.tcp->stats().refused == 1);
}

TEST_CASE("connect refused immediately by the host sends a RST", "[tcp]") {
  Harness h;
  h.host.connect_error = ECONNREFUSED;
  h.syn();
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst | kTcpAck));
  CHECK(h.tcp->flow_count() == 0);
}

TEST_CASE("unreachable host in CONNECTING sends ICMP host unreachable quoting the SYN", "[tcp]") {
  Harness h;
  h.dst = Ipv4Addr(203, 0, 113, 9);  // outside the subnet: connected to as it is
  h.syn();
  REQUIRE(h.host.last().addr == Ipv4Addr(203, 0, 113, 9));
  h.host.connected(h.host.last(), EHOSTUNREACH, h.now());
  CHECK(h.tx.segs.empty());
  REQUIRE(h.tx.icmps.size() == 1);
  CHECK(h.tx.icmps[0].type == Icmpv4Type::DstUnreachable);
  CHECK(h.tx.icmps[0].code == uint8_t(Icmpv4Unreachable::Host));
  auto quoted = Ipv4Packet::check(h.tx.icmps[0].offending);
  REQUIRE(quoted.ok());
  CHECK(quoted->src() == h.guest);
  CHECK(quoted->dst() == Ipv4Addr(203, 0, 113, 9));
  CHECK(h.tcp->flow_count() == 0);
}

TEST_CASE("connect timeout in CONNECTING sends ICMP host unreachable", "[tcp]") {
  Harness h;
  h.syn();
  h.advance(Tcp::kConnectTimeout - 1ms);
  CHECK(h.state() == TcpState::Connecting);
  h.advance(1ms);
  CHECK_FALSE(h.state());
  REQUIRE(h.tx.icmps.size() == 1);
  CHECK(h.tx.icmps[0].code == uint8_t(Icmpv4Unreachable::Host));
  CHECK_FALSE(h.host.last().open);
}

TEST_CASE("SYN to an address with no host target, or a gateway port without a service, gets a RST", "[tcp]") {
  Harness h;
  h.dst = Ipv4Addr(192, 168, 65, 77);  // another address in the subnet
  h.syn();
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst | kTcpAck));
  CHECK(h.host.conns.empty());

  h.dst = Ipv4Addr(192, 168, 65, 1);  // the gateway, no service on port 80
  h.syn();
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst | kTcpAck));
  CHECK(h.host.conns.empty());
  CHECK(h.tcp->flow_count() == 0);
}

TEST_CASE("segment for an unknown connection gets a RST from its ACK number", "[tcp]") {
  Harness h;
  h.send(kTcpAck, 5000, 777777);
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst));
  CHECK(out[0].r.seq == 777777);  // RFC 9293 §3.10.7.1
  h.send(kTcpRst, 5000, 0);      // a RST for nothing is dropped
  CHECK(h.tx.segs.empty());
}

// ---------------------------------------------------------------------------
// Data.

TEST_CASE("guest data in ESTABLISHED is written to the host socket and acknowledged", "[tcp]") {
  Harness h;
  h.establish();
  h.send_data("hello, host");
  CHECK(h.host.last().received == "hello, host");
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpAck));
  CHECK(out[0].r.ack == h.giss + 1 + 11);
  CHECK(out[0].r.seq == h.peer_iss + 1);
  h.gnxt += 11;

  // A retransmission of the same bytes is acknowledged, not written again.
  h.send(kTcpAck, h.giss + 1, h.gack, "hello, host");
  CHECK(h.host.last().received == "hello, host");
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt);

  // A segment beyond a gap is not kept: the ACK repeats what we have.
  h.send(kTcpAck, h.gnxt + 5, h.gack, "later");
  CHECK(h.host.last().received == "hello, host");
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt);
  CHECK(h.tcp->stats().data_to_host == 11);
}

TEST_CASE("the ACK covers only what the host socket took", "[tcp]") {
  Harness h;
  h.host.default_space = 600;
  h.establish();
  std::string data(1000, 'x');
  h.send_data(data);
  CHECK(h.host.last().received.size() == 600);
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt + 600);
  CHECK(out[0].r.window == 0);            // the socket is full
  CHECK(h.host.last().want_write);        // and we want to hear when it drains

  // The host reader catches up: the guest is told the window opened.
  h.host.drain(h.host.last(), 4000, h.now());
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpAck));
  CHECK(out[0].r.window == 4000);
  // The guest resends the rest.
  h.gnxt += 600;
  h.send_data(std::string(400, 'x'));
  CHECK(h.host.last().received.size() == 1000);
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt + 400);
}

TEST_CASE("the advertised window follows the host send buffer, scaled, and never shrinks", "[tcp]") {
  Harness h;
  h.host.default_space = 1 << 20;  // 1 MiB free
  Sent sa = h.establish(1460, 7);
  CHECK(sa.r.window == 65535);     // SYN-ACK: unscaled, clamped
  h.send_data("abc");
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.window == ((1u << 20) - 3) >> Tcp::kWindowScale);
  uint32_t right_before = out[0].r.ack + (uint32_t(out[0].r.window) << Tcp::kWindowScale);
  h.gnxt += 3;

  // The host socket fills up: the window's right edge stays put (rounded up
  // to the scale, never down).
  h.host.last().space = 1000;
  h.send_data("defg");
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt + 4);
  uint32_t right_after = out[0].r.ack + (uint32_t(out[0].r.window) << Tcp::kWindowScale);
  CHECK(right_after >= right_before);
  CHECK(right_after - right_before < (1u << Tcp::kWindowScale));
}

TEST_CASE("host data in ESTABLISHED goes to the guest in MSS-sized segments within its window", "[tcp]") {
  Harness h;
  h.establish(1000, std::nullopt, 3000);  // guest MSS 1000, window 3000
  auto& c = h.host.last();
  CHECK(c.want_read);  // waiting for host data
  std::string data;
  for (int i = 0; i < 5000; i++) data += char('a' + i % 26);
  h.host.data(c, data, h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 3);
  for (const auto& s : out) {
    CHECK(s.data.size() == 1000);
    CHECK(s.r.ack == h.gnxt);
  }
  CHECK(out[2].r.has(kTcpPsh));
  CHECK(h.receive(out) == data.substr(0, 3000));
  CHECK_FALSE(c.want_read);  // the window is full: stop reading
  CHECK(c.consumed == 0);    // nothing acknowledged yet: all still in the socket

  h.ack_all(3000);
  CHECK(c.consumed == 3000);
  out = h.tx.take();
  REQUIRE(out.size() == 2);
  CHECK(h.receive(out) == data.substr(3000));
  h.ack_all(3000);
  CHECK(c.consumed == 5000);
  CHECK(c.want_read);
  CHECK(h.tx.segs.empty());
  CHECK(h.tcp->stats().data_to_guest == 5000);
}

TEST_CASE("window scaling applies to the guest's window after the SYN", "[tcp]") {
  Harness h;
  h.syn(1460, 2, 1000);  // guest shift 2
  h.host.connected(h.host.last(), 0, h.now());
  auto sa = h.tx.take();
  REQUIRE(sa.size() == 1);
  h.peer_iss = sa[0].r.seq;
  h.gack = h.peer_iss + 1;
  h.ack(h.gack, 1000);  // 1000 << 2 = 4000 bytes
  h.host.data(h.host.last(), std::string(10000, 'z'), h.now());
  auto out = h.tx.take();
  size_t total = 0;
  for (auto& s : out) total += s.data.size();
  CHECK(total == 4000);
}

TEST_CASE("guest zero window stops sending, and a window probe follows", "[tcp]") {
  Harness h;
  h.establish(1460, std::nullopt, 0);
  auto& c = h.host.last();
  h.host.data(c, "waiting", h.now());
  CHECK(h.tx.segs.empty());
  CHECK_FALSE(c.want_read);

  // Persist timer (RFC 9293 §3.8.6.1): a probe just below the window.
  Instant t0 = h.now();
  h.run_timer();
  Instant first = h.now() - t0;
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpAck));
  CHECK(out[0].r.seq == h.gack - 1);
  CHECK(out[0].data.empty());
  CHECK(h.tcp->stats().window_probes == 1);

  // Still zero: probes back off, and never give up.
  Instant t = h.now();
  h.ack_all(0);
  h.run_timer();
  REQUIRE(h.tx.take().size() == 1);
  CHECK(h.now() - t == 2 * first);
  for (int i = 0; i < 20; i++) {
    h.ack_all(0);
    h.run_timer();
    REQUIRE(h.tx.take().size() == 1);
  }
  CHECK(h.state() == TcpState::Established);

  // The guest's answer opens the window: the data flows.
  h.ack_all(65535);
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(h.receive(out) == "waiting");
}

TEST_CASE("RTO retransmits unacknowledged data with backoff", "[tcp]") {
  Harness h;
  h.establish();
  auto& c = h.host.last();
  h.host.data(c, "lost segment", h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  uint32_t seq = out[0].r.seq;

  // The handshake measured an RTT of 0 (the fake clock stood still), so
  // the RTO is its floor (RFC 6298 §2.4), doubling on each expiry (§5.5).
  Instant t0 = h.now();
  h.run_timer();
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.seq == seq);
  CHECK(out[0].text() == "lost segment");
  CHECK(h.now() - t0 == Tcp::kMinRto);
  Instant t1 = h.now();
  h.run_timer();
  REQUIRE(h.tx.take().size() == 1);
  CHECK(h.now() - t1 == 2 * Tcp::kMinRto);
  CHECK(h.tcp->stats().retransmits == 2);

  h.receive({out});
  h.ack_all();
  CHECK(c.consumed == 12);
  CHECK_FALSE(h.tcp->poll_at());  // nothing outstanding: no timer
}

TEST_CASE("unacknowledged data times out after the retries and the flow is reset both ways", "[tcp]") {
  Harness h;
  h.establish();
  h.host.data(h.host.last(), "nobody home", h.now());
  h.tx.take();
  for (int i = 0; i < Tcp::kMaxRetries; i++) {
    h.run_timer();
    REQUIRE(h.tx.take().size() == 1);
  }
  h.run_timer();
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.has(kTcpRst));
  CHECK_FALSE(h.state());
  CHECK(h.host.last().reset);
}

TEST_CASE("three duplicate ACKs trigger a fast retransmit of the first unacknowledged segment", "[tcp]") {
  Harness h;
  h.establish(100);
  auto& c = h.host.last();
  h.host.data(c, std::string(100, 'a') + std::string(100, 'b') + std::string(100, 'c'), h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 3);
  uint32_t second = out[1].r.seq;
  h.ack(second);  // the first arrived
  CHECK(h.tx.segs.empty());
  h.ack(second);
  h.ack(second);
  CHECK(h.tx.segs.empty());
  h.ack(second);  // third duplicate
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.seq == second);
  CHECK(out[0].text() == std::string(100, 'b'));
  CHECK(h.tcp->stats().fast_retransmits == 1);
  h.ack(second);  // a fourth does not resend again
  CHECK(h.tx.segs.empty());
}

TEST_CASE("a full guest link stops sending, and poll resumes it", "[tcp]") {
  Harness h;
  h.establish(1000);
  auto& c = h.host.last();
  h.tx.room = 1;
  h.host.data(c, std::string(3000, 'q'), h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);  // then the link was full
  CHECK_FALSE(c.want_read);
  auto at = h.tcp->poll_at();
  REQUIRE(at);
  CHECK(*at - h.now() <= Tcp::kLinkRetry);
  h.tx.room.reset();
  h.tcp->poll(h.now());
  out = h.tx.take();
  REQUIRE(out.size() == 2);
  CHECK(out[0].r.seq == h.peer_iss + 1 + 1000);
}

// ---------------------------------------------------------------------------
// Closing.

TEST_CASE("guest FIN in ESTABLISHED half-closes the host socket", "[tcp]") {
  Harness h;
  h.establish();
  auto& c = h.host.last();
  h.send(kTcpFin | kTcpAck, h.gnxt, h.gack);
  CHECK(c.shut_wr);
  CHECK(c.open);
  CHECK(h.state() == TcpState::CloseWait);
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt + 1);
  h.gnxt++;

  // The host keeps sending after the guest's half-close.
  h.host.data(c, "still here", h.now());
  out = h.tx.take();
  CHECK(h.receive(out) == "still here");
  h.ack_all();

  // Host EOF in CLOSE_WAIT: our FIN, LAST_ACK, then CLOSED on its ACK.
  h.host.end(c, h.now());
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpFin | kTcpAck));
  CHECK(h.state() == TcpState::LastAck);
  h.gack++;
  h.ack_all();
  CHECK_FALSE(h.state());
  CHECK_FALSE(c.open);
  CHECK_FALSE(c.reset);
}

TEST_CASE("host EOF in ESTABLISHED sends FIN to the guest, which may still send", "[tcp]") {
  Harness h;
  h.establish();
  auto& c = h.host.last();
  h.host.data(c, "bye", h.now());
  h.host.end(c, h.now());
  auto out = h.tx.take();
  CHECK(h.receive(out) == "bye");
  REQUIRE(out.back().r.has(kTcpFin));
  CHECK(out.back().r.seq == h.gack);
  CHECK(h.state() == TcpState::FinWait1);
  h.gack++;
  h.ack_all();
  CHECK(h.state() == TcpState::FinWait2);
  CHECK(c.consumed == 3);

  h.send_data("more from the guest");
  CHECK(c.received == "more from the guest");
  h.gnxt += 19;
  h.tx.take();

  // The guest's FIN in FIN_WAIT_2: TIME_WAIT, host socket closed cleanly.
  h.send(kTcpFin | kTcpAck, h.gnxt, h.gack);
  CHECK(h.state() == TcpState::TimeWait);
  CHECK(c.shut_wr);
  CHECK_FALSE(c.open);
  CHECK_FALSE(c.reset);
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt + 1);

  // A retransmitted FIN in TIME_WAIT is acknowledged again.
  h.send(kTcpFin | kTcpAck, h.gnxt, h.gack);
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt + 1);

  h.advance(Tcp::kTimeWait);
  CHECK_FALSE(h.state());
  CHECK(h.tcp->flow_count() == 0);
}

TEST_CASE("lost FIN to the guest is retransmitted on RTO", "[tcp]") {
  Harness h;
  h.establish();
  h.host.end(h.host.last(), h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  REQUIRE(out[0].r.has(kTcpFin));
  h.run_timer();
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpFin | kTcpAck));
  CHECK(out[0].r.seq == h.gack);
}

TEST_CASE("simultaneous close passes through CLOSING to TIME_WAIT", "[tcp]") {
  Harness h;
  h.establish();
  auto& c = h.host.last();
  h.host.end(c, h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  REQUIRE(out[0].r.has(kTcpFin));
  CHECK(h.state() == TcpState::FinWait1);

  // The guest's FIN crosses ours: it does not acknowledge our FIN yet.
  h.send(kTcpFin | kTcpAck, h.gnxt, h.gack);
  CHECK(h.state() == TcpState::Closing);
  CHECK(c.shut_wr);
  CHECK(c.open);  // until our FIN is acknowledged
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.ack == h.gnxt + 1);
  h.gnxt++;

  h.ack(h.gack + 1);
  CHECK(h.state() == TcpState::TimeWait);
  CHECK_FALSE(c.open);
  CHECK_FALSE(c.reset);
  h.advance(Tcp::kTimeWait);
  CHECK(h.tcp->flow_count() == 0);
}

TEST_CASE("guest FIN that also acknowledges ours in FIN_WAIT_1 goes to TIME_WAIT", "[tcp]") {
  Harness h;
  h.establish();
  h.host.end(h.host.last(), h.now());
  h.tx.take();
  h.send(kTcpFin | kTcpAck, h.gnxt, h.gack + 1);
  CHECK(h.state() == TcpState::TimeWait);
}

TEST_CASE("guest RST in ESTABLISHED resets the host socket", "[tcp]") {
  Harness h;
  h.establish();
  auto& c = h.host.last();
  // RFC 5961 §3.2: a RST elsewhere in the window only gets a challenge ACK.
  h.send(kTcpRst, h.gnxt + 10, 0);
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpAck));
  CHECK(out[0].r.ack == h.gnxt);
  CHECK(h.state() == TcpState::Established);
  // Outside the window: dropped silently.
  h.send(kTcpRst, h.gnxt - 100, 0);
  CHECK(h.tx.segs.empty());

  h.send(kTcpRst, h.gnxt, 0);
  CHECK_FALSE(h.state());
  CHECK_FALSE(c.open);
  CHECK(c.reset);  // SO_LINGER 0: the host peer sees a RST too
  CHECK(h.tcp->stats().resets_from_guest == 1);
}

TEST_CASE("guest RST in CONNECTING abandons the host connect", "[tcp]") {
  Harness h;
  h.syn();
  h.send(kTcpRst, h.giss + 1, 0);
  CHECK_FALSE(h.state());
  CHECK_FALSE(h.host.last().open);
}

TEST_CASE("host reset in ESTABLISHED sends a RST to the guest", "[tcp]") {
  Harness h;
  h.establish();
  auto& c = h.host.last();
  c.sink->on_host_error(c.cookie, ECONNRESET, h.now());
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.has(kTcpRst));
  CHECK(out[0].r.seq == h.gack);  // our SND.NXT
  CHECK_FALSE(h.state());
  CHECK_FALSE(c.open);
}

TEST_CASE("host send error in ESTABLISHED resets the guest", "[tcp]") {
  Harness h;
  h.establish();
  h.host.last().error = EPIPE;
  h.send_data("into the void");
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.has(kTcpRst));
  CHECK_FALSE(h.state());
}

TEST_CASE("SYN in ESTABLISHED gets a challenge ACK", "[tcp]") {
  Harness h;
  h.establish();
  h.send(kTcpSyn, h.giss + 500, 0);
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpAck));  // RFC 5961 §4.2
  CHECK(h.state() == TcpState::Established);
}

// ---------------------------------------------------------------------------
// Limits and bad input.

TEST_CASE("full flow table refuses a SYN with RST and counts it, existing flows keep working", "[tcp]") {
  Harness h;
  h.tx.cfg.max_tcp_flows = 2;
  h.establish();
  h.gport = 40001;
  h.syn();
  REQUIRE(h.tcp->flow_count() == 2);
  h.gport = 40002;
  h.syn();
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst | kTcpAck));
  CHECK(out[0].r.dst_port == 40002);
  CHECK(h.tx.dropped(Drop::FlowTableFull) == 1);
  CHECK(h.tcp->flow_count() == 2);
  CHECK(h.host.conns.size() == 2);

  // The first flow still carries data.
  h.gport = 40000;
  h.gnxt = h.giss + 1;
  h.send_data("ok");
  CHECK(h.host.conns[0].received == "ok");
}

TEST_CASE("malformed segments are dropped and counted", "[tcp]") {
  Harness h;
  h.establish();
  auto deliver = [&](std::vector<uint8_t> l4, bool fix_checksum) {
    if (fix_checksum) {
      store_be16(&l4[16], 0);
      store_be16(&l4[16], PseudoHeader::v4(h.guest, h.dst).checksum(IpProtocol::Tcp, l4));
    }
    GuestPacket p;
    p.ip.src = h.guest;
    p.ip.dst = h.dst;
    p.ip.protocol = IpProtocol::Tcp;
    p.ip.payload_len = uint16_t(l4.size());
    p.payload = l4;
    p.packet = l4;
    h.tcp->input(p, h.now());
  };
  auto good = [&](const TcpRepr& r) {
    std::vector<uint8_t> b(r.buffer_len());
    r.emit(b, PseudoHeader::v4(h.guest, h.dst));
    return b;
  };

  deliver(std::vector<uint8_t>(12, 0), false);  // shorter than a header
  CHECK(h.tx.dropped(Drop::L4Malformed) == 1);

  auto bad_sum = good(h.seg(kTcpAck, h.gnxt, h.gack, "data"));
  bad_sum[16] ^= 0xff;
  deliver(bad_sum, false);
  CHECK(h.tx.dropped(Drop::L4BadChecksum) == 1);

  auto bad_offset = good(h.seg(kTcpAck, h.gnxt, h.gack));
  bad_offset[12] = 0x40;  // data offset 4 words
  deliver(bad_offset, true);
  CHECK(h.tx.dropped(Drop::L4Malformed) == 2);

  auto bad_option = good(h.seg(kTcpAck, h.gnxt, h.gack));
  bad_option.insert(bad_option.end(), {2, 1, 0, 0});  // MSS option of length 1
  bad_option[12] = 0x60;
  deliver(bad_option, true);
  CHECK(h.tx.dropped(Drop::L4Malformed) == 3);

  deliver(good(h.seg(kTcpSyn | kTcpFin, 1, 0)), false);
  CHECK(h.tx.dropped(Drop::L4Malformed) == 4);

  TcpRepr zero_port = h.seg(kTcpAck, h.gnxt, h.gack);
  zero_port.src_port = 0;
  deliver(good(zero_port), false);
  CHECK(h.tx.dropped(Drop::L4Malformed) == 5);

  CHECK(h.host.last().received.empty());
  CHECK(h.tx.segs.empty());
  CHECK(h.state() == TcpState::Established);
}

TEST_CASE("idle ESTABLISHED flow is not expired after hours", "[tcp]") {
  Harness h;
  h.establish();
  CHECK_FALSE(h.tcp->poll_at());
  for (int i = 0; i < 10 * 60; i++) h.advance(60s);  // ten hours, a poll a minute
  CHECK(h.state() == TcpState::Established);
  CHECK(h.host.last().open);
  CHECK(h.tx.segs.empty());
  h.send_data("still alive");
  CHECK(h.host.last().received == "still alive");
}

TEST_CASE("describe_flows shows one line per flow", "[tcp]") {
  Harness h;
  h.establish();
  h.send_data("12345");
  h.host.data(h.host.last(), "abc", h.now());
  h.tx.take();
  h.gack += 3;
  h.gnxt += 5;
  h.ack_all();
  h.clock.advance(42s);
  std::string out;
  h.tcp->describe_flows(out, h.now());
  CHECK(out == "tcp 192.168.65.3:40000 127.0.0.1:80 ESTABLISHED tx=5 rx=3 age=42\n");
}

// ---------------------------------------------------------------------------
// Gateway services.

TEST_CASE("gateway service: the handshake needs no host socket and data echoes through the service", "[tcp]") {
  Harness h;
  std::string log;
  h.tcp->add_service(564, [&](TcpServiceStream& s) { return std::make_unique<EchoService>(s, &log); });
  h.dst = Ipv4Addr(192, 168, 65, 1);
  h.dport = 564;
  h.syn();
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpSyn | kTcpAck));
  CHECK(h.host.conns.empty());
  h.peer_iss = out[0].r.seq;
  h.gack = h.peer_iss + 1;
  h.ack_all();
  REQUIRE(h.state() == TcpState::Established);

  h.send_data("Tversion");
  CHECK(log == "Tversion");
  out = h.tx.take();
  CHECK(h.receive(out) == "Tversion");
  CHECK(out.back().r.ack == h.gnxt + 8);
  h.gnxt += 8;
  h.ack_all();

  std::string flows;
  h.tcp->describe_flows(flows, h.now());
  CHECK(flows.find("192.168.65.1:564 ESTABLISHED") != std::string::npos);

  // The guest closes; the service closes its side; the guest acks our FIN.
  h.send(kTcpFin | kTcpAck, h.gnxt, h.gack);
  CHECK(log == "Tversion<fin>");
  out = h.tx.take();
  REQUIRE_FALSE(out.empty());
  CHECK(out.back().r.has(kTcpFin));
  CHECK(h.state() == TcpState::LastAck);
  h.gnxt++;
  h.gack++;
  h.ack_all();
  CHECK_FALSE(h.state());
}

namespace {
// A service that writes a greeting from outside any translator call, later.
class LateService final : public TcpService {
 public:
  explicit LateService(TcpServiceStream& s, TcpServiceStream** out) : s_(s) { *out = &s_; }
  size_t on_data(Bytes data) override { return data.size(); }

 private:
  TcpServiceStream& s_;
};
}  // namespace

TEST_CASE("gateway service writing on its own reaches the guest at once, and its reset too", "[tcp]") {
  Harness h;
  TcpServiceStream* stream = nullptr;
  int kicks = 0;
  h.tcp->set_after_service_event([&] { kicks++; });
  h.tcp->add_service(564, [&](TcpServiceStream& s) { return std::make_unique<LateService>(s, &stream); });
  h.dst = Ipv4Addr(192, 168, 65, 1);
  h.dport = 564;
  h.syn();
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  h.peer_iss = out[0].r.seq;
  h.gack = h.peer_iss + 1;
  h.ack_all();
  REQUIRE(stream);
  CHECK(stream->write(as_bytes("event!")) == 6);
  out = h.tx.take();
  CHECK(h.receive(out) == "event!");
  CHECK(kicks >= 1);
  stream->reset();
  out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].r.has(kTcpRst));
  CHECK_FALSE(h.state());
}

// ---------------------------------------------------------------------------
// The real host: UvTcpHost on 127.0.0.1.

namespace {

// A TCP server on 127.0.0.1 on the test's loop. Echo mode writes back what it
// reads and closes after the client's EOF; hold mode keeps what it reads.
struct TestServer {
  explicit TestServer(uv_loop_t* loop, bool echo = true) : loop(loop), echo(echo) {
    REQUIRE(uv_tcp_init(loop, &server) == 0);
    server.data = this;
    sockaddr_in sa{};
    REQUIRE(uv_ip4_addr("127.0.0.1", 0, &sa) == 0);
    REQUIRE(uv_tcp_bind(&server, reinterpret_cast<sockaddr*>(&sa), 0) == 0);
    REQUIRE(uv_listen(reinterpret_cast<uv_stream_t*>(&server), 16, on_connection) == 0);
    int len = sizeof sa;
    REQUIRE(uv_tcp_getsockname(&server, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
    port = ntohs(sa.sin_port);
  }
  ~TestServer() {
    for (auto& c : clients)
      if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&c->tcp))) close_client(c.get());
    uv_close(reinterpret_cast<uv_handle_t*>(&server), nullptr);
    for (int i = 0; i < 10; i++) uv_run(loop, UV_RUN_NOWAIT);
  }

  struct Client {
    uv_tcp_t tcp;
    TestServer* server;
    uv_shutdown_t shutdown_req;
  };
  static void on_connection(uv_stream_t* s, int status) {
    REQUIRE(status == 0);
    auto* self = static_cast<TestServer*>(s->data);
    auto c = std::make_unique<Client>();
    c->server = self;
    uv_tcp_init(self->loop, &c->tcp);
    c->tcp.data = c.get();
    REQUIRE(uv_accept(s, reinterpret_cast<uv_stream_t*>(&c->tcp)) == 0);
    self->accepted++;
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(&c->tcp),
        [](uv_handle_t*, size_t, uv_buf_t* buf) {
          static char mem[65536];
          *buf = uv_buf_init(mem, sizeof mem);
        },
        on_read);
    self->clients.push_back(std::move(c));
  }
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Client*>(s->data);
    TestServer* self = c->server;
    if (n > 0) {
      self->got.append(buf->base, size_t(n));
      if (self->echo) {
        auto* req = new uv_write_t;
        auto* copy = new std::string(buf->base, size_t(n));
        req->data = copy;
        uv_buf_t b = uv_buf_init(copy->data(), unsigned(copy->size()));
        uv_write(req, s, &b, 1, [](uv_write_t* r, int) {
          delete static_cast<std::string*>(r->data);
          delete r;
        });
      }
    } else if (n < 0) {
      self->eof = true;
      if (n != UV_EOF) self->read_error = int(n);
      uv_read_stop(s);
      if (self->echo) uv_shutdown(&c->shutdown_req, s, [](uv_shutdown_t*, int) {});
    }
  }
  // Write to the last client; with close_after, close it once all is written.
  void write_all(std::string data, bool close_after = false) {
    REQUIRE(!clients.empty());
    auto* req = new uv_write_t;
    auto* copy = new std::string(std::move(data));
    req->data = copy;
    uv_buf_t b = uv_buf_init(copy->data(), unsigned(copy->size()));
    auto cb = [](uv_write_t* r, int) {
      delete static_cast<std::string*>(r->data);
      delete r;
    };
    auto cb_close = [](uv_write_t* r, int) {
      delete static_cast<std::string*>(r->data);
      if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(r->handle)))
        uv_close(reinterpret_cast<uv_handle_t*>(r->handle), nullptr);
      delete r;
    };
    uv_write(req, reinterpret_cast<uv_stream_t*>(&clients.back()->tcp), &b, 1, close_after ? +cb_close : +cb);
  }
  void close_client(Client* c) { uv_close(reinterpret_cast<uv_handle_t*>(&c->tcp), nullptr); }
  void reset_client(Client* c) { REQUIRE(uv_tcp_close_reset(&c->tcp, nullptr) == 0); }

  uv_loop_t* loop;
  bool echo;
  uv_tcp_t server;
  uint16_t port = 0;
  int accepted = 0;
  bool eof = false;
  int read_error = 0;
  std::string got;
  std::vector<std::unique_ptr<Client>> clients;
};

// Runs the loop until `done` or a bounded number of iterations; a repeating
// timer guarantees each iteration returns.
template <class F>
bool run_until(uv_loop_t* loop, F done, int max_iterations = 2000) {
  uv_timer_t tick;
  uv_timer_init(loop, &tick);
  uv_timer_start(&tick, [](uv_timer_t*) {}, 1, 1);
  bool ok = false;
  for (int i = 0; i < max_iterations && !(ok = done()); i++) uv_run(loop, UV_RUN_ONCE);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
  return ok;
}

struct RecordingSink final : TcpHostSink {
  void on_host_connected(uint64_t, int e, Instant) override {
    connected = true;
    err = e;
  }
  void on_host_readable(uint64_t, Instant) override { readable++; }
  void on_host_writable(uint64_t, Instant) override { writable++; }
  void on_host_error(uint64_t, int e, Instant) override { error = e; }
  bool connected = false;
  int err = -1, error = 0, readable = 0, writable = 0;
};

struct Loop {
  Loop() { REQUIRE(uv_loop_init(&loop) == 0); }
  ~Loop() {
    for (int i = 0; i < 10; i++) uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(uv_loop_close(&loop) == 0);
  }
  uv_loop_t loop;
};

uint16_t closed_port() {
  // Bind a port, then close it: nothing listens there now.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  socklen_t len = sizeof sa;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  ::close(fd);
  return ntohs(sa.sin_port);
}

}  // namespace

// ---------------------------------------------------------------------------
// Port forwards: active opens toward the guest (RFC 9293 §3.10.7.3).

namespace {

// The guest's side of a forwarded connection: it answers our SYN.
struct Forward {
  Harness h;
  Ipv4Addr gw{192, 168, 65, 1};
  uint16_t gw_port = 0;
  uint32_t our_iss = 0;
  std::vector<std::tuple<uint32_t, uint64_t, uint64_t>> closed;  // tag, to_guest, to_host

  Forward() {
    h.dport = 80;
    h.tcp->set_on_tag_closed([this](uint32_t tag, uint64_t g, uint64_t o) { closed.emplace_back(tag, g, o); });
  }
  // open_to_guest, and the SYN it sends.
  Sent open(uint32_t tag = 7) {
    auto id = h.tcp->open_to_guest(-1, h.guest, 80, tag, h.now());
    REQUIRE(id.ok());
    auto out = h.tx.take();
    REQUIRE(out.size() == 1);
    REQUIRE(out[0].is(kTcpSyn));
    gw_port = out[0].r.src_port;
    our_iss = out[0].r.seq;
    return out[0];
  }
  void from_guest(uint16_t flags, uint32_t seq, uint32_t ack, std::string_view data = {},
                  std::optional<uint16_t> mss = {}, std::optional<uint8_t> ws = {}) {
    TcpRepr r;
    r.src_port = 80;
    r.dst_port = gw_port;
    r.seq = seq;
    r.ack = ack;
    r.flags = flags;
    r.window = 65535;
    r.mss = mss;
    r.window_scale = ws;
    r.payload = as_bytes(data);
    h.input(r, h.guest, gw);
  }
  std::optional<TcpState> state() const { return h.tcp->state_of(h.guest, 80, gw, gw_port); }
};

}  // namespace

TEST_CASE("forward: the SYN goes from the gateway with MSS, window scale and a window", "[tcp][forward]") {
  Forward f;
  Sent syn = f.open();
  CHECK(syn.src == f.gw);
  CHECK(syn.dst == f.h.guest);
  CHECK(syn.r.dst_port == 80);
  CHECK(syn.r.src_port >= 32768);
  CHECK(syn.r.mss == uint16_t(1460));
  CHECK(syn.r.window_scale == Tcp::kWindowScale);
  CHECK(syn.r.window > 0);
  CHECK(f.state() == TcpState::SynSent);
  CHECK(f.h.host.last().adopted);
  CHECK_FALSE(f.h.host.last().want_read);  // host bytes wait for the guest
}

TEST_CASE("forward: SYN-ACK establishes, then data and FIN flow both ways", "[tcp][forward]") {
  Forward f;
  f.open(9);
  auto& conn = f.h.host.last();
  f.h.host.data(conn, "GET / HTTP/1.0\r\n\r\n", f.h.now());  // the client spoke first
  CHECK(f.h.tx.take().empty());
  f.from_guest(kTcpSyn | kTcpAck, 5000, f.our_iss + 1, {}, 1000, 2);
  CHECK(f.state() == TcpState::Established);
  auto out = f.h.tx.take();
  REQUIRE(out.size() >= 2);
  CHECK(out[0].is(kTcpAck));
  CHECK(out[0].r.ack == 5001);
  CHECK(out[1].r.seq == f.our_iss + 1);
  CHECK(out[1].text() == "GET / HTTP/1.0\r\n\r\n");
  CHECK(f.h.tcp->stats().forwarded_opened == 1);
  // The guest answers and acknowledges.
  f.from_guest(kTcpAck | kTcpPsh, 5001, f.our_iss + 1 + 18, "HTTP/1.0 200 OK\r\n");
  CHECK(conn.received == "HTTP/1.0 200 OK\r\n");
  auto t = f.h.tcp->tag_totals(9);
  CHECK(t.active == 1);
  CHECK(t.to_host == 17);
  // The guest closes; the host then closes; the guest acknowledges our FIN.
  f.from_guest(kTcpAck | kTcpFin, 5018, f.our_iss + 19);
  CHECK(conn.shut_wr);
  f.h.tx.take();
  f.h.host.end(conn, f.h.now());
  out = f.h.tx.take();
  REQUIRE(!out.empty());
  CHECK((out.back().r.flags & kTcpFin));
  f.from_guest(kTcpAck, 5019, out.back().r.seq + 1);
  CHECK_FALSE(f.state());
  REQUIRE(f.closed.size() == 1);
  CHECK(std::get<0>(f.closed[0]) == 9);
  CHECK(std::get<1>(f.closed[0]) == 18);
  CHECK(std::get<2>(f.closed[0]) == 17);
}

TEST_CASE("forward: a SYN-ACK without window scale turns scaling off both ways", "[tcp][forward]") {
  Forward f;
  f.open();
  f.from_guest(kTcpSyn | kTcpAck, 100, f.our_iss + 1, {}, 1460, std::nullopt);
  REQUIRE(f.state() == TcpState::Established);
  auto out = f.h.tx.take();
  REQUIRE(out.size() == 1);
  // Unscaled: the 64 KiB host buffer shows as at most 65535.
  CHECK(out[0].r.window == 65535);
}

TEST_CASE("forward: a guest RST refuses, and the host connection is reset", "[tcp][forward]") {
  Forward f;
  f.open();
  auto& conn = f.h.host.last();
  f.from_guest(kTcpRst | kTcpAck, 0, f.our_iss + 1);
  CHECK_FALSE(f.state());
  CHECK_FALSE(conn.open);
  CHECK(conn.reset);
  CHECK(f.h.tcp->stats().forwarded_refused == 1);
}

TEST_CASE("forward: a SYN-ACK with a wrong ACK gets a RST and the SYN stands", "[tcp][forward]") {
  Forward f;
  f.open();
  f.from_guest(kTcpSyn | kTcpAck, 100, f.our_iss + 77);
  auto out = f.h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst));
  CHECK(out[0].r.seq == f.our_iss + 77);
  CHECK(f.state() == TcpState::SynSent);
}

TEST_CASE("forward: an unanswered SYN is retransmitted with backoff, then the host is reset", "[tcp][forward]") {
  Forward f;
  f.open();
  auto& conn = f.h.host.last();
  std::vector<Instant> at;
  for (int i = 0; i < Tcp::kMaxSynAckRetries; i++) {
    f.h.run_timer();
    auto out = f.h.tx.take();
    REQUIRE(out.size() == 1);
    CHECK(out[0].is(kTcpSyn));
    CHECK(out[0].r.seq == f.our_iss);
    at.push_back(f.h.now());
  }
  CHECK(at[2] - at[1] == 2 * (at[1] - at[0]));
  f.h.run_timer();
  CHECK_FALSE(f.state());
  CHECK(conn.reset);
}

TEST_CASE("forward: the client leaving before the SYN-ACK resets the guest side", "[tcp][forward]") {
  Forward f;
  f.open();
  auto& conn = f.h.host.last();
  conn.sink->on_host_error(conn.cookie, ECONNRESET, f.h.now());
  auto out = f.h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst));
  CHECK_FALSE(f.state());
}

TEST_CASE("forward: refused at once for a non-guest address or an unknown guest", "[tcp][forward]") {
  Forward f;
  auto r = f.h.tcp->open_to_guest(-1, Ipv4Addr(192, 168, 65, 1), 80, 1, f.h.now());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == EINVAL);
  r = f.h.tcp->open_to_guest(-1, Ipv4Addr(10, 0, 0, 1), 80, 1, f.h.now());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == EINVAL);
  f.h.tx.room = 0;  // the fake says no guest is reachable
  r = f.h.tcp->open_to_guest(-1, f.h.guest, 80, 1, f.h.now());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == EHOSTUNREACH);
  CHECK(f.h.tcp->stats().forwarded_refused == 3);
  CHECK(f.h.tcp->flow_count() == 0);
}

TEST_CASE("forward: connections to the same guest port get distinct gateway ports", "[tcp][forward]") {
  Forward f;
  std::set<uint16_t> ports;
  for (int i = 0; i < 50; i++) ports.insert(f.open().r.src_port);
  CHECK(ports.size() == 50);
  CHECK(f.h.tcp->tag_totals(7).active == 50);
}

TEST_CASE("uv host: peek at offsets leaves bytes until consume, and EOF follows the data", "[tcp][uv]") {
  for (bool peek_off : {true, false}) {
    DYNAMIC_SECTION("SO_PEEK_OFF " << peek_off) {
      Loop l;
      FakeMonoClock clock;
      TestServer server(&l.loop, false);
      UvTcpHost::Options opts;
      opts.peek_offset = peek_off;
      auto host = std::make_unique<UvTcpHost>(&l.loop, clock, opts);
      RecordingSink sink;
      auto id = host->connect(Ipv4Addr(127, 0, 0, 1), server.port, sink, 7);
      REQUIRE(id.ok());
      REQUIRE(run_until(&l.loop, [&] { return sink.connected && server.accepted == 1; }));
      REQUIRE(sink.err == 0);
      if (!peek_off) CHECK_FALSE(host->peek_offset_supported());

      host->set_interest(*id, true, false);
      server.write_all("0123456789abcdef");
      REQUIRE(run_until(&l.loop, [&] { return sink.readable > 0; }));
      uint8_t buf[64];
      auto r = host->peek(*id, 0, std::span(buf, 4));
      REQUIRE(r.ok());
      CHECK(std::string((char*)buf, r->n) == "0123");
      r = host->peek(*id, 10, std::span(buf, 64));
      REQUIRE(r.ok());
      CHECK(std::string((char*)buf, r->n) == "abcdef");
      CHECK_FALSE(r->eof);
      r = host->peek(*id, 2, std::span(buf, 3));  // back again: still there
      REQUIRE(r.ok());
      CHECK(std::string((char*)buf, r->n) == "234");
      host->consume(*id, 5);
      r = host->peek(*id, 0, std::span(buf, 64));
      REQUIRE(r.ok());
      CHECK(std::string((char*)buf, r->n) == "56789abcdef");
      r = host->peek(*id, 11, std::span(buf, 64));  // nothing beyond yet
      REQUIRE(r.ok());
      CHECK(r->n == 0);
      CHECK_FALSE(r->eof);

      // More data after everything was peeked wakes the sink again.
      int before = sink.readable;
      server.write_all("XYZ");
      REQUIRE(run_until(&l.loop, [&] { return sink.readable > before; }));
      r = host->peek(*id, 11, std::span(buf, 64));
      REQUIRE(r.ok());
      CHECK(std::string((char*)buf, r->n) == "XYZ");

      // The server closes: EOF after the last byte.
      server.close_client(server.clients.back().get());
      REQUIRE(run_until(&l.loop, [&] {
        auto p = host->peek(*id, 14, std::span(buf, 64));
        return p.ok() && p->eof;
      }));
      host->consume(*id, 14);
      r = host->peek(*id, 0, std::span(buf, 64));
      REQUIRE(r.ok());
      CHECK(r->n == 0);
      CHECK(r->eof);

      // Send space is known; sends are taken.
      CHECK(host->send_space(*id) > 0);
      host->close(*id, false);
      CHECK(host->open_conns() == 0);
      host.reset();
    }
  }
}

TEST_CASE("uv host: a refused connect reports ECONNREFUSED", "[tcp][uv]") {
  Loop l;
  FakeMonoClock clock;
  UvTcpHost host(&l.loop, clock);
  RecordingSink sink;
  auto id = host.connect(Ipv4Addr(127, 0, 0, 1), closed_port(), sink, 1);
  if (id.ok()) {
    REQUIRE(run_until(&l.loop, [&] { return sink.connected; }));
    CHECK(sink.err == ECONNREFUSED);
    host.close(*id, false);
  } else {
    CHECK(id.error().code == ECONNREFUSED);
  }
}

namespace {

// A fake guest in front of the translator with the real host: it answers
// every data segment with an ACK, like a guest stack would.
struct UvHarness {
  Loop l;
  FakeMonoClock clock;
  FakeGuestTx tx;
  std::unique_ptr<UvTcpHost> host;
  std::unique_ptr<Tcp> tcp;
  Ipv4Addr guest{192, 168, 65, 3}, dst{192, 168, 65, 2};
  uint16_t gport = 41000, dport = 0;
  uint32_t gnxt = 5000, gack = 0;
  std::string received;
  bool got_fin = false, got_rst = false;

  UvHarness() {
    host = std::make_unique<UvTcpHost>(&l.loop, clock);
    tcp = std::make_unique<Tcp>(tx, *host, clock, 99);
  }
  ~UvHarness() {
    tcp.reset();
    host.reset();
  }
  void send(uint16_t flags, std::string_view data = {}, std::optional<uint8_t> ws = {}) {
    TcpRepr r;
    r.src_port = gport;
    r.dst_port = dport;
    r.seq = gnxt;
    r.ack = gack;
    r.flags = flags;
    r.window = 65535;
    r.payload = as_bytes(data);
    if (flags & kTcpSyn) {
      r.mss = 1460;
      r.window_scale = ws;
    }
    std::vector<uint8_t> storage;
    tcp->input(make_packet(guest, dst, r, storage), clock.t);
    gnxt += r.segment_len();
  }
  // Take what the translator sent; acknowledge its data and FIN.
  void absorb() {
    bool need_ack = false;
    for (auto& s : tx.take()) {
      if (s.r.has(kTcpRst)) got_rst = true;
      if (s.r.has(kTcpAck) && int32_t(s.r.ack - peer_acked) > 0) peer_acked = s.r.ack;
      if (s.r.has(kTcpSyn)) {
        gack = s.r.seq + 1;
        continue;
      }
      if (!s.data.empty() && s.r.seq == gack) {
        received += s.text();
        gack += uint32_t(s.data.size());
        need_ack = true;
      }
      if (s.r.has(kTcpFin) && s.r.seq + s.data.size() == gack) {
        gack++;
        got_fin = true;
        need_ack = true;
      }
    }
    if (need_ack) send(kTcpAck);
  }
  uint32_t peer_acked = 0;  // the highest ACK the translator sent
};

}  // namespace

TEST_CASE("uv host under the translator: bytes echo back through a real 127.0.0.1 server", "[tcp][uv]") {
  UvHarness h;
  TestServer server(&h.l.loop, true);
  h.dport = server.port;
  h.send(kTcpSyn, {}, uint8_t(7));
  REQUIRE(h.tcp->state_of(h.guest, h.gport, h.dst, h.dport) == TcpState::Connecting);
  REQUIRE(run_until(&h.l.loop, [&] { return !h.tx.segs.empty(); }));
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  REQUIRE(out[0].is(kTcpSyn | kTcpAck));
  h.gack = out[0].r.seq + 1;
  h.send(kTcpAck);
  REQUIRE(h.tcp->state_of(h.guest, h.gport, h.dst, h.dport) == TcpState::Established);

  // A large enough message to need many segments and several peeks. The
  // guest resends from the translator's ACK, so what the host socket did not
  // take is sent again.
  std::string msg;
  for (int i = 0; i < 200000; i++) msg += char('A' + (i * 7) % 26);
  uint32_t base = h.gnxt;
  h.peer_acked = base;
  REQUIRE(run_until(&h.l.loop, [&] {
    for (int k = 0; k < 64; k++) {
      size_t off = h.peer_acked - base;
      if (off >= msg.size()) break;
      uint32_t before = h.peer_acked;
      h.gnxt = before;
      h.send(kTcpAck | kTcpPsh, std::string_view(msg).substr(off, std::min<size_t>(1460, msg.size() - off)));
      h.absorb();
      if (h.peer_acked == before) break;  // the socket is full: let the loop run
    }
    h.absorb();
    return h.peer_acked - base == msg.size() && h.received.size() == msg.size();
  }, 20000));
  h.gnxt = h.peer_acked;
  CHECK(h.received == msg);
  CHECK(server.got == msg);

  // Guest FIN: the server sees EOF and closes; our FIN reaches the guest.
  h.send(kTcpFin | kTcpAck);
  REQUIRE(run_until(&h.l.loop, [&] {
    h.absorb();
    return h.got_fin;
  }));
  CHECK(server.eof);
  CHECK_FALSE(h.got_rst);
  auto st = h.tcp->state_of(h.guest, h.gport, h.dst, h.dport);
  CHECK((!st || *st == TcpState::TimeWait));
}

TEST_CASE("uv host under the translator: a refused port answers the SYN with RST at once", "[tcp][uv]") {
  UvHarness h;
  h.dport = closed_port();
  h.send(kTcpSyn);
  REQUIRE(run_until(&h.l.loop, [&] { return !h.tx.segs.empty(); }));
  auto out = h.tx.take();
  REQUIRE(out.size() == 1);
  CHECK(out[0].is(kTcpRst | kTcpAck));
  CHECK(h.tcp->flow_count() == 0);
}

namespace {
// SYN, SYN-ACK, ACK against a real server.
void uv_establish(UvHarness& h, TestServer& server) {
  h.dport = server.port;
  h.send(kTcpSyn);
  REQUIRE(run_until(&h.l.loop, [&] { return !h.tx.segs.empty() && server.accepted == 1; }));
  h.absorb();
  h.send(kTcpAck);
  REQUIRE(h.tcp->state_of(h.guest, h.gport, h.dst, h.dport) == TcpState::Established);
}
}  // namespace

TEST_CASE("uv host under the translator: guest RST resets the host connection", "[tcp][uv]") {
  UvHarness h;
  TestServer server(&h.l.loop, false);
  uv_establish(h, server);
  h.send(kTcpRst);
  CHECK(h.tcp->flow_count() == 0);
  REQUIRE(run_until(&h.l.loop, [&] { return server.eof; }));
  CHECK(server.read_error == UV_ECONNRESET);
}

TEST_CASE("uv host under the translator: host RST resets the guest", "[tcp][uv]") {
  UvHarness h;
  TestServer server(&h.l.loop, false);
  uv_establish(h, server);
  server.reset_client(server.clients.back().get());
  REQUIRE(run_until(&h.l.loop, [&] {
    h.absorb();
    return h.got_rst;
  }));
  CHECK(h.tcp->flow_count() == 0);
}

TEST_CASE("uv host under the translator: host data and EOF reach the guest as data and FIN", "[tcp][uv]") {
  UvHarness h;
  TestServer server(&h.l.loop, false);
  uv_establish(h, server);
  std::string big(300000, 'd');
  server.write_all(big, true);
  REQUIRE(run_until(&h.l.loop, [&] {
    h.absorb();
    return h.got_fin;
  }, 20000));
  CHECK(h.received == big);
  CHECK(h.tcp->state_of(h.guest, h.gport, h.dst, h.dport) == TcpState::FinWait2);
}
