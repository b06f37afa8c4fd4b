// Capture rules end to end without a network: ctl parsing and its errors,
// tcpdump filters through libpcap on hand-built frames, counters, the link
// wrapper on a fake link, and the /pcap tree over an in-memory 9P session
// (snapshots read back by libpcap, live streams that park, skip and end,
// and the audit lines every open and read leaves).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <pcap/pcap.h>

#include <cstdio>
#include <string>
#include <vector>

#include "common/clock.h"
#include "net/link/frame_link.h"
#include "pcap-ring/capture.h"
#include "pcap-ring/link.h"
#include "pcap-ring/tree.h"
#include "server9p/base.h"
#include "server9p/client.h"
#include "server9p/pipe.h"

using namespace berth;
using namespace berth::pcap;

namespace {

using V = std::vector<uint8_t>;

// ---- frames ----------------------------------------------------------------

V eth(uint16_t type) {
  V f = {0x02, 0, 0, 0, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, uint8_t(type >> 8), uint8_t(type)};
  return f;
}
V arp_request() {
  V f = eth(0x0806);
  V a = {0, 1, 8, 0, 6, 4, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 192, 168, 65, 3,
         0, 0, 0, 0, 0, 0, 192, 168, 65, 1};
  f.insert(f.end(), a.begin(), a.end());
  return f;
}
V ipv4(uint8_t proto, const V& payload) {
  V f = eth(0x0800);
  uint16_t total = uint16_t(20 + payload.size());
  V h = {0x45, 0, uint8_t(total >> 8), uint8_t(total), 0, 1, 0x40, 0, 64, proto, 0, 0, 192, 168, 65, 3, 192, 168, 65, 1};
  f.insert(f.end(), h.begin(), h.end());
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}
V udp(uint16_t sport, uint16_t dport, size_t body = 20) {
  V u = {uint8_t(sport >> 8), uint8_t(sport), uint8_t(dport >> 8), uint8_t(dport), uint8_t((8 + body) >> 8),
         uint8_t(8 + body), 0, 0};
  u.resize(8 + body, 0x11);
  return ipv4(17, u);
}
V tcp(uint16_t sport, uint16_t dport, uint8_t flags = 0x02, size_t body = 0) {
  V t = {uint8_t(sport >> 8), uint8_t(sport), uint8_t(dport >> 8), uint8_t(dport), 0, 0, 0, 1, 0, 0, 0, 0,
         0x50, flags, 0xff, 0xff, 0, 0, 0, 0};
  t.resize(20 + body, 0x22);
  return ipv4(6, t);
}
V icmp_echo() { return ipv4(1, V{8, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g'}); }

FakeClock fixed_clock() {
  FakeClock c;
  c.t = {1700000000, 5000};
  return c;
}

// Field `key=` of rule `name` in /pcap/rules.
uint64_t field(const std::string& rules, const std::string& name, const std::string& key) {
  size_t at = rules.find(name + " limit=");
  while (at != std::string::npos && at != 0 && rules[at - 1] != '\n') at = rules.find(name + " limit=", at + 1);
  REQUIRE(at != std::string::npos);
  size_t eol = rules.find('\n', at);
  std::string line = rules.substr(at, eol - at);
  size_t k = line.find(" " + key + "=");
  REQUIRE(k != std::string::npos);
  return std::stoull(line.substr(k + key.size() + 2));
}

struct Pkt {
  uint64_t ts_ns;
  uint32_t caplen, len;
};
std::vector<Pkt> libpcap_read(const std::string& file) {
  FILE* f = fmemopen(const_cast<char*>(file.data()), file.size(), "rb");
  REQUIRE(f);
  char err[PCAP_ERRBUF_SIZE] = {};
  pcap_t* p = pcap_fopen_offline_with_tstamp_precision(f, PCAP_TSTAMP_PRECISION_NANO, err);
  INFO(err);
  REQUIRE(p);
  std::vector<Pkt> out;
  pcap_pkthdr* h;
  const u_char* d;
  int rc;
  while ((rc = pcap_next_ex(p, &h, &d)) == 1)
    out.push_back({uint64_t(h->ts.tv_sec) * 1000000000ull + uint64_t(h->ts.tv_usec), h->caplen, h->len});
  CHECK(rc == PCAP_ERROR_BREAK);
  pcap_close(p);
  return out;
}

class FakeLink final : public net::FrameLink {
 public:
  std::string type() const override { return "fake"; }
  std::string peer() const override { return "peer0"; }
  Result<void> start(Receive rx) override {
    rx_ = std::move(rx);
    return {};
  }
  bool send(Bytes frame) override {
    if (!accept) return false;
    sent.emplace_back(frame.begin(), frame.end());
    stats_.tx_frames++;
    return true;
  }
  void close() override { closed = true; }
  size_t max_frame() const override { return 1514; }
  bool writable() const override { return accept; }
  void deliver(const V& f) { rx_(f); }
  void fire_writable() {
    if (on_writable_) on_writable_();
  }

  bool accept = true, closed = false;
  std::vector<V> sent;
  Receive rx_;
};

}  // namespace

// ---- the ctl grammar -----------------------------------------------------------

TEST_CASE("ctl commands parse: filter words in order, options anywhere", "[pcap][ctl]") {
  auto c = parse_command("add web tcp port 80 limit=2M and host 10.0.0.1 snaplen=128");
  REQUIRE(c);
  CHECK(c->op == Command::Op::Add);
  CHECK(c->spec.name == "web");
  CHECK(c->spec.filter == "tcp port 80 and host 10.0.0.1");
  CHECK(c->spec.limit == 2u << 20);
  CHECK(c->spec.snaplen == 128);

  c = parse_command("  add\teverything  ");
  REQUIRE(c);
  CHECK(c->spec.filter.empty());
  CHECK(c->spec.limit == kDefaultLimit);
  CHECK(c->spec.snaplen == kDefaultSnaplen);

  c = parse_command("rm dns");
  REQUIRE(c);
  CHECK(c->op == Command::Op::Rm);
  c = parse_command("clear all");
  REQUIRE(c);
  CHECK(c->op == Command::Op::Clear);
  CHECK(c->spec.name == "all");
}

TEST_CASE("sizes take k, m and g suffixes in powers of 1024", "[pcap][ctl]") {
  CHECK(*parse_size("4096") == 4096);
  CHECK(*parse_size("256k") == 256 * 1024);
  CHECK(*parse_size("256KiB") == 256 * 1024);
  CHECK(*parse_size("1M") == 1 << 20);
  CHECK(*parse_size("1mb") == 1 << 20);
  CHECK(*parse_size("2g") == 2ull << 30);
  for (auto bad : {"", "k", "1x", "1.5M", "-1", "99999999999999999999", "18446744073709551615g"}) {
    INFO(bad);
    auto r = parse_size(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EINVAL);
  }
}

TEST_CASE("bad ctl commands are EINVAL with a message that says what is wrong", "[pcap][ctl]") {
  struct Case {
    const char* line;
    const char* says;
  };
  for (auto [line, says] : {Case{"", "empty command"}, Case{"frobnicate x", "unknown command 'frobnicate'"},
                            Case{"add", "needs a rule name"}, Case{"rm", "needs a rule name"},
                            Case{"add ../etc port 53", "bad rule name"}, Case{"add -x", "bad rule name"},
                            Case{"add aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bad rule name"},
                            Case{"add x limit=1M limit=2M", "given twice"}, Case{"add x limit=lots", "bad size"},
                            Case{"add x snaplen=0", "bad snaplen"}, Case{"add x snaplen=262145", "bad snaplen"},
                            Case{"add x snaplen=12ab", "bad snaplen"}, Case{"rm a b", "one rule name"},
                            Case{"clear", "needs a rule name"}}) {
    INFO(line);
    auto r = parse_command(line);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EINVAL);
    CHECK_THAT(r.error().message, Catch::Contains(says));
  }
}

// ---- filters ---------------------------------------------------------------------

TEST_CASE("tcpdump filters compile with libpcap and match the frames they name", "[pcap][filter]") {
  V dns = udp(40000, 53), dhcp = udp(68, 67), web = tcp(50000, 80), arp = arp_request(), ping = icmp_echo();
  auto f = [](const char* expr) {
    auto r = Filter::compile(expr, 65535);
    INFO(expr << ": " << (r ? "" : r.error().message));
    REQUIRE(r);
    return std::move(r.value());
  };
  Filter all = f("");
  for (auto* fr : {&dns, &dhcp, &web, &arp, &ping}) CHECK(all.matches(*fr));
  Filter port53 = f("port 53");
  CHECK(port53.matches(dns));
  CHECK_FALSE(port53.matches(web));
  CHECK_FALSE(port53.matches(arp));
  Filter dhcpf = f("port 67 or port 68");
  CHECK(dhcpf.matches(dhcp));
  CHECK_FALSE(dhcpf.matches(dns));
  Filter icmp = f("icmp");
  CHECK(icmp.matches(ping));
  CHECK_FALSE(icmp.matches(dns));
  Filter arpf = f("arp");
  CHECK(arpf.matches(arp));
  CHECK_FALSE(arpf.matches(ping));
  Filter syn = f("tcp[tcpflags] & tcp-syn != 0 and dst port 80");
  CHECK(syn.matches(web));
  CHECK_FALSE(syn.matches(tcp(50000, 80, 0x10)));
  Filter host = f("src host 192.168.65.3 and udp");
  CHECK(host.matches(dns));
  CHECK_FALSE(host.matches(web));
  // A truncated frame never matches by reading past its end.
  CHECK_FALSE(port53.matches(Bytes(dns).first(20)));
}

TEST_CASE("a filter libpcap cannot compile is EINVAL with libpcap's message", "[pcap][filter]") {
  auto r = Filter::compile("port 53 and and", 65535);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == EINVAL);
  CHECK_THAT(r.error().message, Catch::Contains("bad filter 'port 53 and and'") && Catch::Contains("syntax error"));
  r = Filter::compile("portt 53", 65535);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("portt"));
}

