// Socket transports for 9P sessions. Theory of operation:
//
// Each accepted stream gets a Conn holding a Session. Reads go straight into
// a per-connection 64 KiB buffer and are fed to the session; replies come
// back through the session's send function and are written with
// uv_try_write first (the common case on loopback), falling back to queued
// uv_write requests that own their bytes. Handles are freed in their close
// callbacks, as libuv requires.
#include "server9p/transport.h"

#include <arpa/inet.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <filesystem>

namespace berth::p9 {

std::string ListenAddr::to_string() const {
  if (kind == Unix) return "unix:" + path;
  if (host.find(':') != std::string::npos) return "tcp:[" + host + "]:" + std::to_string(port);
  return "tcp:" + host + ":" + std::to_string(port);
}

Result<ListenAddr> parse_listen_addr(std::string_view spec) {
  ListenAddr a;
  if (spec.rfind("unix:", 0) == 0) {
    a.kind = ListenAddr::Unix;
    a.path = std::string(spec.substr(5));
    if (a.path.empty()) return make_error(EINVAL, "unix: needs a path");
    if (a.path.size() >= sizeof(sockaddr_un::sun_path)) return make_error(ENAMETOOLONG, "unix socket path too long");
    return a;
  }
  if (spec.rfind("tcp:", 0) == 0) {
    std::string_view rest = spec.substr(4);
    size_t colon;
    if (!rest.empty() && rest.front() == '[') {
      size_t close = rest.find(']');
      if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
        return make_error(EINVAL, "bad IPv6 address in '" + std::string(spec) + "' (use tcp:[::1]:PORT)");
      a.host = std::string(rest.substr(1, close - 1));
      colon = close + 1;
    } else {
      colon = rest.rfind(':');
      if (colon == std::string_view::npos) return make_error(EINVAL, "tcp: needs HOST:PORT");
      a.host = std::string(rest.substr(0, colon));
    }
    std::string_view port = rest.substr(colon + 1);
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), a.port);
    if (ec != std::errc() || p != port.data() + port.size() || a.port < 0 || a.port > 65535)
      return make_error(EINVAL, "bad port '" + std::string(port) + "'");
    a.kind = ListenAddr::Tcp;
    if (a.host.empty()) a.host = "127.0.0.1";
    return a;
  }
  return make_error(EINVAL, "address must be unix:PATH or tcp:HOST:PORT, got '" + std::string(spec) + "'");
}

struct Server::Listener {
  Server* server;
  ListenAddr addr;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_handle_t handle;
    uv_stream_t stream;
  } h;
};

struct Server::Conn {
  Server* server;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_handle_t handle;
    uv_stream_t stream;
  } h;
  std::unique_ptr<Session> session;
  std::vector<uint8_t> rbuf = std::vector<uint8_t>(128 * 1024);  // a 64 KiB-msize message fits in one read
  size_t queued = 0;   // bytes in uv_write requests not yet completed
  bool paused = false; // reading stopped for backpressure
  bool closing = false;
};

namespace {
struct WriteReq {
  uv_write_t req;
  std::vector<uint8_t> data;
  size_t len;
};
}  // namespace

Server::Server(uv_loop_t* loop, Tree& tree, ServerStats& stats, const Clock& clock, SessionLimits limits)
    : loop_(loop), tree_(tree), stats_(stats), clock_(clock), limits_(limits) {}

Server::~Server() { close(); }

