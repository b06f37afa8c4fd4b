// Stream-socket guest links (qemu, vmnet); see stream_links.h. Theory of
// operation:
//
// The listening socket and the one guest connection are nonblocking fds
// watched by uv_poll. Reads land in rbuf_, which always has room for a whole
// header plus the largest frame; parse() walks it: handshake bytes first
// (vmnet), then length-prefixed frames, each handed to rx_ straight from
// rbuf_ (lent for the call). A frame that is dropped but whose length is
// plausible is skipped without buffering (skip_), so one oversized frame
// does not cost the guest its connection. Writes are batched by LinkBase and
// go out with sendmsg(MSG_NOSIGNAL) from the queue, resuming mid-entry after
// a short write (head_off_).
//
// Whenever the connection goes away (drop_peer) or the link closes, epoch_
// changes; loops that called out to rx_ or on_writable_ check it and stop.
#include "net/link/stream_links.h"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>

namespace berth::net {

namespace {
constexpr int kReadsPerWakeup = 16;   // bounded work per readable event
constexpr int kAcceptsPerWakeup = 16;
constexpr size_t kMaxIov = 64;
constexpr uint64_t kAcceptRetryMs = 1000;
}  // namespace

// ---- StreamLink -----------------------------------------------------------

StreamLink::StreamLink(uv_loop_t* loop, std::string path, size_t max_frame, size_t header_len,
                       size_t max_plausible)
    : LinkBase(loop, max_frame, header_len),
      path_(std::move(path)),
      max_plausible_(std::max(max_plausible, max_frame)),
      rbuf_(std::max<size_t>(256 * 1024, 2 * (header_len + max_frame))) {}

StreamLink::~StreamLink() { StreamLink::close(); }

Result<void> StreamLink::start(Receive rx) {
  if (closed_) return make_error(EBADF, "link " + type() + ":" + path_ + " is closed");
  if (started_) return make_error(EALREADY, "link " + type() + ":" + path_ + " is already started");
  auto fd = bind_unix_socket(path_, SOCK_STREAM);
  if (!fd) return fd.error();
  ino_ = inode_of(path_);
  if (auto r = listen_.open(loop_, fd.value(), this, &StreamLink::on_listen_event); !r) {
    unlink_unix_socket(path_, ino_);
    return r.error();
  }
  listen_.want(UV_READABLE);
  rx_ = std::move(rx);
  started_ = true;
  spdlog::info("link {}: listening on {}", type(), path_);
  return {};
}

void StreamLink::close() {
  if (closed_) return;
  closed_ = true;
  epoch_++;
  conn_.close();
  listen_.close();
  accept_retry_.close();
  if (started_) unlink_unix_socket(path_, ino_);
  attached_ = false;
  txq_.clear();
  close_base();
}

void StreamLink::on_listen_event(uv_poll_t* h, int status, int) {
  auto* self = static_cast<StreamLink*>(h->data);
  if (!self) return;
  if (status < 0) {
    spdlog::warn("link {}: listening socket {}: {}", self->type(), self->path_, uv_strerror(status));
    return;
  }
  self->accept_all();
}

bool StreamLink::conn_hung_up() const {
  pollfd p{conn_.fd(), POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLRDHUP));
}

void StreamLink::accept_all() {
  for (int i = 0; i < kAcceptsPerWakeup && !closed_; i++) {
    int fd = ::accept4(listen_.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      // Out of descriptors or memory: the connection stays pending and a
      // level-triggered poll would spin, so stop watching and retry later.
      spdlog::warn("link {}: cannot accept on {}: {}; retrying in {} ms", type(), path_, std::strerror(errno),
                   kAcceptRetryMs);
      listen_.want(0);
      accept_retry_.start(loop_, kAcceptRetryMs, this, [](uv_timer_t* t) {
        auto* self = static_cast<StreamLink*>(t->data);
        if (self && !self->closed_) self->listen_.want(UV_READABLE);
      });
      return;
    }
    if (conn_.is_open()) {
      if (!conn_hung_up()) {
        ::close(fd);
        stats_.peers_refused++;
        spdlog::info("link {}: refused a connection on {}: a guest is already attached", type(), path_);
        continue;
      }
      drop_peer("hung up (a new connection replaces it)");
      if (closed_) {  // on_writable_ closed the link
        ::close(fd);
        return;
      }
    }
    if (auto r = conn_.open(loop_, fd, this, &StreamLink::on_conn_event); !r) {
      spdlog::warn("link {}: {}", type(), r.error().message);
      continue;
    }
    attached_ = false;
    refusing_ = false;
    rhead_ = rtail_ = skip_ = head_off_ = 0;
    write_blocked_ = false;
    update_events();
    spdlog::info("link {}: guest connected on {}", type(), path_);
    on_connected();
  }
}

void StreamLink::update_events() {
  if (!conn_.is_open()) return;
  conn_.want((refusing_ ? 0 : UV_READABLE) | (write_blocked_ ? UV_WRITABLE : 0));
}

