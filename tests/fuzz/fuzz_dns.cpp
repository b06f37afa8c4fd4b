// libFuzzer target: the DNS codec (net/wire/dns.h) and the gateway's DNS
// forwarder (net/dns.h).
//
// Each input is used three ways:
//  1. As one DNS message for the codec. When it parses, it is rebuilt with
//     DnsBuilder (names uncompressed, RDATA as is), which must parse again
//     to the same header, questions and records; names must stay within 255
//     octets, compare equal to their lower-case form, and reverse names must
//     map back to themselves.
//  2. As a guest query (UDP, and as one TCP frame), and as an upstream reply
//     to a query for "example.com A" pending from a guest (its id patched
//     in, so the matching paths run).
//  3. As a script for a forwarder with a fake upstream and a fake clock:
//     records op[1] len[2 LE] data[len]:
//       op & 7 == 0  guest UDP query (source port from op >> 4)
//       op & 7 == 1  upstream reply over UDP to the latest live UDP try
//                    (op & 0x80: its id patched in; op & 0x40: a wrong source)
//       op & 7 == 2  upstream reply over TCP to the latest live TCP try
//                    (op & 0x80: id patched in)
//       op & 7 == 3  bytes on TCP session (op >> 7), opened on first use
//       op & 7 == 4  time passes by data[0] * 50 ms; a due timer fires
//       op & 7 == 5  an upstream error on the latest live try
//       op & 7 == 6  /dns/hosts gets data as text
//       op & 7 == 7  the guest closes TCP session (op >> 7): FIN, or with
//                    op & 0x40 the connection goes away
// Invariants (abort on violation): every datagram toward a guest is a DNS
// response of at most max_udp_payload bytes; every TCP frame toward a guest
// is a response; outstanding queries, cache entries and sessions stay
// within their limits.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "net/dns.h"
#include "net/host/dgram_host.h"
#include "net/host/dns_upstream.h"
#include "net/host/tcp_host.h"
#include "net/tcp.h"
#include "net/udp.h"
#include "net/wire/dns.h"
#include "net/wire/ipv4.h"
#include "net/wire/udp.h"

using namespace berth;
using namespace berth::net;
using namespace berth::net::wire;

