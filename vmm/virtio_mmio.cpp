// virtio-mmio version 2 transport (virtio 1.x §4.2.2).
//
// Theory of operation
// -------------------
// Two sides share one object:
//   - vCPU threads call bus_read/bus_write. Every register lives in Impl
//     under `mu`; the handlers never touch the device or (outside DRIVER_OK
//     set-up, see below) the Virtqueues, which belong to the loop.
//   - The main loop owns the device and the Virtqueues. Work crosses over
//     through one uv_async handle and a few pending flags under `mu`:
//     activate, reset, and per-queue kicks. uv_async coalesces sends, so the
//     callback drains all pending work each time, in the order reset,
//     activate, kicks.
//
// Lifecycle (§3.1.1, as Linux's virtio_mmio drives it):
//   status 0 (reset) -> ACKNOWLEDGE -> DRIVER -> features -> FEATURES_OK
//   (read back: refused when VERSION_1 is missing or unoffered bits are
//   asked for) -> per queue: QueueSel, QueueNumMax, QueueNum, addresses,
//   QueueReady -> DRIVER_OK.
// At DRIVER_OK the vCPU copies each ready queue's registers into its
// Virtqueue and activates it. That is safe because the loop touches queues
// only while the device is active, and a device is only activated after
// DRIVER_OK and only reset by the loop (with `reset_done` telling the vCPU
// when the loop has finished). Any failure gives DEVICE_NEEDS_RESET
// (§2.1.1) and a configuration-change interrupt; otherwise the loop is asked
// to activate the device.
//
// Reset: writing 0 returns the registers to their initial state at once,
// then, if the device may be active, the vCPU waits (bounded) until the loop
// has run dev.reset() and reset the queues, so the driver never re-uses
// rings the device still reads.
//
// Bad register accesses (wrong width, unknown queue, clearing status bits,
// DRIVER_OK without FEATURES_OK, ...) are counted in protocol_errors and
// otherwise ignored; reads of them return 0.
#include "vmm/virtio_mmio.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include <spdlog/spdlog.h>

namespace berth::vmm {

namespace {

constexpr auto kResetWait = std::chrono::seconds(2);
// Shared memory region registers (virtio 1.2 §4.2.2), probed by some drivers.
constexpr uint64_t kShmSel = 0x0ac, kShmLenLow = 0x0b0, kShmLenHigh = 0x0b4;

struct QueueRegs {
  uint32_t num = 0;
  bool ready = false;
  uint64_t desc = 0, driver = 0, device = 0;
};

void set_low(uint64_t& v, uint32_t lo) { v = (v & 0xffffffff00000000ull) | lo; }
void set_high(uint64_t& v, uint32_t hi) { v = (v & 0xffffffffull) | (uint64_t(hi) << 32); }

}  // namespace

struct VirtioMmio::Impl {
  // Heap-allocated handles, freed in their close callbacks (the pattern of
  // net/link/link_base.h): they may outlive the VirtioMmio by one loop turn.
  struct AsyncBox {
    uv_async_t h;
    Impl* impl;
  };
  struct PollBox {
    uv_poll_t h;
    Impl* impl;
    size_t queue;
    int fd;
  };

  Impl(VirtioMmio& s, uv_loop_t* l) : self(s), loop(l) {}

  VirtioMmio& self;
  uv_loop_t* loop;

  // --- registers and crossing state, under mu ---
  std::mutex mu;
  std::condition_variable cv;
  uint32_t status = 0;
  uint32_t dev_features_sel = 0, drv_features_sel = 0, queue_sel = 0;
  uint64_t drv_features = 0;
  std::vector<QueueRegs> qregs;
  bool want_activate = false;
  bool may_be_active = false;  // activation requested since the last completed reset
  std::vector<uint8_t> want_notify;
  uint64_t reset_requested = 0, reset_done = 0;
  bool closed = false;

  // --- any thread ---
  std::atomic<uint32_t> isr{0};
  std::atomic<uint32_t> config_generation{0};
  std::atomic<uint64_t> accepted{0};

  // --- main loop ---
  std::vector<std::unique_ptr<Virtqueue>> queues;
  bool active = false;
  AsyncBox* async = nullptr;
  std::vector<PollBox*> polls;

