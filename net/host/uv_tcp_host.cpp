// Theory of operation: host TCP sockets on libuv.
//
// Each connection is a non-blocking socket with one uv_poll watcher. While
// connecting it is polled for writability and SO_ERROR tells the outcome.
// Afterwards the poll mask follows the sink's interest: readable (with
// UV_DISCONNECT, i.e. EPOLLRDHUP, so the peer's FIN is seen) while read
// interest is on and the connection is not stalled; writable while the
// one-shot write interest is armed.
//
// Data from the host stays in the kernel until consume(): the sink peeks at
// offsets, and SO_RCVLOWAT = (bytes peeked since the last consume) + 1 keeps
// libuv's level-triggered poll from reporting the same bytes again (up to a
// quarter of the receive buffer: a larger mark makes Linux clamp the window
// it advertises to the host peer). The
// kernel still reports readable below the low-water mark when its receive
// memory is under pressure or the window is nearly closed; a readable event
// after which nothing new was peeked therefore marks the connection stalled
// (not polled for reading) until the next consume() or a fresh read
// interest. End of stream is reported once through peek() (eof) and counts
// as progress that one time.
//
// libuv reports EPOLLERR as status UV_EBADF and stops the watcher; SO_ERROR
// has the real error (ECONNREFUSED while connecting, ECONNRESET after).
// Sinks may close connections from their callbacks, so after each callback
// the connection is looked up again by index and generation. The fd is
// closed, and the Conn freed, in the uv_close callback.
#include "net/host/uv_tcp_host.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sock_diag.h>  // SK_MEMINFO_*
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

namespace berth::net {

namespace {

Error sys_error(int err, std::string_view what) {
  return make_error(err, fmt::format("{}: {}", what, std::strerror(err)));
}

int socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
  return err;
}

void set_int(int fd, int level, int opt, int v) { (void)setsockopt(fd, level, opt, &v, sizeof v); }

}  // namespace

struct UvTcpHost::Conn {
  uv_poll_t poll{};
  UvTcpHost* host = nullptr;
  HostConnId id;
  TcpHostSink* sink = nullptr;
  uint64_t cookie = 0;
  int fd = -1;
  int events = 0;            // the mask uv_poll is started with, 0 when stopped
  bool connecting = true;
  bool dead = false;         // failed: only close() is meaningful
  bool want_read = false, want_write = false;
  bool stalled = false;      // readable without news: wait for consume()
  bool rdhup = false;        // the peer's FIN is in the receive queue
  bool eof_reported = false;
  bool progressed = false;   // during a readable callback: something new was peeked
  bool peek_off = false;     // SO_PEEK_OFF enabled on this socket
  bool tcp = true;           // false for an adopted unix stream socket
  size_t kernel_off = 0;     // the kernel's peek offset, mirrored
  size_t peeked_end = 0;     // furthest byte peeked, from the first unconsumed one
  int lowat = 1;
  int lowat_cap = 1;         // SO_RCVBUF / 4, refreshed when a mark would exceed it
};

UvTcpHost::UvTcpHost(uv_loop_t* loop, const MonoClock& clock, Options opts)
    : loop_(loop), clock_(clock), opts_(opts), peek_off_ok_(opts.peek_offset) {}

UvTcpHost::~UvTcpHost() {
  for (uint32_t i = 0; i < slots_.size(); i++)
    if (slots_[i].conn) close(HostConnId{i, slots_[i].gen}, false);
}

UvTcpHost::Conn* UvTcpHost::get(HostConnId c) {
  if (c.index >= slots_.size()) return nullptr;
  Slot& s = slots_[c.index];
  return s.conn && s.gen == c.gen ? s.conn.get() : nullptr;
}

Result<HostConnId> UvTcpHost::connect(wire::Ipv4Addr addr, uint16_t port, TcpHostSink& sink, uint64_t cookie) {
  if (open_ >= opts_.max_conns) return make_error(EMFILE, "host TCP connection table full");
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return sys_error(errno, "socket");
  set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, opts_.keepalive_idle_s);
  set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, opts_.keepalive_interval_s);
  set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, opts_.keepalive_count);
  bool peek_off = false;
  if (peek_off_ok_) {
    int zero = 0;
    peek_off = setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) == 0;
    if (!peek_off) {
      spdlog::debug("tcp host: SO_PEEK_OFF unsupported ({}), peeking through a discard buffer",
                    std::strerror(errno));
      peek_off_ok_ = false;
    }
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(addr.v);
  sa.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 && errno != EINPROGRESS) {
    int err = errno;
    ::close(fd);
    return sys_error(err, fmt::format("connect {}:{}", addr.to_string(), port));
  }

  return add_conn(fd, sink, cookie, true, peek_off, true);
}

