// The gateway's DNS forwarder: UDP and TCP port 53 on the gateway address.
//
// Guarantees:
//  - Local, authoritative answers (AA set) for NetConfig::domain
//    ("berth.internal"): host.DOMAIN is the host alias, gateway.DOMAIN the
//    gateway, NAME.DOMAIN whatever set_name_lookup()'s hook says for NAME
//    (the DHCP server's clients), plus the records of /dns/hosts and of the
//    --hosts file. A known name without a record of the asked type gets
//    NOERROR with no answer and the zone's SOA in the authority section
//    (NODATA, RFC 2308 §2.2); an unknown name inside the domain gets
//    NXDOMAIN with the SOA. Hosts entries with names outside the domain are
//    answered the same way (they are names we know), so they never go
//    upstream. Reverse (PTR) queries for the gateway, the host alias and
//    every hosts address are answered locally; other reverse names inside
//    the subnet get NXDOMAIN, never a query upstream.
//  - Everything else is forwarded. Upstreams are the --dns-upstream flags
//    (add_upstream) when any were given, else the nameserver lines of
//    /etc/resolv.conf, re-read when the file changes (checked at most once
//    a second, when a query goes upstream). Each try goes to the next
//    upstream in turn, with a fresh random id from a fresh socket; the
//    guest's id is restored in its answer. A reply counts only when its id,
//    question and source match the try; others are dropped and counted
//    (mismatched). A try times out after DnsLimits::try_timeout; an ICMP
//    error, a SERVFAIL or REFUSED moves on at once. After max_tries tries
//    the guest gets SERVFAIL. A reply with TC set is asked again over TCP
//    from the same upstream.
//  - Answers toward a guest over UDP fit 512 bytes, or the guest's EDNS
//    payload size (at most max_udp_payload): a larger one goes as its header
//    and question with TC set, so the guest asks again over TCP, where it
//    gets the whole answer.
//  - A cache keyed by (name in lower case, type, class, DO and CD bits),
//    holding positive answers for the smallest TTL of their answer section
//    and NXDOMAIN/NODATA for the SOA's negative TTL (RFC 2308 §5), both
//    capped. Cached answers go out with their TTLs lowered by their age.
//    At most cache_entries entries and cache_bytes bytes, least recently
//    used evicted first.
//  - Bounds: at most max_outstanding queries upstream at once (beyond:
//    SERVFAIL, counted), max_tcp_sessions guest TCP connections (beyond:
//    refused, counted), max_tcp_queries_per_session unanswered queries per
//    connection (beyond: the connection's input pauses), a bounded output
//    backlog per connection. An idle TCP connection is closed after
//    tcp_idle_timeout (RFC 7766 §6.2.3). A query a guest sends again while
//    the first is upstream (same source, port, id) is dropped, counted.
//  - Bad input from guests or upstreams is counted (malformed) and dropped,
//    or answered FORMERR/NOTIMP when its header can be read.
//
// Everything runs on the loop thread. Time comes from the MonoClock given
// at construction and from the DnsUpstream's events; randomness from the
// IdSource. Hosts files and resolv.conf are small local files, read with
// plain system calls when their stat() changes.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "net/config.h"
#include "net/host/dns_upstream.h"
#include "net/tcp.h"
#include "net/udp.h"
#include "net/wire/dns.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