  uint64_t offered() const {
    return self.dev_.device_features() | kFeatureVersion1 | kFeatureRingIndirectDesc | kFeatureRingEventIdx;
  }

  void protocol_error(const char* what, uint64_t offset) {
    self.stats_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
    spdlog::debug("virtio-mmio (type {}): {} at offset {:#x}", self.dev_.device_type(), what, offset);
  }

  // mu held. Registers back to their power-on values.
  void reset_registers() {
    status = 0;
    dev_features_sel = drv_features_sel = queue_sel = 0;
    drv_features = 0;
    std::fill(qregs.begin(), qregs.end(), QueueRegs{});
    want_activate = false;
    std::fill(want_notify.begin(), want_notify.end(), uint8_t(0));
    isr.store(0);
    accepted.store(0);
  }

  void wake_loop() {
    if (!closed && async) uv_async_send(&async->h);
  }

  // mu held: the device wants a reset from the driver (§2.1.2).
  void needs_reset() {
    status |= kStatusNeedsReset;
    config_generation.fetch_add(1);
    isr.fetch_or(2);
    self.irq_.trigger();
  }

  // mu held, vCPU: status written with DRIVER_OK newly set.
  void driver_ok(uint64_t offset) {
    if (reset_requested != reset_done) {
      // A reset the loop has not finished (it timed out): the queues may
      // still be in use. Make the driver start over.
      protocol_error("DRIVER_OK while a reset is still running", offset);
      needs_reset();
      return;
    }
    uint64_t f = accepted.load();
    bool ok = true;
    for (size_t i = 0; i < queues.size(); i++) {
      Virtqueue& q = *queues[i];
      q.reset();
      if (!qregs[i].ready) continue;
      q.set_size(uint16_t(std::min<uint32_t>(qregs[i].num, 0xffff)));
      if (qregs[i].num > 0xffff) q.set_size(0);  // activate() refuses it
      q.set_addresses(qregs[i].desc, qregs[i].driver, qregs[i].device);
      q.set_features((f & kFeatureRingIndirectDesc) != 0, (f & kFeatureRingEventIdx) != 0);
      if (auto r = q.activate(); !r) {
        spdlog::debug("virtio-mmio (type {}): queue {}: {}", self.dev_.device_type(), i, r.error().message);
        ok = false;
      }
    }
    if (!ok) {
      for (auto& q : queues) q->reset();
      protocol_error("bad queue configuration at DRIVER_OK", offset);
      needs_reset();
      return;
    }
    want_activate = true;
    may_be_active = true;
    wake_loop();
  }

  // mu held, vCPU: a non-zero status write.
  void write_status(uint32_t v, uint64_t offset) {
    v &= ~kStatusNeedsReset;  // the device's bit; the driver cannot set it
    uint32_t cur = status & ~kStatusNeedsReset;
    if (cur & ~v) {
      // §2.1.2: the driver only sets bits; clearing is done by reset (0).
      protocol_error("status write clears bits", offset);
      return;
    }
    uint32_t added = v & ~cur;
    if (added & kStatusFeaturesOk) {
      // §3.1.1 step 5-6: refuse by leaving FEATURES_OK clear on read-back.
      uint64_t f = drv_features;
      if (!(f & kFeatureVersion1) || (f & ~offered())) {
        protocol_error("driver features refused", offset);
        v &= ~kStatusFeaturesOk;
        added &= ~kStatusFeaturesOk;
      } else {
        accepted.store(f);
      }
    }
    if ((added & kStatusDriverOk) && !(status & kStatusNeedsReset)) {
      if (!(v & kStatusFeaturesOk)) {
        protocol_error("DRIVER_OK without FEATURES_OK", offset);
        status = (v & ~kStatusDriverOk) | (status & kStatusNeedsReset);
        needs_reset();
        return;
      }
      status = v | (status & kStatusNeedsReset);
      driver_ok(offset);
      return;
    }
    status = v | (status & kStatusNeedsReset);
  }