Result<HostConnId> UvTcpHost::adopt(int fd, TcpHostSink& sink, uint64_t cookie) {
  if (open_ >= opts_.max_conns) {
    ::close(fd);
    return make_error(EMFILE, "host TCP connection table full");
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) {
    int err = errno;
    ::close(fd);
    return sys_error(err, "getsockname");
  }
  bool tcp = ss.ss_family == AF_INET || ss.ss_family == AF_INET6;
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  if (tcp) {
    set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    set_int(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
    set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, opts_.keepalive_idle_s);
    set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, opts_.keepalive_interval_s);
    set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, opts_.keepalive_count);
  }
  int zero = 0;
  bool peek_off = opts_.peek_offset && setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) == 0;
  return add_conn(fd, sink, cookie, false, peek_off, tcp);
}

Result<HostConnId> UvTcpHost::add_conn(int fd, TcpHostSink& sink, uint64_t cookie, bool connecting, bool peek_off,
                                       bool stream_tcp) {
  uint32_t i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = uint32_t(slots_.size());
    slots_.emplace_back();
  }
  Slot& s = slots_[i];
  s.gen++;
  s.conn = std::make_unique<Conn>();
  Conn& c = *s.conn;
  c.host = this;
  c.id = HostConnId{i, s.gen};
  c.sink = &sink;
  c.cookie = cookie;
  c.fd = fd;
  c.peek_off = peek_off;
  c.connecting = connecting;
  c.tcp = stream_tcp;
  int rc = uv_poll_init(loop_, &c.poll, fd);
  if (rc < 0) {
    ::close(fd);
    s.conn.reset();
    free_.push_back(i);
    return make_error(-rc, fmt::format("uv_poll_init: {}", uv_strerror(rc)));
  }
  c.poll.data = &c;
  open_++;
  update_poll(c);
  return c.id;
}

Result<size_t> UvTcpHost::send(HostConnId id, Bytes data) {
  Conn* c = get(id);
  if (!c || c->dead || c->connecting) return make_error(ENOTCONN, "host connection not open");
  ssize_t r = ::send(c->fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (r >= 0) return size_t(r);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return size_t(0);
  return sys_error(errno, "send");
}

Result<PeekResult> UvTcpHost::peek(HostConnId id, size_t offset, std::span<uint8_t> out) {
  Conn* c = get(id);
  if (!c || c->dead || c->connecting) return make_error(ENOTCONN, "host connection not open");
  PeekResult res;
  if (out.empty()) return res;
  ssize_t r;
  size_t n = 0;
  if (c->peek_off) {
    if (c->kernel_off != offset) {
      if (offset > size_t(INT_MAX)) return make_error(EINVAL, "peek offset too large");
      int v = int(offset);
      if (setsockopt(c->fd, SOL_SOCKET, SO_PEEK_OFF, &v, sizeof v) < 0) return sys_error(errno, "SO_PEEK_OFF");
      c->kernel_off = offset;
    }
    r = ::recv(c->fd, out.data(), out.size(), MSG_PEEK | MSG_DONTWAIT);
    if (r > 0) {
      c->kernel_off += size_t(r);
      n = size_t(r);
    }
  } else {
    if (offset > kMaxPeekOffset) return make_error(EINVAL, "peek offset too large");
    if (discard_.size() < offset) discard_.resize(offset);
    iovec iov[2] = {{discard_.data(), offset}, {out.data(), out.size()}};
    msghdr m{};
    m.msg_iov = offset ? iov : iov + 1;
    m.msg_iovlen = offset ? 2 : 1;
    r = ::recvmsg(c->fd, &m, MSG_PEEK | MSG_DONTWAIT);
    if (r > 0 && size_t(r) > offset) n = size_t(r) - offset;
  }
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return res;
    return sys_error(errno, "recv");
  }
  res.n = n;
  // A return of 0 is the end of the stream; after the peer's FIN everything
  // before it is queued, so a short read reaches the end too.
  res.eof = r == 0 || (c->rdhup && n < out.size());
  if (offset + n > c->peeked_end) {
    c->peeked_end = offset + n;
    c->progressed = true;
    c->stalled = false;
  }
  if (res.eof && !c->eof_reported) {
    c->eof_reported = true;
    c->progressed = true;
  }
  if (c->want_read) update_poll(*c);  // the low-water mark follows peeked_end
  return res;
}

void UvTcpHost::consume(HostConnId id, size_t n) {
  Conn* c = get(id);
  if (!c || c->dead) return;
  size_t done = 0;
  while (done < n) {
    // TCP discards with MSG_TRUNC, without a copy; unix streams need a buffer.
    ssize_t r;
    if (c->tcp) {
      r = ::recv(c->fd, nullptr, n - done, MSG_TRUNC | MSG_DONTWAIT);
    } else {
      if (discard_.size() < std::min<size_t>(n - done, 64 << 10)) discard_.resize(64 << 10);
      r = ::recv(c->fd, discard_.data(), std::min(n - done, discard_.size()), MSG_DONTWAIT);
    }
    if (r <= 0) break;
    done += size_t(r);
  }
  if (done < n) spdlog::debug("tcp host: consumed {} of {} bytes", done, n);
  c->kernel_off -= std::min(c->kernel_off, done);  // the kernel moves its peek offset back likewise
  c->peeked_end -= std::min(c->peeked_end, done);
  c->stalled = false;
  update_poll(*c);
}

