// Theory of operation: the gateway's DNS forwarder (see dns.h).
//
// A query from a guest arrives as a UDP datagram (UdpNat service on port 53)
// or as a length-prefixed message on a TCP connection (a TcpSession, one per
// connection). Either way handle_query() decides, in this order:
//   1. Bad input: a message whose header cannot be read, or that is a
//      response, is dropped; an opcode other than QUERY gets NOTIMP; a
//      message that does not parse, or holds other than one question, gets
//      FORMERR. All counted as malformed.
//   2. Local answers (answer_local): hosts tables, the built-in names, DHCP
//      names, the local zone's apex, and reverse names we own.
//   3. The cache (cache_get).
//   4. Forwarding: a Pending slot (bounded table, typed by slot + generation,
//      the generation travelling as the upstream cookie) holds the guest's
//      query and where its answer goes. Each try sends the guest's question
//      with a fresh id (IdSource) from a fresh upstream socket, to the next
//      upstream in turn; one sorted set of deadlines drives the timeouts.
//
// Upstream events find their Pending by cookie; a reply must match the try
// (source, id, question), else it is counted as mismatched and the try keeps
// waiting. TC switches the try to TCP on the same upstream. SERVFAIL,
// REFUSED, ICMP errors, TCP errors and timeouts move to the next try; after
// max_tries the guest gets SERVFAIL. A good reply is cached, then sent to
// the guest with the guest's id and the guest's spelling of the question.
//
// The one DnsUpstream timer is armed (rearm) for the earliest of: the next
// try deadline, the next --hosts file check, the next TCP idle deadline.
// Everything ends with rearm() at the end of each entry point.
//
// A TcpSession reassembles frames from what the guest sends (at most one
// maximum-size message buffered), answers in the order answers become
// ready (RFC 7766 §7 allows out of order), and pauses its input (window 0)
// while max_tcp_queries_per_session queries are unanswered or its output
// backlog is over kMaxSessionOutput.
#include "net/dns.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <random>

namespace berth::net {

using wire::DnsBuilder;
using wire::DnsHeader;
using wire::DnsMessage;
using wire::DnsName;
using wire::DnsQuestion;
using wire::Ipv4Addr;
using wire::Ipv6Addr;
namespace dns = wire::dns;

namespace {

constexpr size_t kMaxSessionInput = 2 + 65535;          // one message of the largest size
constexpr size_t kMaxSessionOutput = size_t(256) << 10;  // answers the stream has not taken
constexpr size_t kMaxUpstreams = 16;
constexpr size_t kMaxResolvConf = size_t(64) << 10;
constexpr auto kFileCheck = std::chrono::seconds(1);

Result<std::string> read_file(const std::string& path, size_t max) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(errno, fmt::format("{}: {}", path, std::strerror(errno)));
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return make_error(e, fmt::format("{}: {}", path, std::strerror(e)));
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
    if (out.size() > max) {
      ::close(fd);
      return make_error(EFBIG, fmt::format("{}: larger than {} bytes", path, max));
    }
  }
  ::close(fd);
  return out;
}

std::string key_of(const DnsName& n) { return std::string(as_chars(n.lower().wire())); }

std::vector<std::string_view> split_ws(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') j++;
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

bool host_name_chars(std::string_view s) {
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.';
    if (!ok) return false;
  }
  return true;
}

uint64_t micros(std::chrono::nanoseconds d) {
  return d.count() <= 0 ? 0 : uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
}

}  // namespace

std::string DnsStats::render() const {
  double avg_ms = latency_count ? double(latency_sum_us) / double(latency_count) / 1000.0 : 0.0;
  return fmt::format(
      "queries_udp {}\nqueries_tcp {}\nlocal_answers {}\nlocal_nxdomain {}\ncache_hits {}\ncache_misses {}\n"
      "cache_evictions {}\nupstream_queries {}\nupstream_tcp_queries {}\nupstream_answers {}\n"
      "upstream_failures {}\nupstream_timeouts {}\nmismatched {}\ntruncated_retries {}\ntruncated_to_guest {}\n"
      "servfail_sent {}\nmalformed {}\noutstanding_full {}\nduplicates {}\nno_upstream {}\n"
      "tcp_sessions_opened {}\ntcp_sessions_refused {}\ntcp_idle_closed {}\nreplies_dropped {}\n"
      "upstream_latency_count {}\nupstream_latency_sum_us {}\nupstream_latency_last_ms {:.3f}\n"
      "upstream_latency_avg_ms {:.3f}\nupstream_latency_max_ms {:.3f}\nhosts_reloads {}\nhosts_reload_errors {}\n"
      "resolv_reloads {}\n",
      queries_udp, queries_tcp, local_answers, local_nxdomain, cache_hits, cache_misses, cache_evictions,
      upstream_queries, upstream_tcp_queries, upstream_answers, upstream_failures, upstream_timeouts, mismatched,
      truncated_retries, truncated_to_guest, servfail_sent, malformed, outstanding_full, duplicates, no_upstream,
      tcp_sessions_opened, tcp_sessions_refused, tcp_idle_closed, replies_dropped, latency_count, latency_sum_us,
      double(latency_last_us) / 1000.0, avg_ms, double(latency_max_us) / 1000.0, hosts_reloads, hosts_reload_errors,
      resolv_reloads);
}

// ---- TCP sessions -------------------------------------------------------------

class DnsForwarder::TcpSession final : public TcpService {
 public:
  TcpSession(DnsForwarder* f, TcpServiceStream& s, uint32_t index, uint32_t gen, Instant now)
      : fwd_(f), stream_(s), index_(index), gen_(gen), last_active_(now) {}
  ~TcpSession() override {
    if (fwd_) fwd_->session_gone(index_);
  }

  size_t on_data(Bytes data) override {
    if (!fwd_ || dead_ || closed_) return data.size();  // discarded: the connection is going away
    size_t n = std::min(data.size(), kMaxSessionInput - in_.size());
    in_.insert(in_.end(), data.begin(), data.begin() + ptrdiff_t(n));
    Instant now = fwd_->clock_.now();
    last_active_ = now;
    process(now);
    fwd_->rearm(now);
    return n;
  }

  void on_guest_fin() override {
    fin_ = true;
    if (!fwd_) return;
    maybe_finish();
    fwd_->rearm(fwd_->clock_.now());
  }

  void on_writable() override {
    if (!fwd_) return;
    drain();
    Instant now = fwd_->clock_.now();
    resume(now);
    fwd_->rearm(now);
  }

  size_t input_space() const override {
    if (!fwd_ || dead_ || closed_) return size_t(64) << 10;  // taken and discarded
    return paused() ? 0 : kMaxSessionInput - in_.size();
  }