namespace berth::net {

// Bounds and timers of the forwarder; tests shrink them.
struct DnsLimits {
  size_t max_outstanding = 1024;
  size_t cache_entries = 4096;
  size_t cache_bytes = size_t(8) << 20;
  std::chrono::nanoseconds try_timeout = std::chrono::seconds(2);
  int max_tries = 3;
  uint32_t max_ttl = 86400;          // cap on cached positive answers
  uint32_t max_negative_ttl = 300;   // cap on cached NXDOMAIN/NODATA
  uint32_t local_ttl = 60;           // TTL of local records
  uint32_t local_negative_ttl = 10;  // the local zone's SOA minimum
  uint16_t max_udp_payload = 1232;   // EDNS size offered upstream and honoured toward guests
  size_t max_tcp_sessions = 64;
  size_t max_tcp_queries_per_session = 16;
  std::chrono::nanoseconds tcp_idle_timeout = std::chrono::seconds(30);
  size_t max_hosts_entries = 16384;  // lines with an address, per source
  size_t max_hosts_file = size_t(4) << 20;
};

struct DnsStats {
  uint64_t queries_udp = 0, queries_tcp = 0;
  uint64_t local_answers = 0, local_nxdomain = 0;
  uint64_t cache_hits = 0, cache_misses = 0, cache_evictions = 0;
  uint64_t upstream_queries = 0;      // tries sent, UDP and TCP
  uint64_t upstream_tcp_queries = 0;  // of which over TCP
  uint64_t upstream_answers = 0;      // answers relayed to guests
  uint64_t upstream_failures = 0;     // send errors, ICMP errors, TCP errors, SERVFAIL/REFUSED replies
  uint64_t upstream_timeouts = 0;
  uint64_t mismatched = 0;            // replies matching no try: dropped
  uint64_t truncated_retries = 0;     // TC replies asked again over TCP
  uint64_t truncated_to_guest = 0;    // answers sent to guests with TC set
  uint64_t servfail_sent = 0;
  uint64_t malformed = 0;             // from guests or upstreams
  uint64_t outstanding_full = 0;      // queries refused with SERVFAIL: too many upstream
  uint64_t duplicates = 0;            // guest retransmissions of a query still upstream
  uint64_t no_upstream = 0;           // queries with no upstream configured
  uint64_t tcp_sessions_opened = 0, tcp_sessions_refused = 0, tcp_idle_closed = 0;
  uint64_t replies_dropped = 0;       // an answer could not be sent to its guest
  uint64_t latency_count = 0, latency_sum_us = 0, latency_last_us = 0, latency_max_us = 0;
  uint64_t hosts_reloads = 0, hosts_reload_errors = 0, resolv_reloads = 0;

  std::string render() const;  // "name value" lines
};

class DnsForwarder final : private DnsUpstreamSink {
 public:
  using IdSource = std::function<uint16_t()>;
  using NameLookup = std::function<std::optional<wire::Ipv4Addr>(std::string_view name)>;

  // Registers UDP and TCP port 53 with `udp` and `tcp`, and itself as
  // `upstream`'s sink; reads /etc/resolv.conf. Everything referenced must
  // outlive the forwarder (which, when destroyed, leaves port 53 ignoring
  // datagrams and refusing connections). An empty `ids` means random_ids().
  DnsForwarder(UdpNat& udp, Tcp& tcp, DnsUpstream& upstream, const MonoClock& clock, const NetConfig& cfg,
               IdSource ids, DnsLimits limits = {});
  ~DnsForwarder() override;
  DnsForwarder(const DnsForwarder&) = delete;
  DnsForwarder& operator=(const DnsForwarder&) = delete;

  // Unpredictable ids from getrandom(2).
  static IdSource random_ids();

  // Names of DHCP clients: called with LABEL, in lower case, for a query
  // for LABEL.DOMAIN that no hosts entry and no built-in name answers; an
  // address answers A (and ANY) queries for it, nullopt means no such name.
  void set_name_lookup(NameLookup fn) { lookup_ = std::move(fn); }

  // /dns/hosts: hosts-file text ("IP name [alias...]", '#' comments, IPv4
  // and IPv6). Names are taken as fully qualified; a single-label name also
  // answers as NAME.DOMAIN. EINVAL naming the line when a line is wrong; the
  // previous content is kept then.
  [[nodiscard]] Result<void> set_hosts(std::string_view text);
  const std::string& hosts_text() const { return hosts_text_; }
  // --hosts FILE: the same syntax, read now (its errors come back) and again
  // whenever its mtime, size or inode change (polled every second); a later
  // read that fails keeps the previous content and logs a warning.
  [[nodiscard]] Result<void> set_hosts_file(std::string path);

  // --dns-upstream ADDR[:PORT] ([v6]:port): once any is given, resolv.conf
  // is no longer used. EINVAL for a malformed address.
  [[nodiscard]] Result<void> add_upstream(std::string_view addr_port);
  // Where nameserver lines come from (default /etc/resolv.conf); read now.
  void set_resolv_conf(std::string path);