void StreamLink::on_conn_event(uv_poll_t* h, int status, int events) {
  auto* self = static_cast<StreamLink*>(h->data);
  if (!self) return;
  if (status < 0) return self->drop_peer(std::string("poll: ") + uv_strerror(status));
  uint64_t e = self->epoch_;
  if (events & UV_WRITABLE) {
    self->write_blocked_ = false;
    self->update_events();
    self->flush_now();
    if (self->epoch_ != e) return;
  }
  if (events & (UV_READABLE | UV_DISCONNECT)) self->on_readable();
}

void StreamLink::on_readable() {
  for (int i = 0; i < kReadsPerWakeup; i++) {
    if (refusing_) return;
    if (rhead_ > 0 && rbuf_.size() - rtail_ < header_len_ + max_frame_) {
      std::memmove(rbuf_.data(), rbuf_.data() + rhead_, rtail_ - rhead_);
      rtail_ -= rhead_;
      rhead_ = 0;
    }
    size_t space = rbuf_.size() - rtail_;
    ssize_t n = ::read(conn_.fd(), rbuf_.data() + rtail_, space);
    if (n > 0) {
      rtail_ += size_t(n);
      uint64_t e = epoch_;
      parse();
      if (epoch_ != e) return;
      if (size_t(n) < space) return;  // drained
      continue;
    }
    if (n == 0) return drop_peer("closed the connection");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    return drop_peer(std::string("read: ") + std::strerror(errno));
  }
}

void StreamLink::parse() {
  for (;;) {
    size_t avail = rtail_ - rhead_;
    if (avail == 0 || refusing_) {
      rhead_ = rtail_ = 0;
      return;
    }
    if (skip_) {
      size_t k = std::min(skip_, avail);
      skip_ -= k;
      rhead_ += k;
      continue;
    }
    if (!attached_) {
      uint64_t e = epoch_;
      size_t used = handshake(Bytes(rbuf_.data() + rhead_, avail));
      if (epoch_ != e) return;
      if (used == 0) return;  // needs more bytes
      rhead_ += used;
      continue;
    }
    if (avail < header_len_) return;
    size_t len = decode_length(rbuf_.data() + rhead_);
    if (len == 0 || len > max_plausible_) return drop_peer(fmt::format("framing lost (frame length {})", len));
    if (len < 14 || len > max_frame_) {
      // Still in step with the stream: skip this frame, keep the guest.
      if (len < 14)
        stats_.rx_dropped_runt++;
      else
        stats_.rx_dropped_oversize++;
      spdlog::debug("link {}: dropped a {}-byte frame from the guest (max {})", type(), len, max_frame_);
      rhead_ += header_len_;
      skip_ = len;
      continue;
    }
    if (avail < header_len_ + len) return;
    Bytes frame(rbuf_.data() + rhead_ + header_len_, len);
    rhead_ += header_len_ + len;
    uint64_t e = epoch_;
    deliver(frame);
    if (epoch_ != e) return;
  }
}

void StreamLink::flush() {
  if (!conn_.is_open()) {
    txq_.clear();
    return;
  }
  while (!txq_.empty()) {
    iovec iov[kMaxIov];
    size_t n = std::min(txq_.size(), kMaxIov);
    for (size_t i = 0; i < n; i++) {
      QueuedWrite& w = txq_.at(i);
      size_t off = i == 0 ? head_off_ : 0;
      iov[i].iov_base = w.data.get() + off;
      iov[i].iov_len = w.len - off;
    }
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = n;
    ssize_t r = ::sendmsg(conn_.fd(), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        write_blocked_ = true;
        update_events();
        return;
      }
      return drop_peer(std::string("write: ") + std::strerror(errno));
    }
    size_t left = size_t(r);
    while (left > 0) {
      size_t rest = txq_.front().len - head_off_;
      if (left >= rest) {
        left -= rest;
        head_off_ = 0;
        complete_front();
      } else {
        head_off_ += left;
        left = 0;
      }
    }
  }
  if (refusing_) drop_peer(refuse_reason_);  // the refusal has been written
}

void StreamLink::refuse_peer(const std::string& why) {
  refusing_ = true;
  refuse_reason_ = why;
  update_events();
  if (txq_.empty())
    drop_peer(why);
  else
    schedule_flush();
}

void StreamLink::drop_peer(const std::string& why) {
  if (!conn_.is_open()) return;
  spdlog::info("link {}: guest on {} disconnected: {}", type(), path_, why);
  conn_.close();
  stats_.disconnects++;
  epoch_++;
  attached_ = false;
  refusing_ = false;
  rhead_ = rtail_ = skip_ = head_off_ = 0;
  on_dropped();
  discard_queue();  // may run on_writable_, which may close the link: nothing after this
}

// ---- QemuLink -------------------------------------------------------------

QemuLink::QemuLink(uv_loop_t* loop, std::string path, size_t max_frame)
    : StreamLink(loop, std::move(path), max_frame, 4, kMaxPlausible) {}

QemuLink::~QemuLink() { close(); }

std::string QemuLink::peer() const {
  return "unix:" + path_ + (has_peer() ? " (guest attached)" : " (waiting for a guest)");
}

