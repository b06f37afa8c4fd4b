// NbdServer: one disk exported over NBD (fixed newstyle, simple replies) on
// unix:PATH or tcp:HOST:PORT listeners, on the main libuv loop.
//
// Guarantees:
// - Several clients at once. Every connection shares the disk's IoThread,
//   so writes from all of them are serialized there, and a flush (or FUA)
//   on one covers what the others were answered for (NBD_FLAG_CAN_MULTI_CONN).
// - The main loop never touches the disk: requests become IoOps; replies are
//   written when the I/O thread hands them back.
// - Bounded: per connection at most `max_in_flight` requests at the disk,
//   `max_out_bytes` of replies waiting to be written and `max_held_bytes` of
//   request and reply data in memory; all connections together at most
//   `max_total_held_bytes`; the disk's queue is bounded too. When a bound is
//   reached the connection stops reading (one request may overshoot by its
//   own size), which pushes back on the client through the socket.
// - Bad input (a bad magic, unknown client flags, an oversized write, an
//   unknown export with NBD_OPT_EXPORT_NAME) closes only that connection
//   and is counted; bad commands get an NBD error reply (EINVAL, ENOSPC,
//   EPERM) and the connection goes on.
// - A unix socket is created with mode 0600; a stale one is replaced.
#pragma once

#include <uv.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "storage/io_thread.h"
#include "storage/nbd_proto.h"

namespace berth::storage {

struct NbdStats {
  uint64_t connections_total = 0, connections_active = 0, connections_refused = 0;
  uint64_t handshakes = 0;        // connections that reached transmission
  uint64_t protocol_errors = 0;   // connections closed for bad input
  std::array<uint64_t, 8> requests{};  // by NBD command (0..7)
  uint64_t requests_other = 0;
  uint64_t error_replies = 0;     // replies with a nonzero error
  uint64_t bytes_read = 0, bytes_written = 0;  // payload bytes
  uint64_t read_pauses = 0;       // times a connection stopped reading (backpressure)
};

class NbdServer {
 public:
  // `exp` describes the export (name: the disk id; size; transmission flags).
  NbdServer(uv_loop_t* loop, IoThread& io, nbd::ExportInfo exp);
  ~NbdServer();
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Listen on unix:PATH or tcp:HOST:PORT (port 0 picks one); returns the
  // bound address.
  [[nodiscard]] Result<std::string> listen(const std::string& spec);
  // Serve a connected stream socket (a socketpair end, in tests); takes
  // ownership of `fd`.
  [[nodiscard]] Result<void> adopt(int fd);
  // Stops listening and closes every connection; requests already at the
  // disk finish there and their replies are dropped.
  void close();

  const NbdStats& stats() const { return stats_; }
  const nbd::ExportInfo& export_info() const { return exp_; }
  const std::vector<std::string>& addresses() const { return bound_; }
  size_t connections() const { return conns_.size(); }

  size_t max_connections = 64;
  size_t max_in_flight = 128;          // requests per connection at the disk
  size_t max_out_bytes = 64u << 20;    // reply bytes per connection waiting to be written
  size_t max_held_bytes = 64u << 20;   // read/write data buffers per connection
  size_t max_total_held_bytes = 512u << 20;  // the same, all connections together
  size_t held_bytes() const { return held_total_; }

 private:
  struct Listener;
  struct Conn;
  friend struct Conn;
  // Recycled data buffers: allocating and freeing a fresh 1 MiB buffer per
  // request makes the allocator hand memory back to the kernel and fault it
  // in again, which costs more than the copy itself.
  struct BufferPool {
    static constexpr size_t kMaxPooled = 32u << 20;  // bytes kept for reuse
    std::vector<std::unique_ptr<uint8_t[]>> lists[14];  // 4 KiB << class, up to 32 MiB
    size_t pooled = 0;
    void take(IoOp& op, size_t len);     // op.data/op.data_capacity >= len
    void give(IoOp& op);                  // op.data back to the pool (or freed)
  };
  static void on_connection(uv_stream_t* server, int status);
  void start_conn(Conn* c, std::string peer);
  void on_space();
  void request_wake();  // on_space() soon, from a fresh loop turn

  uv_loop_t* loop_;
  IoThread& io_;
  nbd::ExportInfo exp_;
  NbdStats stats_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<Conn*> conns_;
  std::vector<std::string> bound_;
  size_t held_total_ = 0;
  BufferPool pool_;
  bool held_blocked_ = false;  // a connection stopped for max_total_held_bytes
  uv_timer_t* wake_ = nullptr;  // runs on_space() after bytes were released; freed in its close callback
  bool closed_ = false;
};

}  // namespace berth::storage