TEST_CASE("names that libpcap would resolve by DNS are refused before compiling", "[pcap][filter]") {
  // Each of these would make pcap_compile call getaddrinfo (a host name,
  // possibly a DNS query that blocks the loop): refused, never compiled.
  for (auto expr : {"host example.com", "example.com", "src foo", "dst host router and port 53",
                    "port 53 or src domain", "tcp and (foo or 10.0.0.1)", "gateway gw", "len-14",
                    "1.2.3.4.5", "ether host face", "host \\tcp", "net corp", "TCP"}) {
    INFO(expr);
    auto r = Filter::compile(expr, 65535);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EINVAL);
    CHECK_THAT(r.error().message, Catch::Contains("would be looked up as a name"));
  }
  // Addresses, numbers, and names libpcap finds in local files are fine.
  for (auto expr : {"host 10.1.2.3", "net 10.0.0.0/8", "net 10.0 mask 255.255.0.0", "ether host 02:00:5e:00:00:ab",
                    "ether src 02-00-5e-00-00-ab", "ip6 host fe80::1", "host ::ffff:10.0.0.1", "port domain",
                    "tcp port http or https", "udp port 53 or domain", "portrange 1000-2000", "tcp portrange 20-21",
                    "ether proto \\ip", "ip proto \\tcp", "ip6 protochain 6", "vlan and ether[12:2] = 0x8100",
                    "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0", "ip[2:2]-20 > 100", "icmp[icmptype] = icmp-echo",
                    "less 64 or greater 1000", "llc s"}) {
    INFO(expr);
    auto names = Filter::check_names(expr);
    INFO((names ? std::string() : names.error().message));
    CHECK(names);
    auto r = Filter::compile(expr, 65535);
    INFO((r ? std::string() : r.error().message));
    CHECK(r);
  }
}

