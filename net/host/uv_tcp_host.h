// UvTcpHost: TcpHost over non-blocking Linux TCP sockets watched by uv_poll
// on the loop thread.
//
//  - Sockets get TCP_NODELAY (the guest already decided how to segment),
//    and SO_KEEPALIVE with Options' timings, so an established connection
//    never needs an idle timeout to find a dead peer.
//  - peek() uses MSG_PEEK at an offset: with SO_PEEK_OFF where the kernel
//    supports it for TCP (Linux 6.9+), else by peeking the skipped bytes into
//    a discard buffer (at most TcpHost::kMaxPeekOffset). consume() discards
//    with MSG_TRUNC, without copying.
//  - Read interest is made edge-like for the sink: SO_RCVLOWAT is kept one
//    byte above what has been peeked (at most a quarter of the receive
//    buffer), so the socket turns readable only when new bytes (or EOF)
//    arrive; a readable event that brought nothing new (the kernel reports
//    readable under memory pressure regardless) stops read polling until the
//    next consume().
//  - send_space() is the free part of the send buffer (SO_MEMINFO), counted
//    at 3/4 for skb overhead.
//  - At most Options::max_conns connections (EMFILE beyond).
//
// Destroying the host closes every socket; the uv_poll handles are freed by
// their close callbacks, so run the loop once more afterwards (as for any
// libuv handle) before uv_loop_close().
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <vector>

#include "common/clock.h"
#include "net/host/tcp_host.h"

namespace berth::net {

class UvTcpHost final : public TcpHost {
 public:
  struct Options {
    uint32_t max_conns = 8192;
    int keepalive_idle_s = 60;      // TCP_KEEPIDLE
    int keepalive_interval_s = 10;  // TCP_KEEPINTVL
    int keepalive_count = 6;        // TCP_KEEPCNT
    bool peek_offset = true;        // use SO_PEEK_OFF when the kernel has it (false: tests of the fallback)
  };

  UvTcpHost(uv_loop_t* loop, const MonoClock& clock) : UvTcpHost(loop, clock, Options{}) {}
  UvTcpHost(uv_loop_t* loop, const MonoClock& clock, Options opts);
  ~UvTcpHost() override;
  UvTcpHost(const UvTcpHost&) = delete;
  UvTcpHost& operator=(const UvTcpHost&) = delete;

  [[nodiscard]] Result<HostConnId> connect(wire::Ipv4Addr addr, uint16_t port, TcpHostSink& sink,
                                           uint64_t cookie) override;
  [[nodiscard]] Result<HostConnId> adopt(int fd, TcpHostSink& sink, uint64_t cookie) override;
  [[nodiscard]] Result<size_t> send(HostConnId c, Bytes data) override;
  [[nodiscard]] Result<PeekResult> peek(HostConnId c, size_t offset, std::span<uint8_t> out) override;
  void consume(HostConnId c, size_t n) override;
  size_t send_space(HostConnId c) override;
  void shutdown_write(HostConnId c) override;
  void close(HostConnId c, bool reset) override;
  void set_interest(HostConnId c, bool read, bool write) override;

  // Called after every event this host delivered (for the loop driver to
  // re-arm its timer from the handlers' poll_at()).
  void set_after_event(std::function<void()> cb) { after_event_ = std::move(cb); }

  size_t open_conns() const { return open_; }
  // Whether sockets support SO_PEEK_OFF (known after the first connect).
  bool peek_offset_supported() const { return peek_off_ok_; }

 private:
  struct Conn;
  struct Slot {
    std::unique_ptr<Conn> conn;
    uint32_t gen = 0;
  };

  Conn* get(HostConnId c);
  Result<HostConnId> add_conn(int fd, TcpHostSink& sink, uint64_t cookie, bool connecting, bool peek_off,
                              bool stream_tcp);
  void update_poll(Conn& c);
  void set_lowat(Conn& c);
  static void on_poll(uv_poll_t* h, int status, int events);
  void handle(Conn& c, int status, int events);

  uv_loop_t* loop_;
  const MonoClock& clock_;
  Options opts_;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  size_t open_ = 0;
  bool peek_off_ok_ = true;         // until a socket refuses SO_PEEK_OFF
  std::vector<uint8_t> discard_;    // skipped bytes when peeking without SO_PEEK_OFF
  std::function<void()> after_event_;
};

}  // namespace berth::net
