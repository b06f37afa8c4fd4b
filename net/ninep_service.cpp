#include "net/ninep_service.h"

namespace berth::net {

NinepService::NinepService(TcpServiceStream& stream, p9::Tree& tree, p9::ServerStats& stats, const Clock& clock)
    : stream_(stream),
      session_(tree, stats, clock, p9::SessionLimits{}, [this](std::vector<uint8_t>&& b) { out(std::move(b)); },
               "gateway:564") {
  session_.set_output_gate([this] { return pending_bytes_ > kMaxPending; });
}

TcpServiceFactory NinepService::factory(p9::Tree& tree, p9::ServerStats& stats, const Clock& clock) {
  return [&tree, &stats, &clock](TcpServiceStream& s) -> std::unique_ptr<TcpService> {
    return std::make_unique<NinepService>(s, tree, stats, clock);
  };
}

size_t NinepService::on_data(Bytes data) {
  if (dead_) return data.size();  // discard: the connection is being reset
  if (session_.paused()) return 0;
  if (!session_.feed(data)) {
    dead_ = true;
    stream_.reset();  // bad 9P input: this connection only
  }
  return data.size();
}

void NinepService::on_guest_fin() {
  if (!dead_) stream_.close();
}

size_t NinepService::input_space() const {
  if (dead_) return size_t(64) << 10;
  return session_.paused() ? 0 : size_t(256) << 10;
}

void NinepService::out(std::vector<uint8_t>&& bytes) {
  if (dead_) return;
  pending_bytes_ += bytes.size();
  pending_.push_back(std::move(bytes));
  drain();
}

void NinepService::drain() {
  while (!pending_.empty()) {
    auto& head = pending_.front();
    size_t n = stream_.write(Bytes(head).subspan(head_off_));
    head_off_ += n;
    pending_bytes_ -= n;
    if (head_off_ < head.size()) return;  // on_writable() continues
    pending_.pop_front();
    head_off_ = 0;
  }
}

void NinepService::on_writable() {
  drain();
  if (dead_ || !session_.paused() || pending_bytes_ > kMaxPending / 2) return;
  if (!session_.resume()) {
    dead_ = true;
    stream_.reset();
    return;
  }
  if (!session_.paused()) stream_.resume_input();
}

}  // namespace berth::net