namespace {

#define CHECK_OR_TRAP(cond) \
  do {                      \
    if (!(cond)) __builtin_trap(); \
  } while (0)

// ---- 1. The codec ---------------------------------------------------------------

void check_name(const DnsName& n) {
  CHECK_OR_TRAP(n.wire_len() >= 1 && n.wire_len() <= DnsName::kMaxLen);
  CHECK_OR_TRAP(n.equals(n.lower()));
  CHECK_OR_TRAP(n.is_within(n.parent(n.label_count() / 2)));
  CHECK_OR_TRAP(n.parent(n.label_count()).is_root());
  (void)n.to_string();
  if (auto a = reverse_v4(n)) CHECK_OR_TRAP(reverse_name(*a).equals(n));
  if (auto a = reverse_v6(n)) CHECK_OR_TRAP(reverse_name(*a).equals(n));
}

bool same_record(const DnsRecord& a, const DnsRecord& b) {
  return a.name == b.name && a.type == b.type && a.cls == b.cls && a.ttl == b.ttl && same_bytes(a.rdata, b.rdata);
}

void fuzz_codec(Bytes data) {
  auto h = DnsHeader::parse(data);
  auto m = DnsMessage::parse(data);
  if (!m) return;
  CHECK_OR_TRAP(h && *h == m->header);
  CHECK_OR_TRAP(m->end <= data.size() && m->question_end <= m->end);
  CHECK_OR_TRAP(m->questions.size() == m->header.qdcount);
  DnsBuilder b(m->header);
  for (const auto& q : m->questions) {
    check_name(q.name);
    b.question(q);
  }
  const std::vector<DnsRecord>* sections[3] = {&m->answers, &m->authority, &m->additional};
  const DnsBuilder::Section kinds[3] = {DnsBuilder::Section::Answer, DnsBuilder::Section::Authority,
                                        DnsBuilder::Section::Additional};
  for (int s = 0; s < 3; s++) {
    for (const auto& r : *sections[s]) {
      check_name(r.name);
      CHECK_OR_TRAP(r.rdata_offset + r.rdata.size() <= data.size() && r.ttl_offset + 4 <= r.rdata_offset);
      CHECK_OR_TRAP(load_be32(&data[r.ttl_offset]) == r.ttl);
      if (auto soa = parse_soa(data, r)) {
        check_name(soa->mname);
        check_name(soa->rname);
      }
      if (auto n = parse_rdata_name(data, r)) check_name(*n);
      b.record(kinds[s], r.name, r.type, r.cls, r.ttl, r.rdata);
    }
  }
  std::vector<uint8_t> again = std::move(b).finish();
  auto m2 = DnsMessage::parse(again);
  CHECK_OR_TRAP(m2);
  CHECK_OR_TRAP(m2->header == m->header && m2->end == again.size());
  CHECK_OR_TRAP(m2->questions == m->questions);
  const std::vector<DnsRecord>* sections2[3] = {&m2->answers, &m2->authority, &m2->additional};
  for (int s = 0; s < 3; s++) {
    CHECK_OR_TRAP(sections[s]->size() == sections2[s]->size());
    for (size_t i = 0; i < sections[s]->size(); i++) CHECK_OR_TRAP(same_record((*sections[s])[i], (*sections2[s])[i]));
  }
  (void)m->udp_payload_size();
  (void)m->dnssec_ok();
}

// ---- 2, 3. The forwarder ------------------------------------------------------

DnsLimits fuzz_limits() {
  DnsLimits l;
  l.max_outstanding = 8;
  l.cache_entries = 4;
  l.max_tcp_sessions = 2;
  l.max_tcp_queries_per_session = 2;
  l.max_tries = 2;
  return l;
}

void check_response(Bytes msg) {
  auto h = DnsHeader::parse(msg);
  CHECK_OR_TRAP(h && h->qr);
}

class Tx final : public GuestTx {
 public:
  bool send_ipv4(Ipv4Addr src, Ipv4Addr dst, IpProtocol, size_t l4_len, Fill fill) override {
    buf.assign(l4_len, 0);
    fill(buf, PseudoHeader::v4(src, dst));
    auto u = UdpPacket::check(buf);
    CHECK_OR_TRAP(u);
    CHECK_OR_TRAP(u->payload().size() <= fuzz_limits().max_udp_payload);
    check_response(u->payload());
    return (++count % 13) != 0;  // sometimes the guest cannot be reached
  }
  void send_icmp_error(Bytes, Icmpv4Type, uint8_t, uint16_t) override {}
  bool can_send(Ipv4Addr) const override { return true; }
  const NetConfig& config() const override { return cfg; }
  void count_drop(Drop) override {}
  NetConfig cfg;
  std::vector<uint8_t> buf;
  uint64_t count = 0;
};

class NoDgramHost final : public DgramHost {
 public:
  Result<DgramSocket> open_udp(SockAddr4, DgramSink&, uint64_t) override { return make_error(EPERM, "fuzz"); }
  Result<DgramSocket> open_icmp_echo(Ipv4Addr, DgramSink&, uint64_t) override { return make_error(EPERM, "fuzz"); }
  Result<void> send(DgramSocket, Bytes) override { return make_error(EBADF, "fuzz"); }
  void close(DgramSocket) override {}
  IcmpMode icmp_mode() const override { return IcmpMode::None; }
};

class NoTcpHost final : public TcpHost {
 public:
  Result<HostConnId> connect(Ipv4Addr, uint16_t, TcpHostSink&, uint64_t) override {
    return make_error(ECONNREFUSED, "fuzz");
  }
  Result<size_t> send(HostConnId, Bytes) override { return make_error(EPIPE, "fuzz"); }
  Result<PeekResult> peek(HostConnId, size_t, std::span<uint8_t>) override { return make_error(ECONNRESET, "fuzz"); }
  void consume(HostConnId, size_t) override {}
  size_t send_space(HostConnId) override { return 0; }
  void shutdown_write(HostConnId) override {}
  void close(HostConnId, bool) override {}
  void set_interest(HostConnId, bool, bool) override {}
};

class Upstream final : public DnsUpstream {
 public:
  struct Q {
    DnsServerAddr server;
    uint16_t id = 0;
    uint64_t cookie = 0;
    bool tcp = false, live = true;
  };
  void set_sink(DnsUpstreamSink* s) override { sink = s; }
  Result<DnsQueryHandle> udp_query(const DnsServerAddr& s, Bytes q, uint64_t cookie) override {
    return add(s, q, cookie, false);
  }
  Result<DnsQueryHandle> tcp_query(const DnsServerAddr& s, Bytes q, uint64_t cookie) override {
    return add(s, q, cookie, true);
  }
  void cancel(DnsQueryHandle h) override {
    if (h.valid() && h.index < queries.size()) queries[h.index].live = false;
  }
  void set_timer(std::optional<Instant> at) override { timer = at; }

