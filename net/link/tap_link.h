// TapLink ("tap:IFNAME[@NETNS]"): a TAP device (IFF_TAP | IFF_NO_PI), so the
// host kernel's own stack is the guest.
//
// With NETNS the device is created inside the named network namespace
// (/run/netns/NETNS, made by `ip netns add`; it must exist): the calling
// thread enters it for the open, the TUNSETIFF and the interface setup, then
// returns to its own namespace, keeping the descriptor. The interface is set
// to the link's MTU (max_frame - 14) and brought up. Needs CAP_NET_ADMIN (and
// CAP_SYS_ADMIN for a namespace). The device goes away when the link closes,
// unless it was made persistent beforehand (`ip tuntap add`).
//
// The guest is always attached while the device is open. If reading fails
// for good (the interface was deleted), the link counts a disconnect and
// stops; frames sent after that count as tx_dropped_no_peer.
#pragma once

#include "net/link/link_base.h"

namespace berth::net {

class TapLink final : public LinkBase {
 public:
  TapLink(uv_loop_t* loop, std::string ifname, std::string netns, size_t max_frame);
  ~TapLink() override;
  std::string type() const override { return "tap"; }
  std::string peer() const override;
  [[nodiscard]] Result<void> start(Receive rx) override;
  void close() override;
  bool has_peer() const override { return dev_.is_open() && !failed_ && !closed_; }
  const std::string& ifname() const { return ifname_; }
  const std::string& netns() const { return netns_; }

 private:
  static void on_event(uv_poll_t* h, int status, int events);
  void on_readable();
  void flush() override;
  void fail(const std::string& why);

  std::string ifname_, netns_;
  PolledFd dev_;
  std::vector<uint8_t> rbuf_;
  bool failed_ = false;
};

// Opens IFNAME as a TAP device (inside NETNS when not empty), sets its MTU and
// brings it up. Returns the nonblocking descriptor.
[[nodiscard]] Result<int> open_tap(const std::string& ifname, const std::string& netns, unsigned mtu);

}  // namespace berth::net
