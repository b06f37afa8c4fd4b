// DNS: the codec (net/wire/dns.h) and the gateway's forwarder (net/dns.h).
//
// Codec tests run from byte fixtures. Forwarder tests drive a DnsForwarder
// through a real UdpNat (guest datagrams in, datagrams toward the guest
// recorded by a fake GuestTx), a fake DnsUpstream that records every query
// and lets the test answer, fail or time it out, and a fake clock. TCP
// sessions are driven through the factory the forwarder registers, with a
// fake TcpServiceStream. No test sends DNS anywhere but to the fake, except
// the [uv] tests, which talk to servers they run on 127.0.0.1 themselves.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "net/dns.h"
#include "net/host/dns_upstream.h"
#include "net/host/uv_dns_upstream.h"
#include "net/host/uv_tcp_host.h"
#include "net/tcp.h"
#include "net/udp.h"
#include "net/wire/dns.h"
#include "net/wire/ipv4.h"
#include "net/wire/tcp.h"
#include "net/wire/udp.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

using namespace berth;
using namespace berth::net;
using namespace berth::net::wire;
using namespace std::chrono_literals;

namespace {

const Ipv4Addr kGuest{192, 168, 65, 3};
const Ipv4Addr kGateway{192, 168, 65, 1};

std::vector<uint8_t> hex(std::string_view s) {
  std::vector<uint8_t> out;
  int hi = -1;
  for (char c : s) {
    int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (v < 0) continue;
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(uint8_t(hi << 4 | v));
      hi = -1;
    }
  }
  return out;
}

DnsName name(std::string_view s) {
  auto n = DnsName::from_text(s);
  REQUIRE(n);
  return *n;
}

// ---- Messages for tests --------------------------------------------------------

std::vector<uint8_t> make_query(std::string_view qname, uint16_t type, uint16_t id = 0x1234,
                                std::optional<uint16_t> edns = std::nullopt) {
  DnsHeader h;
  h.id = id;
  h.rd = true;
  DnsBuilder b(h);
  b.question({name(qname), type, dns::kClassIn});
  if (edns) b.opt(*edns, false);
  return std::move(b).finish();
}

struct Rr {
  std::string name;
  uint16_t type;
  uint32_t ttl;
  std::vector<uint8_t> rdata;
};

// An upstream's answer to `query` (its id and question), with `id` when given.
std::vector<uint8_t> make_reply(Bytes query, std::vector<Rr> answers, uint8_t rcode = dns::kNoError,
                                std::vector<Rr> authority = {}, bool tc = false, std::optional<uint16_t> id = {},
                                bool opt = false) {
  auto q = DnsMessage::parse(query);
  REQUIRE(q);
  DnsHeader h;
  h.id = id ? *id : q->header.id;
  h.qr = true;
  h.rd = q->header.rd;
  h.ra = true;
  h.tc = tc;
  h.rcode = rcode;
  DnsBuilder b(h);
  b.question(q->questions.at(0));
  for (const auto& r : answers) b.record(DnsBuilder::Section::Answer, name(r.name), r.type, dns::kClassIn, r.ttl, r.rdata);
  for (const auto& r : authority)
    b.record(DnsBuilder::Section::Authority, name(r.name), r.type, dns::kClassIn, r.ttl, r.rdata);
  if (opt) b.opt(1232, false);
  return std::move(b).finish();
}

Rr soa_rr(std::string zone, uint32_t ttl, uint32_t minimum) {
  DnsSoa s{name("ns." + zone), name("hostmaster." + zone), 1, 7200, 900, 1209600, minimum};
  return Rr{zone, dns::kTypeSoa, ttl, rdata_soa(s)};
}

// A parsed message that owns its bytes.
struct Msg {
  std::vector<uint8_t> bytes;
  DnsMessage m;
  explicit Msg(std::vector<uint8_t> b) : bytes(std::move(b)) {
    auto p = DnsMessage::parse(bytes);
    REQUIRE(p);
    m = *p;
  }
  const DnsHeader& h() const { return m.header; }
  std::vector<Ipv4Addr> a() const {
    std::vector<Ipv4Addr> out;
    for (const auto& r : m.answers)
      if (r.type == dns::kTypeA && r.rdata.size() == 4) out.push_back(Ipv4Addr::from_bytes(r.rdata.data()));
    return out;
  }
};

// ---- Fakes ----------------------------------------------------------------------

struct Sent {
  Ipv4Addr src, dst;
  IpProtocol proto;
  std::vector<uint8_t> l4;
};

class FakeTx final : public GuestTx {
 public:
  bool send_ipv4(Ipv4Addr src, Ipv4Addr dst, IpProtocol proto, size_t l4_len, Fill fill) override {
    std::vector<uint8_t> l4(l4_len, 0xa5);
    fill(l4, PseudoHeader::v4(src, dst));
    sent.push_back(Sent{src, dst, proto, std::move(l4)});
    return true;
  }
  void send_icmp_error(Bytes, Icmpv4Type, uint8_t, uint16_t) override {}
  bool can_send(Ipv4Addr) const override { return true; }
  const NetConfig& config() const override { return cfg; }
  void count_drop(Drop) override {}

  NetConfig cfg;
  std::vector<Sent> sent;
};

class NoDgramHost final : public DgramHost {
 public:
  Result<DgramSocket> open_udp(SockAddr4, DgramSink&, uint64_t) override { return make_error(EPERM, "no"); }
  Result<DgramSocket> open_icmp_echo(Ipv4Addr, DgramSink&, uint64_t) override { return make_error(EPERM, "no"); }
  Result<void> send(DgramSocket, Bytes) override { return make_error(EBADF, "no"); }
  void close(DgramSocket) override {}
  IcmpMode icmp_mode() const override { return IcmpMode::None; }
};

class FakeUpstream final : public DnsUpstream {
 public:
  struct Q {
    DnsServerAddr server;
    std::vector<uint8_t> msg;
    uint64_t cookie = 0;
    bool tcp = false;
    bool cancelled = false;
    uint16_t id() const { return load_be16(msg.data()); }
  };

  void set_sink(DnsUpstreamSink* s) override { sink = s; }
  Result<DnsQueryHandle> udp_query(const DnsServerAddr& server, Bytes query, uint64_t cookie) override {
    return add(server, query, cookie, false);
  }
  Result<DnsQueryHandle> tcp_query(const DnsServerAddr& server, Bytes query, uint64_t cookie) override {
    return add(server, query, cookie, true);
  }
  void cancel(DnsQueryHandle h) override {
    if (h.valid() && h.index < queries.size()) queries[h.index].cancelled = true;
  }
  void set_timer(std::optional<Instant> at) override { timer = at; }

  // Replies, from the query's server unless `from` is given.
  void reply(size_t i, Bytes data, Instant now, std::optional<DnsServerAddr> from = {}) {
    Q& q = queries.at(i);
    REQUIRE_FALSE(q.cancelled);
    if (q.tcp) sink->on_tcp_reply(q.cookie, data, now);
    else sink->on_udp_datagram(q.cookie, from ? *from : q.server, data, now);
  }
  size_t live() const {
    size_t n = 0;
    for (const auto& q : queries) n += !q.cancelled;
    return n;
  }

  DnsUpstreamSink* sink = nullptr;
  std::vector<Q> queries;
  std::optional<Instant> timer;
  std::optional<int> fail;

 private:
  Result<DnsQueryHandle> add(const DnsServerAddr& server, Bytes query, uint64_t cookie, bool tcp) {
    if (fail) return make_error(*fail, "fake upstream failure");
    queries.push_back(Q{server, std::vector<uint8_t>(query.begin(), query.end()), cookie, tcp, false});
    return DnsQueryHandle{uint32_t(queries.size() - 1), 1};
  }
};

class FakeStream final : public TcpServiceStream {
 public:
  size_t write(Bytes data) override {
    if (closed || reset_) return 0;
    size_t n = std::min(data.size(), space);
    out.insert(out.end(), data.begin(), data.begin() + ptrdiff_t(n));
    space -= n;
    return n;
  }
  size_t write_space() const override { return space; }
  void close() override { closed = true; }
  void reset() override { reset_ = true; }
  void resume_input() override { resumes++; }

  // Whole length-prefixed messages written so far, removed from `out`.
  std::vector<std::vector<uint8_t>> messages() {
    std::vector<std::vector<uint8_t>> msgs;
    size_t off = 0;
    while (out.size() - off >= 2 && out.size() - off - 2 >= load_be16(&out[off])) {
      size_t len = load_be16(&out[off]);
      msgs.emplace_back(out.begin() + ptrdiff_t(off + 2), out.begin() + ptrdiff_t(off + 2 + len));
      off += 2 + len;
    }
    out.erase(out.begin(), out.begin() + ptrdiff_t(off));
    return msgs;
  }

  std::vector<uint8_t> out;
  size_t space = size_t(1) << 20;
  bool closed = false, reset_ = false;
  int resumes = 0;
};

std::vector<uint8_t> framed(Bytes msg) {
  std::vector<uint8_t> f(2 + msg.size());
  store_be16(f.data(), uint16_t(msg.size()));
  std::memcpy(f.data() + 2, msg.data(), msg.size());
  return f;
}

