// One 9P connection's protocol state, independent of any transport.
//
// The transport feeds received bytes; the session frames them, answers each
// request and hands reply bytes to `send`. Because it never does I/O itself,
// the same session serves unix and TCP sockets and the in-memory pipe used by
// tests (and later virtio-9p).
//
// Guarantees:
//  - Requests are answered in arrival order except reads that block on a
//    stream: those are parked (bounded) and answered when data arrives, so a
//    blocked read never stalls the connection. Tflush cancels a parked read;
//    its reply is then never sent (flush(5)).
//  - The fid table is bounded; a full table is an EMFILE reply, counted.
//  - Malformed or oversized input makes `feed` return false: the transport
//    closes this connection only. The reason is counted in ServerStats.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "server9p/metrics.h"
#include "server9p/proto.h"
#include "server9p/tree.h"

namespace berth::p9 {

struct SessionLimits {
  uint32_t max_msize = kMaxMsize;
  uint32_t max_fids = 4096;
  uint32_t max_parked = 256;  // blocked reads per connection
};

class Session {
 public:
  using SendFn = std::function<void(std::vector<uint8_t>&&)>;

  Session(Tree& tree, ServerStats& stats, const Clock& clock, SessionLimits limits, SendFn send,
          std::string peer = "memory");
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Consume bytes from the transport. Returns false when the connection must
  // be closed because the peer sent bad input.
  [[nodiscard]] bool feed(Bytes data);

  // Backpressure: `blocked` is asked between messages; while it says true
  // the session stops processing, keeps the rest of its input buffered and
  // reports paused(). The transport then stops reading and calls resume()
  // once it can take replies again. resume() returns false like feed().
  void set_output_gate(std::function<bool()> blocked) { gate_ = std::move(blocked); }
  bool paused() const { return paused_; }
  [[nodiscard]] bool resume();

  Dialect dialect() const { return dialect_; }
  uint32_t msize() const { return msize_; }
  size_t fid_count() const { return fids_.size(); }
  size_t parked_count() const { return parked_.size(); }

 private:
  struct Fid {
    std::vector<NodePtr> path;  // from the tree root; back() is the node
    size_t root_depth = 1;      // ".." never walks above the attach point
    std::unique_ptr<OpenFile> file;
    Access access = Access::Read;
    std::vector<NodePtr> dir_snapshot;  // directory listing taken at the first read
    uint64_t dir_offset = 0;            // 9P2000 directory reads: next byte offset
    size_t dir_index = 0;               //   ... and the entry it corresponds to
    bool waiting = false;               // a wait_readable is registered
    std::string uname;                  // the attach's user, for OpenContext
    NodePtr node() const { return path.back(); }
  };
  struct Parked {
    uint32_t fid;
    uint64_t offset;
    uint32_t count;
  };

  bool process(Bytes src, size_t& used);
  bool process_buffered();
  bool handle(Bytes frame);
  void dispatch(Fcall& req);
  void reply(const Fcall& r);
  void reply_error(uint16_t tag, int code, std::string_view msg);
  void reply_error(uint16_t tag, const Error& e) { reply_error(tag, e.code, e.message); }
  void drop(ProtoDrop why, std::string_view detail);
  void flush_out();
  void reset();

  Fid* find(uint32_t fid);
  bool fid_table_full(uint16_t tag);

  void t_version(Fcall& req);
  void t_attach(Fcall& req);
  void t_flush(Fcall& req);
  void t_walk(Fcall& req);
  void t_open(Fcall& req, Access access, bool truncate);
  void t_create(Fcall& req, std::string_view name, uint32_t perm, Access access, bool mkdir);
  void t_read(uint16_t tag, uint32_t fid, uint64_t offset, uint32_t count);
  void t_write(Fcall& req);
  void t_clunk(Fcall& req, bool remove);
  void t_unlinkat(Fcall& req);
  void t_getattr(Fcall& req);
  void t_setattr(Fcall& req);
  void t_stat(Fcall& req);
  void t_wstat(Fcall& req);
  void t_readdir(Fcall& req);
  void t_statfs(Fcall& req);
  void t_fsync(Fcall& req);

  bool dir_read_9p2000(uint16_t tag, Fid& f, uint64_t offset, uint32_t count);
  Stat make_stat(const Node& n, const OpenFile* file) const;
  void park(uint16_t tag, uint32_t fid, uint64_t offset, uint32_t count);
  void wake_fid(uint32_t fid);
  void cancel_parked_for_fid(uint32_t fid, bool answer);

  Tree& tree_;
  ServerStats& stats_;
  const Clock& clock_;
  SessionLimits limits_;
  SendFn send_;
  std::string peer_;
  uint32_t uid_ = 0, gid_ = 0;  // every file is owned by the server's user

  bool versioned_ = false;
  Dialect dialect_ = Dialect::P9_2000L;
  uint32_t msize_ = 8192;
  std::unordered_map<uint32_t, Fid> fids_;
  std::map<uint16_t, Parked> parked_;  // by tag
  std::vector<uint8_t> in_;            // bytes of a message not yet complete
  std::vector<uint8_t> out_;           // replies not yet handed to send_
  static constexpr size_t kFlushThreshold = 256 * 1024;  // hand replies over in batches of this size
  std::function<bool()> gate_;
  bool paused_ = false;
  bool in_feed_ = false;
  bool dead_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for stream wakeups
};

}  // namespace berth::p9