size_t UvTcpHost::send_space(HostConnId id) {
  Conn* c = get(id);
  if (!c || c->dead || c->connecting) return 0;
  uint32_t mem[SK_MEMINFO_VARS] = {};
  socklen_t len = sizeof mem;
  if (getsockopt(c->fd, SOL_SOCKET, SO_MEMINFO, mem, &len) < 0) return 0;
  uint32_t sndbuf = mem[SK_MEMINFO_SNDBUF], queued = mem[SK_MEMINFO_WMEM_QUEUED];
  if (queued >= sndbuf) return 0;
  return size_t(sndbuf - queued) * 3 / 4;  // truesize counts skb overhead too
}

void UvTcpHost::shutdown_write(HostConnId id) {
  Conn* c = get(id);
  if (!c || c->dead || c->connecting) return;
  if (::shutdown(c->fd, SHUT_WR) < 0) spdlog::debug("tcp host: shutdown: {}", std::strerror(errno));
}

void UvTcpHost::close(HostConnId id, bool reset) {
  Conn* c = get(id);
  if (!c) return;
  if (reset) {
    linger l{1, 0};  // close() sends a RST
    (void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  Conn* raw = slots_[id.index].conn.release();
  free_.push_back(id.index);
  open_--;
  uv_close(reinterpret_cast<uv_handle_t*>(&raw->poll), [](uv_handle_t* h) {
    auto* k = static_cast<Conn*>(h->data);
    ::close(k->fd);
    delete k;
  });
}

void UvTcpHost::set_interest(HostConnId id, bool read, bool write) {
  Conn* c = get(id);
  if (!c) return;
  if (read && !c->want_read) c->stalled = false;
  c->want_read = read;
  c->want_write = write;
  update_poll(*c);
}

void UvTcpHost::set_lowat(Conn& c) {
  // Linux grows the receive buffer for a low-water mark that it could not
  // hold, and then clamps the advertised window to the mark, which would
  // throttle the host peer. Stay below a quarter of the buffer; above that
  // the stall rule covers it.
  int want = int(std::min<size_t>(c.peeked_end + 1, INT_MAX / 2));
  if (want > c.lowat_cap) {
    int rcvbuf = 0;
    socklen_t len = sizeof rcvbuf;
    if (getsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &len) == 0) c.lowat_cap = std::max(rcvbuf / 4, 1);
    want = std::min(want, c.lowat_cap);
  }
  if (want == c.lowat) return;
  if (setsockopt(c.fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof want) == 0) c.lowat = want;
}

void UvTcpHost::update_poll(Conn& c) {
  int ev = 0;
  if (!c.dead) {
    if (c.connecting) {
      ev = UV_WRITABLE;
    } else {
      if (c.want_read && !c.stalled && !c.eof_reported) ev |= UV_READABLE | UV_DISCONNECT;
      if (c.want_write) ev |= UV_WRITABLE;
    }
  }
  if (ev & UV_READABLE) set_lowat(c);
  if (ev == c.events) return;
  if (ev == 0) uv_poll_stop(&c.poll);
  else uv_poll_start(&c.poll, ev, &UvTcpHost::on_poll);
  c.events = ev;
}

void UvTcpHost::on_poll(uv_poll_t* h, int status, int events) {
  auto* c = static_cast<Conn*>(h->data);
  UvTcpHost* host = c->host;
  host->handle(*c, status, events);
  if (host->after_event_) host->after_event_();
}

void UvTcpHost::handle(Conn& c, int status, int events) {
  HostConnId id = c.id;
  TcpHostSink* sink = c.sink;
  uint64_t cookie = c.cookie;
  Instant now = clock_.now();
  if (status < 0) {
    // POLLERR: libuv stopped the watcher; SO_ERROR says what happened.
    int err = socket_error(c.fd);
    if (err == 0) err = status == UV_EBADF ? ECONNRESET : -status;
    c.events = 0;
    c.dead = true;
    if (c.connecting) {
      c.connecting = false;
      sink->on_host_connected(cookie, err, now);
    } else {
      sink->on_host_error(cookie, err, now);
    }
    return;
  }
  if (c.connecting) {
    if (!(events & UV_WRITABLE)) return;
    int err = socket_error(c.fd);
    c.connecting = false;
    if (err) c.dead = true;
    update_poll(c);
    sink->on_host_connected(cookie, err, now);
    return;
  }
  if (events & UV_DISCONNECT) c.rdhup = true;
  if ((events & (UV_READABLE | UV_DISCONNECT)) && c.want_read) {
    c.progressed = false;
    sink->on_host_readable(cookie, now);
    Conn* k = get(id);
    if (!k) return;
    // Nothing new: wait for consume() or fresh interest. Only when bytes
    // are in flight, though: a stale event after everything was consumed
    // would otherwise stop polling with no consume() ever coming.
    if (k->want_read && !k->progressed && !k->dead && k->peeked_end > 0) {
      k->stalled = true;
      update_poll(*k);
    }
  }
  if (events & UV_WRITABLE) {
    Conn* k = get(id);
    if (!k || !k->want_write) return;
    k->want_write = false;  // one-shot
    update_poll(*k);
    sink->on_host_writable(cookie, now);
  }
}

}  // namespace berth::net