// A guest UDP datagram as the stack hands it to UdpNat.
struct GuestDatagram {
  std::vector<uint8_t> buf;
  GuestPacket packet() const {
    auto ip = Ipv4Packet::check(buf);
    REQUIRE(ip);
    auto repr = Ipv4Repr::parse(*ip);
    REQUIRE(repr);
    return GuestPacket{0, *repr, ip->payload(), ip->packet()};
  }
};

GuestDatagram udp_datagram(Ipv4Addr src, uint16_t sport, Ipv4Addr dst, uint16_t dport, Bytes payload) {
  UdpRepr u{sport, dport, payload};
  Ipv4Repr ip;
  ip.src = src;
  ip.dst = dst;
  ip.protocol = IpProtocol::Udp;
  ip.payload_len = uint16_t(u.buffer_len());
  ip.ident = 1;
  GuestDatagram d{std::vector<uint8_t>(20 + u.buffer_len())};
  ip.emit(d.buf);
  u.emit(std::span<uint8_t>(d.buf).subspan(20), PseudoHeader::v4(src, dst));
  return d;
}

const DnsServerAddr kUp1 = *DnsServerAddr::parse("192.0.2.53");
const DnsServerAddr kUp2 = *DnsServerAddr::parse("[2001:db8::53]:5353");

// The forwarder between a fake guest and a fake upstream.
struct Harness {
  FakeMonoClock clock;
  FakeTx tx;
  NoDgramHost dgram;
  UdpNat udp{tx, dgram};
  uv_loop_t loop;
  std::unique_ptr<UvTcpHost> tcp_host;
  std::unique_ptr<Tcp> tcp;
  FakeUpstream up;
  uint16_t next_id = 0x1000;
  std::unique_ptr<DnsForwarder> fwd;

  explicit Harness(DnsLimits limits = {}, std::vector<DnsServerAddr> ups = {kUp1}) {
    uv_loop_init(&loop);
    tcp_host = std::make_unique<UvTcpHost>(&loop, clock);  // never used: port 53 is a service
    tcp = std::make_unique<Tcp>(tx, *tcp_host, clock, 1);
    fwd = std::make_unique<DnsForwarder>(udp, *tcp, up, clock, tx.cfg, [this] { return next_id++; }, limits);
    for (const auto& u : ups) REQUIRE(fwd->add_upstream(u.to_string()));
  }
  ~Harness() {
    fwd.reset();
    tcp.reset();
    tcp_host.reset();
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
  }

  // A query from the guest over UDP; the answers it got since the last call.
  std::vector<Msg> ask(Bytes query, uint16_t port = 40000) {
    size_t before = tx.sent.size();
    udp.input(udp_datagram(kGuest, port, kGateway, 53, query).packet(), clock.t);
    return replies(before);
  }
  std::vector<Msg> ask(std::string_view qname, uint16_t type, uint16_t id = 0x1234) {
    return ask(make_query(qname, type, id));
  }
  std::vector<Msg> replies(size_t from) {
    std::vector<Msg> out;
    for (size_t i = from; i < tx.sent.size(); i++) {
      if (tx.sent[i].proto != IpProtocol::Udp) continue;
      auto u = UdpPacket::check(tx.sent[i].l4);
      REQUIRE(u);
      CHECK(tx.sent[i].src == kGateway);
      CHECK(u->src_port() == 53);
      auto p = u->payload();
      out.emplace_back(std::vector<uint8_t>(p.begin(), p.end()));
    }
    return out;
  }
  // Upstream answers query i; returns what the guest got.
  std::vector<Msg> answer(size_t i, Bytes reply, std::optional<DnsServerAddr> from = {}) {
    size_t before = tx.sent.size();
    up.reply(i, reply, clock.t, from);
    return replies(before);
  }
  // Time passes to the armed timer, which fires.
  std::vector<Msg> fire() {
    REQUIRE(up.timer);
    size_t before = tx.sent.size();
    if (*up.timer > clock.t) clock.t = *up.timer;
    up.timer.reset();  // one-shot
    up.sink->on_timer(clock.t);
    return replies(before);
  }
  void advance(Instant d) { clock.advance(d); }
};

std::string temp_path(const char* tag) {
  static int n = 0;
  return fmt::format("/tmp/berth-dns-test-{}-{}-{}", ::getpid(), tag, n++);
}

void write_file(const std::string& path, std::string_view text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
}

}  // namespace

// ================================================================ codec

TEST_CASE("dns codec: a real query for example.com A parses and is emitted byte for byte", "[dns][wire]") {
  // dig +noedns example.com A: id 0x1234, RD.
  auto q = hex("1234 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 0001 0001");
  auto m = DnsMessage::parse(q);
  REQUIRE(m);
  CHECK(m->header.id == 0x1234);
  CHECK_FALSE(m->header.qr);
  CHECK(m->header.rd);
  CHECK(m->header.opcode == 0);
  REQUIRE(m->questions.size() == 1);
  CHECK(m->questions[0].name.to_string() == "example.com");
  CHECK(m->questions[0].type == dns::kTypeA);
  CHECK(m->questions[0].cls == dns::kClassIn);
  CHECK(m->question_end == q.size());
  CHECK(m->opt() == nullptr);
  CHECK(m->udp_payload_size() == 512);
  CHECK(make_query("example.com", dns::kTypeA) == q);
}

TEST_CASE("dns codec: a response with compression pointers", "[dns][wire]") {
  // www.example.com A -> CNAME edge.example.com (rdata "edge" + pointer to
  // example.com at 16), then edge.example.com (pointer into that rdata, at
  // 45) A 93.184.216.34.
  auto r = hex(
      "abcd 8180 0001 0002 0000 0000"
      "03 777777 07 6578616d706c65 03 636f6d 00 0001 0001"  // 12..32, question ends at 33
      "c00c 0005 0001 00000e10 0007 04 65646765 c010"       // answer 1 at 33, rdata at 45
      "c02d 0001 0001 0000012c 0004 5db8d822");
  auto m = DnsMessage::parse(r);
  REQUIRE(m);
  CHECK(m->header.qr);
  CHECK(m->header.ra);
  CHECK(m->question_end == 33);
  REQUIRE(m->answers.size() == 2);
  CHECK(m->answers[0].name.to_string() == "www.example.com");
  CHECK(m->answers[0].type == dns::kTypeCname);
  CHECK(m->answers[0].ttl == 3600);
  CHECK(m->answers[0].ttl_offset == 33 + 6);
  CHECK(m->answers[0].rdata_offset == 45);
  auto target = parse_rdata_name(r, m->answers[0]);
  REQUIRE(target);
  CHECK(target->to_string() == "edge.example.com");
  CHECK(m->answers[1].name.to_string() == "edge.example.com");
  CHECK(m->answers[1].ttl == 300);
  CHECK(load_be32(&r[m->answers[1].ttl_offset]) == 300);
  CHECK(m->answers[1].rdata.size() == 4);
  CHECK(m->end == r.size());

  SECTION("every truncation of it is refused") {
    for (size_t n = 0; n < r.size(); n++) {
      std::vector<uint8_t> cut(r.begin(), r.begin() + ptrdiff_t(n));
      auto p = DnsMessage::parse(cut);
      INFO("length " << n);
      REQUIRE_FALSE(p);
      CHECK(p.error() == WireError::Truncated);
    }
  }
  SECTION("a record whose RDATA runs past the end is refused") {
    auto bad = r;
    store_be16(&bad[bad.size() - 6], 5);  // the A record's RDLENGTH
    auto p = DnsMessage::parse(bad);
    REQUIRE_FALSE(p);
    CHECK(p.error() == WireError::Truncated);
  }
}

TEST_CASE("dns codec: compression pointer loops and forward pointers are refused", "[dns][wire]") {
  auto hdr = hex("0001 0000 0001 0000 0000 0000");
  auto with = [&](std::string_view tail) {
    auto m = hdr;
    auto t = hex(tail);
    m.insert(m.end(), t.begin(), t.end());
    return m;
  };
  // A pointer to itself.
  auto self = with("c00c 0001 0001");
  CHECK(DnsMessage::parse(self).error() == WireError::BadField);
  // A label, then a pointer back to that label: a loop.
  auto loop = with("01 61 c00c 0001 0001");
  CHECK(DnsMessage::parse(loop).error() == WireError::BadField);
  // A pointer forward.
  auto fwd = with("c00e 00 0001 0001");
  CHECK(DnsMessage::parse(fwd).error() == WireError::BadField);
  // Two names pointing at each other (the second question points at the
  // first's pointer, which points at the second).
  auto two = hex("0001 0000 0002 0000 0000 0000 c012 0001 0001 c00c 0001 0001");
  CHECK_FALSE(DnsMessage::parse(two));
  // Reserved label types 0x40 and 0x80.
  CHECK(DnsMessage::parse(with("41 61 00 0001 0001")).error() == WireError::BadField);
  CHECK(DnsMessage::parse(with("81 61 00 0001 0001")).error() == WireError::BadField);
  // A pointer cut in half.
  CHECK(DnsMessage::parse(with("c0")).error() == WireError::Truncated);

  // A long chain of backward pointers stops at kMaxPointers.
  std::vector<uint8_t> chain = hex("0001 0000 0001 0000 0000 0000 00");  // root at 12
  for (int i = 0; i < 40; i++) {
    size_t target = chain.size() - (i == 0 ? 1 : 2);
    chain.push_back(uint8_t(0xc0 | (target >> 8)));
    chain.push_back(uint8_t(target));
  }
  size_t off = chain.size() - 2;
  CHECK(DnsName::parse(chain, off).error() == WireError::BadField);
  off = 13 + 2 * 10;  // ten hops: fine
  auto ok = DnsName::parse(chain, off);
  REQUIRE(ok);
  CHECK(ok->is_root());
}