// ---- the capture set ---------------------------------------------------------------

TEST_CASE("the default rules exist from the start with their limits", "[pcap][rules]") {
  FakeClock clock = fixed_clock();
  CaptureSet set(clock);
  REQUIRE(set.rules().size() == 4);
  auto spec = [&](const char* n) { return set.find(n)->spec(); };
  CHECK(spec("all").filter.empty());
  CHECK(spec("all").limit == 1 << 20);
  CHECK(spec("all").snaplen == 256);
  CHECK(spec("dns").filter == "port 53");
  CHECK(spec("dns").limit == 256 << 10);
  CHECK(spec("dhcp").filter == "port 67 or port 68");
  CHECK(spec("dhcp").limit == 64 << 10);
  CHECK(spec("icmp").filter == "icmp");
  CHECK(spec("icmp").limit == 64 << 10);
  CHECK(spec("dns").snaplen == 65535);
  CHECK(spec("dhcp").snaplen == 1514);
  CHECK(spec("icmp").snaplen == 1514);
  CHECK(set.active());
  CaptureSet none(clock, false);
  CHECK_FALSE(none.active());
}

TEST_CASE("each rule keeps what its filter matches, cut to its snaplen, with counters", "[pcap][rules]") {
  FakeClock clock = fixed_clock();
  CaptureSet set(clock);
  V big = tcp(50000, 80, 0x18, 1000);
  set.capture(0, Direction::FromGuest, arp_request());
  set.capture(0, Direction::FromGuest, udp(40000, 53));
  set.capture(0, Direction::ToGuest, udp(53, 40000));
  set.capture(0, Direction::FromGuest, udp(68, 67));
  set.capture(0, Direction::FromGuest, icmp_echo());
  set.capture(0, Direction::ToGuest, big);
  std::string rules = set.render_rules();
  INFO(rules);
  CHECK(field(rules, "all", "matched_packets") == 6);
  CHECK(field(rules, "all", "kept_packets") == 6);
  CHECK(field(rules, "dns", "matched_packets") == 2);
  CHECK(field(rules, "dhcp", "matched_packets") == 1);
  CHECK(field(rules, "icmp", "matched_packets") == 1);
  // The big frame: matched with its whole length, kept with 256 bytes.
  auto all = set.find("all");
  uint64_t others = arp_request().size() + 2 * udp(1, 53).size() + udp(68, 67).size() + icmp_echo().size();
  CHECK(all->counters().matched_bytes == others + big.size());
  CHECK(all->counters().kept_bytes == others + 256);
  std::vector<Pkt> pkts = libpcap_read([&] {
    auto v = set.snapshot_pcap(*all);
    return std::string(v.begin(), v.end());
  }());
  REQUIRE(pkts.size() == 6);
  CHECK(pkts[5].caplen == 256);
  CHECK(pkts[5].len == big.size());
  CHECK(pkts[0].ts_ns == 1700000000ull * 1000000000 + 5000);
  CHECK(rules.find("dns limit=262144 snaplen=65535 ") != std::string::npos);
  CHECK(rules.find(" filter=port 67 or port 68\n") != std::string::npos);
}

