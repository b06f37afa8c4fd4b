// Theory of operation: host datagram sockets on libuv.
//
// Every UDP or ping socket is a non-blocking, connected kernel socket with a
// uv_poll watcher for readability. A readable event drains up to max_batch
// datagrams with recvfrom() into one shared 64 KiB buffer and hands each to
// the socket's sink; a failing recvfrom() other than EAGAIN is a pending
// asynchronous error (Linux reports ICMP errors on connected sockets as
// ECONNREFUSED, EHOSTUNREACH... through sk_err, and poll shows POLLERR,
// which libuv reports as readable), handed to the sink as on_error.
//
// Sinks may open and close sockets from their callbacks, so after each one
// the slot is looked up again by index and generation, and the loop stops if
// it was closed. Watchers (uv_poll_t and fd) live on the heap and are freed,
// fd closed, in their uv_close callback, as libuv requires.
//
// Raw ICMP mode shares one socket among all echo sockets: each gets a
// distinct identifier, written into the request it sends; a reply is handed
// to the socket owning its identifier if it came from that socket's remote.
// Everything else the raw socket sees (other programs' replies) is ignored.
#include "net/host/uv_dgram_host.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/icmp.h>  // ICMP_FILTER
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>

#include "net/wire/checksum.h"
#include "net/wire/icmpv4.h"
#include "net/wire/ipv4.h"

namespace berth::net {

namespace {

constexpr uint8_t kIcmpEchoReply = 0;
constexpr uint8_t kIcmpEchoRequest = 8;

sockaddr_in to_sockaddr(SockAddr4 a) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(a.addr.v);
  sa.sin_port = htons(a.port);
  return sa;
}

SockAddr4 from_sockaddr(const sockaddr_in& sa) {
  return SockAddr4{wire::Ipv4Addr(ntohl(sa.sin_addr.s_addr)), ntohs(sa.sin_port)};
}

Error sys_error(int err, std::string_view what) { return make_error(err, fmt::format("{}: {}", what, std::strerror(err))); }

}  // namespace

struct UvDgramHost::Watcher {
  uv_poll_t poll;
  UvDgramHost* host;
  uint32_t index;  // slot; unused for the raw watcher
  int fd;
  bool raw;
};

// Stops watching and frees the watcher, closing its fd, once libuv is done
// with the handle.
void UvDgramHost::close_watcher(Watcher* w) {
  uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), [](uv_handle_t* h) {
    auto* w = static_cast<Watcher*>(h->data);
    ::close(w->fd);
    delete w;
  });
}

IcmpMode UvDgramHost::probe_icmp() {
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_ICMP);
  if (fd >= 0) {
    ::close(fd);
    return IcmpMode::Ping;
  }
  fd = ::socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
  if (fd >= 0) {
    ::close(fd);
    return IcmpMode::Raw;
  }
  return IcmpMode::None;
}

UvDgramHost::UvDgramHost(uv_loop_t* loop, const MonoClock& clock, Options opts)
    : loop_(loop), clock_(clock), opts_(opts), rx_buf_(65536), tx_buf_(65536) {
  icmp_mode_ = opts_.icmp ? *opts_.icmp : probe_icmp();
  if (icmp_mode_ == IcmpMode::Raw) {
    raw_fd_ = ::socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_ICMP);
    if (raw_fd_ < 0) {
      spdlog::warn("icmp: raw socket not permitted ({}); ICMP echo disabled", std::strerror(errno));
      icmp_mode_ = IcmpMode::None;
    } else {
      // Filter out everything but echo replies in the kernel (bits set = dropped).
      icmp_filter filter{};
      filter.data = ~(1u << kIcmpEchoReply);
      if (::setsockopt(raw_fd_, SOL_RAW, ICMP_FILTER, &filter, sizeof filter) != 0)
        spdlog::debug("icmp: ICMP_FILTER: {}", std::strerror(errno));
      raw_watcher_ = new Watcher{{}, this, 0, raw_fd_, true};
      raw_watcher_->poll.data = raw_watcher_;
      int rc = uv_poll_init_socket(loop_, &raw_watcher_->poll, raw_fd_);
      if (rc != 0) {
        spdlog::warn("icmp: cannot watch raw socket: {}", uv_strerror(rc));
        delete raw_watcher_;
        raw_watcher_ = nullptr;
        ::close(raw_fd_);
        raw_fd_ = -1;
        icmp_mode_ = IcmpMode::None;
      }
    }
  }
  next_ident_ = uint16_t(::getpid() * 2654435761u >> 16);
  spdlog::debug("dgram host: ICMP echo via {}", icmp_mode_name(icmp_mode_));
}

