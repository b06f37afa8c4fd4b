// The NBD export. Theory of operation:
//
// A connection goes through the negotiation (nbd::Handshake, fed from the
// read buffer) and then reads requests. Each request header is parsed and
// checked against the export; a request that passes becomes an IoOp for the
// disk's IoThread; one that fails is answered at once with its NBD error.
// Requests parsed from one read are submitted as one batch.
//
// Write payloads skip the read buffer: once a write header is parsed, the
// allocation callback hands libuv the op's own buffer, so a 1 MiB write is
// read straight into the memory the I/O thread writes from.
//
// Replies queue per connection as the I/O thread hands ops back; at the end
// of each batch they go out as one writev (uv_try_write first; whatever the
// socket did not take goes into one uv_write that owns its ops until it
// completes). A read reply is its 16-byte header plus the op's data buffer:
// no copy.
//
// Lifetime: a connection is freed only when its handle is closed *and* no op
// of it is still at the disk (the I/O thread holds plain pointers to it).
// After it starts closing it never touches the server again.
#include "storage/nbd_server.h"

#include <arpa/inet.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>

#include "server9p/transport.h"

namespace berth::storage {

namespace {
constexpr size_t kReadBuffer = 256 * 1024;  // negotiation messages and request headers
constexpr int kMaxIov = 256;
constexpr int kSocketBuffer = 4 << 20;

size_t reply_size(const IoOp& op) {
  bool payload = op.kind == IoOp::Kind::None || (op.kind == IoOp::Kind::Read && op.err == 0);
  return op.header_len + (payload ? op.length : 0);
}
}  // namespace

namespace {
// The pool's size class for `len`: the smallest 4 KiB << k that holds it.
size_t size_class(size_t len) {
  size_t k = 0;
  while ((size_t(4096) << k) < len) k++;
  return k;
}
}  // namespace

void NbdServer::BufferPool::take(IoOp& op, size_t len) {
  size_t k = size_class(len);
  if (k < std::size(lists) && !lists[k].empty()) {
    op.data = std::move(lists[k].back());
    lists[k].pop_back();
    op.data_capacity = size_t(4096) << k;
    pooled -= op.data_capacity;
    return;
  }
  size_t cap = k < std::size(lists) ? size_t(4096) << k : len;
  op.data = std::make_unique_for_overwrite<uint8_t[]>(cap);
  op.data_capacity = cap;
}

void NbdServer::BufferPool::give(IoOp& op) {
  if (!op.data) return;
  size_t k = size_class(op.data_capacity);
  if (k < std::size(lists) && (size_t(4096) << k) == op.data_capacity && pooled + op.data_capacity <= kMaxPooled) {
    pooled += op.data_capacity;
    lists[k].push_back(std::move(op.data));
  }
  op.data.reset();
  op.data_capacity = 0;
}

struct NbdServer::Listener {
  NbdServer* server;
  p9::ListenAddr addr;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_handle_t handle;
    uv_stream_t stream;
  } h;
};