TEST_CASE("a ring over its limit evicts the oldest packets and counts them", "[pcap][rules]") {
  FakeClock clock = fixed_clock();
  CaptureSet set(clock, false);
  REQUIRE(set.command("add small limit=4k snaplen=1500"));
  V f = udp(1000, 2000, 200);  // 242 bytes, 272 in the ring
  for (int i = 0; i < 100; i++) {
    clock.t.nsec = i;
    set.capture(0, Direction::FromGuest, f);
  }
  auto r = set.find("small");
  CHECK(r->counters().matched_packets == 100);
  CHECK(r->ring().packets() == 4096 / 272);
  CHECK(r->ring().evicted_packets() == 100 - 4096 / 272);
  CHECK(r->ring().used() <= 4096);
  auto v = set.snapshot_pcap(*r);
  auto pkts = libpcap_read(std::string(v.begin(), v.end()));
  REQUIRE(pkts.size() == 4096 / 272);
  CHECK(pkts.back().ts_ns % 1000000000 == 99);  // the newest survive
  CHECK(field(set.render_rules(), "small", "evicted_packets") == 100 - 4096 / 272);
  auto cleared = set.command("clear small");
  REQUIRE(cleared);
  CHECK(*cleared == "cleared small (15 packets)");
  CHECK(r->ring().packets() == 0);
}