  // An answer for this connection; `completes` when it ends a query that
  // was counted as unanswered.
  void reply(Bytes msg, bool completes) {
    if (completes && inflight_ > 0) inflight_--;
    if (dead_ || closed_ || !fwd_) return;
    std::vector<uint8_t> frame(2 + msg.size());
    store_be16(frame.data(), uint16_t(msg.size()));
    std::memcpy(frame.data() + 2, msg.data(), msg.size());
    out_bytes_ += frame.size();
    out_.push_back(std::move(frame));
    drain();
    Instant now = fwd_->clock_.now();
    last_active_ = now;
    if (completes) resume(now);
  }

  void detach() { fwd_ = nullptr; }

  // When the connection counts as idle, if it can.
  std::optional<Instant> idle_deadline() const {
    if (dead_ || !fwd_) return std::nullopt;
    if (closed_) return last_active_ + 2 * fwd_->limits_.tcp_idle_timeout;
    if (inflight_ > 0 || !out_.empty()) return std::nullopt;
    return last_active_ + fwd_->limits_.tcp_idle_timeout;
  }

  void idle_check(Instant now) {
    auto at = idle_deadline();
    if (!at || now < *at) return;
    if (!closed_) {
      // RFC 7766 §6.2.3: the server closes idle connections.
      fwd_->stats_.tcp_idle_closed++;
      closed_ = true;
      last_active_ = now;
      stream_.close();
    } else {
      dead_ = true;  // closed long ago and the guest never finished: give up
      stream_.reset();
    }
  }

 private:
  bool paused() const {
    return inflight_ >= fwd_->limits_.max_tcp_queries_per_session || out_bytes_ >= kMaxSessionOutput;
  }

  bool complete_frame() const { return in_.size() >= 2 && in_.size() - 2 >= load_be16(in_.data()); }

  // Answer every whole message buffered, while not paused.
  void process(Instant now) {
    if (processing_) return;
    processing_ = true;
    size_t off = 0;
    while (fwd_ && !dead_ && !closed_ && !paused() && in_.size() - off >= 2) {
      size_t len = load_be16(&in_[off]);
      if (len == 0) {  // not a message: this connection is broken
        fwd_->stats_.malformed++;
        dead_ = true;
        stream_.reset();
        break;
      }
      if (in_.size() - off - 2 < len) break;
      Bytes msg(&in_[off + 2], len);
      off += 2 + len;
      fwd_->stats_.queries_tcp++;
      Client c;
      c.session = index_;
      c.session_gen = gen_;
      if (fwd_->handle_query(msg, c, now)) inflight_++;
    }
    in_.erase(in_.begin(), in_.begin() + ptrdiff_t(off));
    processing_ = false;
    maybe_finish();
  }

  // After answers left or queries finished: take buffered messages, and
  // tell the guest its window opened.
  void resume(Instant now) {
    process(now);
    if (!dead_ && !closed_ && !paused()) stream_.resume_input();
    maybe_finish();
  }

  void drain() {
    while (!out_.empty()) {
      auto& head = out_.front();
      size_t n = stream_.write(Bytes(head).subspan(out_off_));
      out_off_ += n;
      out_bytes_ -= n;
      if (out_off_ < head.size()) return;  // on_writable() continues
      out_.pop_front();
      out_off_ = 0;
    }
  }

  // The guest finished sending and everything it asked is answered: FIN.
  void maybe_finish() {
    if (fin_ && !closed_ && !dead_ && inflight_ == 0 && out_.empty() && !complete_frame()) {
      closed_ = true;
      stream_.close();
    }
  }

  DnsForwarder* fwd_;
  TcpServiceStream& stream_;
  uint32_t index_, gen_;
  Instant last_active_;
  std::vector<uint8_t> in_;
  std::deque<std::vector<uint8_t>> out_;
  size_t out_off_ = 0, out_bytes_ = 0;
  size_t inflight_ = 0;
  bool fin_ = false, closed_ = false, dead_ = false, processing_ = false;
};

// ---- Construction -------------------------------------------------------------

DnsForwarder::DnsForwarder(UdpNat& udp, Tcp& tcp, DnsUpstream& upstream, const MonoClock& clock,
                           const NetConfig& cfg, IdSource ids, DnsLimits limits)
    : udp_(udp), tcp_(tcp), upstream_(upstream), clock_(clock), cfg_(cfg), ids_(std::move(ids)), limits_(limits) {
  // A zero timeout would make on_timer() retry forever within one call.
  limits_.try_timeout = std::max<std::chrono::nanoseconds>(limits_.try_timeout, std::chrono::milliseconds(1));
  limits_.tcp_idle_timeout = std::max<std::chrono::nanoseconds>(limits_.tcp_idle_timeout, std::chrono::milliseconds(1));
  limits_.max_tries = std::max(limits_.max_tries, 1);
  limits_.max_udp_payload = std::max<uint16_t>(limits_.max_udp_payload, dns::kMaxUdpPlain);
  if (!ids_) ids_ = random_ids();
  auto d = DnsName::from_text(cfg.domain);
  if (!d || d->is_root()) {
    spdlog::warn("dns: domain \"{}\" is not a valid name; using berth.internal", cfg.domain);
    d = DnsName::from_text("berth.internal");
  }
  domain_ = *d;
  upstream_.set_sink(this);
  udp_.add_service(53, [this](const GuestPacket& p, UdpNat::Reply r) { on_udp(p, r); });
  tcp_.add_service(53, tcp_service_factory());
  check_resolv_conf(clock_.now(), true);
}

DnsForwarder::~DnsForwarder() {
  // Port 53 stops answering: datagrams are ignored, connections refused.
  udp_.add_service(53, [](const GuestPacket&, UdpNat::Reply) {});
  tcp_.add_service(53, [](TcpServiceStream&) -> std::unique_ptr<TcpService> { return nullptr; });
  for (auto& p : pending_)
    if (p.live) upstream_.cancel(p.handle);
  for (auto& s : sessions_)
    if (s.s) s.s->detach();
  upstream_.set_timer(std::nullopt);
  upstream_.set_sink(nullptr);
}

DnsForwarder::IdSource DnsForwarder::random_ids() {
  struct Pool {
    std::array<uint16_t, 256> ids{};
    size_t next = 256;
    std::mt19937 fallback{std::random_device{}()};
  };
  auto pool = std::make_shared<Pool>();
  return [pool]() -> uint16_t {
    if (pool->next >= pool->ids.size()) {
      ssize_t n = ::getrandom(pool->ids.data(), sizeof pool->ids, 0);
      if (n != ssize_t(sizeof pool->ids))
        for (auto& v : pool->ids) v = uint16_t(pool->fallback());
      pool->next = 0;
    }
    return pool->ids[pool->next++];
  };
}

TcpServiceFactory DnsForwarder::tcp_service_factory() {
  return [this](TcpServiceStream& s) { return open_session(s); };
}