  // vCPU, lock held by `lk`: status 0.
  void write_reset(std::unique_lock<std::mutex>& lk) {
    self.stats_.resets.fetch_add(1, std::memory_order_relaxed);
    reset_registers();
    if (closed) return;
    if (!may_be_active && reset_requested == reset_done) {
      // Nothing was activated since the last reset: no loop work needed,
      // but make sure no queue keeps a configuration from a failed DRIVER_OK.
      for (auto& q : queues) q->reset();
      return;
    }
    uint64_t mine = ++reset_requested;
    wake_loop();
    if (!cv.wait_for(lk, kResetWait, [&] { return reset_done >= mine || closed; }))
      spdlog::warn("virtio-mmio (type {}): device reset not finished after 2 s", self.dev_.device_type());
  }

  // Main loop: do what the vCPUs asked for.
  void run_pending() {
    bool do_activate;
    uint64_t reset_to;
    std::vector<uint8_t> kicks;
    {
      std::lock_guard lk(mu);
      reset_to = reset_requested;
      do_activate = want_activate;
      want_activate = false;
      kicks.swap(want_notify);
      want_notify.assign(queues.size(), 0);
    }
    if (reset_to != reset_done_loop) {
      reset_device();
      std::lock_guard lk(mu);
      reset_done = reset_to;
      reset_done_loop = reset_to;
      // DRIVER_OK is refused while a reset is pending, so nothing can have
      // been activated since this request.
      may_be_active = false;
      cv.notify_all();
    }
    if (do_activate) {
      // Activation follows DRIVER_OK, which follows a completed reset, so
      // the device is not active here; reset it anyway rather than
      // activate it twice (the queues are already configured: keep them).
      if (active) self.dev_.reset();
      active = true;
      self.stats_.activations.fetch_add(1, std::memory_order_relaxed);
      self.dev_.activate(self);
    }
    for (size_t i = 0; i < kicks.size(); i++)
      if (kicks[i]) kick(i);
  }
  uint64_t reset_done_loop = 0;  // main loop's copy of reset_done

  void reset_device() {
    if (active) {
      self.dev_.reset();
      active = false;
    }
    for (auto& q : queues) q->reset();
  }

  // Main loop: the driver kicked queue i.
  void kick(size_t i) {
    queues[i]->stats().notifies++;
    if (active) self.dev_.notify(i);
  }

  static void on_async(uv_async_t* h) {
    auto* box = reinterpret_cast<AsyncBox*>(h);
    if (box->impl) box->impl->run_pending();
  }

  static void on_poll(uv_poll_t* h, int status, int events) {
    auto* box = reinterpret_cast<PollBox*>(h);
    if (!box->impl || status < 0 || !(events & UV_READABLE)) return;
    uint64_t n;
    ssize_t r = ::read(box->fd, &n, sizeof n);  // eventfd: resets the counter
    if (r != sizeof n) return;
    box->impl->self.stats_.notifies.fetch_add(1, std::memory_order_relaxed);
    box->impl->kick(box->queue);
  }
};

VirtioMmio::VirtioMmio(uv_loop_t* loop, const GuestMemory& mem, VirtioDevice& dev, InterruptLine& irq)
    : mem_(mem), dev_(dev), irq_(irq), impl_(std::make_unique<Impl>(*this, loop)) {
  size_t n = dev_.num_queues();
  impl_->qregs.assign(n, QueueRegs{});
  impl_->want_notify.assign(n, 0);
  for (size_t i = 0; i < n; i++) impl_->queues.push_back(std::make_unique<Virtqueue>(mem_, dev_.queue_max_size()));
  auto* box = new Impl::AsyncBox{};
  box->impl = impl_.get();
  if (int rc = uv_async_init(loop, &box->h, &Impl::on_async); rc != 0) {
    // No way to reach the loop: the device can still be probed but never
    // activates (DRIVER_OK will be accepted but nothing runs).
    spdlog::error("virtio-mmio: uv_async_init: {}", uv_strerror(rc));
    delete box;
  } else {
    impl_->async = box;
  }
}

VirtioMmio::~VirtioMmio() { close(); }

void VirtioMmio::close() {
  Impl& m = *impl_;
  {
    std::lock_guard lk(m.mu);
    if (m.closed) return;
    m.closed = true;
    m.want_activate = false;
  }
  m.reset_device();
  {
    std::lock_guard lk(m.mu);
    m.reset_done = m.reset_requested;
    m.may_be_active = false;
    m.cv.notify_all();
  }
  if (m.async) {
    m.async->impl = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&m.async->h),
             [](uv_handle_t* h) { delete reinterpret_cast<Impl::AsyncBox*>(h); });
    m.async = nullptr;
  }
  for (auto* p : m.polls) {
    p->impl = nullptr;
    uv_poll_stop(&p->h);  // out of epoll before the fd closes
    uv_close(reinterpret_cast<uv_handle_t*>(&p->h), [](uv_handle_t* h) {
      auto* box = reinterpret_cast<Impl::PollBox*>(h);
      ::close(box->fd);
      delete box;
    });
  }
  m.polls.clear();
}

