// virtio-net (virtio 1.x §5.1) as a FrameLink: the in-process guest link.
//
// One queue pair (0 receiveq, 1 transmitq), no offloads, no mergeable
// buffers. Offered features: MAC, MTU and STATUS (the link is always up).
// Every buffer carries the 12-byte version-1 virtio_net_hdr; frames toward
// the guest get a zeroed header with num_buffers = 1.
//
// Guarantees:
//  - Frames from the guest (TX chains) are delivered to the rx callback one
//    by one, the header stripped; runts (< 14 bytes) and frames longer than
//    max_frame() are dropped and counted in LinkStats. At most kTxBudget
//    chains are handled per loop iteration; the rest wait for the next one
//    (a uv_idle), so a guest cannot starve the loop.
//  - send() copies the frame into a bounded queue (kMaxQueued frames /
//    kMaxQueuedBytes); frames go into the guest's posted receive buffers from
//    the loop's next iteration (or at once when the guest posts buffers), one
//    interrupt per batch. A buffer too small for its frame consumes the frame
//    (dropped, counted in stats().rx_buffer_too_small). on_writable runs once
//    a refused sender may send again (the queue drained below half, or was
//    discarded at reset/close).
//
// Threading: read_config may run on any thread (the config is immutable);
// everything else on the main loop. Lifetime: the idle handle is freed in
// its close callback, so run the loop after destroying the device.
#pragma once

#include <uv.h>

#include <array>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "net/link/frame_link.h"
#include "vmm/virtio.h"

namespace berth::vmm {

// Feature bits (§5.1.3).
constexpr uint64_t kNetFMtu = 1ull << 3;
constexpr uint64_t kNetFMac = 1ull << 5;
constexpr uint64_t kNetFStatus = 1ull << 16;
constexpr uint16_t kNetSLinkUp = 1;
constexpr size_t kNetHdrLen = 12;  // struct virtio_net_hdr with num_buffers (VERSION_1)

// Device-specific counters, beside the link's LinkStats.
struct VirtioNetStats {
  uint64_t rx_buffer_too_small = 0;  // a receive chain could not hold the frame (frame dropped)
  uint64_t tx_bad_header = 0;        // a TX chain shorter than the header (also counted as a runt)
  uint64_t tx_deferred = 0;          // times TX work was left for the next loop iteration
  uint64_t tx_discarded = 0;         // guest frames dropped because the link was closed or not started
  uint64_t queue_discarded = 0;      // frames toward the guest dropped by reset or close
};

class VirtioNet final : public VirtioDevice, public net::FrameLink {
 public:
  static constexpr size_t kTxBudget = 256;              // TX chains per loop iteration
  static constexpr size_t kMaxQueued = 1024;            // frames toward the guest
  static constexpr size_t kMaxQueuedBytes = 8u << 20;  // ... and their bytes

  // `loop` runs the deferred work (TX beyond the budget, batched RX).
  // `mtu` is clamped to 68..65535 (the config field is 16 bits).
  VirtioNet(uv_loop_t* loop, std::array<uint8_t, 6> mac, uint32_t mtu);
  ~VirtioNet() override;
  VirtioNet(const VirtioNet&) = delete;
  VirtioNet& operator=(const VirtioNet&) = delete;

  // VirtioDevice
  uint32_t device_type() const override { return kVirtioNet; }
  uint64_t device_features() const override { return kNetFMac | kNetFMtu | kNetFStatus; }
  size_t num_queues() const override { return 2; }
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void activate(VirtioContext& ctx) override;
  void notify(size_t index) override;
  void reset() override;

  // FrameLink
  std::string type() const override { return "virtio"; }
  std::string peer() const override;
  [[nodiscard]] Result<void> start(Receive rx) override;
  bool send(Bytes frame) override;
  void close() override;
  size_t max_frame() const override { return max_frame_; }
  bool writable() const override;

  bool active() const { return ctx_ != nullptr; }
  const VirtioNetStats& net_stats() const { return nstats_; }
  size_t queued() const { return rxq_.size(); }
  const std::array<uint8_t, 6>& mac() const { return mac_; }
  uint32_t mtu() const { return mtu_; }

 private:
  static void on_idle(uv_idle_t* h);
  void schedule();
  void process_tx();
  void flush_rx();
  bool queue_full(size_t len) const;
  void discard_queue();
  void drain_check();

  uv_loop_t* loop_;
  const std::array<uint8_t, 6> mac_;
  const uint32_t mtu_;
  const size_t max_frame_;
  std::array<uint8_t, 12> config_{};

  VirtioContext* ctx_ = nullptr;
  Receive rx_;
  bool started_ = false, closed_ = false;
  uint64_t epoch_ = 0;  // bumped by reset/close so loops that called out can tell

  std::deque<std::vector<uint8_t>> rxq_;  // frames toward the guest
  std::vector<std::vector<uint8_t>> spare_;
  size_t rxq_bytes_ = 0;
  bool want_writable_ = false;
  bool tx_pending_ = false;  // TX chains left over from the budget

  std::vector<uint8_t> scratch_;  // one TX chain's readable bytes
  uv_idle_t* idle_ = nullptr;
  bool scheduled_ = false;
  VirtioNetStats nstats_;
};

}  // namespace berth::vmm
