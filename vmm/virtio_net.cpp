// virtio-net. Theory of operation:
//
// Transmit (guest -> translator, queue 1): a kick runs process_tx(), which
// pops up to kTxBudget chains, copies each chain's readable part past the
// 12-byte header into one scratch buffer (refusing runts and oversized
// frames before copying), returns the chain with length 0 and hands the
// frame to the rx callback. One interrupt decision per batch. If chains are
// left when the budget runs out, kicks are suppressed and the rest is picked
// up from a uv_idle on the next loop iteration. When the ring is empty the
// device re-enables kicks and looks once more, which closes the race with a
// driver that added a chain while kicks were off.
//
// Receive (translator -> guest, queue 0): send() copies the frame into a
// bounded FIFO and schedules the idle handle; flush_rx() then fills posted
// chains (header, then frame) until the FIFO or the chains run out. A
// driver that posts buffers kicks queue 0, which flushes at once. The FIFO
// being full is the translator's backpressure: send() refuses, and
// on_writable runs once the FIFO is below half again.
//
// Calling out (rx callback, on_writable) may reset the device or close the
// link; loops compare epoch_ before and after and stop if it moved.
#include "vmm/virtio_net.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

namespace berth::vmm {

namespace {
constexpr size_t kEthHeader = 14;
constexpr size_t kRxQueue = 0, kTxQueue = 1;
}  // namespace

VirtioNet::VirtioNet(uv_loop_t* loop, std::array<uint8_t, 6> mac, uint32_t mtu)
    : loop_(loop), mac_(mac), mtu_(std::clamp<uint32_t>(mtu, 68, 65535)), max_frame_(mtu_ + kEthHeader) {
  // struct virtio_net_config (§5.1.4): mac[6], status, max_virtqueue_pairs, mtu.
  std::memcpy(config_.data(), mac_.data(), 6);
  store_le16(&config_[6], kNetSLinkUp);
  store_le16(&config_[8], 1);
  store_le16(&config_[10], uint16_t(mtu_));
}

VirtioNet::~VirtioNet() {
  if (idle_) {
    uv_idle_stop(idle_);
    idle_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(idle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
    idle_ = nullptr;
  }
}

// ---- VirtioDevice ---------------------------------------------------------

void VirtioNet::read_config(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t(0));
  if (offset >= config_.size()) return;
  size_t n = std::min<uint64_t>(data.size(), config_.size() - offset);
  std::memcpy(data.data(), config_.data() + offset, n);
}

void VirtioNet::activate(VirtioContext& ctx) {
  ctx_ = &ctx;
  epoch_++;
  // The driver may have posted receive buffers and frames before DRIVER_OK
  // took effect here: look at both on the next iteration.
  tx_pending_ = true;
  schedule();
}

void VirtioNet::notify(size_t index) {
  if (!ctx_) return;
  if (index == kTxQueue)
    process_tx();
  else if (index == kRxQueue)
    flush_rx();
}

void VirtioNet::reset() {
  ctx_ = nullptr;
  tx_pending_ = false;
  epoch_++;
  discard_queue();
}

// ---- FrameLink ------------------------------------------------------------

std::string VirtioNet::peer() const {
  std::string s = fmt::format("guest {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac_[0], mac_[1], mac_[2], mac_[3],
                              mac_[4], mac_[5]);
  if (!ctx_) s += " (driver not ready)";
  return s;
}

Result<void> VirtioNet::start(Receive rx) {
  if (closed_) return make_error(EBADF, "virtio-net link is closed");
  if (started_) return make_error(EBUSY, "virtio-net link already started");
  rx_ = std::move(rx);
  started_ = true;
  return {};
}

void VirtioNet::close() {
  if (closed_) return;
  closed_ = true;
  epoch_++;
  // rx_ is kept (close() may run inside it); closed_ stops its use.
  discard_queue();
}

bool VirtioNet::writable() const { return ctx_ && !closed_ && !queue_full(max_frame_); }

bool VirtioNet::queue_full(size_t len) const {
  if (rxq_.empty()) return false;
  return rxq_.size() >= kMaxQueued || rxq_bytes_ + len > kMaxQueuedBytes;
}

bool VirtioNet::send(Bytes frame) {
  if (frame.empty() || frame.size() > max_frame_) {
    stats_.tx_dropped_invalid++;
    spdlog::debug("virtio-net: refusing a {}-byte frame toward the guest (max {})", frame.size(), max_frame_);
    return false;
  }
  if (!ctx_ || closed_) {
    stats_.tx_dropped_no_peer++;
    return false;
  }
  if (queue_full(frame.size())) {
    stats_.tx_dropped_full++;
    want_writable_ = true;
    return false;
  }
  std::vector<uint8_t> buf;
  if (!spare_.empty()) {
    buf = std::move(spare_.back());
    spare_.pop_back();
  }
  buf.assign(frame.begin(), frame.end());
  rxq_bytes_ += buf.size();
  rxq_.push_back(std::move(buf));
  schedule();
  return true;
}

// ---- deferred work --------------------------------------------------------

void VirtioNet::schedule() {
  if (scheduled_ || !loop_) return;
  if (!idle_) {
    idle_ = new uv_idle_t{};
    uv_idle_init(loop_, idle_);
    idle_->data = this;
  }
  uv_idle_start(idle_, &VirtioNet::on_idle);
  scheduled_ = true;
}

void VirtioNet::on_idle(uv_idle_t* h) {
  uv_idle_stop(h);
  auto* self = static_cast<VirtioNet*>(h->data);
  if (!self) return;
  self->scheduled_ = false;
  if (!self->ctx_) return;
  if (self->tx_pending_) {
    self->tx_pending_ = false;
    self->process_tx();
  }
  self->flush_rx();  // a no-op if process_tx's callback reset the device
}

// §5.1.6.2: the driver puts a virtio_net_hdr then the frame in each TX
// chain; without offloads the header carries nothing we need.
void VirtioNet::process_tx() {
  if (!ctx_) return;
  Virtqueue& q = ctx_->queue(kTxQueue);
  if (!q.ready()) return;
  VirtioContext* ctx = ctx_;
  const uint64_t epoch = epoch_;
  bool pushed = false;
  bool rechecked = false;
  size_t n = 0;
  for (;;) {
    if (n == kTxBudget) {
      if (q.has_available()) {
        // Leave the rest for the next iteration; no kicks meanwhile.
        nstats_.tx_deferred++;
        q.enable_notifications(false);
        tx_pending_ = true;
        schedule();
      }
      break;
    }
    std::optional<DescChain> c = q.pop();
    if (!c) {
      if (rechecked) break;
      q.enable_notifications(true);
      rechecked = true;
      if (!q.has_available()) break;
      continue;
    }
    n++;
    pushed = true;
    if (c->readable_len < kNetHdrLen) {
      nstats_.tx_bad_header++;
      stats_.rx_dropped_runt++;
      q.push(c->head, 0);
      continue;
    }
    uint64_t frame_len = c->readable_len - kNetHdrLen;
    if (frame_len < kEthHeader) {
      stats_.rx_dropped_runt++;
      spdlog::debug("virtio-net: dropped a {}-byte runt frame from the guest", frame_len);
      q.push(c->head, 0);
      continue;
    }
    if (frame_len > max_frame_) {
      stats_.rx_dropped_oversize++;
      spdlog::debug("virtio-net: dropped a {}-byte frame from the guest (max {})", frame_len, max_frame_);
      q.push(c->head, 0);
      continue;
    }
    scratch_.resize(frame_len);
    size_t got = q.read_from(*c, kNetHdrLen, scratch_);
    q.push(c->head, 0);
    if (got != frame_len) {  // cannot happen for a validated chain
      stats_.rx_dropped_runt++;
      continue;
    }
    if (!started_ || closed_ || !rx_) {
      nstats_.tx_discarded++;
      continue;
    }
    stats_.rx_frames++;
    stats_.rx_bytes += frame_len;
    rx_(Bytes(scratch_.data(), frame_len));
    if (epoch_ != epoch) {
      // Reset or closed under us. After close() the queue is still ours.
      if (!ctx_) return;
      break;
    }
  }
  if (pushed && ctx_ == ctx) ctx->signal_used(kTxQueue);
}

// §5.1.6.3/§5.1.6.4: each receive chain gets a header (num_buffers = 1
// without MRG_RXBUF) followed by one whole frame.
void VirtioNet::flush_rx() {
  if (!ctx_) return;
  Virtqueue& q = ctx_->queue(kRxQueue);
  if (!q.ready()) return;
  bool pushed = false;
  bool rechecked = false;
  uint8_t hdr[kNetHdrLen] = {};
  store_le16(&hdr[10], 1);
  while (!rxq_.empty()) {
    std::optional<DescChain> c = q.pop();
    if (!c) {
      // Out of buffers: ask for a kick when the driver posts more.
      if (rechecked) break;
      q.enable_notifications(true);
      rechecked = true;
      if (!q.has_available()) break;
      continue;
    }
    std::vector<uint8_t>& f = rxq_.front();
    pushed = true;
    if (c->writable_len < kNetHdrLen + f.size()) {
      nstats_.rx_buffer_too_small++;
      spdlog::debug("virtio-net: receive buffer of {} bytes too small for a {}-byte frame", c->writable_len,
                    f.size());
      q.push(c->head, 0);
    } else {
      q.write_to(*c, 0, Bytes(hdr, kNetHdrLen));
      q.write_to(*c, kNetHdrLen, f);
      q.push(c->head, uint32_t(kNetHdrLen + f.size()));
      stats_.tx_frames++;
      stats_.tx_bytes += f.size();
    }
    rxq_bytes_ -= f.size();
    if (spare_.size() < 64) spare_.push_back(std::move(f));
    rxq_.pop_front();
  }
  if (pushed) ctx_->signal_used(kRxQueue);
  drain_check();
}

void VirtioNet::discard_queue() {
  nstats_.queue_discarded += rxq_.size();
  rxq_.clear();
  rxq_bytes_ = 0;
  drain_check();
}

void VirtioNet::drain_check() {
  if (want_writable_ && rxq_.size() < kMaxQueued / 2 && rxq_bytes_ < kMaxQueuedBytes / 2) {
    want_writable_ = false;
    if (on_writable_) on_writable_();  // may send(), reset or close: nothing runs after it
  }
}

}  // namespace berth::vmm