UvDgramHost::~UvDgramHost() {
  for (uint32_t i = 0; i < slots_.size(); i++)
    if (slots_[i].kind != Kind::Free) close(DgramSocket{i, slots_[i].gen});
  if (raw_watcher_) {
    close_watcher(raw_watcher_);
  }
}

std::optional<uint32_t> UvDgramHost::alloc_slot() {
  if (open_ >= opts_.max_sockets) return std::nullopt;
  uint32_t i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = uint32_t(slots_.size());
    slots_.emplace_back();
  }
  open_++;
  return i;
}

UvDgramHost::Slot* UvDgramHost::live(DgramSocket s) {
  if (s.index >= slots_.size()) return nullptr;
  Slot& slot = slots_[s.index];
  return slot.kind != Kind::Free && slot.gen == s.gen ? &slot : nullptr;
}

const UvDgramHost::Slot* UvDgramHost::live(DgramSocket s) const {
  return const_cast<UvDgramHost*>(this)->live(s);
}

Result<DgramSocket> UvDgramHost::open_udp(SockAddr4 remote, DgramSink& sink, uint64_t cookie) {
  if (open_ >= opts_.max_sockets) return make_error(EMFILE, "datagram socket limit reached");
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return sys_error(errno, "udp socket");
  sockaddr_in sa = to_sockaddr(remote);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int err = errno;
    ::close(fd);
    return sys_error(err, fmt::format("udp connect {}:{}", remote.addr.to_string(), remote.port));
  }
  return open_fd(fd, Kind::Udp, remote, sink, cookie);
}

Result<DgramSocket> UvDgramHost::open_icmp_echo(wire::Ipv4Addr remote, DgramSink& sink, uint64_t cookie) {
  if (open_ >= opts_.max_sockets) return make_error(EMFILE, "datagram socket limit reached");
  switch (icmp_mode_) {
    case IcmpMode::None:
      return make_error(EPERM, "ICMP echo sockets not permitted (ping_group_range, no CAP_NET_RAW)");
    case IcmpMode::Raw:
      return open_raw(remote, sink, cookie);
    case IcmpMode::Ping:
      break;
  }
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_ICMP);
  if (fd < 0) return sys_error(errno, "icmp ping socket");
  sockaddr_in sa = to_sockaddr(SockAddr4{remote, 0});
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int err = errno;
    ::close(fd);
    return sys_error(err, fmt::format("icmp connect {}", remote.to_string()));
  }
  return open_fd(fd, Kind::IcmpPing, SockAddr4{remote, 0}, sink, cookie);
}

Result<DgramSocket> UvDgramHost::open_fd(int fd, Kind kind, SockAddr4 remote, DgramSink& sink, uint64_t cookie) {
  auto index = alloc_slot();
  if (!index) {
    ::close(fd);
    return make_error(EMFILE, "datagram socket limit reached");
  }
  auto* w = new Watcher{{}, this, *index, fd, false};
  w->poll.data = w;
  int rc = uv_poll_init_socket(loop_, &w->poll, fd);
  if (rc != 0) {
    ::close(fd);
    delete w;
  } else if ((rc = uv_poll_start(&w->poll, UV_READABLE, poll_cb)) != 0) {
    close_watcher(w);
  }
  if (rc != 0) {
    free_.push_back(*index);
    open_--;
    return make_error(-rc, fmt::format("uv_poll: {}", uv_strerror(rc)));
  }
  Slot& s = slots_[*index];
  s.kind = kind;
  s.watcher = w;
  s.fd = fd;
  s.sink = &sink;
  s.cookie = cookie;
  s.remote = remote;
  return DgramSocket{*index, s.gen};
}

Result<DgramSocket> UvDgramHost::open_raw(wire::Ipv4Addr remote, DgramSink& sink, uint64_t cookie) {
  if (raw_idents_.size() >= 0x10000) return make_error(EMFILE, "all ICMP identifiers in use");
  if (auto r = start_raw(); !r) return r.error();
  auto index = alloc_slot();
  if (!index) return make_error(EMFILE, "datagram socket limit reached");
  while (raw_idents_.count(next_ident_)) next_ident_++;
  uint16_t ident = next_ident_++;
  raw_idents_.emplace(ident, *index);
  Slot& s = slots_[*index];
  s.kind = Kind::IcmpRaw;
  s.sink = &sink;
  s.cookie = cookie;
  s.remote = SockAddr4{remote, 0};
  s.raw_ident = ident;
  return DgramSocket{*index, s.gen};
}

Result<void> UvDgramHost::start_raw() {
  if (raw_polling_) return {};
  int rc = uv_poll_start(&raw_watcher_->poll, UV_READABLE, poll_cb);
  if (rc != 0) return make_error(-rc, fmt::format("uv_poll raw: {}", uv_strerror(rc)));
  raw_polling_ = true;
  return {};
}