void QemuLink::write_header(uint8_t* out, size_t frame_len) const { store_be32(out, uint32_t(frame_len)); }
size_t QemuLink::decode_length(const uint8_t* header) const { return load_be32(header); }

// ---- VmnetLink ------------------------------------------------------------

namespace {
constexpr char kMagic[5] = {'V', 'M', 'N', '3', 'T'};
// The init message's 40-byte "commit" field: free text that clients print.
constexpr char kCommit[41] = "berth-vmnet-0000000000000000000000000000";
static_assert(sizeof(kCommit) == 41);

uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
char lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }
}  // namespace

bool is_uuid_text(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); i++) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

wire::MacAddr vmnet_mac_for_uuid(std::string_view uuid) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, then mixed
  for (char c : uuid) {
    h ^= uint8_t(lower(c));
    h *= 0x100000001b3ull;
  }
  h = mix64(h);
  wire::MacAddr m;
  for (int i = 0; i < 6; i++) m.b[i] = uint8_t(h >> (8 * i));
  m.b[0] = uint8_t((m.b[0] & 0xfc) | 0x02);  // unicast, locally administered
  return m;
}

VmnetLink::VmnetLink(uv_loop_t* loop, std::string path, size_t max_frame)
    : StreamLink(loop, std::move(path), max_frame, 2, 0xffff) {
  assert(max_frame <= 0xffff && "vmnet lengths are 16 bits");
}

VmnetLink::~VmnetLink() { close(); }

std::string VmnetLink::peer() const {
  if (has_peer()) return fmt::format("unix:{} (guest {} mac {})", path_, uuid_, mac_.to_string());
  return "unix:" + path_ + " (waiting for a guest)";
}

void VmnetLink::write_header(uint8_t* out, size_t frame_len) const { store_le16(out, uint16_t(frame_len)); }
size_t VmnetLink::decode_length(const uint8_t* header) const { return load_le16(header); }

void VmnetLink::send_disconnect(const std::string& reason) {
  uint8_t resp[kResponseLen] = {};
  size_t n = std::min<size_t>(reason.size(), 255);
  resp[0] = 2;  // disconnect
  resp[1] = uint8_t(n);
  std::memcpy(resp + 2, reason.data(), n);
  enqueue_control(Bytes(resp, sizeof(resp)));
  refuse_peer(reason);
}

size_t VmnetLink::handshake(Bytes in) {
  switch (stage_) {
    case Stage::Init: {
      if (in.size() < kInitLen) return 0;
      if (std::memcmp(in.data(), kMagic, sizeof(kMagic)) != 0) {
        drop_peer("not a vmnet client (bad magic)");
        return 0;
      }
      uint32_t version = load_le32(in.data() + 5);
      uint8_t init[kInitLen];
      std::memcpy(init, kMagic, sizeof(kMagic));
      store_le32(init + 5, kVersion);
      std::memcpy(init + 9, kCommit, 40);
      enqueue_control(Bytes(init, sizeof(init)));  // VPNKit answers with its init even to refuse
      if (version != kVersion) {
        refuse_peer(fmt::format("vmnet protocol version {} (Berth speaks {})", version, kVersion));
        return kInitLen;
      }
      stage_ = Stage::Command;
      return kInitLen;
    }
    case Stage::Command: {
      if (in.size() < kCommandLen) return 0;
      uint8_t command = in[0];
      std::string_view text(reinterpret_cast<const char*>(in.data() + 1), 36);
      if (command != 1 && command != 8) {
        send_disconnect(fmt::format("unsupported vmnet command {}", command));
        return kCommandLen;
      }
      std::string uuid;
      if (text.find_first_not_of('\0') == std::string_view::npos) {
        uuid = "00000000-0000-0000-0000-000000000000";  // VPNKit would pick one at random
      } else if (!is_uuid_text(text)) {
        send_disconnect("invalid UUID");
        return kCommandLen;
      } else {
        for (char c : text) uuid.push_back(lower(c));
      }
      uuid_ = uuid;
      mac_ = vmnet_mac_for_uuid(uuid_);
      preferred_ipv4_.reset();
      if (command == 8) preferred_ipv4_ = wire::Ipv4Addr(load_le32(in.data() + 37));

      uint8_t resp[kResponseLen] = {};
      uint16_t mtu = uint16_t(max_frame_ - 14);
      resp[0] = 1;  // vif
      store_le16(resp + 1, mtu);
      store_le16(resp + 3, uint16_t(std::min<size_t>(0xffff, size_t(mtu) + 50)));
      mac_.write(resp + 5);
      enqueue_control(Bytes(resp, sizeof(resp)));
      stage_ = Stage::Done;
      attach();
      spdlog::info("link vmnet: guest {} on {} attached with mac {}{}", uuid_, path_, mac_.to_string(),
                   preferred_ipv4_ ? " (prefers " + preferred_ipv4_->to_string() + ")" : std::string());
      return kCommandLen;
    }
    case Stage::Done:
      break;
  }
  return 0;
}

}  // namespace berth::net
