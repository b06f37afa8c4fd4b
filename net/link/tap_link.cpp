// The TAP link; see tap_link.h. Theory of operation:
//
// open_tap() does the privileged part once, at start: enter the namespace
// (setns on this thread only), open /dev/net/tun, TUNSETIFF, then through an
// ioctl socket opened in the same namespace set the MTU and IFF_UP, and go
// back. A guard restores the thread's namespace on every path; failing to
// return would leave the event-loop thread in the guest's namespace, so that
// aborts.
//
// Afterwards the descriptor is ordinary: nonblocking reads, one frame each,
// bounded per wakeup; writes of one frame each from LinkBase's queue, and
// on EAGAIN the link waits for writability.
#include "net/link/tap_link.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace berth::net {

namespace {
constexpr int kReadsPerWakeup = 64;

std::string errno_text(int e) { return std::strerror(e); }

// Enters a network namespace for its lifetime (on this thread).
class NetnsGuard {
 public:
  ~NetnsGuard() {
    if (self_ >= 0) {
      if (::setns(self_, CLONE_NEWNET) != 0) {
        spdlog::critical("tap: cannot return to the original network namespace: {}", errno_text(errno));
        std::abort();  // the loop thread would keep running in the guest's namespace
      }
      ::close(self_);
    }
    if (target_ >= 0) ::close(target_);
  }

  Result<void> enter(const std::string& netns) {
    if (netns.empty() || netns == "." || netns == ".." || netns.find('/') != std::string::npos)
      return make_error(EINVAL, "bad network namespace name '" + netns + "'");
    std::string path = "/run/netns/" + netns;
    target_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (target_ < 0) {
      int e = errno;
      if (e == ENOENT)
        return make_error(ENOENT, "network namespace '" + netns + "' does not exist (create it with: ip netns add " +
                                      netns + ")");
      return make_error(e, "cannot open " + path + ": " + errno_text(e));
    }
    int self = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self < 0) return make_error(errno, "cannot open /proc/thread-self/ns/net: " + errno_text(errno));
    if (::setns(target_, CLONE_NEWNET) != 0) {
      int e = errno;
      ::close(self);
      return make_error(e, "cannot enter network namespace '" + netns + "': " + errno_text(e) +
                               (e == EPERM ? " (needs CAP_SYS_ADMIN)" : ""));
    }
    self_ = self;  // from now on the destructor returns
    return {};
  }

 private:
  int target_ = -1, self_ = -1;
};

Result<void> bring_up(const std::string& ifname, unsigned mtu) {
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return make_error(errno, "socket for interface ioctls: " + errno_text(errno));
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, ifname.data(), ifname.size());
  ifr.ifr_mtu = int(mtu);
  Result<void> r;
  if (::ioctl(s, SIOCSIFMTU, &ifr) != 0) {
    r = make_error(errno, "cannot set the MTU of " + ifname + " to " + std::to_string(mtu) + ": " + errno_text(errno));
  } else if (::ioctl(s, SIOCGIFFLAGS, &ifr) != 0) {
    r = make_error(errno, "cannot read the flags of " + ifname + ": " + errno_text(errno));
  } else {
    ifr.ifr_flags = short(ifr.ifr_flags | IFF_UP);
    if (::ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
      r = make_error(errno, "cannot bring " + ifname + " up: " + errno_text(errno));
  }
  ::close(s);
  return r;
}
}  // namespace

Result<int> open_tap(const std::string& ifname, const std::string& netns, unsigned mtu) {
  if (ifname.empty() || ifname.size() >= IFNAMSIZ)
    return make_error(EINVAL, "bad interface name '" + ifname + "' (1.." + std::to_string(IFNAMSIZ - 1) + " characters)");
  NetnsGuard ns;
  if (!netns.empty())
    if (auto r = ns.enter(netns); !r) return r.error();
  int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return make_error(errno, "cannot open /dev/net/tun: " + errno_text(errno));
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, ifname.data(), ifname.size());
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  if (::ioctl(fd, TUNSETIFF, &ifr) != 0) {
    int e = errno;
    ::close(fd);
    std::string why = errno_text(e);
    if (e == EPERM) why += " (needs CAP_NET_ADMIN)";
    if (e == EBUSY) why += " (the device is in use)";
    if (e == EINVAL) why += " (is there another kind of interface by that name?)";
    return make_error(e, "cannot create tap " + ifname + (netns.empty() ? "" : " in " + netns) + ": " + why);
  }
  if (auto r = bring_up(ifname, mtu); !r) {
    ::close(fd);
    return r.error();
  }
  return fd;
}

