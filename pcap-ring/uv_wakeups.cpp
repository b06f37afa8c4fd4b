#include "pcap-ring/uv_wakeups.h"

namespace berth::pcap {

UvWakeups::UvWakeups(uv_loop_t* loop, CaptureSet& set) : set_(set), idle_(new uv_idle_t) {
  uv_idle_init(loop, idle_);
  idle_->data = this;
  set_.set_wake_scheduler([this] {
    if (idle_) uv_idle_start(idle_, &UvWakeups::on_idle);
  });
  if (set_.wakeups_pending()) uv_idle_start(idle_, &UvWakeups::on_idle);
}

UvWakeups::~UvWakeups() { close(); }

void UvWakeups::close() {
  if (!idle_) return;
  set_.set_wake_scheduler({});
  uv_idle_stop(idle_);
  uv_close(reinterpret_cast<uv_handle_t*>(idle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
  idle_ = nullptr;
}

void UvWakeups::on_idle(uv_idle_t* h) {
  auto* self = static_cast<UvWakeups*>(h->data);
  uv_idle_stop(h);
  self->set_.run_wakeups();  // may schedule again: the handle restarts
}

}  // namespace berth::pcap
