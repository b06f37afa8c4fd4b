// In-memory 9P transport: a client end wired straight to a Session.
//
// Used by tests (and later by in-process 9P clients such as virtio-9p and
// the gateway's port 564). `send` feeds the session synchronously; replies
// queue up and `recv` returns them one whole message at a time, or EAGAIN
// when the session has not answered (for example a read parked on a
// stream). If the session rejects input, the pipe reports ECONNRESET from
// then on, as a socket would after the server closed it.
#pragma once

#include <deque>
#include <memory>
#include <vector>

#include "server9p/client.h"
#include "server9p/session.h"

namespace berth::p9 {

class MemoryPipe final : public ClientTransport {
 public:
  MemoryPipe(Tree& tree, ServerStats& stats, const Clock& clock, SessionLimits limits = {});

  Result<void> send(Bytes message) override;
  Result<std::vector<uint8_t>> recv() override;

  bool closed() const { return closed_; }
  Session& session() { return *session_; }
  size_t queued_bytes() const { return rx_.size(); }

 private:
  std::deque<uint8_t> rx_;  // reply bytes not yet returned by recv
  bool closed_ = false;
  std::unique_ptr<Session> session_;
};

}  // namespace berth::p9
