#include "net/host/driver.h"

#include <chrono>

namespace berth::net {

NetDriver::NetDriver(uv_loop_t* loop, Stack& stack, const MonoClock& clock)
    : loop_(loop), stack_(stack), clock_(clock), timer_(new uv_timer_t), check_(new uv_check_t) {
  uv_timer_init(loop_, timer_);
  timer_->data = this;
  uv_check_init(loop_, check_);
  check_->data = this;
  uv_check_start(check_, &NetDriver::on_check);
  uv_unref(reinterpret_cast<uv_handle_t*>(check_));  // does not keep the loop alive by itself
}

void NetDriver::on_check(uv_check_t* c) { static_cast<NetDriver*>(c->data)->kick(); }

NetDriver::~NetDriver() { close(); }

void NetDriver::close() {
  if (!timer_) return;
  uv_timer_stop(timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  timer_ = nullptr;
  uv_check_stop(check_);
  uv_close(reinterpret_cast<uv_handle_t*>(check_), [](uv_handle_t* h) { delete reinterpret_cast<uv_check_t*>(h); });
  check_ = nullptr;
}

Result<uint32_t> NetDriver::attach(FrameLink* link) {
  auto port = stack_.add_port(link);
  if (!port) return port.error();
  uint32_t p = *port;
  auto started = link->start([this, p](Bytes frame) {
    stack_.receive(p, frame, clock_.now());
  });
  if (!started) return started.error();
  return p;
}

void NetDriver::kick() {
  if (!timer_) return;
  auto at = stack_.poll_at();
  if (!at) {
    uv_timer_stop(timer_);
    return;
  }
  Instant now = clock_.now();
  uint64_t ms = *at <= now ? 0 : uint64_t(std::chrono::ceil<std::chrono::milliseconds>(*at - now).count());
  uv_timer_start(timer_, &NetDriver::on_timer, ms, 0);
}

void NetDriver::on_timer(uv_timer_t* t) {
  auto* d = static_cast<NetDriver*>(t->data);
  d->stack_.poll(d->clock_.now());
  d->kick();
}

}  // namespace berth::net
