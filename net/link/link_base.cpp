// Shared link machinery; see link_base.h. Theory of operation:
//
// send() validates a frame, copies it behind the link's header into the
// bounded WriteQueue and schedules a flush on a uv_idle handle. The idle
// callback runs at the start of the next loop iteration (and keeps that
// iteration's poll from blocking), so every frame sent while handling one
// batch of events goes out in one writev/sendmmsg. When the descriptor is
// full the link waits for writability (write_blocked_) instead.
//
// A refused send (queue full) sets want_writable_; once the queue drains
// below half, or is discarded because the peer left, on_writable_ runs once.
#include "net/link/link_base.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace berth::net {

// ---- PolledFd -------------------------------------------------------------

Result<void> PolledFd::open(uv_loop_t* loop, int fd, void* owner, uv_poll_cb cb) {
  close();
  auto* p = new uv_poll_t{};
  int rc = uv_poll_init(loop, p, fd);
  if (rc != 0) {
    delete p;  // never initialised: no uv_close
    ::close(fd);
    return make_error(-rc, std::string("cannot poll descriptor: ") + uv_strerror(rc));
  }
  p->data = owner;
  poll_ = p;
  cb_ = cb;
  fd_ = fd;
  events_ = 0;
  return {};
}

void PolledFd::want(int events) {
  if (!poll_ || events == events_) return;
  events_ = events;
  if (events == 0)
    uv_poll_stop(poll_);
  else
    uv_poll_start(poll_, events, cb_);
}

void PolledFd::close() {
  if (poll_) {
    uv_poll_stop(poll_);  // removes the fd from epoll before we close it
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  events_ = 0;
}

// ---- OneShotTimer ---------------------------------------------------------

void OneShotTimer::start(uv_loop_t* loop, uint64_t ms, void* owner, uv_timer_cb cb) {
  if (!t_) {
    t_ = new uv_timer_t{};
    uv_timer_init(loop, t_);
  }
  t_->data = owner;
  uv_timer_start(t_, cb, ms, 0);
}

void OneShotTimer::stop() {
  if (t_) uv_timer_stop(t_);
}

bool OneShotTimer::active() const { return t_ && uv_is_active(reinterpret_cast<const uv_handle_t*>(t_)); }

void OneShotTimer::close() {
  if (!t_) return;
  uv_timer_stop(t_);
  t_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(t_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  t_ = nullptr;
}

// ---- WriteQueue -----------------------------------------------------------

uint8_t* WriteQueue::push(size_t len, uint32_t frame_len) {
  QueuedWrite w;
  if (!spare_.empty()) {
    w = std::move(spare_.back());
    spare_.pop_back();
  }
  if (w.cap < len) {
    w.cap = std::max<size_t>(len, 2048);
    w.data = std::make_unique<uint8_t[]>(w.cap);
  }
  w.len = len;
  w.frame_len = frame_len;
  bytes_ += len;
  q_.push_back(std::move(w));
  return q_.back().data.get();
}

void WriteQueue::pop() {
  bytes_ -= q_.front().len;
  if (spare_.size() < 64) spare_.push_back(std::move(q_.front()));
  q_.pop_front();
}

void WriteQueue::clear() {
  while (!q_.empty()) pop();
}

// ---- unix sockets ---------------------------------------------------------

uint64_t inode_of(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) ? uint64_t(st.st_ino) : 0;
}

void unlink_unix_socket(const std::string& path, uint64_t ino) {
  if (ino != 0 && inode_of(path) == ino) ::unlink(path.c_str());
}

Result<int> bind_unix_socket(const std::string& path, int type) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  if (path.empty()) return make_error(EINVAL, "unix socket path is empty");
  if (path.size() >= sizeof(sun.sun_path)) return make_error(ENAMETOOLONG, "unix socket path too long: " + path);
  std::memcpy(sun.sun_path, path.data(), path.size());

  namespace fs = std::filesystem;
  fs::path p(path);
  std::error_code ec;
  if (p.has_parent_path() && !fs::exists(p.parent_path(), ec)) {
    fs::create_directories(p.parent_path(), ec);
    if (ec) return make_error(ec.value(), "cannot create " + p.parent_path().string() + ": " + ec.message());
    ::chmod(p.parent_path().c_str(), 0700);
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return make_error(EEXIST, path + " exists and is not a socket");
    // A socket file: stale unless something answers on it. A socket of the
    // other type answers with EPROTOTYPE; a full backlog with EAGAIN.
    int probe = ::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0) return make_error(errno, std::string("socket: ") + std::strerror(errno));
    int rc = ::connect(probe, reinterpret_cast<sockaddr*>(&sun), sizeof(sun));
    int err = rc == 0 ? 0 : errno;
    ::close(probe);
    if (err != ECONNREFUSED && err != ENOENT) return make_error(EADDRINUSE, path + " is in use by a running server");
    ::unlink(path.c_str());
  }
  int fd = ::socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(errno, std::string("socket: ") + std::strerror(errno));
  mode_t old = ::umask(0177);  // the socket is born 0600
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun));
  int err = errno;
  ::umask(old);
  if (rc != 0) {
    ::close(fd);
    return make_error(err, "cannot bind " + path + ": " + std::strerror(err));
  }
  ::chmod(path.c_str(), 0600);
  if (type == SOCK_STREAM && ::listen(fd, 16) != 0) {
    err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return make_error(err, "cannot listen on " + path + ": " + std::strerror(err));
  }
  return fd;
}