  const DnsStats& stats() const { return stats_; }
  std::string render_stats() const;      // /dns/stats
  std::string render_upstreams() const;  // /dns/upstreams
  size_t outstanding() const { return pending_count_; }
  size_t cache_size() const { return cache_.size(); }
  size_t tcp_sessions() const { return session_count_; }

  // What is registered on TCP port 53 (for tests that drive a stream).
  TcpServiceFactory tcp_service_factory();

 private:
  class TcpSession;

  struct HostRecords {
    std::vector<wire::Ipv4Addr> v4;
    std::vector<wire::Ipv6Addr> v6;
  };
  struct HostsTable {
    std::unordered_map<std::string, HostRecords> names;  // key: the lower-case wire name
    std::map<wire::Ipv4Addr, wire::DnsName> rev4;        // the first name of each address
    std::map<wire::Ipv6Addr, wire::DnsName> rev6;
  };
  struct FileStamp {
    bool exists = false;
    int64_t mtime_ns = 0;
    uint64_t size = 0, ino = 0;
    bool operator==(const FileStamp&) const = default;
  };
  struct Upstream {
    DnsServerAddr addr;
    uint64_t queries = 0, failures = 0, timeouts = 0;
  };
  // Who asked: a guest over UDP, or one of our TCP sessions.
  struct Client {
    std::optional<UdpNat::Reply> udp;
    uint32_t session = UINT32_MAX, session_gen = 0;
  };
  // A guest's query, as far as answering it needs.
  struct Query {
    uint16_t id = 0;
    bool rd = false, cd = false, dnssec_ok = false, edns = false;
    uint16_t udp_limit = 512;
    wire::DnsQuestion q;  // as the guest spelled it
  };
  struct Pending {
    uint32_t gen = 0;
    bool live = false;
    Client client;
    Query query;
    std::string key;             // cache key
    std::optional<uint64_t> dup;  // its entry in udp_inflight_
    uint16_t upstream_id = 0;
    DnsServerAddr server;        // of the current try
    size_t first_server = 0;     // tries go to upstreams()[(first_server + try) % size]
    DnsQueryHandle handle;
    bool over_tcp = false;
    bool timed = false;          // `deadline` is in deadlines_
    int tries = 0;
    Instant sent_at{}, deadline{};
  };
  struct CacheEntry {
    std::vector<uint8_t> msg;             // id 0, question as first asked
    std::vector<uint32_t> ttl_offsets;    // TTL fields to age
    Instant stored{}, expires{};
    std::list<std::string>::iterator lru;
  };
  struct SessionSlot {
    TcpSession* s = nullptr;
    uint32_t gen = 0;
  };

  struct LocalRecord {
    uint16_t type;
    uint32_t ttl;
    std::vector<uint8_t> rdata;
  };

  // DnsUpstreamSink
  void on_udp_datagram(uint64_t cookie, const DnsServerAddr& from, Bytes data, Instant now) override;
  void on_udp_error(uint64_t cookie, int err, Instant now) override;
  void on_tcp_reply(uint64_t cookie, Bytes data, Instant now) override;
  void on_tcp_error(uint64_t cookie, int err, Instant now) override;
  void on_timer(Instant now) override;

  // Guests. handle_query() is true when the answer comes later (upstream).
  void on_udp(const GuestPacket& p, UdpNat::Reply reply);
  bool handle_query(Bytes msg, const Client& client, Instant now);
  // `completes`: the answer to a query handle_query() returned true for.
  void respond(const Client& client, const Query& q, std::vector<uint8_t> msg, bool completes);
  std::vector<uint8_t> error_reply(const wire::DnsHeader& h, const wire::DnsQuestion* q, uint8_t rcode) const;
  std::vector<uint8_t> error_reply(const Query& q, uint8_t rcode) const;
  void servfail(const Client& client, const Query& q, bool completes);

