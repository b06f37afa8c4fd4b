// VfkitLink ("vfkit:PATH"): a unix datagram socket bound at PATH, one raw
// Ethernet frame per datagram, as vfkit's and gvisor-tap-vsock's
// `--listen-vfkit unixgram://PATH` speak it.
//
// The guest is whoever sends first: its address (vfkit binds its own socket)
// is learned from that datagram and replies go there with sendto. Older vfkit
// versions announce themselves with a 4-byte "VFKT" datagram, which is not a
// frame and is consumed here as gvisor-tap-vsock does.
//
// One guest at a time. A datagram from another address is refused
// (peers_refused) unless it is a "VFKT" announcement or the known guest's
// socket is gone, in which case the sender replaces it. Sending to a guest
// whose socket has gone (ECONNREFUSED, ENOENT) forgets it (disconnects).
// Senders without a bound address cannot be answered and are refused.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include "net/link/link_base.h"

namespace berth::net {

class VfkitLink final : public LinkBase {
 public:
  VfkitLink(uv_loop_t* loop, std::string path, size_t max_frame);
  ~VfkitLink() override;
  std::string type() const override { return "vfkit"; }
  std::string peer() const override;
  [[nodiscard]] Result<void> start(Receive rx) override;
  void close() override;
  bool has_peer() const override { return peer_len_ > 0 && !closed_; }
  const std::string& path() const { return path_; }

 private:
  static void on_event(uv_poll_t* h, int status, int events);
  void on_readable();
  void flush() override;
  bool peer_alive() const;
  void learn_peer(const sockaddr_un& from, socklen_t len);
  void forget_peer(const std::string& why);
  std::string peer_name() const;

  std::string path_;
  PolledFd sock_;
  OneShotTimer retry_;
  uint64_t ino_ = 0;
  sockaddr_un peer_{};
  socklen_t peer_len_ = 0;
  std::vector<uint8_t> rbuf_;
};

}  // namespace berth::net
