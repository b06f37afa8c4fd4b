// A small synchronous 9P2000.L client, used by `berth ctl` and by tests.
//
// It speaks over a ClientTransport: a connected socket (dial) or anything
// that can carry whole messages, such as a Session in a test. Calls block
// until their reply arrives. Errors from the server come back as Error with
// the server's errno; `rpc` exposes raw messages for protocol tests.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "server9p/proto.h"

namespace berth::p9 {

class ClientTransport {
 public:
  virtual ~ClientTransport() = default;
  [[nodiscard]] virtual Result<void> send(Bytes message) = 0;
  // The next whole message from the server; EAGAIN if none is ready and the
  // transport cannot wait (in-memory transports).
  [[nodiscard]] virtual Result<std::vector<uint8_t>> recv() = 0;
};

// Connect to "unix:PATH" or "tcp:HOST:PORT".
[[nodiscard]] Result<std::unique_ptr<ClientTransport>> dial(const std::string& addr);

class Client {
 public:
  explicit Client(std::unique_ptr<ClientTransport> t) : t_(std::move(t)) {}

  [[nodiscard]] Result<void> version(uint32_t msize = 65536, const std::string& v = "9P2000.L");
  // Attach and return the root fid of `aname`.
  [[nodiscard]] Result<uint32_t> attach(const std::string& aname = "");

  // One request, one reply. Rlerror becomes an Error; the tag is assigned.
  [[nodiscard]] Result<Fcall> rpc(Fcall req);
  // Split halves of rpc, for tests of pipelining and flush. A reply's data
  // view is valid until the next recv.
  [[nodiscard]] Result<uint16_t> send(Fcall req);
  [[nodiscard]] Result<Fcall> recv();

  [[nodiscard]] Result<uint32_t> walk(uint32_t from, const std::string& path);  // new fid
  [[nodiscard]] Result<Qid> open(uint32_t fid, uint32_t flags);
  [[nodiscard]] Result<std::vector<uint8_t>> read(uint32_t fid, uint64_t offset, uint32_t count);
  [[nodiscard]] Result<uint32_t> write(uint32_t fid, uint64_t offset, Bytes data);
  [[nodiscard]] Result<std::string> read_all(uint32_t fid);
  [[nodiscard]] Result<void> clunk(uint32_t fid);
  [[nodiscard]] Result<std::vector<DirEntry>> readdir(uint32_t fid);
  [[nodiscard]] Result<Fcall> getattr(uint32_t fid);

  // Path helpers relative to the attach root.
  [[nodiscard]] Result<std::string> cat(const std::string& path);
  [[nodiscard]] Result<std::vector<DirEntry>> ls(const std::string& path);
  // Write `text` to a ctl file and return what the same fid reads back.
  // On failure the Error message is the file's "ERROR ..." text when present.
  [[nodiscard]] Result<std::string> ctl(const std::string& path, const std::string& text);
  [[nodiscard]] Result<void> mkdir(const std::string& path);
  [[nodiscard]] Result<void> remove(const std::string& path);
  [[nodiscard]] Result<Fcall> stat(const std::string& path);
  // Read a stream until end of file or until `sink` returns false.
  [[nodiscard]] Result<void> tail(const std::string& path, const std::function<bool(Bytes)>& sink);

  uint32_t msize() const { return msize_; }
  uint32_t root() const { return root_; }
  uint32_t new_fid() { return next_fid_++; }

 private:
  std::unique_ptr<ClientTransport> t_;
  uint32_t msize_ = 8192;
  uint32_t root_ = kNoFid;
  uint32_t next_fid_ = 1;
  uint16_t next_tag_ = 1;
  std::vector<uint8_t> last_;  // the latest reply; Fcall::data views point into it
};

// Human-readable errno text, "Permission denied (EACCES)".
std::string errno_text(int code);

}  // namespace berth::p9