struct NbdServer::Conn final : IoOwner {
  NbdServer* srv;  // null once closing
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_handle_t handle;
    uv_stream_t stream;
  } h;
  std::string peer;
  nbd::Handshake hs;
  bool transmission = false;
  std::vector<uint8_t> rbuf = std::vector<uint8_t>(kReadBuffer);
  size_t rlen = 0;
  // A write whose payload is still arriving.
  std::unique_ptr<IoOp> payload_op;
  size_t payload_have = 0;
  nbd::Verdict payload_verdict;
  std::vector<std::unique_ptr<IoOp>> to_submit;
  size_t in_flight = 0;  // ops at the I/O thread
  size_t held = 0;       // bytes of op data buffers this connection owns or has at the disk
  // Output.
  std::deque<std::unique_ptr<IoOp>> out;
  size_t out_off = 0;     // bytes of out.front() already written
  size_t out_bytes = 0;   // unsent or in-progress bytes, `out` plus `writing`
  std::vector<std::unique_ptr<IoOp>> writing;  // owned by the uv_write in progress
  size_t writing_bytes = 0;
  bool write_busy = false;
  uv_write_t wreq{};
  bool reading = false;
  bool disc = false;     // NBD_CMD_DISC or NBD_OPT_ABORT: finish, then close
  bool closing = false;
  bool handle_closed = false;

  Conn(NbdServer* s) : srv(s), hs({s->exp_}) {}

  // ---- input ------------------------------------------------------------

  static void on_alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
    auto* c = static_cast<Conn*>(handle->data);
    if (c->payload_op) {
      *buf = uv_buf_init(reinterpret_cast<char*>(c->payload_op->data.get() + c->payload_have),
                         unsigned(c->payload_op->length - c->payload_have));
    } else {
      *buf = uv_buf_init(reinterpret_cast<char*>(c->rbuf.data() + c->rlen), unsigned(c->rbuf.size() - c->rlen));
    }
  }

  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t*) {
    auto* c = static_cast<Conn*>(s->data);
    if (c->closing) return;
    if (n < 0) {
      if (n != UV_EOF) spdlog::debug("nbd: {}: read: {}", c->peer, uv_strerror(int(n)));
      return c->drop();
    }
    if (n == 0) return;
    if (c->payload_op) {
      c->payload_have += size_t(n);
      if (c->payload_have == c->payload_op->length) {
        auto op = std::move(c->payload_op);
        c->srv->stats_.bytes_written += op->length;
        c->dispatch(std::move(op), c->payload_verdict);
      }
    } else {
      c->rlen += size_t(n);
    }
    c->pump();
  }

  // Parse what is buffered, submit, write, and decide whether to read on.
  void pump() {
    if (closing) return;
    if (!transmission && !handshake()) return;
    for (;;) {
      if (transmission && !requests()) return;
      submit();
      flush_out();
      if (closing) return;
      // Writing replies may have released memory: requests still buffered
      // (the client may have sent its last ones already) go on now.
      if (!transmission || payload_op || rlen < nbd::kRequestHeaderSize || !has_room()) break;
    }
    update_reading();
    maybe_finish();
  }

  bool handshake() {
    std::vector<uint8_t> bytes;
    auto r = hs.feed(Bytes(rbuf.data(), rlen), bytes);
    if (!bytes.empty()) queue_bytes(std::move(bytes));
    if (!r) {
      spdlog::debug("nbd: {}: negotiation: {}", peer, r.error().message);
      srv->stats_.protocol_errors++;
      flush_out();  // best effort: the client may read why
      drop();
      return false;
    }
    consume(r.value());
    if (hs.state() == nbd::Handshake::State::Closed) {
      disc = true;
    } else if (hs.state() == nbd::Handshake::State::Transmission) {
      transmission = true;
      srv->stats_.handshakes++;
      spdlog::debug("nbd: {}: export '{}' after {} option(s)", peer, hs.chosen().name, hs.options_seen());
    }
    return true;
  }

  bool has_room() {
    if (disc || closing) return false;
    if (srv->held_total_ >= srv->max_total_held_bytes) {
      srv->held_blocked_ = true;  // released bytes wake every connection
      return false;
    }
    return in_flight + to_submit.size() < srv->max_in_flight &&
           srv->io_.in_flight() + to_submit.size() < srv->io_.capacity() && out_bytes < srv->max_out_bytes &&
           held < srv->max_held_bytes;
  }

  // Memory accounting for op data buffers: from allocation until the op
  // is retired (its reply written, or the connection dropped).
  void hold(const IoOp& op) {
    held += op.length;
    srv->held_total_ += op.length;
  }
  void release(IoOp& op) {
    if (closing || !op.data) return;  // a dropped connection released everything at once
    held -= op.length;
    srv->held_total_ -= op.length;
    srv->pool_.give(op);
    if (srv->held_blocked_ && srv->held_total_ <= srv->max_total_held_bytes / 2) {
      srv->held_blocked_ = false;
      srv->request_wake();
    }
  }

  // Returns false when the connection was dropped.
  bool requests() {
    const nbd::ExportInfo& e = srv->exp_;
    size_t pos = 0;
    while (!payload_op && rlen - pos >= nbd::kRequestHeaderSize && has_room()) {
      auto req = nbd::parse_request(Bytes(rbuf.data() + pos, nbd::kRequestHeaderSize));
      if (!req) {
        spdlog::debug("nbd: {}: {}", peer, req.error().message);
        srv->stats_.protocol_errors++;
        drop();
        return false;
      }
      pos += nbd::kRequestHeaderSize;
      const nbd::Request& r = req.value();
      if (r.type < srv->stats_.requests.size())
        srv->stats_.requests[r.type]++;
      else
        srv->stats_.requests_other++;
      nbd::Verdict v = nbd::check_request(r, e);
      if (v.kind == nbd::Verdict::Disconnect) {
        if (r.type == nbd::kCmdDisc) {  // soft disconnect: finish what is in flight
          disc = true;
          break;
        }
        spdlog::debug("nbd: {}: {} of {} bytes is over the limit", peer, nbd::command_name(r.type), r.length);
        srv->stats_.protocol_errors++;
        drop();
        return false;
      }
      auto op = std::make_unique<IoOp>();
      op->owner = this;
      op->tag = r.handle;
      op->extra = r.type;
      op->offset = r.offset;
      op->length = r.length;
      op->fua = r.flags & nbd::kCmdFlagFua;
      op->may_unmap = !(r.flags & nbd::kCmdFlagNoHole);
      switch (r.type) {
        case nbd::kCmdRead: op->kind = IoOp::Kind::Read; break;
        case nbd::kCmdWrite: op->kind = IoOp::Kind::Write; break;
        case nbd::kCmdFlush: op->kind = IoOp::Kind::Flush; break;
        case nbd::kCmdTrim: op->kind = IoOp::Kind::Discard; break;
        case nbd::kCmdWriteZeroes: op->kind = IoOp::Kind::WriteZeroes; break;
        default: op->kind = IoOp::Kind::None; op->length = 0; break;
      }
      if (r.type == nbd::kCmdWrite && r.length > 0) {
        srv->pool_.take(*op, r.length);
        hold(*op);
        size_t take = std::min<size_t>(rlen - pos, r.length);
        std::memcpy(op->data.get(), rbuf.data() + pos, take);
        pos += take;
        if (take < r.length) {  // the rest is read straight into op->data
          payload_op = std::move(op);
          payload_have = take;
          payload_verdict = v;
          break;
        }
        srv->stats_.bytes_written += r.length;
      }
      dispatch(std::move(op), v);
    }
    consume(pos);
    return true;
  }

  void dispatch(std::unique_ptr<IoOp> op, nbd::Verdict v) {
    if (v.kind == nbd::Verdict::Fail) {
      op->err = int(v.error);  // NBD error values are Linux errno values
      return reply(std::move(op));
    }
    if (op->kind != IoOp::Kind::Flush && op->length == 0) return reply(std::move(op));  // nothing to do
    if (op->kind == IoOp::Kind::Read) {
      srv->pool_.take(*op, op->length);
      hold(*op);
    }
    to_submit.push_back(std::move(op));
  }

  void submit() {
    if (to_submit.empty()) return;
    size_t n = to_submit.size();
    if (!srv->io_.submit(to_submit)) {
      // has_room() keeps us under capacity; a refusal means the disk stopped.
      for (auto& op : to_submit) {
        op->err = ESHUTDOWN;
        reply(std::move(op));
      }
      to_submit.clear();
      return;
    }
    in_flight += n;
  }

  void consume(size_t n) {
    if (n == 0) return;
    std::memmove(rbuf.data(), rbuf.data() + n, rlen - n);
    rlen -= n;
  }

  void update_reading() {
    // Read while there is room for another request, or a payload to finish.
    bool want = !closing && !disc && (payload_op || (has_room() && rlen < rbuf.size()));
    if (want && !reading) {
      if (uv_read_start(&h.stream, &Conn::on_alloc, &Conn::on_read) == 0) reading = true;
    } else if (!want && reading) {
      uv_read_stop(&h.stream);
      reading = false;
      if (!disc) srv->stats_.read_pauses++;
    }
  }

  void maybe_finish() {
    if (disc && !closing && in_flight == 0 && to_submit.empty() && out.empty() && !write_busy) drop();
  }

  // ---- output -----------------------------------------------------------

  void queue_bytes(std::vector<uint8_t> bytes) {
    auto op = std::make_unique<IoOp>();
    op->kind = IoOp::Kind::None;
    op->length = bytes.size();
    op->data = std::make_unique_for_overwrite<uint8_t[]>(bytes.size());
    std::memcpy(op->data.get(), bytes.data(), bytes.size());
    hold(*op);
    out_bytes += op->length;
    out.push_back(std::move(op));
  }

  void reply(std::unique_ptr<IoOp> op) {
    if (op->err) {
      srv->stats_.error_replies++;
      spdlog::debug("nbd: {}: {} at {}+{}: {} {}", peer, nbd::command_name(uint16_t(op->extra)), op->offset,
                    op->length, op->err, op->message);
    } else if (op->kind == IoOp::Kind::Read) {
      srv->stats_.bytes_read += op->length;
    }
    nbd::encode_simple_reply(nbd::errno_to_nbd(op->err), op->tag, op->header);
    op->header_len = nbd::kReplyHeaderSize;
    out_bytes += reply_size(*op);
    out.push_back(std::move(op));
  }

  // Fills `bufs` from `out`, skipping out_off bytes of the first op.
  int gather(uv_buf_t* bufs, size_t* ops) {
    int n = 0;
    size_t skip = out_off;
    *ops = 0;
    for (auto& op : out) {
      if (n + 2 > kMaxIov) break;
      size_t hl = op->header_len;
      size_t dl = reply_size(*op) - hl;
      if (skip < hl) bufs[n++] = uv_buf_init(reinterpret_cast<char*>(op->header + skip), unsigned(hl - skip));
      size_t dskip = skip > hl ? skip - hl : 0;
      if (dl > dskip) bufs[n++] = uv_buf_init(reinterpret_cast<char*>(op->data.get() + dskip), unsigned(dl - dskip));
      skip = 0;
      ++*ops;
    }
    return n;
  }

  void flush_out() {
    if (closing || write_busy || out.empty()) return;
    uv_buf_t bufs[kMaxIov];
    size_t nops;
    int n = gather(bufs, &nops);
    int w = uv_try_write(&h.stream, bufs, unsigned(n));
    if (w < 0 && w != UV_EAGAIN) {
      spdlog::debug("nbd: {}: write: {}", peer, uv_strerror(w));
      return drop();
    }
    size_t written = w > 0 ? size_t(w) : 0;
    out_bytes -= written;
    while (!out.empty()) {  // retire what went out whole
      size_t left = reply_size(*out.front()) - out_off;
      if (written < left) {
        out_off += written;
        break;
      }
      written -= left;
      out_off = 0;
      release(*out.front());
      out.pop_front();
    }
    if (out.empty()) return;
    // The rest goes into one uv_write that owns its ops.
    n = gather(bufs, &nops);
    writing_bytes = 0;
    for (size_t i = 0; i < nops; i++) {
      writing_bytes += reply_size(*out.front()) - out_off;
      out_off = 0;
      writing.push_back(std::move(out.front()));
      out.pop_front();
    }
    wreq.data = this;
    int rc = uv_write(&wreq, &h.stream, bufs, unsigned(n), [](uv_write_t* req, int status) {
      auto* c = static_cast<Conn*>(req->data);
      c->write_busy = false;
      for (auto& op : c->writing) c->release(*op);
      c->writing.clear();
      c->out_bytes -= c->writing_bytes;
      c->writing_bytes = 0;
      if (c->closing) return c->maybe_free();
      if (status < 0) return c->drop();
      c->pump();
    });
    if (rc != 0) {
      writing.clear();
      return drop();
    }
    write_busy = true;
  }

  // ---- completion and teardown -----------------------------------------

  void io_done(std::unique_ptr<IoOp> op) override {
    in_flight--;
    if (closing) return;  // the reply has nowhere to go
    reply(std::move(op));
  }

  void io_batch_end() override {
    if (closing) return maybe_free();
    pump();
  }

  void drop() {
    if (closing) return;
    closing = true;
    if (srv) {
      std::erase(srv->conns_, this);
      srv->stats_.connections_active--;
      spdlog::debug("nbd: {}: closed", peer);
      srv->held_total_ -= held;
      if (srv->held_blocked_ && srv->held_total_ <= srv->max_total_held_bytes / 2) {
        srv->held_blocked_ = false;
        srv->request_wake();
      }
    }
    held = 0;
    srv = nullptr;
    if (reading) uv_read_stop(&h.stream);
    reading = false;
    payload_op.reset();
    to_submit.clear();
    out.clear();
    uv_close(&h.handle, [](uv_handle_t* handle) {
      auto* c = static_cast<Conn*>(handle->data);
      c->handle_closed = true;
      c->maybe_free();
    });
  }

  void maybe_free() {
    if (handle_closed && in_flight == 0 && !write_busy) delete this;
  }
};