TEST_CASE("dns codec: names are limited to 63-octet labels and 255 octets", "[dns][wire]") {
  std::string l63(63, 'a'), l64(64, 'a');
  CHECK(DnsName::from_text(l63 + ".com"));
  CHECK_FALSE(DnsName::from_text(l64 + ".com"));
  CHECK_FALSE(DnsName::from_text("a..b"));
  // 4 labels of 63 = 256 octets with lengths, + root = 257: too long;
  // 3 x 63 + 61 = 253 + root... exactly 255 in wire form is fine.
  std::string n255 = l63 + "." + l63 + "." + l63 + "." + std::string(61, 'b');
  auto ok = DnsName::from_text(n255);
  REQUIRE(ok);
  CHECK(ok->wire_len() == 255);
  CHECK_FALSE(DnsName::from_text(n255 + "b"));

  // The same limits when parsing: a name of 256 octets made by pointers.
  std::vector<uint8_t> m = hex("0001 0000 0001 0000 0000 0000");
  auto label = [&](size_t n) {
    m.push_back(uint8_t(n));
    for (size_t i = 0; i < n; i++) m.push_back('x');
  };
  label(63), label(63), label(63), label(62);
  m.push_back(0);  // 12..267: 256 octets: too long
  m.insert(m.end(), {0, 1, 0, 1});
  CHECK(DnsMessage::parse(m).error() == WireError::BadLength);

  auto n = name("WWW.Example.COM");
  CHECK(n.to_string() == "WWW.Example.COM");
  CHECK(n.lower().to_string() == "www.example.com");
  CHECK(n.equals(name("www.example.com")));
  CHECK_FALSE(n == name("www.example.com"));
  CHECK(n.is_within(name("example.com")));
  CHECK(n.is_within(name("COM")));
  CHECK(n.is_within(DnsName()));
  CHECK_FALSE(n.is_within(name("ample.com")));
  CHECK(n.label_count() == 3);
  CHECK(n.label(1) == "Example");
  CHECK(n.parent().to_string() == "Example.COM");
  CHECK(name("a\\b").to_string() == "a\\092b");
}

TEST_CASE("dns codec: records the gateway answers with round-trip", "[dns][wire]") {
  DnsHeader h;
  h.id = 7;
  h.qr = true;
  h.aa = true;
  h.rcode = dns::kNxDomain;
  DnsBuilder b(h);
  b.question({name("x.berth.internal"), dns::kTypeAny, dns::kClassIn});
  b.record(DnsBuilder::Section::Answer, name("x.berth.internal"), dns::kTypeA, 1, 60, rdata_a(Ipv4Addr(10, 0, 0, 1)));
  b.record(DnsBuilder::Section::Answer, name("x.berth.internal"), dns::kTypeAaaa, 1, 60,
           rdata_aaaa(*Ipv6Addr::parse("2001:db8::1")));
  b.record(DnsBuilder::Section::Answer, name("x.berth.internal"), dns::kTypeMx, 1, 60,
           rdata_mx(10, name("mail.berth.internal")));
  std::string long_text(300, 't');
  b.record(DnsBuilder::Section::Answer, name("x.berth.internal"), dns::kTypeTxt, 1, 60, rdata_txt(long_text));
  b.record(DnsBuilder::Section::Answer, name("1.0.0.10.in-addr.arpa"), dns::kTypePtr, 1, 60,
           rdata_name(name("x.berth.internal")));
  DnsSoa soa{name("gateway.berth.internal"), name("hostmaster.berth.internal"), 3, 4, 5, 6, 10};
  b.record(DnsBuilder::Section::Authority, name("berth.internal"), dns::kTypeSoa, 1, 10, rdata_soa(soa));
  b.opt(1232, true);
  Msg m(std::move(b).finish());
  CHECK(m.h().id == 7);
  CHECK(m.h().aa);
  CHECK(m.h().rcode == dns::kNxDomain);
  REQUIRE(m.m.answers.size() == 5);
  CHECK(m.a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 0, 0, 1)});
  CHECK(Ipv6Addr::from_bytes(m.m.answers[1].rdata.data()) == *Ipv6Addr::parse("2001:db8::1"));
  CHECK(load_be16(m.m.answers[2].rdata.data()) == 10);
  CHECK(parse_rdata_name(m.bytes, m.m.answers[2], 2)->to_string() == "mail.berth.internal");
  auto txt = m.m.answers[3].rdata;
  REQUIRE(txt.size() == 302);
  CHECK(txt[0] == 255);
  CHECK(txt[256] == 45);
  CHECK(parse_rdata_name(m.bytes, m.m.answers[4])->to_string() == "x.berth.internal");
  REQUIRE(m.m.authority.size() == 1);
  auto s = parse_soa(m.bytes, m.m.authority[0]);
  REQUIRE(s);
  CHECK(s->mname.to_string() == "gateway.berth.internal");
  CHECK(s->minimum == 10);
  CHECK(s->serial == 3);
  REQUIRE(m.m.opt());
  CHECK(m.m.udp_payload_size() == 1232);
  CHECK(m.m.dnssec_ok());

  // Reverse names.
  CHECK(reverse_name(Ipv4Addr(192, 168, 65, 1)).to_string() == "1.65.168.192.in-addr.arpa");
  CHECK(reverse_v4(name("1.65.168.192.IN-ADDR.ARPA")) == Ipv4Addr(192, 168, 65, 1));
  CHECK_FALSE(reverse_v4(name("01.65.168.192.in-addr.arpa")));
  CHECK_FALSE(reverse_v4(name("65.168.192.in-addr.arpa")));
  auto v6 = *Ipv6Addr::parse("2001:db8::abcd");
  CHECK(reverse_v6(reverse_name(v6)) == v6);
  CHECK(reverse_name(v6).to_string().substr(0, 8) == "d.c.b.a.");
}

TEST_CASE("dns: upstream addresses parse in every form the flag takes", "[dns]") {
  CHECK(DnsServerAddr::parse("1.1.1.1")->to_string() == "1.1.1.1:53");
  CHECK(DnsServerAddr::parse("127.0.0.1:5353")->to_string() == "127.0.0.1:5353");
  CHECK(DnsServerAddr::parse("::1")->to_string() == "[::1]:53");
  CHECK(DnsServerAddr::parse("[2001:db8::1]:5353")->to_string() == "[2001:db8::1]:5353");
  CHECK(DnsServerAddr::parse("[::1]")->port == 53);
  CHECK_FALSE(DnsServerAddr::parse("dns.google"));
  CHECK_FALSE(DnsServerAddr::parse("1.1.1.1:0"));
  CHECK_FALSE(DnsServerAddr::parse("1.1.1.1:65536"));
  CHECK_FALSE(DnsServerAddr::parse("[::1]:"));
  CHECK_FALSE(DnsServerAddr::parse("fe80::1%eth0"));
}

// ================================================================ local answers

TEST_CASE("dns: host and gateway answer locally and authoritatively, in the guest's spelling", "[dns]") {
  Harness h;
  auto r = h.ask("host.berth.internal", dns::kTypeA, 0x4242);
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().id == 0x4242);
  CHECK(r[0].h().qr);
  CHECK(r[0].h().aa);
  CHECK(r[0].h().rcode == dns::kNoError);
  CHECK(r[0].a() == std::vector<Ipv4Addr>{Ipv4Addr(192, 168, 65, 2)});
  CHECK(r[0].m.answers[0].ttl == DnsLimits{}.local_ttl);

  r = h.ask("GateWay.Berth.Internal", dns::kTypeA);
  REQUIRE(r.size() == 1);
  CHECK(r[0].a() == std::vector<Ipv4Addr>{kGateway});
  CHECK(r[0].m.questions[0].name.to_string() == "GateWay.Berth.Internal");
  CHECK(r[0].m.answers[0].name.to_string() == "GateWay.Berth.Internal");
  CHECK(h.up.queries.empty());
  CHECK(h.fwd->stats().local_answers == 2);
  CHECK(h.fwd->stats().queries_udp == 2);
}

