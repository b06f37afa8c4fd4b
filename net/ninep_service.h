// The gateway's 9P service: TCP port 564 on the gateway address serves the
// control tree, so a guest can `mount -t 9p -o trans=tcp,port=564 GATEWAY`.
// Each guest connection gets its own 9P session; replies are queued toward
// the guest with a bound, and the session pauses (the guest sees a zero
// window) while the guest is not reading.
#pragma once

#include <deque>
#include <memory>

#include "net/tcp.h"
#include "server9p/session.h"
#include "server9p/tree.h"

namespace berth::net {

class NinepService final : public TcpService {
 public:
  static constexpr size_t kMaxPending = size_t(1) << 20;

  NinepService(TcpServiceStream& stream, p9::Tree& tree, p9::ServerStats& stats, const Clock& clock);
  size_t on_data(Bytes data) override;
  void on_guest_fin() override;
  void on_writable() override;
  size_t input_space() const override;

  // A factory for Tcp::add_service.
  static TcpServiceFactory factory(p9::Tree& tree, p9::ServerStats& stats, const Clock& clock);

 private:
  void out(std::vector<uint8_t>&& bytes);
  void drain();

  TcpServiceStream& stream_;
  std::deque<std::vector<uint8_t>> pending_;  // replies the stream has not taken yet
  size_t pending_bytes_ = 0;
  size_t head_off_ = 0;  // bytes of pending_.front() already written
  bool dead_ = false;
  p9::Session session_;
};

}  // namespace berth::net
