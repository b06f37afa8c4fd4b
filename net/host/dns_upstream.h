// DnsUpstream: how the gateway's DNS forwarder (net/dns.h) talks to the
// resolvers it forwards to. The real one is UvDnsUpstream (libuv); tests
// and the fuzz target use fakes (STYLE.md §5).
//
// Contract:
//  - udp_query() sends one datagram from a fresh socket of its own
//    (a fresh source port) connected to the server. Every datagram that
//    socket receives afterwards is reported with on_udp_datagram(), until
//    cancel(): late, duplicated or forged ones included. Matching a reply
//    to its query (id, question, source) is the sink's job. An asynchronous
//    error on the socket (ECONNREFUSED after an ICMP port unreachable,
//    EHOSTUNREACH...) is reported with on_udp_error(); the socket stays
//    open until cancel().
//  - tcp_query() connects to the server, sends the query with its 2-byte
//    length prefix (RFC 1035 §4.2.2) and reads one length-prefixed reply.
//    Exactly one of on_tcp_reply() (the message without its prefix) or
//    on_tcp_error() (an errno: ECONNREFUSED, ECONNRESET, EPROTO for a
//    connection that ended before a whole message...) follows, unless the
//    query is cancelled first. The connection is closed after that event.
//  - Neither call blocks. Errors known at once (EMFILE, EAFNOSUPPORT, a
//    send that would block...) come back from the call, and no event
//    follows for it.
//  - cancel() is immediate: no event for that query arrives afterwards.
//    Cancelling an unknown or finished query is ignored. Every query must
//    be cancelled by the sink once it is done with it (also after a TCP
//    reply or error), to release its handle.
//  - set_timer() arms one timer: on_timer() follows once at or after `at`
//    (nullopt disarms). A later call replaces the earlier deadline.
//  - Events reach the sink given to set_sink(), on the loop thread, never
//    from inside a call into the DnsUpstream, with `now` from the host's
//    clock. Data spans are valid only during the call (STYLE.md §6). A sink
//    may start and cancel queries, and re-arm the timer, from its callbacks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/bytes.h"
#include "common/clock.h"
#include "common/result.h"
#include "net/wire/addr.h"

namespace berth::net {

// A resolver's address: IPv4 or IPv6, and a port.
struct DnsServerAddr {
  bool v6 = false;
  wire::Ipv4Addr addr4;
  wire::Ipv6Addr addr6;
  uint16_t port = 53;

  // "1.1.1.1:53", "[2606:4700::1111]:53".
  std::string to_string() const;
  // "ADDR", "ADDR:PORT", "IPV6", "[IPV6]" or "[IPV6]:PORT"; port 1..65535,
  // `default_port` when absent. No names, no zones ("fe80::1%eth0").
  static std::optional<DnsServerAddr> parse(std::string_view text, uint16_t default_port = 53);

  bool operator==(const DnsServerAddr& o) const {
    return v6 == o.v6 && port == o.port && (v6 ? addr6 == o.addr6 : addr4 == o.addr4);
  }
};

// A query of a DnsUpstream: a slot index and a generation, so a stale handle
// never reaches a reused slot.
struct DnsQueryHandle {
  uint32_t index = UINT32_MAX;
  uint32_t gen = 0;
  bool valid() const { return index != UINT32_MAX; }
  auto operator<=>(const DnsQueryHandle&) const = default;
};

class DnsUpstreamSink {
 public:
  virtual ~DnsUpstreamSink() = default;
  // A datagram on a UDP query's socket, from `from`.
  virtual void on_udp_datagram(uint64_t cookie, const DnsServerAddr& from, Bytes data, Instant now) = 0;
  virtual void on_udp_error(uint64_t cookie, int err, Instant now) = 0;
  // A TCP query's reply (without the length prefix).
  virtual void on_tcp_reply(uint64_t cookie, Bytes data, Instant now) = 0;
  virtual void on_tcp_error(uint64_t cookie, int err, Instant now) = 0;
  virtual void on_timer(Instant now) = 0;
};

class DnsUpstream {
 public:
  virtual ~DnsUpstream() = default;
  // The one sink for every event; nullptr detaches it (no events follow).
  virtual void set_sink(DnsUpstreamSink* sink) = 0;
  [[nodiscard]] virtual Result<DnsQueryHandle> udp_query(const DnsServerAddr& server, Bytes query,
                                                         uint64_t cookie) = 0;
  [[nodiscard]] virtual Result<DnsQueryHandle> tcp_query(const DnsServerAddr& server, Bytes query,
                                                         uint64_t cookie) = 0;
  virtual void cancel(DnsQueryHandle q) = 0;
  virtual void set_timer(std::optional<Instant> at) = 0;
};

}  // namespace berth::net