TEST_CASE("dns: a known name without the asked type is NODATA with the SOA; unknown names NXDOMAIN", "[dns]") {
  Harness h;
  SECTION("AAAA for a v4-only name") {
    auto r = h.ask("host.berth.internal", dns::kTypeAaaa);
    REQUIRE(r.size() == 1);
    CHECK(r[0].h().rcode == dns::kNoError);
    CHECK(r[0].h().aa);
    CHECK(r[0].m.answers.empty());
    REQUIRE(r[0].m.authority.size() == 1);
    CHECK(r[0].m.authority[0].type == dns::kTypeSoa);
    CHECK(r[0].m.authority[0].name.to_string() == "berth.internal");
    auto soa = parse_soa(r[0].bytes, r[0].m.authority[0]);
    REQUIRE(soa);
    CHECK(soa->minimum == DnsLimits{}.local_negative_ttl);
  }
  SECTION("MX and TXT") {
    for (uint16_t t : {dns::kTypeMx, dns::kTypeTxt}) {
      auto r = h.ask("gateway.berth.internal", t);
      REQUIRE(r.size() == 1);
      CHECK(r[0].h().rcode == dns::kNoError);
      CHECK(r[0].m.answers.empty());
      CHECK(r[0].m.authority.size() == 1);
    }
  }
  SECTION("ANY gives every address") {
    auto r = h.ask("host.berth.internal", dns::kTypeAny);
    REQUIRE(r.size() == 1);
    CHECK(r[0].a() == std::vector<Ipv4Addr>{Ipv4Addr(192, 168, 65, 2)});
  }
  SECTION("an unknown name in the domain") {
    auto r = h.ask("nosuch.berth.internal", dns::kTypeA);
    REQUIRE(r.size() == 1);
    CHECK(r[0].h().rcode == dns::kNxDomain);
    CHECK(r[0].h().aa);
    CHECK(r[0].m.authority.size() == 1);
    r = h.ask("a.b.host.berth.internal", dns::kTypeA);
    CHECK(r.at(0).h().rcode == dns::kNxDomain);
    CHECK(h.fwd->stats().local_nxdomain == 2);
  }
  SECTION("the apex has an SOA and an NS") {
    auto r = h.ask("berth.internal", dns::kTypeSoa);
    REQUIRE(r.size() == 1);
    REQUIRE(r[0].m.answers.size() == 1);
    CHECK(r[0].m.answers[0].type == dns::kTypeSoa);
    r = h.ask("berth.internal", dns::kTypeNs);
    CHECK(parse_rdata_name(r.at(0).bytes, r[0].m.answers.at(0))->to_string() == "gateway.berth.internal");
    r = h.ask("berth.internal", dns::kTypeA);
    CHECK(r.at(0).h().rcode == dns::kNoError);
    CHECK(r[0].m.answers.empty());
  }
  CHECK(h.up.queries.empty());
}

TEST_CASE("dns: reverse names of the gateway and host alias answer PTR; other subnet addresses NXDOMAIN", "[dns]") {
  Harness h;
  auto r = h.ask("1.65.168.192.in-addr.arpa", dns::kTypePtr);
  REQUIRE(r.size() == 1);
  REQUIRE(r[0].m.answers.size() == 1);
  CHECK(parse_rdata_name(r[0].bytes, r[0].m.answers[0])->to_string() == "gateway.berth.internal");
  r = h.ask("2.65.168.192.in-addr.arpa", dns::kTypePtr);
  CHECK(parse_rdata_name(r.at(0).bytes, r[0].m.answers.at(0))->to_string() == "host.berth.internal");
  r = h.ask("99.65.168.192.in-addr.arpa", dns::kTypePtr);
  CHECK(r.at(0).h().rcode == dns::kNxDomain);
  CHECK(h.up.queries.empty());
  // Outside the subnet: upstream.
  h.ask("8.8.8.8.in-addr.arpa", dns::kTypePtr);
  CHECK(h.up.queries.size() == 1);
}

TEST_CASE("dns: DHCP clients' names come from the hook", "[dns]") {
  Harness h;
  std::vector<std::string> asked;
  h.fwd->set_name_lookup([&](std::string_view n) -> std::optional<Ipv4Addr> {
    asked.emplace_back(n);
    if (n == "laptop") return Ipv4Addr(192, 168, 65, 10);
    return std::nullopt;
  });
  auto r = h.ask("LapTop.berth.internal", dns::kTypeA);
  REQUIRE(r.size() == 1);
  CHECK(r[0].a() == std::vector<Ipv4Addr>{Ipv4Addr(192, 168, 65, 10)});
  CHECK(asked == std::vector<std::string>{"laptop"});
  r = h.ask("laptop.berth.internal", dns::kTypeAaaa);
  CHECK(r.at(0).h().rcode == dns::kNoError);
  CHECK(r[0].m.answers.empty());
  r = h.ask("phone.berth.internal", dns::kTypeA);
  CHECK(r.at(0).h().rcode == dns::kNxDomain);
  CHECK(h.up.queries.empty());
}

TEST_CASE("dns: /dns/hosts records answer A, AAAA and PTR; bare names also under the domain", "[dns]") {
  Harness h;
  REQUIRE(h.fwd->set_hosts("# comment\n10.0.0.5 db db.example.com  # trailing\n\n2001:db8::5\tdb\n"));
  auto r = h.ask("db.berth.internal", dns::kTypeA);
  CHECK(r.at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 0, 0, 5)});
  r = h.ask("db", dns::kTypeA);
  CHECK(r.at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 0, 0, 5)});
  r = h.ask("DB.example.com", dns::kTypeA);
  CHECK(r.at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 0, 0, 5)});
  CHECK(r[0].h().aa);
  r = h.ask("db.berth.internal", dns::kTypeAaaa);
  REQUIRE(r.at(0).m.answers.size() == 1);
  CHECK(Ipv6Addr::from_bytes(r[0].m.answers[0].rdata.data()) == *Ipv6Addr::parse("2001:db8::5"));
  // A name we know, outside the domain, without AAAA: NODATA, no SOA of ours.
  r = h.ask("db.example.com", dns::kTypeAaaa);
  CHECK(r.at(0).h().rcode == dns::kNoError);
  CHECK(r[0].m.answers.empty());
  CHECK(r[0].m.authority.empty());
  r = h.ask("5.0.0.10.in-addr.arpa", dns::kTypePtr);
  CHECK(parse_rdata_name(r.at(0).bytes, r[0].m.answers.at(0))->to_string() == "db.berth.internal");
  r = h.ask(reverse_name(*Ipv6Addr::parse("2001:db8::5")).to_string(), dns::kTypePtr);
  CHECK(parse_rdata_name(r.at(0).bytes, r[0].m.answers.at(0))->to_string() == "db.berth.internal");
  CHECK(h.up.queries.empty());

  SECTION("a bad write names the line and changes nothing") {
    auto bad = h.fwd->set_hosts("10.0.0.6 ok\n10.0.0.300 broken\n");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == EINVAL);
    CHECK(bad.error().message.find("line 2") != std::string::npos);
    CHECK_FALSE(h.fwd->set_hosts("10.0.0.7\n"));
    CHECK_FALSE(h.fwd->set_hosts("10.0.0.7 bad/name\n"));
    r = h.ask("db.berth.internal", dns::kTypeA);
    CHECK(r.at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 0, 0, 5)});
    CHECK(h.ask("ok.berth.internal", dns::kTypeA).at(0).h().rcode == dns::kNxDomain);
  }
  SECTION("through the control tree") {
    p9::Tree tree;
    p9::MetricsRegistry metrics;
    mount_dns_tree(tree, metrics, *h.fwd);
    auto node = tree.resolve("/dns/hosts");
    REQUIRE(node);
    {
      auto f = node->open(p9::Access::ReadWrite, true);
      REQUIRE(f);
      std::string text = "10.9.9.9 broken line\n1.2.3 x\n";
      auto w = (*f)->write(0, as_bytes(text));  // whole lines apply at the write
      REQUIRE_FALSE(w);
      CHECK(w.error().code == EINVAL);
      CHECK(w.error().message.find("line 2") != std::string::npos);
    }
    CHECK(h.fwd->hosts_text().find("10.0.0.5 db") != std::string::npos);
    {
      auto f = node->open(p9::Access::ReadWrite, true);
      std::string text = "10.1.1.1 web\n";
      REQUIRE((*f)->write(0, as_bytes(text)));
      REQUIRE((*f)->close());
    }
    CHECK(h.fwd->hosts_text() == "10.1.1.1 web\n");
    CHECK(h.ask("web.berth.internal", dns::kTypeA).at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 1, 1, 1)});
    auto stats = tree.resolve("/dns/stats");
    REQUIRE(stats);
    auto sf = stats->open(p9::Access::Read, false);
    std::vector<uint8_t> buf(8192);
    auto n = (*sf)->read(0, buf);
    std::string text(reinterpret_cast<char*>(buf.data()), *n);
    CHECK(text.find("local_answers ") != std::string::npos);
    CHECK(text.find("queries_udp ") != std::string::npos);
    CHECK(tree.resolve("/dns/upstreams"));
    CHECK(metrics.render().find("berth_dns_queries_total{transport=\"udp\"}") != std::string::npos);
    auto up = tree.resolve("/dns/upstreams")->open(p9::Access::Read, false);
    n = (*up)->read(0, buf);
    CHECK(std::string(reinterpret_cast<char*>(buf.data()), *n).find("192.0.2.53:53 --dns-upstream") == 0);
  }
}