// ---- LinkBase -------------------------------------------------------------

LinkBase::LinkBase(uv_loop_t* loop, size_t max_frame, size_t header_len)
    : loop_(loop), max_frame_(max_frame), header_len_(header_len) {}

LinkBase::~LinkBase() { close_base(); }

void LinkBase::close_base() {
  if (idle_) {
    uv_idle_stop(idle_);
    idle_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(idle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
    idle_ = nullptr;
  }
  flush_scheduled_ = false;
}

bool LinkBase::send(Bytes frame) {
  if (frame.empty() || frame.size() > max_frame_) {
    stats_.tx_dropped_invalid++;
    spdlog::debug("link {}: refusing a {}-byte frame toward the guest (max {})", type(), frame.size(), max_frame_);
    return false;
  }
  if (closed_ || !has_peer()) {
    stats_.tx_dropped_no_peer++;
    return false;
  }
  size_t len = header_len_ + frame.size();
  if (!txq_.has_room(len)) {
    stats_.tx_dropped_full++;
    want_writable_ = true;
    return false;
  }
  uint8_t* out = txq_.push(len, uint32_t(frame.size()));
  write_header(out, frame.size());
  std::memcpy(out + header_len_, frame.data(), frame.size());
  schedule_flush();
  return true;
}

void LinkBase::enqueue_control(Bytes raw) {
  uint8_t* out = txq_.push(raw.size(), 0);
  std::memcpy(out, raw.data(), raw.size());
  schedule_flush();
}

void LinkBase::schedule_flush() {
  if (flush_scheduled_ || write_blocked_ || closed_ || txq_.empty()) return;
  if (!idle_) {
    idle_ = new uv_idle_t{};
    uv_idle_init(loop_, idle_);
    idle_->data = this;
  }
  uv_idle_start(idle_, &LinkBase::on_idle);
  flush_scheduled_ = true;
}

void LinkBase::on_idle(uv_idle_t* h) {
  auto* self = static_cast<LinkBase*>(h->data);
  uv_idle_stop(h);
  if (!self) return;
  self->flush_scheduled_ = false;
  self->flush_now();
}

void LinkBase::flush_now() {
  if (closed_) return;
  if (!txq_.empty() && !write_blocked_) flush();
  drain_check();
}

void LinkBase::complete_front() {
  const QueuedWrite& w = txq_.front();
  if (w.frame_len) {
    stats_.tx_frames++;
    stats_.tx_bytes += w.frame_len;
  }
  txq_.pop();
}

void LinkBase::discard_queue() {
  txq_.clear();
  write_blocked_ = false;
  drain_check();
}

void LinkBase::drain_check() {
  if (want_writable_ && txq_.below_half()) {
    want_writable_ = false;
    if (on_writable_) on_writable_();  // may send() or close(): nothing runs after it
  }
}

void LinkBase::deliver(Bytes frame) {
  if (frame.size() < 14) {
    stats_.rx_dropped_runt++;
    spdlog::debug("link {}: dropped a {}-byte runt frame from the guest", type(), frame.size());
    return;
  }
  if (frame.size() > max_frame_) {
    stats_.rx_dropped_oversize++;
    spdlog::debug("link {}: dropped a {}-byte frame from the guest (max {})", type(), frame.size(), max_frame_);
    return;
  }
  stats_.rx_frames++;
  stats_.rx_bytes += frame.size();
  if (rx_) rx_(frame);
}

}  // namespace berth::net
