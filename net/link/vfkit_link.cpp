// The vfkit datagram link; see vfkit_link.h. Theory of operation:
//
// One nonblocking SOCK_DGRAM socket, watched by uv_poll for reads. Each
// datagram is received with MSG_TRUNC, so its real length is known even when
// it did not fit (oversize). Frames toward the guest leave in batches with
// sendmmsg from LinkBase's queue.
//
// Writability cannot be polled reliably here: when the guest's socket is not
// connected to ours, the kernel refuses datagrams once the guest's receive
// queue holds net.unix.max_dgram_qlen of them, while our own socket still
// polls writable. So on EAGAIN the link retries from a 1 ms timer instead.
// (vfkit connects its socket to ours, and then only our send buffer limits.)
#include "net/link/vfkit_link.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>

namespace berth::net {

namespace {
constexpr int kReadsPerWakeup = 64;
constexpr size_t kBatch = 64;
constexpr uint64_t kRetryMs = 1;
constexpr char kVfkitMagic[4] = {'V', 'F', 'K', 'T'};
}  // namespace

VfkitLink::VfkitLink(uv_loop_t* loop, std::string path, size_t max_frame)
    : LinkBase(loop, max_frame, 0), path_(std::move(path)), rbuf_(max_frame) {}

VfkitLink::~VfkitLink() { close(); }

std::string VfkitLink::peer_name() const {
  if (peer_len_ <= offsetof(sockaddr_un, sun_path)) return "?";
  size_t n = std::min<size_t>(peer_len_ - offsetof(sockaddr_un, sun_path), sizeof(peer_.sun_path));
  std::string s;
  if (peer_.sun_path[0] == '\0') {  // abstract
    s.push_back('@');
    s.append(peer_.sun_path + 1, n - 1);
  } else {
    s.append(peer_.sun_path, strnlen(peer_.sun_path, n));
  }
  return s;
}

std::string VfkitLink::peer() const {
  if (has_peer()) return fmt::format("unixgram:{} (guest at {})", path_, peer_name());
  return "unixgram:" + path_ + " (waiting for a guest)";
}

Result<void> VfkitLink::start(Receive rx) {
  if (closed_) return make_error(EBADF, "link vfkit:" + path_ + " is closed");
  if (started_) return make_error(EALREADY, "link vfkit:" + path_ + " is already started");
  auto fd = bind_unix_socket(path_, SOCK_DGRAM);
  if (!fd) return fd.error();
  ino_ = inode_of(path_);
  // Apple's suggested sizes for vmnet-style datagram links (gvisor-tap-vsock
  // uses the same); the kernel clamps them to its limits.
  int snd = 1 << 20, rcv = 4 << 20;
  ::setsockopt(fd.value(), SOL_SOCKET, SO_SNDBUF, &snd, sizeof(snd));
  ::setsockopt(fd.value(), SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
  if (auto r = sock_.open(loop_, fd.value(), this, &VfkitLink::on_event); !r) {
    unlink_unix_socket(path_, ino_);
    return r.error();
  }
  sock_.want(UV_READABLE);
  rx_ = std::move(rx);
  started_ = true;
  spdlog::info("link vfkit: listening on {}", path_);
  return {};
}

void VfkitLink::close() {
  if (closed_) return;
  closed_ = true;
  epoch_++;
  sock_.close();
  retry_.close();
  if (started_) unlink_unix_socket(path_, ino_);
  peer_len_ = 0;
  txq_.clear();
  close_base();
}

void VfkitLink::on_event(uv_poll_t* h, int status, int events) {
  auto* self = static_cast<VfkitLink*>(h->data);
  if (!self) return;
  if (status < 0) {
    spdlog::warn("link vfkit: socket {}: {}", self->path_, uv_strerror(status));
    return;
  }
  if (events & UV_READABLE) self->on_readable();
}

bool VfkitLink::peer_alive() const {
  // Connecting does not send anything: a socket that is gone refuses it.
  int probe = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (probe < 0) return true;
  int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&peer_), peer_len_);
  int err = rc == 0 ? 0 : errno;
  ::close(probe);
  return err != ECONNREFUSED && err != ENOENT;
}