TEST_CASE("dns: the --hosts file answers, and is reloaded when it changes; a bad version keeps the old", "[dns]") {
  Harness h;
  std::string path = temp_path("hosts");
  write_file(path, "10.2.0.1 alpha\n");
  CHECK_FALSE(h.fwd->set_hosts_file(path + ".missing"));
  REQUIRE(h.fwd->set_hosts_file(path));
  CHECK(h.ask("alpha.berth.internal", dns::kTypeA).at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 2, 0, 1)});
  REQUIRE(h.up.timer);  // polled every second

  write_file(path, "10.2.0.2 alpha beta\n");
  h.fire();
  CHECK(h.fwd->stats().hosts_reloads == 1);
  CHECK(h.ask("alpha.berth.internal", dns::kTypeA).at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 2, 0, 2)});
  CHECK(h.ask("beta.berth.internal", dns::kTypeA).at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 2, 0, 2)});

  write_file(path, "not an address at all\n");
  h.fire();
  CHECK(h.fwd->stats().hosts_reload_errors == 1);
  CHECK(h.ask("beta.berth.internal", dns::kTypeA).at(0).a() == std::vector<Ipv4Addr>{Ipv4Addr(10, 2, 0, 2)});
  h.fire();  // unchanged since: no second warning
  CHECK(h.fwd->stats().hosts_reload_errors == 1);

  // /dns/hosts and the file together.
  REQUIRE(h.fwd->set_hosts("10.3.0.1 beta\n"));
  auto a = h.ask("beta.berth.internal", dns::kTypeA).at(0).a();
  CHECK(a == std::vector<Ipv4Addr>{Ipv4Addr(10, 3, 0, 1), Ipv4Addr(10, 2, 0, 2)});
  std::remove(path.c_str());
}

TEST_CASE("dns: bad queries are answered FORMERR or NOTIMP, or dropped, and counted", "[dns]") {
  Harness h;
  CHECK(h.ask(hex("1234 01")).empty());  // no header
  auto resp = make_query("example.com", dns::kTypeA);
  resp[2] |= 0x80;  // QR: a response; never answered
  CHECK(h.ask(resp).empty());
  auto two = hex("1234 0100 0002 0000 0000 0000 01 61 00 0001 0001 01 62 00 0001 0001");
  auto r = h.ask(two);
  CHECK(r.at(0).h().rcode == dns::kFormErr);
  CHECK(r[0].h().id == 0x1234);
  auto loop = hex("1234 0100 0001 0000 0000 0000 c00c 0001 0001");
  CHECK(h.ask(loop).at(0).h().rcode == dns::kFormErr);
  auto notify = make_query("example.com", dns::kTypeSoa);
  notify[2] |= 0x20;  // opcode 4 (NOTIFY)
  CHECK(h.ask(notify).at(0).h().rcode == dns::kNotImp);
  CHECK(h.ask("example.com", 252).at(0).h().rcode == dns::kNotImp);  // AXFR
  CHECK(h.fwd->stats().malformed == 4);
  CHECK(h.up.queries.empty());
}

// ================================================================ forwarding

TEST_CASE("dns: a forwarded query gets a fresh id upstream, and the guest's id back", "[dns]") {
  Harness h;
  auto q = make_query("Example.COM", dns::kTypeA, 0xbeef);
  CHECK(h.ask(q).empty());
  REQUIRE(h.up.queries.size() == 1);
  auto& u = h.up.queries[0];
  CHECK(u.server == kUp1);
  CHECK_FALSE(u.tcp);
  CHECK(u.id() == 0x1000);
  Msg sent(u.msg);
  CHECK(sent.m.questions.at(0).name.to_string() == "Example.COM");
  CHECK(sent.h().rd);
  REQUIRE(sent.m.opt());  // EDNS offered upstream
  CHECK(h.fwd->outstanding() == 1);

  auto reply = make_reply(u.msg, {{"Example.COM", dns::kTypeA, 300, rdata_a(Ipv4Addr(93, 184, 216, 34))}});
  auto r = h.answer(0, reply);
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().id == 0xbeef);
  CHECK(r[0].a() == std::vector<Ipv4Addr>{Ipv4Addr(93, 184, 216, 34)});
  CHECK(r[0].m.answers[0].ttl == 300);
  CHECK(h.up.queries[0].cancelled);
  CHECK(h.fwd->outstanding() == 0);
  CHECK(h.fwd->stats().upstream_answers == 1);
  CHECK(h.fwd->stats().latency_count == 1);

  // The next query gets another id.
  h.ask("example.net", dns::kTypeA, 0xbeef);
  CHECK(h.up.queries.at(1).id() == 0x1001);
}

TEST_CASE("dns: replies that match no outstanding query are dropped and counted", "[dns]") {
  Harness h;
  h.ask(make_query("example.com", dns::kTypeA, 7));
  auto& u = h.up.queries.at(0);
  auto good = make_reply(u.msg, {{"example.com", dns::kTypeA, 60, rdata_a(Ipv4Addr(1, 2, 3, 4))}});
  // Wrong id.
  auto wrong_id = make_reply(u.msg, {}, dns::kNoError, {}, false, uint16_t(u.id() + 1));
  CHECK(h.answer(0, wrong_id).empty());
  // Wrong question.
  auto other = make_query("example.org", dns::kTypeA, u.id());
  auto wrong_q = make_reply(other, {{"example.org", dns::kTypeA, 60, rdata_a(Ipv4Addr(6, 6, 6, 6))}});
  CHECK(h.answer(0, wrong_q).empty());
  // Wrong source.
  CHECK(h.answer(0, good, *DnsServerAddr::parse("192.0.2.66")).empty());
  // Not a response at all, and garbage.
  CHECK(h.answer(0, u.msg).empty());
  CHECK(h.answer(0, hex("00")).empty());
  CHECK(h.fwd->stats().mismatched == 5);
  CHECK(h.fwd->outstanding() == 1);
  // A reply for a query already answered.
  auto r = h.answer(0, good);
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().id == 7);
  h.up.sink->on_udp_datagram(h.up.queries[0].cookie, kUp1, good, h.clock.t);
  CHECK(h.fwd->stats().mismatched == 6);
  CHECK(h.tx.sent.size() == 1);
}

TEST_CASE("dns: a try times out, the next upstream is tried, and at the end the guest gets SERVFAIL", "[dns]") {
  Harness h(DnsLimits{}, {kUp1, kUp2});
  h.ask(make_query("slow.example", dns::kTypeA, 0x55));
  REQUIRE(h.up.queries.size() == 1);
  CHECK(h.up.timer == h.clock.t + 2s);
  CHECK(h.fire().empty());
  REQUIRE(h.up.queries.size() == 2);
  CHECK(h.up.queries[0].cancelled);
  CHECK(h.up.queries[1].server == kUp2);
  CHECK(h.up.queries[1].id() != h.up.queries[0].id());
  CHECK(h.fire().empty());
  REQUIRE(h.up.queries.size() == 3);
  CHECK(h.up.queries[2].server == kUp1);
  auto r = h.fire();
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().rcode == dns::kServFail);
  CHECK(r[0].h().id == 0x55);
  CHECK(h.up.live() == 0);
  CHECK(h.fwd->stats().upstream_timeouts == 3);
  CHECK(h.fwd->stats().servfail_sent == 1);
  CHECK(h.fwd->outstanding() == 0);
  CHECK_FALSE(h.up.timer);
  // Upstreams take turns: the next query starts at the second.
  h.ask("next.example", dns::kTypeA);
  CHECK(h.up.queries.at(3).server == kUp2);
  CHECK(h.fwd->render_upstreams().find("timeouts=2") != std::string::npos);
}

TEST_CASE("dns: ICMP errors, SERVFAIL and send failures move on to the next upstream at once", "[dns]") {
  Harness h(DnsLimits{}, {kUp1, kUp2});
  h.ask(make_query("a.example", dns::kTypeA, 1));
  h.up.sink->on_udp_error(h.up.queries[0].cookie, ECONNREFUSED, h.clock.t);
  REQUIRE(h.up.queries.size() == 2);
  CHECK(h.up.queries[1].server == kUp2);
  auto sf = make_reply(h.up.queries[1].msg, {}, dns::kServFail);
  CHECK(h.answer(1, sf).empty());
  REQUIRE(h.up.queries.size() == 3);
  auto ok = make_reply(h.up.queries[2].msg, {{"a.example", dns::kTypeA, 60, rdata_a(Ipv4Addr(1, 1, 1, 1))}});
  CHECK(h.answer(2, ok).at(0).h().rcode == dns::kNoError);
  CHECK(h.fwd->stats().upstream_failures == 2);

  h.up.fail = EMFILE;
  auto r = h.ask(make_query("b.example", dns::kTypeA, 2));
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().rcode == dns::kServFail);
  CHECK(h.fwd->outstanding() == 0);
}