// ---- Configuration ------------------------------------------------------------

Result<DnsForwarder::HostsTable> DnsForwarder::parse_hosts(std::string_view text) const {
  HostsTable t;
  size_t lineno = 0, entries = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    lineno++;
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    auto tok = split_ws(line);
    if (tok.empty()) continue;
    if (tok.size() < 2) return make_error(EINVAL, fmt::format("line {}: expected an address and a name", lineno));
    auto v4 = Ipv4Addr::parse(tok[0]);
    auto v6 = v4 ? std::nullopt : Ipv6Addr::parse(tok[0]);
    if (!v4 && !v6) return make_error(EINVAL, fmt::format("line {}: bad address \"{}\"", lineno, tok[0]));
    if (++entries > limits_.max_hosts_entries)
      return make_error(EINVAL, fmt::format("line {}: more than {} entries", lineno, limits_.max_hosts_entries));
    for (size_t i = 1; i < tok.size(); i++) {
      std::string_view text_name = tok[i];
      auto name = host_name_chars(text_name) && text_name != "." ? DnsName::from_text(text_name) : std::nullopt;
      if (!name || name->is_root())
        return make_error(EINVAL, fmt::format("line {}: bad name \"{}\"", lineno, text_name));
      // A bare single-label name also answers as NAME.DOMAIN, which is also
      // its reverse (PTR) name.
      std::vector<DnsName> names{*name};
      if (name->label_count() == 1 && text_name.back() != '.') {
        auto q = DnsName::join(name->label(0), domain_);
        if (!q) return make_error(EINVAL, fmt::format("line {}: name \"{}\" too long", lineno, text_name));
        names.push_back(*q);
      }
      for (const auto& n : names) {
        HostRecords& r = t.names[key_of(n)];
        if (v4 && std::find(r.v4.begin(), r.v4.end(), *v4) == r.v4.end()) r.v4.push_back(*v4);
        if (v6 && std::find(r.v6.begin(), r.v6.end(), *v6) == r.v6.end()) r.v6.push_back(*v6);
      }
      if (i == 1) {
        if (v4) t.rev4.emplace(*v4, names.back());
        if (v6) t.rev6.emplace(*v6, names.back());
      }
    }
  }
  return t;
}

Result<void> DnsForwarder::set_hosts(std::string_view text) {
  auto t = parse_hosts(text);
  if (!t) return t.error();
  hosts_ = std::move(*t);
  hosts_text_ = std::string(text);
  serial_++;
  return {};
}

DnsForwarder::FileStamp DnsForwarder::stamp_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return FileStamp{};
  return FileStamp{true, int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, uint64_t(st.st_size),
                   uint64_t(st.st_ino)};
}

Result<void> DnsForwarder::set_hosts_file(std::string path) {
  FileStamp st = stamp_of(path);
  auto text = read_file(path, limits_.max_hosts_file);
  if (!text) return text.error();
  auto t = parse_hosts(*text);
  if (!t) return make_error(EINVAL, fmt::format("{}: {}", path, t.error().message));
  file_hosts_ = std::move(*t);
  hosts_path_ = std::move(path);
  hosts_stamp_ = st;
  serial_++;
  Instant now = clock_.now();
  hosts_next_check_ = now + kFileCheck;
  rearm(now);
  return {};
}

void DnsForwarder::poll_hosts_file(Instant now) {
  if (hosts_path_.empty() || !hosts_next_check_ || now < *hosts_next_check_) return;
  hosts_next_check_ = now + kFileCheck;
  FileStamp st = stamp_of(hosts_path_);
  if (st == hosts_stamp_) return;
  hosts_stamp_ = st;  // warn once per change, not every second
  if (!st.exists) {
    stats_.hosts_reload_errors++;
    spdlog::warn("dns: hosts file {} is gone; keeping its previous records", hosts_path_);
    return;
  }
  auto text = read_file(hosts_path_, limits_.max_hosts_file);
  auto t = text ? parse_hosts(*text) : Result<HostsTable>(text.error());
  if (!t) {
    stats_.hosts_reload_errors++;
    spdlog::warn("dns: hosts file {}: {}; keeping its previous records", hosts_path_, t.error().message);
    return;
  }
  file_hosts_ = std::move(*t);
  serial_++;
  stats_.hosts_reloads++;
  spdlog::info("dns: reloaded hosts file {}", hosts_path_);
}

Result<void> DnsForwarder::add_upstream(std::string_view addr_port) {
  auto a = DnsServerAddr::parse(addr_port);
  if (!a)
    return make_error(EINVAL,
                      fmt::format("bad DNS upstream \"{}\" (want ADDR, ADDR:PORT or [IPV6]:PORT)", addr_port));
  if (flag_upstreams_.size() >= kMaxUpstreams)
    return make_error(EINVAL, fmt::format("at most {} DNS upstreams", kMaxUpstreams));
  flag_upstreams_.push_back(Upstream{*a});
  return {};
}

void DnsForwarder::set_resolv_conf(std::string path) {
  resolv_path_ = std::move(path);
  check_resolv_conf(clock_.now(), true);
}

// Nameserver lines of resolv.conf (resolv.conf(5)): "nameserver ADDR", '#'
// or ';' comments. Re-read when its stat changes, checked at most once a
// second. No nameserver line means 127.0.0.1, as in the C library.
void DnsForwarder::check_resolv_conf(Instant now, bool force) {
  if (!force && (!flag_upstreams_.empty() || (resolv_checked_ && now - *resolv_checked_ < kFileCheck))) return;
  resolv_checked_ = now;
  FileStamp st = stamp_of(resolv_path_);
  if (!force && st == resolv_stamp_) return;
  resolv_stamp_ = st;
  std::vector<Upstream> list;
  auto text = st.exists ? read_file(resolv_path_, kMaxResolvConf) : Result<std::string>(make_error(ENOENT, ""));
  if (text) {
    std::string_view rest = *text;
    while (!rest.empty() && list.size() < kMaxUpstreams) {
      size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
      auto tok = split_ws(line);
      if (tok.size() < 2 || tok[0] != "nameserver") continue;
      std::string_view addr = tok[1];
      auto a = addr.find('%') == std::string_view::npos ? DnsServerAddr::parse(addr) : std::nullopt;
      if (!a || (!a->v6 && addr.find(':') != std::string_view::npos)) {
        spdlog::debug("dns: {}: ignoring nameserver \"{}\"", resolv_path_, addr);
        continue;
      }
      a->port = 53;
      list.push_back(Upstream{*a});
    }
  }
  resolv_default_ = list.empty();
  if (list.empty()) list.push_back(Upstream{DnsServerAddr{false, Ipv4Addr(127, 0, 0, 1), {}, 53}});
  // Keep the counters of upstreams still listed.
  for (auto& u : list)
    for (const auto& old : resolv_upstreams_)
      if (old.addr == u.addr) u = old;
  bool changed = list.size() != resolv_upstreams_.size() ||
                 !std::equal(list.begin(), list.end(), resolv_upstreams_.begin(),
                             [](const Upstream& a, const Upstream& b) { return a.addr == b.addr; });
  bool first = resolv_upstreams_.empty();
  resolv_upstreams_ = std::move(list);
  stats_.resolv_reloads++;
  if (changed && flag_upstreams_.empty()) {
    std::string names;
    for (const auto& u : resolv_upstreams_) names += (names.empty() ? "" : " ") + u.addr.to_string();
    // The first read happens before the CLI says whether flags override it.
    spdlog::log(first ? spdlog::level::debug : spdlog::level::info, "dns: upstreams from {}: {}{}", resolv_path_,
                names, resolv_default_ ? " (no nameserver line)" : "");
  }
}