  Q* latest(bool tcp) {
    for (size_t i = queries.size(); i-- > 0;)
      if (queries[i].live && queries[i].tcp == tcp) return &queries[i];
    return nullptr;
  }
  Q* latest_any() {
    for (size_t i = queries.size(); i-- > 0;)
      if (queries[i].live) return &queries[i];
    return nullptr;
  }

  DnsUpstreamSink* sink = nullptr;
  std::vector<Q> queries;
  std::optional<Instant> timer;

 private:
  Result<DnsQueryHandle> add(const DnsServerAddr& s, Bytes q, uint64_t cookie, bool tcp) {
    if (queries.size() > 4096) return make_error(EMFILE, "fuzz");
    check_query(q);
    queries.push_back(Q{s, load_be16(q.data()), cookie, tcp, true});
    return DnsQueryHandle{uint32_t(queries.size() - 1), 1};
  }
  static void check_query(Bytes q) {
    auto m = DnsMessage::parse(q);
    CHECK_OR_TRAP(m && !m->header.qr && m->questions.size() == 1);
  }
};

class Stream final : public TcpServiceStream {
 public:
  size_t write(Bytes data) override {
    if (closed || aborted) return 0;
    size_t n = std::min(data.size(), space);
    pending.insert(pending.end(), data.begin(), data.begin() + ptrdiff_t(n));
    // Every whole frame is a response.
    while (pending.size() >= 2 && pending.size() - 2 >= load_be16(pending.data())) {
      size_t len = load_be16(pending.data());
      check_response(Bytes(pending).subspan(2, len));
      pending.erase(pending.begin(), pending.begin() + ptrdiff_t(2 + len));
    }
    space = space > 700 ? space - 700 : 4096;  // sometimes short writes
    return n;
  }
  size_t write_space() const override { return space; }
  void close() override { closed = true; }
  void reset() override { aborted = true; }
  void resume_input() override {}
  std::vector<uint8_t> pending;
  size_t space = 4096;
  bool closed = false, aborted = false;
};

const DnsServerAddr kUpstream1 = *DnsServerAddr::parse("192.0.2.53");
const DnsServerAddr kUpstream2 = *DnsServerAddr::parse("[2001:db8::53]:53");

struct World {
  FakeMonoClock clock;
  Tx tx;
  NoDgramHost dgram;
  NoTcpHost tcp_host;
  UdpNat udp{tx, dgram};
  Tcp tcp{tx, tcp_host, clock, 1};
  Upstream up;
  uint16_t next_id = 1;
  std::unique_ptr<DnsForwarder> fwd;
  Stream streams[2];
  std::unique_ptr<TcpService> sessions[2];
  bool opened[2] = {false, false};

  World() {
    fwd = std::make_unique<DnsForwarder>(udp, tcp, up, clock, tx.cfg, [this] { return next_id++; }, fuzz_limits());
    if (!fwd->add_upstream("192.0.2.53") || !fwd->add_upstream("[2001:db8::53]:53")) __builtin_trap();
  }
  ~World() {
    for (auto& s : sessions) s.reset();
    fwd.reset();
  }

  void check() const {
    DnsLimits l = fuzz_limits();
    CHECK_OR_TRAP(fwd->outstanding() <= l.max_outstanding);
    CHECK_OR_TRAP(fwd->cache_size() <= l.cache_entries);
    CHECK_OR_TRAP(fwd->tcp_sessions() <= l.max_tcp_sessions);
  }

  void guest_udp(Bytes payload, uint16_t port) {
    if (payload.size() > 1400) return;
    UdpRepr u{port, 53, payload};
    Ipv4Repr ip;
    ip.src = Ipv4Addr(192, 168, 65, 3);
    ip.dst = tx.cfg.gateway;
    ip.protocol = IpProtocol::Udp;
    ip.payload_len = uint16_t(u.buffer_len());
    std::vector<uint8_t> buf(20 + u.buffer_len());
    ip.emit(buf);
    u.emit(std::span<uint8_t>(buf).subspan(20), PseudoHeader::v4(ip.src, ip.dst));
    auto pkt = Ipv4Packet::check(buf);
    auto repr = Ipv4Repr::parse(*pkt);
    udp.input(GuestPacket{0, *repr, pkt->payload(), pkt->packet()}, clock.t);
  }

