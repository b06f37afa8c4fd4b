// libuv listeners that carry 9P sessions over unix and TCP sockets.
//
// Addresses are "unix:PATH" or "tcp:HOST:PORT" (IPv6 hosts in brackets).
// A unix socket is created with mode 0600 in a directory created 0700 if
// missing; a stale socket file left by a dead server is replaced, a live one
// is an EADDRINUSE error. TCP port 0 picks a free port; `listen` returns the
// address actually bound. Each connection owns one Session. A client that
// stops reading its replies is throttled: reading from it pauses while more
// than `max_queued_bytes` of replies wait to be written.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "server9p/metrics.h"
#include "server9p/session.h"
#include "server9p/tree.h"

namespace berth::p9 {

struct ListenAddr {
  enum Kind { Unix, Tcp } kind = Unix;
  std::string path;  // unix
  std::string host;  // tcp
  int port = 0;      // tcp
  std::string to_string() const;
};
[[nodiscard]] Result<ListenAddr> parse_listen_addr(std::string_view spec);

class Server {
 public:
  Server(uv_loop_t* loop, Tree& tree, ServerStats& stats, const Clock& clock, SessionLimits limits = {});
  ~Server();

  // Start listening; returns the bound address ("tcp:127.0.0.1:41234").
  [[nodiscard]] Result<std::string> listen(const std::string& spec);
  // Stop listening, close every connection and remove unix socket files.
  void close();

  size_t max_queued_bytes = 8u << 20;  // per connection, before reading pauses
  size_t max_connections = 256;         // more are accepted and closed at once, counted

 private:
  struct Listener;
  struct Conn;
  static void on_connection(uv_stream_t* server, int status);
  static void on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf);
  static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t*);
  void accept(Listener* l);
  void drop_conn(Conn* c);

  uv_loop_t* loop_;
  Tree& tree_;
  ServerStats& stats_;
  const Clock& clock_;
  SessionLimits limits_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<Conn*> conns_;
};

}  // namespace berth::p9