std::string DnsForwarder::render_upstreams() const {
  std::string out;
  bool flags = !flag_upstreams_.empty();
  std::string source = flags ? "--dns-upstream"
                             : resolv_default_ ? fmt::format("default (no nameserver in {})", resolv_path_)
                                               : resolv_path_;
  for (const auto& u : upstreams())
    out += fmt::format("{} {} queries={} failures={} timeouts={}\n", u.addr.to_string(), source, u.queries,
                       u.failures, u.timeouts);
  return out;
}

std::string DnsForwarder::render_stats() const {
  return stats_.render() + fmt::format("outstanding {}\ncache_entries {}\ncache_bytes {}\ntcp_sessions {}\n",
                                       pending_count_, cache_.size(), cache_bytes_, session_count_);
}

// ---- Guests -------------------------------------------------------------------

void DnsForwarder::on_udp(const GuestPacket& p, UdpNat::Reply reply) {
  Instant now = clock_.now();
  stats_.queries_udp++;
  Client c;
  c.udp = reply;
  handle_query(UdpNat::udp_payload(p), c, now);
  rearm(now);
}

bool DnsForwarder::handle_query(Bytes msg, const Client& client, Instant now) {
  auto h = DnsHeader::parse(msg);
  if (!h || h->qr) {  // nothing to answer to, or a response: never answer those (loops)
    stats_.malformed++;
    spdlog::debug("dns: dropped a message that is not a query ({} bytes)", msg.size());
    return false;
  }
  Query q;
  q.id = h->id;
  q.rd = h->rd;
  if (h->opcode != dns::kOpcodeQuery) {  // RFC 1035 §4.1.1: NOTIMP for kinds we do not support
    respond(client, q, error_reply(*h, nullptr, dns::kNotImp), false);
    return false;
  }
  auto m = DnsMessage::parse(msg);
  if (!m || m->questions.size() != 1) {
    stats_.malformed++;
    spdlog::debug("dns: malformed query ({} bytes)", msg.size());
    respond(client, q, error_reply(*h, nullptr, dns::kFormErr), false);
    return false;
  }
  q.cd = h->cd;
  q.edns = m->opt() != nullptr;
  q.dnssec_ok = m->dnssec_ok();
  q.udp_limit = q.edns ? std::min(m->udp_payload_size(), limits_.max_udp_payload) : uint16_t(dns::kMaxUdpPlain);
  q.q = m->questions[0];
  // Zone transfers (IXFR 251, AXFR 252) and the obsolete MAILB/MAILA.
  if (q.q.type >= 251 && q.q.type <= 254) {
    respond(client, q, error_reply(q, dns::kNotImp), false);
    return false;
  }
  if (auto local = answer_local(q)) {
    stats_.local_answers++;
    respond(client, q, std::move(*local), false);
    return false;
  }
  std::string key = cache_key(q);
  if (auto hit = cache_get(key, now)) {
    stats_.cache_hits++;
    respond(client, q, std::move(*hit), false);
    return false;
  }
  stats_.cache_misses++;
  return forward(q, client, std::move(key), now);
}

// The answer as the guest must see it: its id, its spelling of the
// question, no OPT record unless it sent one (RFC 6891 §7), and over UDP
// no more than it can take (RFC 1035 §4.2.1, RFC 6891 §6.2.5).
void DnsForwarder::respond(const Client& client, const Query& q, std::vector<uint8_t> msg, bool completes) {
  if (msg.size() < DnsHeader::kLen) return;
  store_be16(&msg[0], q.id);
  Bytes qname = q.q.name.wire();
  if (msg.size() >= DnsHeader::kLen + qname.size() && load_be16(&msg[4]) == 1) {
    size_t off = DnsHeader::kLen;
    auto n = DnsName::parse(msg, off);
    if (n && n->equals(q.q.name) && off == DnsHeader::kLen + qname.size())
      std::memcpy(&msg[DnsHeader::kLen], qname.data(), qname.size());
  }
  if (!q.edns && load_be16(&msg[10]) > 0) {
    auto m = DnsMessage::parse(msg);
    const wire::DnsRecord* opt = m ? m->opt() : nullptr;
    if (opt && &m->additional.back() == opt && opt->rdata_offset + opt->rdata.size() == m->end) {
      msg.resize(opt->offset);
      store_be16(&msg[10], uint16_t(m->additional.size() - 1));
    }
  }
  if (client.udp) {
    if (msg.size() > q.udp_limit) {
      // Header and question only, TC set: the guest asks again over TCP.
      auto h = DnsHeader::parse(msg);
      DnsHeader th = *h;
      th.tc = true;
      DnsBuilder b(th);
      b.question(q.q);
      if (q.edns) b.opt(limits_.max_udp_payload, q.dnssec_ok);
      msg = std::move(b).finish();
      stats_.truncated_to_guest++;
    }
    if (!client.udp->send(msg)) stats_.replies_dropped++;
    return;
  }
  TcpSession* s = session(client.session, client.session_gen);
  if (!s) {
    stats_.replies_dropped++;
    return;
  }
  s->reply(msg, completes);
}

std::vector<uint8_t> DnsForwarder::error_reply(const DnsHeader& h, const DnsQuestion* q, uint8_t rcode) const {
  DnsHeader r;
  r.id = h.id;
  r.qr = true;
  r.opcode = h.opcode;
  r.rd = h.rd;
  r.ra = true;
  r.rcode = rcode;
  DnsBuilder b(r);
  if (q) b.question(*q);
  return std::move(b).finish();
}

std::vector<uint8_t> DnsForwarder::error_reply(const Query& q, uint8_t rcode) const {
  DnsHeader r;
  r.id = q.id;
  r.qr = true;
  r.rd = q.rd;
  r.cd = q.cd;
  r.ra = true;
  r.rcode = rcode;
  DnsBuilder b(r);
  b.question(q.q);
  if (q.edns) b.opt(limits_.max_udp_payload, q.dnssec_ok);
  return std::move(b).finish();
}