TEST_CASE("ctl add, replace, rm and clear, and their errors", "[pcap][ctl][rules]") {
  FakeClock clock = fixed_clock();
  CaptureLimits lim;
  lim.max_rules = 6;
  lim.max_total = 4 << 20;
  CaptureSet set(clock, true, lim);
  auto ok = set.command("add web tcp port 80 limit=128k snaplen=1500");
  REQUIRE(ok);
  CHECK(*ok == "added web limit=131072 snaplen=1500 filter=tcp port 80");
  ok = set.command("add web tcp port 8080");
  REQUIRE(ok);
  CHECK(*ok == "replaced web limit=1048576 snaplen=65535 filter=tcp port 8080");
  CHECK(set.rules().size() == 5);

  auto err = [&](const char* line, int code, const char* says) {
    INFO(line);
    auto r = set.command(line);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == code);
    CHECK_THAT(r.error().message, Catch::Contains(says));
  };
  err("add bad udp port", EINVAL, "bad filter 'udp port'");
  err("rm nosuch", ENOENT, "no capture rule 'nosuch'");
  err("clear nosuch", ENOENT, "no capture rule 'nosuch'");
  err("add tiny limit=1k", EINVAL, "outside 4k..64M");
  err("add huge limit=65M", EINVAL, "outside 4k..64M");
  err("add fat limit=16k snaplen=65535", EINVAL, "cannot hold one packet of snaplen 65535");
  err("add big limit=3M", ENOSPC, "budget");
  REQUIRE(set.command("add sixth limit=4k snaplen=100"));
  err("add seventh limit=4k snaplen=100", ENOSPC, "too many capture rules");
  // A failed add leaves the rule it would have replaced alone.
  err("add web port 80 and", EINVAL, "bad filter");
  CHECK(set.find("web")->spec().filter == "tcp port 8080");
  REQUIRE(set.command("rm web"));
  CHECK_FALSE(set.find("web"));
  for (auto n : {"all", "dns", "dhcp", "icmp", "sixth"}) REQUIRE(set.command(std::string("rm ") + n));
  CHECK_FALSE(set.active());
}

// ---- the link wrapper --------------------------------------------------------------

TEST_CASE("the link wrapper records both directions and passes everything else through", "[pcap][link]") {
  FakeClock clock = fixed_clock();
  CaptureSet set(clock, false);
  FakeLink inner;
  auto link = wrap_link(&inner, set, 2);
  std::vector<V> got;
  REQUIRE(link->start([&](Bytes f) { got.emplace_back(f.begin(), f.end()); }));
  CHECK(link->type() == "fake");
  CHECK(link->peer() == "peer0");
  CHECK(link->max_frame() == 1514);

  // No rules: frames pass, nothing is recorded.
  inner.deliver(arp_request());
  CHECK(link->send(icmp_echo()));
  CHECK(set.frames_seen() == 0);

  REQUIRE(set.command("add every"));
  inner.deliver(arp_request());
  CHECK(link->send(icmp_echo()));
  inner.accept = false;
  CHECK_FALSE(link->send(udp(1, 2)));  // refused by the link: not recorded
  CHECK_FALSE(link->writable());
  CHECK(got.size() == 2);
  CHECK(inner.sent.size() == 2);
  CHECK(link->stats().tx_frames == 2);  // the inner link's counters
  bool woke = false;
  link->set_on_writable([&] { woke = true; });
  inner.fire_writable();
  CHECK(woke);

  auto r = set.find("every");
  CHECK(r->ring().packets() == 2);
  Ring::Cursor c = r->ring().begin();
  auto a = r->ring().next(c);
  CHECK(a.meta.dir == Direction::FromGuest);
  CHECK(a.meta.link == 2);
  auto b = r->ring().next(c);
  CHECK(b.meta.dir == Direction::ToGuest);
  CHECK(b.meta.orig_len == icmp_echo().size());
  link->close();
  CHECK(inner.closed);

  // The pcapng snapshot names the link and has an interface for links 0..2.
  auto ng = set.snapshot_pcapng(*r);
  std::string s(ng.begin(), ng.end());
  CHECK(s.find("fake peer0") != std::string::npos);
  CHECK(s.find("link 0") != std::string::npos);
  auto pkts = libpcap_read(s);
  CHECK(pkts.size() == 2);
}

// ---- the tree over 9P ----------------------------------------------------------------

namespace {

struct TreeRig {
  FakeClock clock = fixed_clock();
  p9::Tree tree;
  p9::MetricsRegistry metrics;
  p9::ServerStats stats;
  std::shared_ptr<p9::AuditLog> audit;
  CaptureSet set;
  p9::Client client;