  TcpService* session(int i) {
    if (!sessions[i] && !opened[i]) {
      opened[i] = true;
      sessions[i] = fwd->tcp_service_factory()(streams[i]);
    }
    return sessions[i].get();
  }

  void reply(bool tcp, Bytes data, bool patch, bool wrong_source) {
    Upstream::Q* q = up.latest(tcp);
    if (!q) return;
    std::vector<uint8_t> msg(data.begin(), data.end());
    if (patch && msg.size() >= 2) store_be16(msg.data(), q->id);
    Upstream::Q copy = *q;  // the sink may start queries (the vector grows)
    if (tcp) up.sink->on_tcp_reply(copy.cookie, msg, clock.t);
    else up.sink->on_udp_datagram(copy.cookie, wrong_source ? kUpstream2 : copy.server, msg, clock.t);
  }

  void fire() {
    if (!up.timer || *up.timer > clock.t) return;
    up.timer.reset();
    up.sink->on_timer(clock.t);
  }
};

std::vector<uint8_t> example_query(uint16_t id) {
  DnsHeader h;
  h.id = id;
  h.rd = true;
  DnsBuilder b(h);
  b.question({*DnsName::from_text("example.com"), dns::kTypeA, dns::kClassIn});
  return std::move(b).finish();
}

void fuzz_direct(Bytes data) {
  World w;
  w.guest_udp(data, 40000);
  w.check();
  if (TcpService* s = w.session(0)) {
    std::vector<uint8_t> f(2 + std::min<size_t>(data.size(), 0xffff));
    store_be16(f.data(), uint16_t(f.size() - 2));
    std::memcpy(f.data() + 2, data.data(), f.size() - 2);
    s->on_data(f);
  }
  w.check();
  w.guest_udp(example_query(0x4242), 40001);
  w.reply(false, data, true, false);
  w.check();
  w.reply(true, data, true, false);  // if that was TC
  w.check();
  w.clock.advance(std::chrono::seconds(3));
  w.fire();
  w.guest_udp(example_query(0x4243), 40002);  // perhaps from the cache now
  w.check();
}

void fuzz_script(Bytes data) {
  World w;
  size_t i = 0;
  int steps = 0;
  while (i + 3 <= data.size() && steps++ < 256) {
    uint8_t op = data[i];
    size_t len = std::min<size_t>(load_le16(&data[i + 1]), data.size() - i - 3);
    Bytes arg = data.subspan(i + 3, len);
    i += 3 + len;
    switch (op & 7) {
      case 0: w.guest_udp(arg, uint16_t(40000 + (op >> 4))); break;
      case 1: w.reply(false, arg, op & 0x80, op & 0x40); break;
      case 2: w.reply(true, arg, op & 0x80, false); break;
      case 3:
        if (TcpService* s = w.session(op >> 7)) {
          size_t take = std::min(arg.size(), s->input_space());
          s->on_data(arg.first(take));
        }
        break;
      case 4:
        w.clock.advance(std::chrono::milliseconds(50) * (arg.empty() ? 1 : arg[0]));
        w.fire();
        for (int k = 0; k < 2; k++) {
          if (!w.sessions[k]) continue;
          w.streams[k].space = 4096;  // the guest read what was queued
          w.sessions[k]->on_writable();
        }
        break;
      case 5:
        if (Upstream::Q* q = w.up.latest_any()) {
          Upstream::Q copy = *q;
          if (copy.tcp) w.up.sink->on_tcp_error(copy.cookie, ECONNRESET, w.clock.t);
          else w.up.sink->on_udp_error(copy.cookie, ECONNREFUSED, w.clock.t);
        }
        break;
      case 6: (void)w.fwd->set_hosts(as_chars(arg)); break;
      case 7: {
        int k = op >> 7;
        if (!w.sessions[k]) break;
        if (op & 0x40) w.sessions[k].reset();
        else w.sessions[k]->on_guest_fin();
        break;
      }
    }
    w.check();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  fuzz_codec(in);
  fuzz_direct(in);
  fuzz_script(in);
  return 0;
}