TEST_CASE("dns: a truncated reply is asked again over TCP, and a large answer reaches UDP guests with TC", "[dns]") {
  Harness h;
  h.ask(make_query("big.example", dns::kTypeTxt, 0x77));
  auto tc = make_reply(h.up.queries[0].msg, {}, dns::kNoError, {}, true);
  CHECK(h.answer(0, tc).empty());
  REQUIRE(h.up.queries.size() == 2);
  CHECK(h.up.queries[0].cancelled);
  CHECK(h.up.queries[1].tcp);
  CHECK(h.up.queries[1].server == kUp1);
  CHECK(h.fwd->stats().truncated_retries == 1);
  std::vector<Rr> many;
  for (int i = 0; i < 10; i++) many.push_back({"big.example", dns::kTypeTxt, 600, rdata_txt(std::string(120, char('a' + i)))});
  auto full = make_reply(h.up.queries[1].msg, many);
  REQUIRE(full.size() > 1000);
  auto r = h.answer(1, full);
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().tc);
  CHECK(r[0].h().id == 0x77);
  CHECK(r[0].m.answers.empty());
  CHECK(r[0].m.questions.at(0).name.to_string() == "big.example");
  CHECK(r[0].bytes.size() <= 512);
  CHECK(h.fwd->stats().truncated_to_guest == 1);

  // With EDNS the guest takes up to 1232 bytes: still too small here.
  r = h.ask(make_query("big.example", dns::kTypeTxt, 0x78, 4096));
  CHECK(r.at(0).h().tc);
  REQUIRE(r[0].m.opt());

  // Over TCP the guest gets it whole, from the cache.
  FakeStream s;
  auto svc = h.fwd->tcp_service_factory()(s);
  REQUIRE(svc);
  auto q = make_query("big.example", dns::kTypeTxt, 0x79);
  auto f = framed(q);
  CHECK(svc->on_data(f) == f.size());
  auto msgs = s.messages();
  REQUIRE(msgs.size() == 1);
  Msg whole(msgs[0]);
  CHECK_FALSE(whole.h().tc);
  CHECK(whole.h().id == 0x79);
  CHECK(whole.m.answers.size() == 10);
  CHECK(h.fwd->stats().cache_hits == 2);
  CHECK(h.up.queries.size() == 2);
}

TEST_CASE("dns: cached answers go out with TTLs lowered by their age, until they expire", "[dns]") {
  Harness h;
  h.ask(make_query("cached.example", dns::kTypeA, 1));
  auto reply = make_reply(h.up.queries[0].msg, {{"cached.example", dns::kTypeA, 300, rdata_a(Ipv4Addr(5, 5, 5, 5))},
                                                 {"cached.example", dns::kTypeA, 900, rdata_a(Ipv4Addr(5, 5, 5, 6))}});
  h.answer(0, reply);
  CHECK(h.fwd->cache_size() == 1);
  h.advance(100s);
  auto r = h.ask(make_query("CACHED.example", dns::kTypeA, 2));
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().id == 2);
  CHECK(r[0].m.questions[0].name.to_string() == "CACHED.example");
  REQUIRE(r[0].m.answers.size() == 2);
  CHECK(r[0].m.answers[0].ttl == 200);
  CHECK(r[0].m.answers[1].ttl == 800);
  CHECK(h.up.queries.size() == 1);
  CHECK(h.fwd->stats().cache_hits == 1);
  CHECK(h.fwd->stats().cache_misses == 1);
  // Another type or the DO bit is another entry.
  h.ask(make_query("cached.example", dns::kTypeAaaa, 3));
  CHECK(h.up.queries.size() == 2);
  // At the smallest TTL the entry is gone.
  h.advance(200s);
  CHECK(h.ask(make_query("cached.example", dns::kTypeA, 4)).empty());
  CHECK(h.up.queries.size() == 3);
}

TEST_CASE("dns: NXDOMAIN and NODATA are cached for the SOA's negative TTL, capped", "[dns]") {
  DnsLimits limits;
  limits.max_negative_ttl = 120;
  Harness h(limits);
  h.ask(make_query("gone.example", dns::kTypeA, 1));
  auto nx = make_reply(h.up.queries[0].msg, {}, dns::kNxDomain, {soa_rr("example", 3600, 60)});
  CHECK(h.answer(0, nx).at(0).h().rcode == dns::kNxDomain);
  h.advance(59s);
  auto r = h.ask(make_query("gone.example", dns::kTypeA, 2));
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().rcode == dns::kNxDomain);
  CHECK(r[0].m.authority.at(0).ttl == 3600 - 59);
  h.advance(1s);
  CHECK(h.ask(make_query("gone.example", dns::kTypeA, 3)).empty());
  // Capped: minimum 3600 is cached for 120 s only.
  auto nodata = make_reply(h.up.queries[1].msg, {}, dns::kNoError, {soa_rr("example", 3600, 3600)});
  h.answer(1, nodata);
  h.advance(119s);
  CHECK(h.ask(make_query("gone.example", dns::kTypeA, 4)).size() == 1);
  h.advance(1s);
  CHECK(h.ask(make_query("gone.example", dns::kTypeA, 5)).empty());
  // Without an SOA, and SERVFAIL: not cached.
  auto bare = make_reply(h.up.queries[2].msg, {}, dns::kNxDomain);
  h.answer(2, bare);
  CHECK(h.ask(make_query("gone.example", dns::kTypeA, 6)).empty());
}

TEST_CASE("dns: the cache is bounded, least recently used out first", "[dns]") {
  DnsLimits limits;
  limits.cache_entries = 2;
  Harness h(limits);
  auto fill = [&](std::string n, uint16_t id) {
    size_t i = h.up.queries.size();
    h.ask(make_query(n, dns::kTypeA, id));
    REQUIRE(h.up.queries.size() == i + 1);
    h.answer(i, make_reply(h.up.queries[i].msg, {{n, dns::kTypeA, 600, rdata_a(Ipv4Addr(9, 9, 9, uint8_t(id)))}}));
  };
  fill("one.example", 1);
  fill("two.example", 2);
  CHECK(h.ask(make_query("one.example", dns::kTypeA, 3)).size() == 1);  // one is now the most recent
  fill("three.example", 4);
  CHECK(h.fwd->cache_size() == 2);
  CHECK(h.fwd->stats().cache_evictions == 1);
  CHECK(h.ask(make_query("one.example", dns::kTypeA, 5)).size() == 1);
  CHECK(h.ask(make_query("three.example", dns::kTypeA, 6)).size() == 1);
  size_t before = h.up.queries.size();
  CHECK(h.ask(make_query("two.example", dns::kTypeA, 7)).empty());  // evicted: upstream again
  CHECK(h.up.queries.size() == before + 1);
}

TEST_CASE("dns: outstanding queries are bounded, and a guest's retransmission is not sent twice", "[dns]") {
  DnsLimits limits;
  limits.max_outstanding = 2;
  Harness h(limits);
  h.ask(make_query("a.example", dns::kTypeA, 1));
  CHECK(h.ask(make_query("a.example", dns::kTypeA, 1)).empty());  // the same again
  CHECK(h.fwd->stats().duplicates == 1);
  h.ask(make_query("b.example", dns::kTypeA, 2));
  auto r = h.ask(make_query("c.example", dns::kTypeA, 3));
  REQUIRE(r.size() == 1);
  CHECK(r[0].h().rcode == dns::kServFail);
  CHECK(h.fwd->stats().outstanding_full == 1);
  CHECK(h.up.queries.size() == 2);
  // The same id from another port is another query.
  h.answer(0, make_reply(h.up.queries[0].msg, {}, dns::kNoError));
  h.ask(make_query("a.example", dns::kTypeA, 1), 40001);
  CHECK(h.up.queries.size() == 3);
}

TEST_CASE("dns: EDNS: the guest's payload size is honoured and OPT is not sent to guests without it", "[dns]") {
  Harness h;
  h.ask(make_query("e.example", dns::kTypeA, 1));
  auto reply = make_reply(h.up.queries[0].msg, {{"e.example", dns::kTypeA, 60, rdata_a(Ipv4Addr(1, 2, 3, 4))}},
                          dns::kNoError, {}, false, {}, true);
  auto r = h.answer(0, reply);
  REQUIRE(r.size() == 1);
  CHECK(r[0].m.opt() == nullptr);
  CHECK(r[0].m.additional.empty());
  CHECK(r[0].a() == std::vector<Ipv4Addr>{Ipv4Addr(1, 2, 3, 4)});
  r = h.ask(make_query("e.example", dns::kTypeA, 2, 1400));  // from the cache, with EDNS
  REQUIRE(r.size() == 1);
  CHECK(r[0].m.opt() != nullptr);
  r = h.ask(make_query("host.berth.internal", dns::kTypeA, 3, 1400));
  CHECK(r.at(0).m.opt() != nullptr);
}