  explicit TreeRig(CaptureLimits lim = {})
      : set(clock, true, lim), client(std::make_unique<p9::MemoryPipe>(tree, stats, clock)) {
    audit = p9::mount_base_tree(tree, metrics, clock, "test").audit;
    mount_pcap_tree(tree, metrics, set, audit, clock);
    REQUIRE(client.version());
    REQUIRE(client.attach(""));
  }
  uint32_t open(const std::string& path) {
    auto fid = client.walk(client.root(), path);
    REQUIRE(fid);
    REQUIRE(client.open(*fid, O_RDONLY));
    return *fid;
  }
  p9::Fcall tread(uint32_t fid, uint32_t count) {
    p9::Fcall f;
    f.type = p9::Tread;
    f.fid = fid;
    f.offset = 0;
    f.count = count;
    return f;
  }
};

}  // namespace

TEST_CASE("/pcap lists ctl, rules and three files per rule", "[pcap][tree]") {
  TreeRig rig;
  auto ls = rig.client.ls("pcap");
  REQUIRE(ls);
  std::vector<std::string> names;
  for (auto& e : *ls)
    if (e.name != "." && e.name != "..") names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"ctl", "rules", "all.pcap", "all.pcapng", "all.live", "dns.pcap",
                                          "dns.pcapng", "dns.live", "dhcp.pcap", "dhcp.pcapng", "dhcp.live",
                                          "icmp.pcap", "icmp.pcapng", "icmp.live"});
  auto q1 = rig.client.stat("pcap/dns.pcap");
  REQUIRE(rig.client.ctl("pcap/ctl", "add web port 80\n"));
  auto q2 = rig.client.stat("pcap/dns.pcap");
  REQUIRE(q1);
  REQUIRE(q2);
  CHECK(q1->qid.path == q2->qid.path);  // stable while the rule lives
  CHECK(rig.client.stat("pcap/web.live"));
  auto bad = rig.client.ctl("pcap/ctl", "add x port 99999");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == EINVAL);
  CHECK_THAT(bad.error().message, Catch::Contains("ERROR bad filter 'port 99999'"));
  auto readme = rig.client.cat("README");
  REQUIRE(readme);
  CHECK_THAT(*readme, Catch::Contains("/pcap/ctl"));
}

TEST_CASE("reading a capture file gives a pcap snapshot, and /audit records who read it", "[pcap][tree][audit]") {
  TreeRig rig;
  rig.set.capture(0, Direction::FromGuest, udp(40000, 53));
  rig.set.capture(0, Direction::ToGuest, udp(53, 40000));
  auto st = rig.client.stat("pcap/dns.pcap");
  REQUIRE(st);
  CHECK(st->size == 24 + 2 * (16 + udp(1, 53).size()));
  auto file = rig.client.cat("pcap/dns.pcap");
  REQUIRE(file);
  CHECK(file->size() == st->size);
  auto pkts = libpcap_read(*file);
  REQUIRE(pkts.size() == 2);
  CHECK(pkts[0].ts_ns == 1700000000ull * 1000000000 + 5000);
  auto ng = rig.client.cat("pcap/dns.pcapng");
  REQUIRE(ng);
  CHECK(libpcap_read(*ng).size() == 2);

  auto audit = rig.client.cat("audit");
  REQUIRE(audit);
  INFO(*audit);
  CHECK_THAT(*audit, Catch::Contains("2023-11-14T22:13:20.000005Z open /pcap/dns.pcap size=" +
                                     std::to_string(st->size) + " peer=memory uname=berth\n"));
  CHECK_THAT(*audit, Catch::Contains(" read /pcap/dns.pcap bytes=" + std::to_string(st->size) +
                                     " peer=memory uname=berth\n"));
  CHECK_THAT(*audit, Catch::Contains(" close /pcap/dns.pcap bytes=" + std::to_string(st->size) +
                                     " peer=memory uname=berth\n"));
  CHECK_THAT(*audit, Catch::Contains(" open /pcap/dns.pcapng size="));
  // The ctl, rules and other files are not captures: no audit lines.
  CHECK(audit->find("/pcap/rules") == std::string::npos);
}

TEST_CASE("capture files are read-only", "[pcap][tree]") {
  TreeRig rig;
  auto fid = rig.client.walk(rig.client.root(), "pcap/all.pcap");
  REQUIRE(fid);
  auto r = rig.client.open(*fid, O_WRONLY);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == EACCES);
}