Result<std::string> Server::listen(const std::string& spec) {
  auto addr = parse_listen_addr(spec);
  if (!addr) return addr.error();
  auto l = std::make_unique<Listener>();
  l->server = this;
  l->addr = addr.value();
  int rc;
  if (l->addr.kind == ListenAddr::Unix) {
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
      // A socket file: live if something accepts on it.
      int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un sun{};
      sun.sun_family = AF_UNIX;
      std::strncpy(sun.sun_path, l->addr.path.c_str(), sizeof(sun.sun_path) - 1);
      bool live = ::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0;
      ::close(fd);
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
  if (rc == 0) rc = uv_listen(&l->h.stream, 128, &Server::on_connection);
  if (rc != 0) {
    std::string what = l->addr.to_string();
    Listener* raw = l.release();
    uv_close(&raw->h.handle, [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
    return make_error(-rc, "cannot listen on " + what + ": " + uv_strerror(rc));
  }
  if (l->addr.kind == ListenAddr::Tcp) {
    sockaddr_storage ss{};
    int len = sizeof(ss);
    uv_tcp_getsockname(&l->h.tcp, reinterpret_cast<sockaddr*>(&ss), &len);
    l->addr.port = ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                                 : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  }
  std::string bound = l->addr.to_string();
  listeners_.push_back(std::move(l));
  return bound;
}

void Server::on_connection(uv_stream_t* stream, int status) {
  auto* l = static_cast<Listener*>(stream->data);
  if (status < 0) {
    spdlog::warn("9p: accept failed: {}", uv_strerror(status));
    return;
  }
  l->server->accept(l);
}

void Server::accept(Listener* l) {
  auto* c = new Conn{};
  c->server = this;
  std::string peer;
  if (l->addr.kind == ListenAddr::Tcp) {
    uv_tcp_init(loop_, &c->h.tcp);
  } else {
    uv_pipe_init(loop_, &c->h.pipe, 0);
  }
  c->h.handle.data = c;
  if (uv_accept(&l->h.stream, &c->h.stream) != 0 || conns_.size() >= max_connections) {
    if (conns_.size() >= max_connections) {
      stats_.connections_refused++;
      spdlog::warn("9p: connection limit ({}) reached; refusing a connection", max_connections);
    }
    uv_close(&c->h.handle, [](uv_handle_t* h) { delete static_cast<Conn*>(h->data); });
    return;
  }
  if (l->addr.kind == ListenAddr::Tcp) {
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
    // Who is on the other end (for /audit): the kernel's credentials of the
    // connecting process.
    uv_os_fd_t fd;
    struct ucred cred {};
    socklen_t clen = sizeof(cred);
    if (uv_fileno(&c->h.handle, &fd) == 0 && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0)
      peer += fmt::format(",pid={},uid={}", cred.pid, cred.uid);
  }
  spdlog::debug("9p: connection from {}", peer);
  c->session = std::make_unique<Session>(
      tree_, stats_, clock_, limits_,
      [c](std::vector<uint8_t>&& bytes) {
        if (c->closing) return;
        size_t off = 0;
        if (c->queued == 0) {  // nothing ahead of us: try to write now
          uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(bytes.data()), unsigned(bytes.size()));
          int n = uv_try_write(&c->h.stream, &b, 1);
          if (n == int(bytes.size())) return;
          if (n > 0) off = size_t(n);
          else if (n != UV_EAGAIN) return c->server->drop_conn(c);
        }
        auto* w = new WriteReq{};
        w->data = std::move(bytes);
        w->len = w->data.size() - off;
        w->req.data = c;
        uv_buf_t b = uv_buf_init(reinterpret_cast<char*>(w->data.data() + off), unsigned(w->len));
        c->queued += w->len;
        int rc = uv_write(&w->req, &c->h.stream, &b, 1, [](uv_write_t* req, int status) {
          auto* w = reinterpret_cast<WriteReq*>(req);
          auto* c = static_cast<Conn*>(req->data);
          c->queued -= w->len;
          delete w;
          if (status < 0) return c->server->drop_conn(c);
          if (c->paused && !c->closing && c->queued <= c->server->max_queued_bytes / 2) {
            // Replies drained: let the session go on with buffered input,
            // and read again unless that filled the queue once more.
            if (!c->session->resume()) return c->server->drop_conn(c);
            if (!c->session->paused() && !c->closing) {
              c->paused = false;
              uv_read_start(&c->h.stream, &Server::on_alloc, &Server::on_read);
            }
          }
        });
        if (rc != 0) {
          c->queued -= w->len;
          delete w;
          return c->server->drop_conn(c);
        }
      },
      peer);
  c->session->set_output_gate([c] { return c->queued > c->server->max_queued_bytes; });
  conns_.push_back(c);
  uv_read_start(&c->h.stream, &Server::on_alloc, &Server::on_read);
}

void Server::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* c = static_cast<Conn*>(h->data);
  *buf = uv_buf_init(reinterpret_cast<char*>(c->rbuf.data()), unsigned(c->rbuf.size()));
}

void Server::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t*) {
  auto* c = static_cast<Conn*>(s->data);
  if (n < 0) return c->server->drop_conn(c);  // EOF or error
  if (n > 0 && !c->session->feed(Bytes(c->rbuf.data(), size_t(n)))) return c->server->drop_conn(c);
  if (c->session->paused() && !c->paused) {  // the client is not reading its replies
    c->paused = true;
    uv_read_stop(&c->h.stream);
  }
}

void Server::drop_conn(Conn* c) {
  if (c->closing) return;
  c->closing = true;
  std::erase(conns_, c);
  uv_read_stop(&c->h.stream);
  uv_close(&c->h.handle, [](uv_handle_t* h) {
    auto* c = static_cast<Conn*>(h->data);
    delete c;  // pending write callbacks ran with UV_ECANCELED before this
  });
}

void Server::close() {
  for (auto* c : std::vector<Conn*>(conns_)) drop_conn(c);
  for (auto& l : listeners_) {
    if (l->addr.kind == ListenAddr::Unix) ::unlink(l->addr.path.c_str());
    Listener* raw = l.release();
    uv_close(&raw->h.handle, [](uv_handle_t* h) { delete static_cast<Listener*>(h->data); });
  }
  listeners_.clear();
}

}  // namespace berth::p9