void DnsForwarder::servfail(const Client& client, const Query& q, bool completes) {
  stats_.servfail_sent++;
  respond(client, q, error_reply(q, dns::kServFail), completes);
}

// ---- Local answers ------------------------------------------------------------

wire::DnsSoa DnsForwarder::local_soa() const {
  wire::DnsSoa soa;
  soa.mname = DnsName::join("gateway", domain_).value_or(domain_);
  soa.rname = DnsName::join("hostmaster", domain_).value_or(domain_);
  soa.serial = serial_;
  soa.refresh = 3600;
  soa.retry = 600;
  soa.expire = 86400;
  soa.minimum = limits_.local_negative_ttl;  // RFC 2308 §4: the negative TTL
  return soa;
}

// The records we hold for `name`: hosts tables (both sources merged), then
// the built-in names, then the DHCP hook. nullptr when we know no such name.
const DnsForwarder::HostRecords* DnsForwarder::find_hosts(const DnsName& name, HostRecords& scratch) const {
  std::string key = key_of(name);
  bool found = false;
  for (const HostsTable* t : {&hosts_, &file_hosts_}) {
    auto it = t->names.find(key);
    if (it == t->names.end()) continue;
    found = true;
    for (auto a : it->second.v4)
      if (std::find(scratch.v4.begin(), scratch.v4.end(), a) == scratch.v4.end()) scratch.v4.push_back(a);
    for (const auto& a : it->second.v6)
      if (std::find(scratch.v6.begin(), scratch.v6.end(), a) == scratch.v6.end()) scratch.v6.push_back(a);
  }
  if (found) return &scratch;
  if (name.label_count() != domain_.label_count() + 1 || !name.is_within(domain_)) return nullptr;
  std::string label(name.label(0));
  for (char& c : label)
    if (c >= 'A' && c <= 'Z') c = char(c + ('a' - 'A'));
  if (label == "host") {
    scratch.v4.push_back(cfg_.host_alias);
    return &scratch;
  }
  if (label == "gateway") {
    scratch.v4.push_back(cfg_.gateway);
    return &scratch;
  }
  if (lookup_) {
    if (auto a = lookup_(label)) {
      scratch.v4.push_back(*a);
      return &scratch;
    }
  }
  return nullptr;
}

// The PTR target for a reverse name we own. `ours` says whether the name
// is ours to answer even when unknown (inside the subnet: never upstream).
std::optional<DnsName> DnsForwarder::reverse_lookup(const DnsName& name, bool& ours) const {
  ours = false;
  if (auto a = wire::reverse_v4(name)) {
    ours = cfg_.subnet.contains(*a);
    for (const HostsTable* t : {&hosts_, &file_hosts_})
      if (auto it = t->rev4.find(*a); it != t->rev4.end()) return it->second;
    if (*a == cfg_.gateway) return DnsName::join("gateway", domain_);
    if (*a == cfg_.host_alias) return DnsName::join("host", domain_);
  } else if (auto a6 = wire::reverse_v6(name)) {
    for (const HostsTable* t : {&hosts_, &file_hosts_})
      if (auto it = t->rev6.find(*a6); it != t->rev6.end()) return it->second;
  }
  return std::nullopt;
}

std::optional<std::vector<uint8_t>> DnsForwarder::answer_local(const Query& q) {
  const DnsName& name = q.q.name;
  const uint16_t type = q.q.type;
  const bool in_zone = name.is_within(domain_);
  HostRecords scratch;
  const HostRecords* recs = find_hosts(name, scratch);
  bool reverse_ours = false;
  std::optional<DnsName> ptr = recs ? std::nullopt : reverse_lookup(name, reverse_ours);
  if (!recs && !in_zone && !ptr && !reverse_ours) return std::nullopt;

  if (q.q.cls != dns::kClassIn && q.q.cls != dns::kClassAny) return error_reply(q, dns::kRefused);

  const bool any = type == dns::kTypeAny;
  const bool apex = name.equals(domain_);
  std::vector<LocalRecord> rrs;
  if (recs) {
    if (type == dns::kTypeA || any)
      for (auto a : recs->v4) rrs.push_back({dns::kTypeA, limits_.local_ttl, wire::rdata_a(a)});
    if (type == dns::kTypeAaaa || any)
      for (const auto& a : recs->v6) rrs.push_back({dns::kTypeAaaa, limits_.local_ttl, wire::rdata_aaaa(a)});
  }
  if (ptr && (type == dns::kTypePtr || any))
    rrs.push_back({dns::kTypePtr, limits_.local_ttl, wire::rdata_name(*ptr)});
  if (apex) {
    if (type == dns::kTypeSoa || any) rrs.push_back({dns::kTypeSoa, limits_.local_ttl, wire::rdata_soa(local_soa())});
    if (type == dns::kTypeNs || any)
      if (auto gw = DnsName::join("gateway", domain_))
        rrs.push_back({dns::kTypeNs, limits_.local_ttl, wire::rdata_name(*gw)});
  }
  const bool exists = recs || ptr || apex;
  if (!exists) stats_.local_nxdomain++;
  // RFC 2308 §2.1, §2.2: negative answers carry the zone's SOA. Only for
  // names of our zone: we are not the authority for the reverse zones.
  return local_reply(q, exists ? dns::kNoError : dns::kNxDomain, rrs, rrs.empty() && in_zone);
}

std::vector<uint8_t> DnsForwarder::local_reply(const Query& q, uint8_t rcode, const std::vector<LocalRecord>& rrs,
                                               bool soa) const {
  DnsHeader h;
  h.id = q.id;
  h.qr = true;
  h.aa = true;
  h.rd = q.rd;
  h.ra = true;
  h.rcode = rcode;
  DnsBuilder b(h);
  b.question(q.q);
  for (const auto& r : rrs) b.record(DnsBuilder::Section::Answer, q.q.name, r.type, dns::kClassIn, r.ttl, r.rdata);
  if (soa)
    b.record(DnsBuilder::Section::Authority, domain_, dns::kTypeSoa, dns::kClassIn, limits_.local_negative_ttl,
             wire::rdata_soa(local_soa()));
  if (q.edns) b.opt(limits_.max_udp_payload, false);
  return std::move(b).finish();
}

// ---- Forwarding ---------------------------------------------------------------