TEST_CASE("reads of one open file are coalesced to one audit line per second", "[pcap][tree][audit]") {
  TreeRig rig;
  for (int i = 0; i < 50; i++) rig.set.capture(0, Direction::FromGuest, tcp(1, 2, 0x18, 500));
  uint32_t fid = rig.open("pcap/all.pcap");
  uint64_t total = 0;
  for (int i = 0; i < 10; i++) {
    auto d = rig.client.read(fid, total, 100);
    REQUIRE(d);
    total += d->size();
  }
  rig.clock.t.sec += 2;
  auto d = rig.client.read(fid, total, 100);
  REQUIRE(d);
  total += d->size();
  REQUIRE(rig.client.clunk(fid));
  std::string a = rig.audit->render();
  INFO(a);
  CHECK_THAT(a, Catch::Contains(" read /pcap/all.pcap bytes=100 "));   // the first read
  CHECK_THAT(a, Catch::Contains(" read /pcap/all.pcap bytes=1000 "));  // 9 coalesced + the one 2 s later
  CHECK_THAT(a, Catch::Contains(" close /pcap/all.pcap bytes=1100 "));
  CHECK(total == 1100);
}

TEST_CASE("a live stream gives the header, parks, and wakes on new packets after run_wakeups", "[pcap][tree][live]") {
  TreeRig rig;
  rig.set.capture(0, Direction::FromGuest, icmp_echo());  // before the open: not in the stream
  uint32_t fid = rig.open("pcap/icmp.live");
  auto hdr = rig.client.read(fid, 0, 4096);
  REQUIRE(hdr);
  REQUIRE(hdr->size() == 24);
  CHECK(load_le32(hdr->data()) == kPcapMagicNs);
  CHECK(load_le32(hdr->data() + 16) == 1514);

  REQUIRE(rig.client.send(rig.tread(fid, 4096)));
  auto none = rig.client.recv();
  REQUIRE_FALSE(none);
  CHECK(none.error().code == EAGAIN);  // parked
  rig.set.capture(0, Direction::ToGuest, icmp_echo());
  rig.set.capture(0, Direction::ToGuest, udp(1, 2));  // not icmp
  none = rig.client.recv();
  REQUIRE_FALSE(none);  // woken only from the loop, never from the data path
  CHECK(rig.set.wakeups_pending());
  rig.set.run_wakeups();
  auto r = rig.client.recv();
  REQUIRE(r);
  CHECK(r->type == p9::Rread);
  REQUIRE(r->data.size() == 16 + icmp_echo().size());
  CHECK(load_le32(r->data.data() + 12) == icmp_echo().size());
  CHECK(field(rig.set.render_rules(), "icmp", "live_readers") == 1);

  // Removing the rule ends the stream: a parked read gets end of file.
  REQUIRE(rig.client.send(rig.tread(fid, 4096)));
  REQUIRE_FALSE(rig.client.recv());
  REQUIRE(rig.client.ctl("pcap/ctl", "rm icmp"));
  rig.set.run_wakeups();
  r = rig.client.recv();
  REQUIRE(r);
  CHECK(r->type == p9::Rread);
  CHECK(r->data.empty());
  REQUIRE(rig.client.clunk(fid));
  CHECK(rig.set.open_count() == 0);
  std::string a = rig.audit->render();
  CHECK_THAT(a, Catch::Contains(" open /pcap/icmp.live size=0 peer=memory uname=berth"));
  CHECK_THAT(a, Catch::Contains(" close /pcap/icmp.live bytes=" + std::to_string(24 + 16 + icmp_echo().size())));
}

TEST_CASE("a live reader that falls behind skips ahead, counted; reads return whole records", "[pcap][tree][live]") {
  TreeRig rig;
  REQUIRE(rig.client.ctl("pcap/ctl", "add small limit=4k snaplen=1500"));
  uint32_t fid = rig.open("pcap/small.live");
  V f = udp(1000, 2000, 200);  // 242 bytes: 258 in the stream, 272 in the ring
  for (int i = 0; i < 40; i++) rig.set.capture(0, Direction::FromGuest, f);
  auto d = rig.client.read(fid, 0, 24 + 3 * 258 + 100);
  REQUIRE(d);
  CHECK(d->size() == 24 + 3 * 258);  // whole records only
  uint64_t kept = 4096 / 272;
  CHECK(rig.set.find("small")->counters().live_skipped == 40 - kept);
  uint64_t got = 3;
  for (;;) {
    auto more = rig.client.read(fid, 0, 1000);
    if (!more) {
      CHECK(more.error().code == EAGAIN);  // drained; the client library sees the parked read as EAGAIN
      break;
    }
    CHECK(more->size() % 258 == 0);
    got += more->size() / 258;
  }
  CHECK(got == kept);
  CHECK(field(rig.set.render_rules(), "small", "live_skipped") == 40 - kept);
}

