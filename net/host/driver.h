// Runs a Stack on a libuv loop: delivers frames from links, and keeps one
// timer armed for the earliest of the stack's and handlers' deadlines.
// The timer is re-armed after every loop iteration (a uv_check handle), so
// host socket events that change a deadline need no special care.
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
  static void on_check(uv_check_t* c);
  uv_loop_t* loop_;
  Stack& stack_;
  const MonoClock& clock_;
  uv_timer_t* timer_;
  uv_check_t* check_;
};

}  // namespace berth::net