  // Local answers.
  std::optional<std::vector<uint8_t>> answer_local(const Query& q);
  std::vector<uint8_t> local_reply(const Query& q, uint8_t rcode, const std::vector<LocalRecord>& rrs,
                                   bool soa) const;
  const HostRecords* find_hosts(const wire::DnsName& name, HostRecords& scratch) const;
  std::optional<wire::DnsName> reverse_lookup(const wire::DnsName& name, bool& ours) const;
  wire::DnsSoa local_soa() const;
  Result<HostsTable> parse_hosts(std::string_view text) const;
  void poll_hosts_file(Instant now);
  static FileStamp stamp_of(const std::string& path);

  // Upstreams.
  const std::vector<Upstream>& upstreams() const {
    return flag_upstreams_.empty() ? resolv_upstreams_ : flag_upstreams_;
  }
  std::vector<Upstream>& upstreams() { return flag_upstreams_.empty() ? resolv_upstreams_ : flag_upstreams_; }
  void check_resolv_conf(Instant now, bool force);
  Upstream* upstream_at(const Pending& p);
  void upstream_failed(const Pending& p);

  // Forwarding.
  bool forward(const Query& q, const Client& client, std::string key, Instant now);
  std::vector<uint8_t> upstream_query(const Pending& p) const;
  uint64_t cookie_of(uint32_t slot) const { return (uint64_t(pending_[slot].gen) << 32) | slot; }
  bool send_try(uint32_t slot, Instant now, bool completes);
  void next_try(uint32_t slot, Instant now);
  void retry_over_tcp(uint32_t slot, Instant now);
  bool matches(const Pending& p, Bytes data) const;
  void on_reply(uint32_t slot, Bytes data, Instant now);
  void release(uint32_t slot);
  Pending* pending_for(uint64_t cookie, uint32_t& slot);
  void set_deadline(uint32_t slot, Instant at);
  void clear_deadline(uint32_t slot);
  void record_latency(const Pending& p, Instant now);

  // Cache.
  static std::string cache_key(const Query& q);
  std::optional<std::vector<uint8_t>> cache_get(const std::string& key, Instant now);
  void cache_put(const std::string& key, Bytes reply, const wire::DnsMessage& m, Instant now);

  // TCP sessions.
  std::unique_ptr<TcpService> open_session(TcpServiceStream& stream);
  TcpSession* session(uint32_t index, uint32_t gen);
  void session_gone(uint32_t index);
  void poll_sessions(Instant now);

  void rearm(Instant now);

  UdpNat& udp_;
  Tcp& tcp_;
  DnsUpstream& upstream_;
  const MonoClock& clock_;
  const NetConfig& cfg_;
  IdSource ids_;
  DnsLimits limits_;
  wire::DnsName domain_;
  DnsStats stats_;
  NameLookup lookup_;

  std::string hosts_text_;
  HostsTable hosts_, file_hosts_;
  std::string hosts_path_;
  FileStamp hosts_stamp_;
  std::optional<Instant> hosts_next_check_;
  uint32_t serial_ = 1;

  std::vector<Upstream> flag_upstreams_, resolv_upstreams_;
  std::string resolv_path_ = "/etc/resolv.conf";
  FileStamp resolv_stamp_;
  std::optional<Instant> resolv_checked_;
  bool resolv_default_ = false;  // no nameserver line: 127.0.0.1 as the C library does
  size_t rr_next_ = 0;

  std::vector<Pending> pending_;
  std::vector<uint32_t> pending_free_;
  size_t pending_count_ = 0;
  std::set<std::pair<Instant, uint32_t>> deadlines_;
  std::unordered_map<uint64_t, uint32_t> udp_inflight_;  // guest addr, port, id -> pending slot

  std::unordered_map<std::string, CacheEntry> cache_;
  std::list<std::string> lru_;  // most recent first
  size_t cache_bytes_ = 0;

  std::vector<SessionSlot> sessions_;
  std::vector<uint32_t> sessions_free_;
  size_t session_count_ = 0;

  std::optional<Instant> armed_;
  bool in_timer_ = false;
};

// The forwarder's subtree: /dns/hosts (read-write), /dns/stats,
// /dns/upstreams; and its counters in /metrics.
void mount_dns_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, DnsForwarder& dns);

}  // namespace berth::net