TEST_CASE("a read smaller than one record gets the record in pieces", "[pcap][tree][live]") {
  TreeRig rig;
  uint32_t fid = rig.open("pcap/all.live");
  V f = tcp(1, 2, 0x18, 300);  // cut to 256 by the all rule
  rig.set.capture(0, Direction::FromGuest, f);
  std::string stream;
  while (stream.size() < 24 + 16 + 256) {
    auto d = rig.client.read(fid, 0, 10);
    REQUIRE(d);
    REQUIRE(d->size() <= 10);
    stream.append(d->begin(), d->end());
  }
  auto pkts = libpcap_read(stream);
  REQUIRE(pkts.size() == 1);
  CHECK(pkts[0].caplen == 256);
  CHECK(pkts[0].len == f.size());
}

TEST_CASE("open capture files are bounded", "[pcap][tree]") {
  CaptureLimits lim;
  lim.max_open = 2;
  lim.max_readers_per_rule = 1;
  TreeRig rig(lim);
  uint32_t a = rig.open("pcap/all.live");
  auto fid = rig.client.walk(rig.client.root(), "pcap/all.live");
  REQUIRE(fid);
  auto r = rig.client.open(*fid, O_RDONLY);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == ENFILE);  // one live reader per rule here
  REQUIRE(rig.client.clunk(*fid));
  uint32_t b = rig.open("pcap/dns.pcap");
  fid = rig.client.walk(rig.client.root(), "pcap/dns.pcapng");
  REQUIRE(fid);
  r = rig.client.open(*fid, O_RDONLY);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == ENFILE);
  REQUIRE(rig.client.clunk(*fid));
  REQUIRE(rig.client.clunk(a));
  REQUIRE(rig.client.clunk(b));
  CHECK(rig.set.open_count() == 0);
  CHECK(rig.set.snapshot_bytes() == 0);
  CHECK(rig.client.cat("pcap/dns.pcapng"));
}

TEST_CASE("the bytes open snapshots hold are bounded", "[pcap][tree]") {
  CaptureLimits lim;
  lim.max_snapshot_bytes = 1500;
  TreeRig rig(lim);
  for (int i = 0; i < 5; i++) rig.set.capture(0, Direction::FromGuest, udp(1, 53, 40));  // 82-byte frames
  uint32_t a = rig.open("pcap/dns.pcap");  // 24 + 5 * (16 + 82) = 514 bytes
  uint32_t b = rig.open("pcap/dns.pcap");
  CHECK(rig.set.snapshot_bytes() == 1028);
  auto fid = rig.client.walk(rig.client.root(), "pcap/dns.pcap");
  REQUIRE(fid);
  auto r = rig.client.open(*fid, O_RDONLY);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == ENFILE);
  REQUIRE(rig.client.clunk(a));
  CHECK(rig.client.open(*fid, O_RDONLY));
  REQUIRE(rig.client.clunk(*fid));
  REQUIRE(rig.client.clunk(b));
  CHECK(rig.set.snapshot_bytes() == 0);
}

TEST_CASE("/metrics carries the capture counters", "[pcap][tree]") {
  TreeRig rig;
  rig.set.capture(0, Direction::FromGuest, udp(40000, 53));
  auto m = rig.client.cat("metrics");
  REQUIRE(m);
  CHECK_THAT(*m, Catch::Contains("berth_pcap_rules 4\n"));
  CHECK_THAT(*m, Catch::Contains("berth_pcap_packets_total{rule=\"dns\",what=\"matched\"} 1\n"));
  CHECK_THAT(*m, Catch::Contains("berth_pcap_bytes_total{rule=\"all\",what=\"kept\"} " +
                                 std::to_string(udp(1, 53).size()) + "\n"));
}