Result<void> VirtioMmio::watch_notify_fd(size_t queue, int fd) {
  Impl& m = *impl_;
  if (queue >= m.queues.size() || m.closed) {
    ::close(fd);
    return make_error(EINVAL, "virtio-mmio: no queue " + std::to_string(queue) + " to watch");
  }
  auto* box = new Impl::PollBox{};
  box->impl = &m;
  box->queue = queue;
  box->fd = fd;
  if (int rc = uv_poll_init(m.loop, &box->h, fd); rc != 0) {
    delete box;  // never initialised: no uv_close
    ::close(fd);
    return make_error(-rc, std::string("virtio-mmio: uv_poll_init: ") + uv_strerror(rc));
  }
  m.polls.push_back(box);
  if (int rc = uv_poll_start(&box->h, UV_READABLE, &Impl::on_poll); rc != 0)
    return make_error(-rc, std::string("virtio-mmio: uv_poll_start: ") + uv_strerror(rc));  // closed by close()
  return {};
}

uint32_t VirtioMmio::status() const {
  std::lock_guard lk(impl_->mu);
  return impl_->status;
}

std::vector<QueueStats> VirtioMmio::queue_stats() const {
  std::vector<QueueStats> out;
  for (auto& q : impl_->queues) out.push_back(q->stats());
  return out;
}

Virtqueue& VirtioMmio::queue(size_t index) { return *impl_->queues.at(index); }
size_t VirtioMmio::num_queues() const { return impl_->queues.size(); }
uint64_t VirtioMmio::features() const { return impl_->accepted.load(); }

void VirtioMmio::signal_used(size_t index) {
  if (index >= impl_->queues.size() || !impl_->queues[index]->should_interrupt()) return;
  impl_->isr.fetch_or(1);  // §4.2.2.1: "used buffer notification"
  stats_.interrupts.fetch_add(1, std::memory_order_relaxed);
  irq_.trigger();
}

void VirtioMmio::signal_config_change() {
  impl_->config_generation.fetch_add(1);
  impl_->isr.fetch_or(2);  // "configuration change notification"
  stats_.interrupts.fetch_add(1, std::memory_order_relaxed);
  irq_.trigger();
}