bool DnsForwarder::forward(const Query& q, const Client& client, std::string key, Instant now) {
  check_resolv_conf(now, false);
  if (upstreams().empty()) {
    stats_.no_upstream++;
    servfail(client, q, false);
    return false;
  }
  std::optional<uint64_t> dup;
  if (client.udp) {
    dup = (uint64_t(client.udp->guest_addr().v) << 32) | (uint64_t(client.udp->guest_port()) << 16) | q.id;
    if (auto it = udp_inflight_.find(*dup); it != udp_inflight_.end()) {
      const Query& first = pending_[it->second].query;
      if (first.q.name.equals(q.q.name) && first.q.type == q.q.type && first.q.cls == q.q.cls) {
        stats_.duplicates++;  // the guest asked again; the answer to the first will do
        return false;
      }
      dup.reset();  // same id, another question: a separate query
    }
  }
  if (pending_count_ >= limits_.max_outstanding) {
    stats_.outstanding_full++;
    servfail(client, q, false);
    return false;
  }
  uint32_t slot;
  if (!pending_free_.empty()) {
    slot = pending_free_.back();
    pending_free_.pop_back();
  } else {
    slot = uint32_t(pending_.size());
    pending_.emplace_back();
  }
  Pending& p = pending_[slot];
  uint32_t gen = p.gen + 1;
  p = Pending{};
  p.gen = gen;
  p.live = true;
  p.client = client;
  p.query = q;
  p.key = std::move(key);
  p.dup = dup;
  p.first_server = rr_next_++;
  if (dup) udp_inflight_[*dup] = slot;
  pending_count_++;
  // Every try may fail at once (the host refuses sockets): then the guest
  // already has its SERVFAIL, as an answer handle_query() gives itself.
  return send_try(slot, now, false);
}

std::vector<uint8_t> DnsForwarder::upstream_query(const Pending& p) const {
  DnsHeader h;
  h.id = p.upstream_id;
  h.rd = p.query.rd;
  h.cd = p.query.cd;
  DnsBuilder b(h);
  b.question(p.query.q);
  b.opt(limits_.max_udp_payload, p.query.dnssec_ok);
  return std::move(b).finish();
}

// Send the next try of `slot` over UDP, to the next upstream in turn; when
// tries run out the guest gets SERVFAIL (`completes` as respond() takes it)
// and the slot is released: false then.
bool DnsForwarder::send_try(uint32_t slot, Instant now, bool completes) {
  for (;;) {
    Pending& p = pending_[slot];
    auto& ups = upstreams();
    if (p.tries >= limits_.max_tries || ups.empty()) {
      Client c = p.client;
      Query q = p.query;
      release(slot);
      servfail(c, q, completes);
      return false;
    }
    Upstream& u = ups[(p.first_server + size_t(p.tries)) % ups.size()];
    p.tries++;
    p.server = u.addr;
    p.over_tcp = false;
    p.upstream_id = ids_();
    u.queries++;
    stats_.upstream_queries++;
    auto h = upstream_.udp_query(p.server, upstream_query(p), cookie_of(slot));
    if (!h) {
      u.failures++;
      stats_.upstream_failures++;
      spdlog::debug("dns: upstream {}: {}", p.server.to_string(), h.error().message);
      continue;
    }
    p.handle = *h;
    p.sent_at = now;
    set_deadline(slot, now + limits_.try_timeout);
    return true;
  }
}

void DnsForwarder::next_try(uint32_t slot, Instant now) {
  Pending& p = pending_[slot];
  upstream_.cancel(p.handle);
  p.handle = {};
  clear_deadline(slot);
  (void)send_try(slot, now, true);
}

// The same upstream again, over TCP (RFC 1035 §4.2.1, RFC 7766 §5).
void DnsForwarder::retry_over_tcp(uint32_t slot, Instant now) {
  Pending& p = pending_[slot];
  upstream_.cancel(p.handle);
  p.handle = {};
  p.over_tcp = true;
  p.upstream_id = ids_();
  stats_.truncated_retries++;
  stats_.upstream_queries++;
  stats_.upstream_tcp_queries++;
  if (Upstream* u = upstream_at(p)) u->queries++;
  auto h = upstream_.tcp_query(p.server, upstream_query(p), cookie_of(slot));
  if (!h) {
    upstream_failed(p);
    next_try(slot, now);
    return;
  }
  p.handle = *h;
  p.sent_at = now;
  set_deadline(slot, now + limits_.try_timeout);
}

DnsForwarder::Upstream* DnsForwarder::upstream_at(const Pending& p) {
  for (auto& u : upstreams())
    if (u.addr == p.server) return &u;
  return nullptr;
}

void DnsForwarder::upstream_failed(const Pending& p) {
  stats_.upstream_failures++;
  if (Upstream* u = upstream_at(p)) u->failures++;
}

DnsForwarder::Pending* DnsForwarder::pending_for(uint64_t cookie, uint32_t& slot) {
  slot = uint32_t(cookie);
  uint32_t gen = uint32_t(cookie >> 32);
  if (slot >= pending_.size() || !pending_[slot].live || pending_[slot].gen != gen) return nullptr;
  return &pending_[slot];
}

// Whether an upstream message answers the try: its id, and its one question
// as asked (RFC 5452 §4.1). The source was checked by the caller.
bool DnsForwarder::matches(const Pending& p, Bytes data) const {
  auto h = DnsHeader::parse(data);
  if (!h || !h->qr || h->id != p.upstream_id || h->opcode != dns::kOpcodeQuery || h->qdcount != 1) return false;
  size_t off = DnsHeader::kLen;
  auto n = DnsName::parse(data, off);
  if (!n || off + 4 > data.size()) return false;
  return n->equals(p.query.q.name) && load_be16(&data[off]) == p.query.q.type &&
         load_be16(&data[off + 2]) == p.query.q.cls;
}

// A reply that matched its try, over UDP or TCP.
void DnsForwarder::on_reply(uint32_t slot, Bytes data, Instant now) {
  Pending& p = pending_[slot];
  auto h = DnsHeader::parse(data);  // matches() read it
  if (h->tc && !p.over_tcp) {
    retry_over_tcp(slot, now);
    return;
  }
  auto m = DnsMessage::parse(data);
  if (!m) {
    stats_.malformed++;
    upstream_failed(p);
    next_try(slot, now);
    return;
  }
  record_latency(p, now);
  // RFC 1035 §7.1 (and RFC 2136 for REFUSED): another server may do better.
  if (h->rcode == dns::kServFail || h->rcode == dns::kRefused) {
    upstream_failed(p);
    next_try(slot, now);
    return;
  }
  cache_put(p.key, data, *m, now);
  stats_.upstream_answers++;
  Client c = p.client;
  Query q = p.query;
  release(slot);
  respond(c, q, std::vector<uint8_t>(data.begin(), data.end()), true);
}

void DnsForwarder::on_udp_datagram(uint64_t cookie, const DnsServerAddr& from, Bytes data, Instant now) {
  uint32_t slot;
  Pending* p = pending_for(cookie, slot);
  if (!p || p->over_tcp || !(from == p->server) || !matches(*p, data)) {
    stats_.mismatched++;
    spdlog::debug("dns: dropped a reply from {} that matches no query ({} bytes)", from.to_string(), data.size());
  } else {
    on_reply(slot, data, now);
  }
  rearm(now);
}

