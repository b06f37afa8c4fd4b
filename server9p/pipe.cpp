#include "server9p/pipe.h"

namespace berth::p9 {

MemoryPipe::MemoryPipe(Tree& tree, ServerStats& stats, const Clock& clock, SessionLimits limits)
    : session_(std::make_unique<Session>(
          tree, stats, clock, limits, [this](std::vector<uint8_t>&& b) { rx_.insert(rx_.end(), b.begin(), b.end()); },
          "memory")) {}

Result<void> MemoryPipe::send(Bytes message) {
  if (closed_) return make_error(ECONNRESET, "server closed the connection");
  if (!session_->feed(message)) closed_ = true;
  return {};
}

Result<std::vector<uint8_t>> MemoryPipe::recv() {
  if (rx_.size() >= 4) {
    uint8_t hdr[4];
    std::copy_n(rx_.begin(), 4, hdr);
    uint32_t size = load_le32(hdr);
    if (rx_.size() >= size) {
      std::vector<uint8_t> m(rx_.begin(), rx_.begin() + size);
      rx_.erase(rx_.begin(), rx_.begin() + size);
      return m;
    }
  }
  if (closed_) return make_error(ECONNRESET, "server closed the connection");
  return make_error(EAGAIN, "no reply yet");
}

}  // namespace berth::p9