void VirtioMmio::bus_read(uint64_t offset, std::span<uint8_t> data) {
  Impl& m = *impl_;
  stats_.reads.fetch_add(1, std::memory_order_relaxed);
  std::fill(data.begin(), data.end(), uint8_t(0));
  if (offset >= mmio::kConfig) {
    // §4.2.2.2: config space allows 8/16/32/64-bit accesses.
    size_t n = data.size();
    if ((n != 1 && n != 2 && n != 4 && n != 8) || offset + n > mmio::kWindow) {
      m.protocol_error("bad config space read", offset);
      return;
    }
    dev_.read_config(offset - mmio::kConfig, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) {
    m.protocol_error("register read not 32 bits wide", offset);
    return;
  }
  uint32_t v = 0;
  {
    std::lock_guard lk(m.mu);
    bool have_q = m.queue_sel < m.qregs.size();
    switch (offset) {
      case mmio::kMagic: v = mmio::kMagicValue; break;
      case mmio::kVersion: v = 2; break;
      case mmio::kDeviceId: v = dev_.device_type(); break;
      case mmio::kVendorId: v = mmio::kVendor; break;
      case mmio::kDeviceFeatures:
        if (m.dev_features_sel < 2) v = uint32_t(m.offered() >> (32 * m.dev_features_sel));
        break;
      case mmio::kQueueNumMax:
        if (have_q) v = dev_.queue_max_size();
        break;
      case mmio::kQueueReady:
        if (have_q) v = m.qregs[m.queue_sel].ready ? 1 : 0;
        break;
      case mmio::kInterruptStatus: v = m.isr.load(); break;
      case mmio::kStatus: v = m.status; break;
      case mmio::kConfigGeneration: v = m.config_generation.load(); break;
      case kShmLenLow:
      case kShmLenHigh:
        v = 0xffffffff;  // §4.2.2: no shared memory region with this id
        break;
      default:
        // Write-only and reserved registers read as zero (§4.2.2).
        break;
    }
  }
  store_le32(data.data(), v);
}

void VirtioMmio::bus_write(uint64_t offset, Bytes data) {
  Impl& m = *impl_;
  stats_.writes.fetch_add(1, std::memory_order_relaxed);
  if (offset >= mmio::kConfig) {
    size_t n = data.size();
    if ((n != 1 && n != 2 && n != 4 && n != 8) || offset + n > mmio::kWindow) {
      m.protocol_error("bad config space write", offset);
      return;
    }
    dev_.write_config(offset - mmio::kConfig, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) {
    m.protocol_error("register write not 32 bits wide", offset);
    return;
  }
  uint32_t v = load_le32(data.data());
  std::unique_lock lk(m.mu);
  QueueRegs* q = m.queue_sel < m.qregs.size() ? &m.qregs[m.queue_sel] : nullptr;
  bool features_locked = (m.status & kStatusFeaturesOk) != 0;
  switch (offset) {
    case mmio::kDeviceFeaturesSel: m.dev_features_sel = v; break;
    case mmio::kDriverFeaturesSel: m.drv_features_sel = v; break;
    case mmio::kDriverFeatures:
      // §3.1.1: features are fixed once FEATURES_OK is set.
      if (features_locked) {
        m.protocol_error("driver features written after FEATURES_OK", offset);
      } else if (m.drv_features_sel == 0) {
        set_low(m.drv_features, v);
      } else if (m.drv_features_sel == 1) {
        set_high(m.drv_features, v);
      } else if (v != 0) {
        m.protocol_error("driver features beyond bit 63", offset);
      }
      break;
    case mmio::kQueueSel: m.queue_sel = v; break;
    case mmio::kQueueNum:
    case mmio::kQueueReady:
    case mmio::kQueueDescLow:
    case mmio::kQueueDescHigh:
    case mmio::kQueueDriverLow:
    case mmio::kQueueDriverHigh:
    case mmio::kQueueDeviceLow:
    case mmio::kQueueDeviceHigh:
      // Queue registers only take effect at DRIVER_OK (copied then).
      if (!q) {
        m.protocol_error("queue register of a queue that does not exist", offset);
        break;
      }
      switch (offset) {
        case mmio::kQueueNum: q->num = v; break;
        case mmio::kQueueReady: q->ready = (v & 1) != 0; break;
        case mmio::kQueueDescLow: set_low(q->desc, v); break;
        case mmio::kQueueDescHigh: set_high(q->desc, v); break;
        case mmio::kQueueDriverLow: set_low(q->driver, v); break;
        case mmio::kQueueDriverHigh: set_high(q->driver, v); break;
        case mmio::kQueueDeviceLow: set_low(q->device, v); break;
        case mmio::kQueueDeviceHigh: set_high(q->device, v); break;
      }
      break;
    case mmio::kQueueNotify:
      // §4.2.3.3: the value is the queue index (NOTIFICATION_DATA not offered).
      if (v >= m.qregs.size()) {
        m.protocol_error("notify of a queue that does not exist", offset);
        break;
      }
      stats_.notifies.fetch_add(1, std::memory_order_relaxed);
      m.want_notify[v] = 1;
      m.wake_loop();
      break;
    case mmio::kInterruptAck: m.isr.fetch_and(~v); break;
    case kShmSel: break;  // no shared memory regions; reads of them say so
    case mmio::kStatus:
      if (v == 0)
        m.write_reset(lk);
      else
        m.write_status(v, offset);
      break;
    default:
      m.protocol_error("write to a read-only or reserved register", offset);
      break;
  }
}

}  // namespace berth::vmm