Result<void> UvDgramHost::send(DgramSocket s, Bytes data) {
  Slot* slot = live(s);
  if (!slot) return make_error(EBADF, {});
  if (slot->kind == Kind::IcmpRaw) {
    if (data.size() < wire::Icmpv4Packet::kHeaderLen || data.size() > tx_buf_.size() || data[0] != kIcmpEchoRequest)
      return make_error(EINVAL, {});
    // Our identifier, and the checksum the kernel leaves to raw senders.
    std::memcpy(tx_buf_.data(), data.data(), data.size());
    store_be16(&tx_buf_[4], slot->raw_ident);
    store_be16(&tx_buf_[2], 0);
    store_be16(&tx_buf_[2], wire::internet_checksum(Bytes(tx_buf_.data(), data.size())));
    sockaddr_in sa = to_sockaddr(slot->remote);
    ssize_t n;
    do {
      n = ::sendto(raw_fd_, tx_buf_.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return make_error(errno, {});
    return {};
  }
  ssize_t n;
  do {
    n = ::send(slot->fd, data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return make_error(errno, {});
  return {};
}

void UvDgramHost::close(DgramSocket s) {
  Slot* slot = live(s);
  if (!slot) return;
  if (slot->kind == Kind::IcmpRaw) {
    raw_idents_.erase(slot->raw_ident);
    if (raw_idents_.empty() && raw_polling_) {
      uv_poll_stop(&raw_watcher_->poll);
      raw_polling_ = false;
    }
  } else {
    close_watcher(slot->watcher);
  }
  uint32_t gen = slot->gen + 1;
  *slot = Slot{};
  slot->gen = gen;
  free_.push_back(s.index);
  open_--;
}

std::optional<SockAddr4> UvDgramHost::local_addr(DgramSocket s) const {
  const Slot* slot = live(s);
  if (!slot || slot->fd < 0) return std::nullopt;
  sockaddr_in sa{};
  socklen_t len = sizeof sa;
  if (::getsockname(slot->fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) return std::nullopt;
  return from_sockaddr(sa);
}

void UvDgramHost::poll_cb(uv_poll_t* h, int status, int) {
  auto* w = static_cast<Watcher*>(h->data);
  if (status < 0) spdlog::debug("dgram host: poll error {}", uv_strerror(status));
  // Read even on a poll error: recvfrom() reports what is wrong, or EAGAIN.
  if (w->raw)
    w->host->on_raw_readable();
  else
    w->host->on_readable(w->index);
}

void UvDgramHost::on_readable(uint32_t index) {
  for (uint32_t n = 0; n < opts_.max_batch; n++) {
    if (index >= slots_.size() || slots_[index].kind == Kind::Free) return;
    const Slot s = slots_[index];  // a copy: callbacks may grow slots_
    sockaddr_in sa{};
    socklen_t len = sizeof sa;
    ssize_t r = ::recvfrom(s.fd, rx_buf_.data(), rx_buf_.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&sa), &len);
    if (r < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      if (err == EINTR) continue;
      s.sink->on_error(s.cookie, err, clock_.now());
    } else {
      s.sink->on_datagram(s.cookie, from_sockaddr(sa), Bytes(rx_buf_.data(), size_t(r)), clock_.now());
    }
    if (!live(DgramSocket{index, s.gen})) return;  // the sink closed it
  }
}

void UvDgramHost::on_raw_readable() {
  for (uint32_t n = 0; n < opts_.max_batch && raw_polling_; n++) {
    sockaddr_in sa{};
    socklen_t len = sizeof sa;
    ssize_t r = ::recvfrom(raw_fd_, rx_buf_.data(), rx_buf_.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&sa), &len);
    if (r < 0) {
      if (errno == EINTR) continue;
      return;  // EAGAIN, or an error no echo socket owns
    }
    // A raw socket receives the whole IPv4 packet.
    auto ip = wire::Ipv4Packet::check(Bytes(rx_buf_.data(), size_t(r)));
    if (!ip || ip->protocol() != wire::IpProtocol::Icmp || ip->frag_offset() != 0 || ip->more_frags()) continue;
    auto icmp = wire::Icmpv4Packet::check(ip->payload());
    if (!icmp || icmp->msg_type() != kIcmpEchoReply) continue;
    auto it = raw_idents_.find(icmp->echo_ident());
    if (it == raw_idents_.end()) continue;
    const Slot s = slots_[it->second];
    if (s.remote.addr != ip->src()) continue;
    s.sink->on_datagram(s.cookie, SockAddr4{ip->src(), 0}, icmp->bytes(), clock_.now());
  }
}

}  // namespace berth::net
