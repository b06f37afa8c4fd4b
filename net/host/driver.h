// Runs a Stack on a libuv loop: delivers frames from links, and keeps one
// timer armed for the earliest of the stack's and handlers' deadlines.
// Call kick() after anything that may have changed a deadline (host socket
// events do this through the handlers' own adapters).
#pragma once

#include <uv.h>

#include "common/clock.h"
#include "net/link/frame_link.h"
#include "net/stack.h"

namespace berth::net {

class NetDriver {
 public:
  NetDriver(uv_loop_t* loop, Stack& stack, const MonoClock& clock);
  ~NetDriver();
  NetDriver(const NetDriver&) = delete;
  NetDriver& operator=(const NetDriver&) = delete;

  // Add a link as a switch port and start receiving from it.
  [[nodiscard]] Result<uint32_t> attach(FrameLink* link);
  void kick();
  void close();

 private:
  static void on_timer(uv_timer_t* t);
  uv_loop_t* loop_;
  Stack& stack_;
  const MonoClock& clock_;
  uv_timer_t* timer_;
};

}  // namespace berth::net