TEST_CASE("dns: upstreams come from resolv.conf, which is re-read when it changes", "[dns]") {
  Harness h(DnsLimits{}, {});
  std::string path = temp_path("resolv");
  write_file(path, "# generated\nsearch example\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0\n");
  h.fwd->set_resolv_conf(path);
  CHECK(h.fwd->render_upstreams() == fmt::format("127.0.0.53:53 {0} queries=0 failures=0 timeouts=0\n"
                                                 "[::1]:53 {0} queries=0 failures=0 timeouts=0\n",
                                                 path));
  h.ask("x.example", dns::kTypeA);
  CHECK(h.up.queries.at(0).server.to_string() == "127.0.0.53:53");

  write_file(path, "nameserver 10.11.12.13\n");
  h.ask("y.example", dns::kTypeA);  // within a second: not looked at
  CHECK(h.up.queries.at(1).server.to_string() == "[::1]:53");
  h.advance(1s);
  h.ask("z.example", dns::kTypeA);
  CHECK(h.up.queries.at(2).server.to_string() == "10.11.12.13:53");

  write_file(path, "# nothing\n");
  h.advance(1s);
  h.ask("w.example", dns::kTypeA);
  CHECK(h.up.queries.at(3).server.to_string() == "127.0.0.1:53");
  CHECK(h.fwd->render_upstreams().find("default") != std::string::npos);

  // A flag overrides the file.
  REQUIRE(h.fwd->add_upstream("[2001:db8::1]:5353"));
  CHECK_FALSE(h.fwd->add_upstream("not-an-address"));
  h.ask("v.example", dns::kTypeA);
  CHECK(h.up.queries.at(4).server.to_string() == "[2001:db8::1]:5353");
  std::remove(path.c_str());
}

// ================================================================ TCP

TEST_CASE("dns over TCP: two queries in one segment get two framed answers", "[dns][tcp]") {
  Harness h;
  FakeStream s;
  auto svc = h.fwd->tcp_service_factory()(s);
  REQUIRE(svc);
  CHECK(h.fwd->tcp_sessions() == 1);
  auto a = framed(make_query("host.berth.internal", dns::kTypeA, 1));
  auto b = framed(make_query("gateway.berth.internal", dns::kTypeA, 2));
  std::vector<uint8_t> seg = a;
  seg.insert(seg.end(), b.begin(), b.end());
  CHECK(svc->on_data(seg) == seg.size());
  auto msgs = s.messages();
  REQUIRE(msgs.size() == 2);
  CHECK(Msg(msgs[0]).h().id == 1);
  CHECK(Msg(msgs[1]).a() == std::vector<Ipv4Addr>{kGateway});
  CHECK(h.fwd->stats().queries_tcp == 2);
  svc.reset();
  CHECK(h.fwd->tcp_sessions() == 0);
}

TEST_CASE("dns over TCP through the translator: a guest connection to the gateway's port 53", "[dns][tcp]") {
  Harness h;
  // The guest's segments, and what it receives back.
  auto send = [&](uint16_t flags, uint32_t seq, uint32_t ack, Bytes data = {}) {
    TcpRepr r;
    r.src_port = 40000;
    r.dst_port = 53;
    r.seq = seq;
    r.ack = ack;
    r.flags = flags;
    r.window = 65535;
    r.payload = data;
    if (flags & kTcpSyn) r.mss = 1460;
    Ipv4Repr ip;
    ip.src = kGuest;
    ip.dst = kGateway;
    ip.protocol = IpProtocol::Tcp;
    ip.payload_len = uint16_t(r.buffer_len());
    std::vector<uint8_t> buf(20 + r.buffer_len());
    ip.emit(buf);
    r.emit(std::span<uint8_t>(buf).subspan(20), PseudoHeader::v4(kGuest, kGateway));
    auto pkt = Ipv4Packet::check(buf);
    REQUIRE(pkt);
    auto repr = Ipv4Repr::parse(*pkt);
    REQUIRE(repr);
    h.tcp->input(GuestPacket{0, *repr, pkt->payload(), pkt->packet()}, h.clock.t);
  };
  auto received = [&](size_t from, uint32_t& seq_out) {
    std::vector<uint8_t> data;
    for (size_t i = from; i < h.tx.sent.size(); i++) {
      const Sent& s = h.tx.sent[i];
      if (s.proto != IpProtocol::Tcp) continue;
      auto p = TcpPacket::check(s.l4);
      REQUIRE(p);
      auto r = TcpRepr::parse(*p, PseudoHeader::v4(s.src, s.dst));
      REQUIRE(r);
      CHECK(r->src_port == 53);
      seq_out = r->seq;
      data.insert(data.end(), r->payload.begin(), r->payload.end());
    }
    return data;
  };
  send(kTcpSyn, 1000, 0);
  uint32_t iss = 0;
  received(0, iss);
  send(kTcpAck, 1001, iss + 1);
  size_t mark = h.tx.sent.size();
  auto q = framed(make_query("host.berth.internal", dns::kTypeA, 0x5353));
  send(kTcpAck | kTcpPsh, 1001, iss + 1, q);
  uint32_t last = 0;
  auto got = h.fwd->stats().queries_tcp == 1 ? received(mark, last) : std::vector<uint8_t>{};
  REQUIRE(got.size() >= 2);
  REQUIRE(got.size() == 2u + load_be16(got.data()));
  Msg m(std::vector<uint8_t>(got.begin() + 2, got.end()));
  CHECK(m.h().id == 0x5353);
  CHECK(m.a() == std::vector<Ipv4Addr>{Ipv4Addr(192, 168, 65, 2)});
  CHECK(h.fwd->tcp_sessions() == 1);
}

TEST_CASE("dns over TCP: a query split across segments is answered once whole", "[dns][tcp]") {
  Harness h;
  FakeStream s;
  auto svc = h.fwd->tcp_service_factory()(s);
  auto f = framed(make_query("host.berth.internal", dns::kTypeA, 9));
  Bytes all(f);
  CHECK(svc->on_data(all.first(1)) == 1);
  CHECK(svc->on_data(all.subspan(1, 10)) == 10);
  CHECK(s.out.empty());
  CHECK(svc->on_data(all.subspan(11)) == f.size() - 11);
  auto msgs = s.messages();
  REQUIRE(msgs.size() == 1);
  CHECK(Msg(msgs[0]).h().id == 9);
}

TEST_CASE("dns over TCP: forwarded answers come later; input pauses at the per-connection limit", "[dns][tcp]") {
  DnsLimits limits;
  limits.max_tcp_queries_per_session = 1;
  Harness h(limits);
  FakeStream s;
  auto svc = h.fwd->tcp_service_factory()(s);
  auto a = framed(make_query("a.example", dns::kTypeA, 1));
  auto b = framed(make_query("b.example", dns::kTypeA, 2));
  std::vector<uint8_t> seg = a;
  seg.insert(seg.end(), b.begin(), b.end());
  CHECK(svc->on_data(seg) == seg.size());
  REQUIRE(h.up.queries.size() == 1);  // the second waits
  CHECK(svc->input_space() == 0);
  svc->on_guest_fin();
  CHECK_FALSE(s.closed);
  h.answer(0, make_reply(h.up.queries[0].msg, {{"a.example", dns::kTypeA, 60, rdata_a(Ipv4Addr(1, 0, 0, 1))}}));
  REQUIRE(h.up.queries.size() == 2);
  CHECK(s.resumes == 0);  // still one unanswered: no room yet
  h.answer(1, make_reply(h.up.queries[1].msg, {{"b.example", dns::kTypeA, 60, rdata_a(Ipv4Addr(1, 0, 0, 2))}}));
  auto msgs = s.messages();
  REQUIRE(msgs.size() == 2);
  CHECK(Msg(msgs[0]).h().id == 1);
  CHECK(Msg(msgs[1]).a() == std::vector<Ipv4Addr>{Ipv4Addr(1, 0, 0, 2)});
  CHECK(s.closed);  // the guest finished and everything is answered
}

TEST_CASE("dns over TCP: queries that fail at once are answered and do not count as unanswered", "[dns][tcp]") {
  DnsLimits limits;
  limits.max_tcp_queries_per_session = 1;
  Harness h(limits);
  h.up.fail = EMFILE;
  FakeStream s;
  auto svc = h.fwd->tcp_service_factory()(s);
  auto a = framed(make_query("a.example", dns::kTypeA, 1));
  auto b = framed(make_query("b.example", dns::kTypeA, 2));
  std::vector<uint8_t> seg = a;
  seg.insert(seg.end(), b.begin(), b.end());
  CHECK(svc->on_data(seg) == seg.size());
  auto msgs = s.messages();
  REQUIRE(msgs.size() == 2);
  CHECK(Msg(msgs[0]).h().rcode == dns::kServFail);
  CHECK(Msg(msgs[1]).h().id == 2);
  CHECK(svc->input_space() > 0);
  svc->on_guest_fin();
  CHECK(s.closed);
}

TEST_CASE("dns over TCP: a slow reader's backlog is kept until the stream takes it", "[dns][tcp]") {
  Harness h;
  FakeStream s;
  s.space = 10;
  auto svc = h.fwd->tcp_service_factory()(s);
  auto f = framed(make_query("host.berth.internal", dns::kTypeA, 3));
  svc->on_data(f);
  CHECK(s.out.size() == 10);
  s.space = 1 << 20;
  svc->on_writable();
  auto msgs = s.messages();
  REQUIRE(msgs.size() == 1);
  CHECK(Msg(msgs[0]).h().id == 3);
}