void DnsForwarder::on_udp_error(uint64_t cookie, int err, Instant now) {
  uint32_t slot;
  Pending* p = pending_for(cookie, slot);
  if (p && !p->over_tcp) {
    spdlog::debug("dns: upstream {}: {}", p->server.to_string(), std::strerror(err));
    upstream_failed(*p);
    next_try(slot, now);
  }
  rearm(now);
}

void DnsForwarder::on_tcp_reply(uint64_t cookie, Bytes data, Instant now) {
  uint32_t slot;
  Pending* p = pending_for(cookie, slot);
  if (!p || !p->over_tcp) {
    stats_.mismatched++;
  } else if (!matches(*p, data)) {
    stats_.mismatched++;
    upstream_failed(*p);
    next_try(slot, now);  // one message per connection: nothing else will come
  } else {
    on_reply(slot, data, now);
  }
  rearm(now);
}

void DnsForwarder::on_tcp_error(uint64_t cookie, int err, Instant now) {
  uint32_t slot;
  Pending* p = pending_for(cookie, slot);
  if (p && p->over_tcp) {
    spdlog::debug("dns: upstream {} over TCP: {}", p->server.to_string(), std::strerror(err));
    upstream_failed(*p);
    next_try(slot, now);
  }
  rearm(now);
}

void DnsForwarder::on_timer(Instant now) {
  armed_.reset();
  in_timer_ = true;
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    uint32_t slot = deadlines_.begin()->second;
    Pending& p = pending_[slot];
    stats_.upstream_timeouts++;
    if (Upstream* u = upstream_at(p)) u->timeouts++;
    spdlog::debug("dns: upstream {} timed out", p.server.to_string());
    next_try(slot, now);  // clears this deadline; a new one is later than now
  }
  poll_hosts_file(now);
  poll_sessions(now);
  in_timer_ = false;
  rearm(now);
}

void DnsForwarder::release(uint32_t slot) {
  Pending& p = pending_[slot];
  upstream_.cancel(p.handle);
  clear_deadline(slot);
  if (p.dup) {
    auto it = udp_inflight_.find(*p.dup);
    if (it != udp_inflight_.end() && it->second == slot) udp_inflight_.erase(it);
  }
  uint32_t gen = p.gen;
  p = Pending{};
  p.gen = gen;
  pending_free_.push_back(slot);
  pending_count_--;
}

void DnsForwarder::set_deadline(uint32_t slot, Instant at) {
  clear_deadline(slot);
  Pending& p = pending_[slot];
  p.deadline = at;
  p.timed = true;
  deadlines_.emplace(at, slot);
}

void DnsForwarder::clear_deadline(uint32_t slot) {
  Pending& p = pending_[slot];
  if (!p.timed) return;
  deadlines_.erase({p.deadline, slot});
  p.timed = false;
}

void DnsForwarder::record_latency(const Pending& p, Instant now) {
  uint64_t us = micros(now - p.sent_at);
  stats_.latency_count++;
  stats_.latency_sum_us += us;
  stats_.latency_last_us = us;
  stats_.latency_max_us = std::max(stats_.latency_max_us, us);
}

// ---- Cache --------------------------------------------------------------------

std::string DnsForwarder::cache_key(const Query& q) {
  std::string k = key_of(q.q.name);
  uint8_t tail[5];
  store_be16(tail, q.q.type);
  store_be16(tail + 2, q.q.cls);
  tail[4] = uint8_t((q.dnssec_ok ? 1 : 0) | (q.cd ? 2 : 0));
  k.append(reinterpret_cast<const char*>(tail), sizeof tail);
  return k;
}

std::optional<std::vector<uint8_t>> DnsForwarder::cache_get(const std::string& key, Instant now) {
  auto it = cache_.find(key);
  if (it == cache_.end()) return std::nullopt;
  CacheEntry& e = it->second;
  if (now >= e.expires) {
    cache_bytes_ -= e.msg.size();
    lru_.erase(e.lru);
    cache_.erase(it);
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, e.lru);
  // RFC 1035 §7.1 (RFC 2308 §5 for negative answers): TTLs count down.
  uint64_t age = uint64_t(std::chrono::duration_cast<std::chrono::seconds>(now - e.stored).count());
  std::vector<uint8_t> msg = e.msg;
  for (uint32_t off : e.ttl_offsets) {
    uint32_t ttl = load_be32(&msg[off]);
    store_be32(&msg[off], ttl > age ? uint32_t(ttl - age) : 0);
  }
  return msg;
}

void DnsForwarder::cache_put(const std::string& key, Bytes reply, const DnsMessage& m, Instant now) {
  if (m.header.tc || reply.size() > limits_.cache_bytes || limits_.cache_entries == 0) return;
  auto ttl_of = [](uint32_t t) { return t & 0x80000000u ? 0u : t; };  // RFC 2181 §8
  uint32_t ttl = 0;
  if (m.header.rcode == dns::kNoError && !m.answers.empty()) {
    ttl = UINT32_MAX;
    for (const auto& r : m.answers) ttl = std::min(ttl, ttl_of(r.ttl));
    ttl = std::min(ttl, limits_.max_ttl);
  } else if (m.header.rcode == dns::kNxDomain || m.header.rcode == dns::kNoError) {
    // RFC 2308 §5: the negative TTL is the smaller of the SOA's TTL and its
    // MINIMUM field; without an SOA the answer is not cached.
    const wire::DnsRecord* soa_rr = nullptr;
    for (const auto& r : m.authority)
      if (r.type == dns::kTypeSoa) soa_rr = &r;
    if (!soa_rr) return;
    auto soa = wire::parse_soa(reply, *soa_rr);
    if (!soa) return;
    ttl = std::min({ttl_of(soa_rr->ttl), ttl_of(soa->minimum), limits_.max_negative_ttl});
  } else {
    return;
  }
  if (ttl == 0) return;

  CacheEntry e;
  e.msg.assign(reply.begin(), reply.end());
  store_be16(e.msg.data(), 0);
  for (const auto* section : {&m.answers, &m.authority, &m.additional})
    for (const auto& r : *section)
      if (r.type != dns::kTypeOpt) e.ttl_offsets.push_back(uint32_t(r.ttl_offset));
  e.stored = now;
  e.expires = now + std::chrono::seconds(ttl);

  if (auto old = cache_.find(key); old != cache_.end()) {
    cache_bytes_ -= old->second.msg.size();
    lru_.erase(old->second.lru);
    cache_.erase(old);
  }
  lru_.push_front(key);
  e.lru = lru_.begin();
  cache_bytes_ += e.msg.size();
  cache_.emplace(key, std::move(e));
  while (!lru_.empty() && (cache_.size() > limits_.cache_entries || cache_bytes_ > limits_.cache_bytes)) {
    auto victim = cache_.find(lru_.back());
    cache_bytes_ -= victim->second.msg.size();
    cache_.erase(victim);
    lru_.pop_back();
    stats_.cache_evictions++;
  }
}