NbdServer::NbdServer(uv_loop_t* loop, IoThread& io, nbd::ExportInfo exp) : loop_(loop), io_(io), exp_(std::move(exp)) {
  io_.set_space_callback([this] { on_space(); });
  wake_ = new uv_timer_t{};
  uv_timer_init(loop_, wake_);
  wake_->data = this;
}

void NbdServer::request_wake() {
  if (closed_ || uv_is_active(reinterpret_cast<uv_handle_t*>(wake_))) return;
  uv_timer_start(wake_, [](uv_timer_t* t) { static_cast<NbdServer*>(t->data)->on_space(); }, 0, 0);
}

NbdServer::~NbdServer() { close(); }

void NbdServer::on_space() {
  for (Conn* c : std::vector<Conn*>(conns_)) c->pump();
}

Result<std::string> NbdServer::listen(const std::string& spec) {
  if (closed_) return make_error(ESHUTDOWN, "the NBD export is closed");
  auto addr = p9::parse_listen_addr(spec);
  if (!addr) return make_error(EINVAL, "nbd: " + addr.error().message);
  auto l = std::make_unique<Listener>();
  l->server = this;
  l->addr = addr.value();
  int rc;
  if (l->addr.kind == p9::ListenAddr::Unix) {
    namespace fs = std::filesystem;
    fs::path p(l->addr.path);
    std::error_code ec;
    if (p.has_parent_path() && !fs::exists(p.parent_path(), ec)) {
      fs::create_directories(p.parent_path(), ec);
      if (ec) return make_error(ec.value(), "cannot create " + p.parent_path().string() + ": " + ec.message());
      ::chmod(p.parent_path().c_str(), 0700);
    }
    struct stat st;
    if (::lstat(l->addr.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) return make_error(EEXIST, l->addr.path + " exists and is not a socket");
      int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un sun{};
      sun.sun_family = AF_UNIX;
      std::strncpy(sun.sun_path, l->addr.path.c_str(), sizeof(sun.sun_path) - 1);
      bool live = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0;
      if (fd >= 0) ::close(fd);
      if (live) return make_error(EADDRINUSE, l->addr.path + " is in use by a running server");
      ::unlink(l->addr.path.c_str());
    }
    uv_pipe_init(loop_, &l->h.pipe, 0);
    mode_t old = ::umask(0177);  // the socket is born 0600
    rc = uv_pipe_bind(&l->h.pipe, l->addr.path.c_str());
    ::umask(old);
    if (rc == 0) ::chmod(l->addr.path.c_str(), 0600);
  } else {
    sockaddr_storage ss{};
    if (uv_ip4_addr(l->addr.host.c_str(), l->addr.port, reinterpret_cast<sockaddr_in*>(&ss)) != 0 &&
        uv_ip6_addr(l->addr.host.c_str(), l->addr.port, reinterpret_cast<sockaddr_in6*>(&ss)) != 0)
      return make_error(EINVAL, "bad host '" + l->addr.host + "' (give a numeric IP address)");
    uv_tcp_init(loop_, &l->h.tcp);
    rc = uv_tcp_bind(&l->h.tcp, reinterpret_cast<sockaddr*>(&ss), 0);
  }
  l->h.handle.data = l.get();
  if (rc == 0) rc = uv_listen(&l->h.stream, 128, &NbdServer::on_connection);
  if (rc != 0) {
    std::string what = l->addr.to_string();
    Listener* raw = l.release();
    uv_close(&raw->h.handle, [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
    return make_error(-rc, "cannot listen on " + what + ": " + uv_strerror(rc));
  }
  if (l->addr.kind == p9::ListenAddr::Tcp) {
    sockaddr_storage ss{};
    int len = sizeof(ss);
    uv_tcp_getsockname(&l->h.tcp, reinterpret_cast<sockaddr*>(&ss), &len);
    l->addr.port = ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                                 : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  }
  std::string bound = l->addr.to_string();
  bound_.push_back(bound);
  listeners_.push_back(std::move(l));
  return bound;
}

void NbdServer::on_connection(uv_stream_t* stream, int status) {
  auto* l = static_cast<Listener*>(stream->data);
  NbdServer* s = l->server;
  if (status < 0) {
    spdlog::warn("nbd: accept failed: {}", uv_strerror(status));
    return;
  }
  auto* c = new Conn(s);
  bool tcp = l->addr.kind == p9::ListenAddr::Tcp;
  if (tcp)
    uv_tcp_init(s->loop_, &c->h.tcp);
  else
    uv_pipe_init(s->loop_, &c->h.pipe, 0);
  c->h.handle.data = c;
  if (uv_accept(&l->h.stream, &c->h.stream) != 0 || s->conns_.size() >= s->max_connections) {
    if (s->conns_.size() >= s->max_connections) {
      s->stats_.connections_refused++;
      spdlog::warn("nbd: connection limit ({}) reached; refusing a connection", s->max_connections);
    }
    c->srv = nullptr;
    c->closing = true;
    uv_close(&c->h.handle, [](uv_handle_t* h) { delete static_cast<Conn*>(h->data); });
    return;
  }
  std::string peer;
  if (tcp) {
    uv_tcp_nodelay(&c->h.tcp, 1);
    sockaddr_storage ss{};
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    if (uv_tcp_getpeername(&c->h.tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
      if (ss.ss_family == AF_INET)
        uv_ip4_name(reinterpret_cast<sockaddr_in*>(&ss), ip, sizeof(ip));
      else
        uv_ip6_name(reinterpret_cast<sockaddr_in6*>(&ss), ip, sizeof(ip));
    }
    peer = fmt::format("tcp:{}:{}", ip, ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port));
  } else {
    peer = "unix:" + l->addr.path;
  }
  s->start_conn(c, std::move(peer));
}

Result<void> NbdServer::adopt(int fd) {
  if (closed_) {
    ::close(fd);
    return make_error(ESHUTDOWN, "the NBD export is closed");
  }
  auto* c = new Conn(this);
  uv_pipe_init(loop_, &c->h.pipe, 0);
  c->h.handle.data = c;
  int rc = uv_pipe_open(&c->h.pipe, fd);
  if (rc != 0) {
    c->srv = nullptr;
    c->closing = true;
    uv_close(&c->h.handle, [](uv_handle_t* h) { delete static_cast<Conn*>(h->data); });
    ::close(fd);
    return make_error(-rc, std::string("cannot serve fd: ") + uv_strerror(rc));
  }
  start_conn(c, "fd:" + std::to_string(fd));
  return {};
}

void NbdServer::start_conn(Conn* c, std::string peer) {
  c->peer = std::move(peer);
  // Room for a few 1 MiB replies in flight: fewer wakeups per request.
  // (Best effort: the kernel caps it at net.core.wmem_max / rmem_max.)
  int snd = kSocketBuffer, rcv = kSocketBuffer;
  uv_send_buffer_size(&c->h.handle, &snd);
  uv_recv_buffer_size(&c->h.handle, &rcv);
  stats_.connections_total++;
  stats_.connections_active++;
  conns_.push_back(c);
  spdlog::debug("nbd: connection from {} for disk {}", c->peer, exp_.name);
  std::vector<uint8_t> greeting;
  nbd::encode_greeting(greeting);
  c->queue_bytes(std::move(greeting));
  c->pump();
}

void NbdServer::close() {
  if (closed_) return;
  closed_ = true;
  io_.set_space_callback({});
  uv_timer_stop(wake_);
  uv_close(reinterpret_cast<uv_handle_t*>(wake_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  wake_ = nullptr;
  for (Conn* c : std::vector<Conn*>(conns_)) c->drop();
  for (auto& l : listeners_) {
    if (l->addr.kind == p9::ListenAddr::Unix) ::unlink(l->addr.path.c_str());
    Listener* raw = l.release();
    uv_close(&raw->h.handle, [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
  }
  listeners_.clear();
}

}  // namespace berth::storage