TEST_CASE("dns over TCP: idle connections are closed, zero-length frames reset, sessions bounded", "[dns][tcp]") {
  DnsLimits limits;
  limits.max_tcp_sessions = 2;
  Harness h(limits);
  FakeStream s1, s2, s3;
  auto a = h.fwd->tcp_service_factory()(s1);
  auto b = h.fwd->tcp_service_factory()(s2);
  CHECK_FALSE(h.fwd->tcp_service_factory()(s3));
  CHECK(h.fwd->stats().tcp_sessions_refused == 1);

  auto zero = hex("0000");
  b->on_data(zero);
  CHECK(s2.reset_);

  REQUIRE(h.up.timer);
  CHECK(*h.up.timer == h.clock.t + DnsLimits{}.tcp_idle_timeout);
  h.fire();
  CHECK(s1.closed);
  CHECK(h.fwd->stats().tcp_idle_closed == 1);
  b.reset();
  auto c = h.fwd->tcp_service_factory()(s3);
  CHECK(c);
}

TEST_CASE("dns: destroying the forwarder leaves port 53 refusing, and its sessions detached", "[dns]") {
  Harness h;
  FakeStream s;
  auto svc = h.fwd->tcp_service_factory()(s);
  h.ask("a.example", dns::kTypeA);
  h.fwd.reset();
  CHECK(h.up.live() == 0);
  CHECK(h.up.sink == nullptr);
  auto f = framed(make_query("host.berth.internal", dns::kTypeA));
  CHECK(svc->on_data(f) == f.size());
  CHECK(s.out.empty());
  svc.reset();
  size_t before = h.tx.sent.size();
  h.udp.input(udp_datagram(kGuest, 40000, kGateway, 53, make_query("host.berth.internal", 1)).packet(), h.clock.t);
  CHECK(h.tx.sent.size() == before);
}

// ================================================================ UvDnsUpstream

namespace {

// Waits for `done` with a bounded number of loop iterations, never for
// wall time: a repeating timer keeps uv_run from blocking.
bool run_until(uv_loop_t* loop, const std::function<bool()>& done, int max_iterations = 5000) {
  uv_timer_t tick;
  uv_timer_init(loop, &tick);
  uv_timer_start(&tick, [](uv_timer_t*) {}, 1, 1);
  bool ok = false;  // done() is called once per check: it may consume what it waits for
  for (int i = 0; i < max_iterations && !(ok = done()); i++) uv_run(loop, UV_RUN_ONCE);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
  return ok;
}

struct RecordingSink final : DnsUpstreamSink {
  void on_udp_datagram(uint64_t c, const DnsServerAddr& from, Bytes d, Instant) override {
    events.push_back(fmt::format("udp {} {} {}", c, from.to_string(), d.size()));
    data.assign(d.begin(), d.end());
  }
  void on_udp_error(uint64_t c, int err, Instant) override { events.push_back(fmt::format("udp-error {} {}", c, err)); }
  void on_tcp_reply(uint64_t c, Bytes d, Instant) override {
    events.push_back(fmt::format("tcp {} {}", c, d.size()));
    data.assign(d.begin(), d.end());
  }
  void on_tcp_error(uint64_t c, int err, Instant) override { events.push_back(fmt::format("tcp-error {} {}", c, err)); }
  void on_timer(Instant) override { events.push_back("timer"); }
  std::vector<std::string> events;
  std::vector<uint8_t> data;
};

uint16_t bound_port(int fd) {
  sockaddr_in sa{};
  socklen_t len = sizeof sa;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  return ntohs(sa.sin_port);
}

int bind_loopback(int type) {
  int fd = ::socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  return fd;
}

}  // namespace

TEST_CASE("uv dns upstream: a UDP query and its reply, an ICMP refusal, and the timer", "[dns][uv]") {
  uv_loop_t loop;
  uv_loop_init(&loop);
  SystemMonoClock clock;
  RecordingSink sink;
  {
    UvDnsUpstream up(&loop, clock);
    up.set_sink(&sink);
    int server = bind_loopback(SOCK_DGRAM);
    DnsServerAddr addr{false, Ipv4Addr(127, 0, 0, 1), {}, bound_port(server)};
    auto query = make_query("example.com", dns::kTypeA, 0x4444);
    auto h = up.udp_query(addr, query, 42);
    REQUIRE(h);
    CHECK(up.open_queries() == 1);
    // The "server": read the query, answer it from the same socket.
    std::vector<uint8_t> buf(512);
    sockaddr_in from{};
    socklen_t fl = sizeof from;
    ssize_t n = -1;
    REQUIRE(run_until(&loop, [&] {
      n = ::recvfrom(server, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &fl);
      return n > 0;
    }));
    CHECK(std::vector<uint8_t>(buf.begin(), buf.begin() + n) == query);
    auto reply = make_reply(query, {{"example.com", dns::kTypeA, 60, rdata_a(Ipv4Addr(1, 2, 3, 4))}});
    REQUIRE(::sendto(server, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), fl) ==
            ssize_t(reply.size()));
    REQUIRE(run_until(&loop, [&] { return !sink.events.empty(); }));
    CHECK(sink.events[0] == fmt::format("udp 42 {} {}", addr.to_string(), reply.size()));
    CHECK(sink.data == reply);
    up.cancel(*h);
    up.cancel(*h);  // twice: ignored
    CHECK(up.open_queries() == 0);
    ::close(server);

    // A closed port: ECONNREFUSED from the ICMP port unreachable.
    sink.events.clear();
    auto h2 = up.udp_query(addr, query, 43);
    REQUIRE(h2);
    REQUIRE(run_until(&loop, [&] { return !sink.events.empty(); }));
    CHECK(sink.events[0] == fmt::format("udp-error 43 {}", ECONNREFUSED));
    up.cancel(*h2);

    sink.events.clear();
    up.set_timer(clock.now() + 5ms);
    REQUIRE(run_until(&loop, [&] { return !sink.events.empty(); }));
    CHECK(sink.events[0] == "timer");
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("uv dns upstream: a TCP query gets the length-prefixed reply, a refused connect an error", "[dns][uv]") {
  uv_loop_t loop;
  uv_loop_init(&loop);
  SystemMonoClock clock;
  RecordingSink sink;
  {
    UvDnsUpstream up(&loop, clock);
    up.set_sink(&sink);
    int listener = bind_loopback(SOCK_STREAM);
    REQUIRE(::listen(listener, 4) == 0);
    DnsServerAddr addr{false, Ipv4Addr(127, 0, 0, 1), {}, bound_port(listener)};
    auto query = make_query("big.example", dns::kTypeTxt, 0x5555);
    auto h = up.tcp_query(addr, query, 7);
    REQUIRE(h);
    int conn = -1;
    REQUIRE(run_until(&loop, [&] { return (conn = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK)) >= 0; }));
    std::vector<uint8_t> got;
    REQUIRE(run_until(&loop, [&] {
      uint8_t b[1024];
      ssize_t n = ::recv(conn, b, sizeof b, 0);
      if (n > 0) got.insert(got.end(), b, b + n);
      return got.size() >= 2 + query.size();
    }));
    CHECK(got == framed(query));
    std::vector<Rr> many;
    for (int i = 0; i < 20; i++) many.push_back({"big.example", dns::kTypeTxt, 60, rdata_txt(std::string(200, 'x'))});
    auto reply = framed(make_reply(query, many));
    // In two pieces, with junk after the message that must be ignored.
    REQUIRE(::send(conn, reply.data(), 100, 0) == 100);
    run_until(&loop, [&] { return false; }, 20);  // the first piece arrives alone
    CHECK(sink.events.empty());
    reply.push_back(0xee);
    REQUIRE(::send(conn, reply.data() + 100, reply.size() - 100, 0) == ssize_t(reply.size() - 100));
    REQUIRE(run_until(&loop, [&] { return !sink.events.empty(); }));
    CHECK(sink.events[0] == fmt::format("tcp 7 {}", reply.size() - 3));
    CHECK(sink.data == std::vector<uint8_t>(reply.begin() + 2, reply.end() - 1));
    up.cancel(*h);
    ::close(conn);
    ::close(listener);

    sink.events.clear();
    auto h2 = up.tcp_query(addr, query, 8);  // the listener is gone
    REQUIRE(h2);
    REQUIRE(run_until(&loop, [&] { return !sink.events.empty(); }));
    CHECK(sink.events[0] == fmt::format("tcp-error 8 {}", ECONNREFUSED));
    up.cancel(*h2);

    // Cancelled before it connects: nothing is reported.
    sink.events.clear();
    auto h3 = up.tcp_query(addr, query, 9);
    REQUIRE(h3);
    up.cancel(*h3);
    run_until(&loop, [&] { return false; }, 20);
    CHECK(sink.events.empty());
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(uv_loop_close(&loop) == 0);
}
