// TcpHost: the host half of translated TCP connections (net/tcp.h). The real
// one is UvTcpHost (non-blocking Linux sockets under uv_poll); gateway
// services use an in-process one (net/tcp.cpp); tests use a fake
// (STYLE.md §5).
//
// A connection is a byte stream each way, with the kernel's socket buffers as
// the only buffers:
//  - Toward the host: send() takes what fits in the send buffer and says how
//    much; send_space() says how much more would fit now. Nothing is queued
//    in user space.
//  - From the host: bytes stay in the receive buffer until consume(). peek()
//    copies bytes at any offset below kMaxPeekOffset without removing them,
//    so data sent to the guest but not yet acknowledged can be sent again.
//
// Contract:
//  - connect() starts a non-blocking connect. Errors known at once (EMFILE,
//    ENETUNREACH, a full table...) come back from it; otherwise exactly one
//    on_host_connected() follows, with 0 or an errno (ECONNREFUSED,
//    ETIMEDOUT, EHOSTUNREACH, ENETUNREACH...).
//  - Read interest (set_interest): while on, on_host_readable() reports bytes
//    beyond the furthest offset peeked since the last consume(), the end of
//    the stream, or an error that peek() will return. It is edge-like: after
//    a readable event that the sink answers without peeking anything new, the
//    host stays quiet until the next consume() or until read interest is
//    turned on again.
//  - Write interest is one-shot: on_host_writable() fires once when send
//    space becomes available, and interest is then off until set again.
//  - on_host_error() reports a dead connection (reset by the peer, keepalive
//    timeout); only close() is meaningful afterwards.
//  - Events go to the sink given at connect, tagged with its cookie, never
//    from inside a call into the TcpHost, with `now` read from the host's
//    clock. A sink may close any connection, the reporting one included,
//    from inside a callback. After close() no event for it arrives.
//  - Established connections are never closed for idleness; host sockets use
//    keepalives to find dead peers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "common/bytes.h"
#include "common/clock.h"
#include "common/result.h"
#include "net/wire/addr.h"

namespace berth::net {

// A connection of a TcpHost: a slot index and a generation, so a stale
// handle never reaches a reused slot.
struct HostConnId {
  uint32_t index = UINT32_MAX;
  uint32_t gen = 0;
  bool valid() const { return index != UINT32_MAX; }
  auto operator<=>(const HostConnId&) const = default;
};

class TcpHostSink {
 public:
  virtual ~TcpHostSink() = default;
  // connect() finished: err is 0 when connected, else an errno value.
  virtual void on_host_connected(uint64_t cookie, int err, Instant now) = 0;
  virtual void on_host_readable(uint64_t cookie, Instant now) = 0;
  virtual void on_host_writable(uint64_t cookie, Instant now) = 0;
  virtual void on_host_error(uint64_t cookie, int err, Instant now) = 0;
};

struct PeekResult {
  size_t n = 0;      // bytes copied
  bool eof = false;  // the peer closed its side and nothing follows these n bytes
};

class TcpHost {
 public:
  // Offsets at which peek() works: the most data that may be in flight to
  // the guest at once.
  static constexpr size_t kMaxPeekOffset = size_t(4) << 20;

  virtual ~TcpHost() = default;

  [[nodiscard]] virtual Result<HostConnId> connect(wire::Ipv4Addr addr, uint16_t port, TcpHostSink& sink,
                                                   uint64_t cookie) = 0;
  // Take over a connected stream socket (one a port forward accepted; TCP
  // or unix). The host owns `fd` from then on, also when this fails. Read
  // and write interest start off; no on_host_connected() follows.
  [[nodiscard]] virtual Result<HostConnId> adopt(int fd, TcpHostSink& sink, uint64_t cookie) {
    (void)fd, (void)sink, (void)cookie;
    return make_error(ENOTSUP, "this host cannot adopt sockets");
  }
  // Bytes taken (0 when the send buffer is full). ECONNRESET/EPIPE when the
  // connection is gone.
  [[nodiscard]] virtual Result<size_t> send(HostConnId c, Bytes data) = 0;
  // Copy bytes starting `offset` bytes after the first unconsumed one.
  // n == 0 without eof: nothing there yet. Errors: the connection failed.
  [[nodiscard]] virtual Result<PeekResult> peek(HostConnId c, size_t offset, std::span<uint8_t> out) = 0;
  // Drop the first n unconsumed bytes; n must not exceed what peek() saw.
  virtual void consume(HostConnId c, size_t n) = 0;
  // How many more bytes send() would take now (an estimate, never above).
  virtual size_t send_space(HostConnId c) = 0;
  // FIN toward the host (shutdown(SHUT_WR)); reading goes on.
  virtual void shutdown_write(HostConnId c) = 0;
  // Close; with reset the peer gets a RST (SO_LINGER 0). Unknown handles are
  // ignored.
  virtual void close(HostConnId c, bool reset) = 0;
  virtual void set_interest(HostConnId c, bool read, bool write) = 0;
};

}  // namespace berth::net