void VfkitLink::learn_peer(const sockaddr_un& from, socklen_t len) {
  std::memcpy(&peer_, &from, len);
  peer_len_ = len;
  spdlog::info("link vfkit: guest at {} attached on {}", peer_name(), path_);
}

void VfkitLink::forget_peer(const std::string& why) {
  if (!peer_len_) return;
  spdlog::info("link vfkit: guest at {} on {} detached: {}", peer_name(), path_, why);
  peer_len_ = 0;
  stats_.disconnects++;
  epoch_++;
  retry_.stop();
  discard_queue();  // may run on_writable_, which may close the link
}

void VfkitLink::on_readable() {
  for (int i = 0; i < kReadsPerWakeup && !closed_; i++) {
    sockaddr_un from{};
    socklen_t flen = sizeof(from);
    ssize_t n = ::recvfrom(sock_.fd(), rbuf_.data(), rbuf_.size(), MSG_TRUNC | MSG_DONTWAIT,
                           reinterpret_cast<sockaddr*>(&from), &flen);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        spdlog::warn("link vfkit: receive on {}: {}", path_, std::strerror(errno));
      return;
    }
    if (flen <= offsetof(sockaddr_un, sun_path)) {  // unbound sender: no way to answer it
      stats_.peers_refused++;
      spdlog::debug("link vfkit: refused a datagram from an unbound socket on {}", path_);
      continue;
    }
    bool magic = n == 4 && std::memcmp(rbuf_.data(), kVfkitMagic, 4) == 0;
    if (!peer_len_) {
      learn_peer(from, flen);
    } else if (flen != peer_len_ || std::memcmp(&from, &peer_, flen) != 0) {
      if (!magic && peer_alive()) {
        stats_.peers_refused++;
        spdlog::debug("link vfkit: refused a datagram on {}: a guest is already attached", path_);
        continue;
      }
      forget_peer(magic ? "a new guest announced itself" : "its socket is gone");
      if (closed_) return;
      learn_peer(from, flen);
    }
    if (magic) continue;  // vfkit's hello, not a frame
    if (size_t(n) > rbuf_.size()) {
      stats_.rx_dropped_oversize++;
      spdlog::debug("link vfkit: dropped a {}-byte frame from the guest (max {})", n, max_frame_);
      continue;
    }
    uint64_t e = epoch_;
    deliver(Bytes(rbuf_.data(), size_t(n)));
    if (epoch_ != e) return;
  }
}

void VfkitLink::flush() {
  if (!has_peer()) {
    txq_.clear();
    return;
  }
  while (!txq_.empty()) {
    mmsghdr msgs[kBatch];
    iovec iov[kBatch];
    size_t n = std::min(txq_.size(), kBatch);
    for (size_t i = 0; i < n; i++) {
      QueuedWrite& w = txq_.at(i);
      iov[i].iov_base = w.data.get();
      iov[i].iov_len = w.len;
      msgs[i] = mmsghdr{};
      msgs[i].msg_hdr.msg_name = &peer_;
      msgs[i].msg_hdr.msg_namelen = peer_len_;
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int r = ::sendmmsg(sock_.fd(), msgs, unsigned(n), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
        write_blocked_ = true;
        retry_.start(loop_, kRetryMs, this, [](uv_timer_t* t) {
          auto* self = static_cast<VfkitLink*>(t->data);
          if (!self) return;
          self->write_blocked_ = false;
          self->flush_now();
        });
        return;
      }
      // ECONNREFUSED/ENOENT: the guest's socket is gone; EPERM: it is now
      // connected elsewhere. Anything else is as final for this guest.
      return forget_peer(std::string("send: ") + std::strerror(errno));
    }
    for (int i = 0; i < r; i++) complete_front();
  }
}

}  // namespace berth::net
