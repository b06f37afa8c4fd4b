// UvDnsUpstream: DnsUpstream over libuv UDP and TCP handles on the loop
// thread (see dns_upstream.h for the contract).
//
//  - UDP: one uv_udp_t per query, connected to the server (so the kernel
//    picks a fresh ephemeral source port, and only the server's datagrams
//    and ICMP errors reach it); the query goes out with uv_udp_try_send.
//  - TCP: one uv_tcp_t per query: connect, write the length-prefixed query,
//    read until one whole length-prefixed reply is in, which is reported.
//    A reply is at most 65535 bytes, so a query's buffer is bounded.
//  - One uv_timer_t for set_timer().
//  - At most Options::max_queries queries at once (EMFILE beyond).
//
// Nothing blocks the loop: connects and writes are asynchronous, and UDP
// sends that would block fail with EAGAIN instead. Destroying the upstream
// closes every handle; they are freed by their close callbacks, so run the
// loop once more afterwards (as for any libuv handle) before
// uv_loop_close().
#pragma once

#include <uv.h>

#include <cstdint>
#include <vector>

#include "common/clock.h"
#include "net/host/dns_upstream.h"

namespace berth::net {

class UvDnsUpstream final : public DnsUpstream {
 public:
  struct Options {
    uint32_t max_queries = 2048;
  };

  UvDnsUpstream(uv_loop_t* loop, const MonoClock& clock) : UvDnsUpstream(loop, clock, Options{}) {}
  UvDnsUpstream(uv_loop_t* loop, const MonoClock& clock, Options opts);
  ~UvDnsUpstream() override;
  UvDnsUpstream(const UvDnsUpstream&) = delete;
  UvDnsUpstream& operator=(const UvDnsUpstream&) = delete;

  void set_sink(DnsUpstreamSink* sink) override { sink_ = sink; }
  [[nodiscard]] Result<DnsQueryHandle> udp_query(const DnsServerAddr& server, Bytes query, uint64_t cookie) override;
  [[nodiscard]] Result<DnsQueryHandle> tcp_query(const DnsServerAddr& server, Bytes query, uint64_t cookie) override;
  void cancel(DnsQueryHandle q) override;
  void set_timer(std::optional<Instant> at) override;

  size_t open_queries() const { return open_; }

 private:
  struct Query;  // a handle plus its buffers; freed in its close callback
  struct Slot {
    Query* q = nullptr;
    uint32_t gen = 0;
  };

  Result<DnsQueryHandle> add(Query* q);
  static void close_query(Query* q);
  static void on_udp_recv(uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const struct sockaddr* addr,
                          unsigned flags);
  static void on_tcp_connect(uv_connect_t* req, int status);
  static void on_tcp_write(uv_write_t* req, int status);
  static void on_tcp_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_timer_cb(uv_timer_t* t);
  void tcp_done(Query* q, int err, Bytes reply);

  uv_loop_t* loop_;
  const MonoClock& clock_;
  Options opts_;
  DnsUpstreamSink* sink_ = nullptr;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  size_t open_ = 0;
  std::vector<uint8_t> rx_buf_;
  uv_timer_t* timer_;
};

}  // namespace berth::net