TapLink::TapLink(uv_loop_t* loop, std::string ifname, std::string netns, size_t max_frame)
    : LinkBase(loop, max_frame, 0), ifname_(std::move(ifname)), netns_(std::move(netns)), rbuf_(max_frame + 1) {}

TapLink::~TapLink() { close(); }

std::string TapLink::peer() const {
  std::string s = ifname_ + (netns_.empty() ? "" : "@" + netns_);
  if (failed_) s += " (gone)";
  return s;
}

Result<void> TapLink::start(Receive rx) {
  if (closed_) return make_error(EBADF, "link tap:" + ifname_ + " is closed");
  if (started_) return make_error(EALREADY, "link tap:" + ifname_ + " is already started");
  auto fd = open_tap(ifname_, netns_, unsigned(max_frame_ - 14));
  if (!fd) return fd.error();
  if (auto r = dev_.open(loop_, fd.value(), this, &TapLink::on_event); !r) return r.error();
  dev_.want(UV_READABLE);
  rx_ = std::move(rx);
  started_ = true;
  spdlog::info("link tap: {} is up (mtu {})", peer(), max_frame_ - 14);
  return {};
}

void TapLink::close() {
  if (closed_) return;
  closed_ = true;
  epoch_++;
  dev_.close();
  txq_.clear();
  close_base();
}

void TapLink::on_event(uv_poll_t* h, int status, int events) {
  auto* self = static_cast<TapLink*>(h->data);
  if (!self) return;
  if (status < 0) return self->fail(std::string("poll: ") + uv_strerror(status));
  uint64_t e = self->epoch_;
  if (events & UV_WRITABLE) {
    self->write_blocked_ = false;
    self->dev_.want(UV_READABLE);
    self->flush_now();
    if (self->epoch_ != e) return;
  }
  if (events & UV_READABLE) self->on_readable();
}

void TapLink::fail(const std::string& why) {
  if (failed_ || closed_) return;
  spdlog::warn("link tap: {}: {}; the link is down", peer(), why);
  failed_ = true;
  dev_.want(0);
  stats_.disconnects++;
  epoch_++;
  discard_queue();  // may run on_writable_
}

void TapLink::on_readable() {
  for (int i = 0; i < kReadsPerWakeup; i++) {
    ssize_t n = ::read(dev_.fd(), rbuf_.data(), rbuf_.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      return fail(std::string("read: ") + errno_text(errno));
    }
    if (n == 0) return fail("read: end of file");
    if (size_t(n) > max_frame_) {  // did not fit (the kernel truncates to the buffer)
      stats_.rx_dropped_oversize++;
      spdlog::debug("link tap: dropped a {}-byte frame from the guest (max {})", n, max_frame_);
      continue;
    }
    uint64_t e = epoch_;
    deliver(Bytes(rbuf_.data(), size_t(n)));
    if (epoch_ != e) return;
  }
}

void TapLink::flush() {
  if (!has_peer()) {
    txq_.clear();
    return;
  }
  while (!txq_.empty()) {
    QueuedWrite& w = txq_.front();
    ssize_t r = ::write(dev_.fd(), w.data.get(), w.len);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        write_blocked_ = true;
        dev_.want(UV_READABLE | UV_WRITABLE);
        return;
      }
      // EIO and the like: the kernel would not take this frame (interface
      // down); it is lost, as it would be on a wire.
      stats_.tx_dropped_no_peer++;
      spdlog::debug("link tap: {}: write: {}", peer(), errno_text(errno));
      txq_.pop();
      continue;
    }
    complete_front();
  }
}

}  // namespace berth::net