// ---- TCP sessions -------------------------------------------------------------

std::unique_ptr<TcpService> DnsForwarder::open_session(TcpServiceStream& stream) {
  if (session_count_ >= limits_.max_tcp_sessions) {
    stats_.tcp_sessions_refused++;
    return nullptr;  // the guest gets a RST
  }
  uint32_t i;
  if (!sessions_free_.empty()) {
    i = sessions_free_.back();
    sessions_free_.pop_back();
  } else {
    i = uint32_t(sessions_.size());
    sessions_.emplace_back();
  }
  SessionSlot& s = sessions_[i];
  s.gen++;
  auto session = std::make_unique<TcpSession>(this, stream, i, s.gen, clock_.now());
  s.s = session.get();
  session_count_++;
  stats_.tcp_sessions_opened++;
  return session;
}

DnsForwarder::TcpSession* DnsForwarder::session(uint32_t index, uint32_t gen) {
  if (index >= sessions_.size() || sessions_[index].gen != gen) return nullptr;
  return sessions_[index].s;
}

void DnsForwarder::session_gone(uint32_t index) {
  sessions_[index].s = nullptr;
  sessions_free_.push_back(index);
  session_count_--;
}

void DnsForwarder::poll_sessions(Instant now) {
  for (size_t i = 0; i < sessions_.size(); i++)
    if (sessions_[i].s) sessions_[i].s->idle_check(now);
}

void DnsForwarder::rearm(Instant) {
  if (in_timer_) return;  // on_timer() re-arms when it is done
  std::optional<Instant> at;
  auto earliest = [&at](Instant t) { at = at ? std::min(*at, t) : t; };
  if (!deadlines_.empty()) earliest(deadlines_.begin()->first);
  if (hosts_next_check_) earliest(*hosts_next_check_);
  for (const auto& s : sessions_)
    if (s.s)
      if (auto d = s.s->idle_deadline()) earliest(*d);
  if (at != armed_) {
    armed_ = at;
    upstream_.set_timer(at);
  }
}

// ---- The control tree ---------------------------------------------------------

void mount_dns_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, DnsForwarder& dns) {
  DnsForwarder* d = &dns;
  auto dir = std::make_shared<p9::Dir>("dns", "the gateway's DNS forwarder");
  tree.root()->add(dir);
  dir->add(std::make_shared<p9::StateFile>(
      "hosts", "extra DNS records, hosts-file syntax: \"IP name [alias...]\" (read-write)",
      [d] { return d->hosts_text(); }, [d](std::string_view text) { return d->set_hosts(text); }));
  dir->add(std::make_shared<p9::StateFile>("stats", "DNS counters: queries, cache, upstreams, latency",
                                           [d] { return d->render_stats(); }));
  dir->add(std::make_shared<p9::StateFile>("upstreams", "the resolvers DNS queries are forwarded to, and why",
                                           [d] { return d->render_upstreams(); }));

  metrics.add([d](p9::PromWriter& w) {
    const DnsStats& s = d->stats();
    w.family("berth_dns_queries_total", "counter", "DNS queries from guests");
    w.sample("berth_dns_queries_total", s.queries_udp, "transport=\"udp\"");
    w.sample("berth_dns_queries_total", s.queries_tcp, "transport=\"tcp\"");
    w.family("berth_dns_answers_total", "counter", "DNS answers to guests, by where they came from");
    w.sample("berth_dns_answers_total", s.local_answers, "source=\"local\"");
    w.sample("berth_dns_answers_total", s.cache_hits, "source=\"cache\"");
    w.sample("berth_dns_answers_total", s.upstream_answers, "source=\"upstream\"");
    w.sample("berth_dns_answers_total", s.servfail_sent, "source=\"servfail\"");
    w.family("berth_dns_cache_lookups_total", "counter", "DNS cache lookups");
    w.sample("berth_dns_cache_lookups_total", s.cache_hits, "result=\"hit\"");
    w.sample("berth_dns_cache_lookups_total", s.cache_misses, "result=\"miss\"");
    w.family("berth_dns_cache_evictions_total", "counter", "DNS cache entries evicted for room");
    w.sample("berth_dns_cache_evictions_total", s.cache_evictions);
    w.family("berth_dns_upstream_queries_total", "counter", "tries sent to upstream resolvers");
    w.sample("berth_dns_upstream_queries_total", s.upstream_queries - s.upstream_tcp_queries, "transport=\"udp\"");
    w.sample("berth_dns_upstream_queries_total", s.upstream_tcp_queries, "transport=\"tcp\"");
    w.family("berth_dns_upstream_errors_total", "counter", "upstream tries that failed, by reason");
    w.sample("berth_dns_upstream_errors_total", s.upstream_failures, "reason=\"failure\"");
    w.sample("berth_dns_upstream_errors_total", s.upstream_timeouts, "reason=\"timeout\"");
    w.family("berth_dns_dropped_total", "counter", "DNS messages dropped or refused, by reason");
    w.sample("berth_dns_dropped_total", s.mismatched, "reason=\"mismatched\"");
    w.sample("berth_dns_dropped_total", s.malformed, "reason=\"malformed\"");
    w.sample("berth_dns_dropped_total", s.outstanding_full, "reason=\"outstanding_full\"");
    w.sample("berth_dns_dropped_total", s.duplicates, "reason=\"duplicate\"");
    w.sample("berth_dns_dropped_total", s.tcp_sessions_refused, "reason=\"tcp_sessions_full\"");
    w.sample("berth_dns_dropped_total", s.replies_dropped, "reason=\"reply_not_sent\"");
    w.family("berth_dns_truncated_total", "counter", "truncated DNS answers");
    w.sample("berth_dns_truncated_total", s.truncated_retries, "dir=\"from_upstream\"");
    w.sample("berth_dns_truncated_total", s.truncated_to_guest, "dir=\"to_guest\"");
    w.family("berth_dns_upstream_latency_microseconds", "summary", "time from a try to its answer");
    w.sample("berth_dns_upstream_latency_microseconds_sum", s.latency_sum_us);
    w.sample("berth_dns_upstream_latency_microseconds_count", s.latency_count);
    w.family("berth_dns_outstanding", "gauge", "DNS queries waiting for an upstream");
    w.sample("berth_dns_outstanding", d->outstanding());
    w.family("berth_dns_cache_entries", "gauge", "DNS answers cached");
    w.sample("berth_dns_cache_entries", d->cache_size());
  });
}

}  // namespace berth::net
