// virtio-mmio transport (vmm/virtio_mmio.h) with the virtio-rng device,
// driven register by register the way Linux's virtio_mmio driver does it.
// The loop runs in this thread with UV_RUN_NOWAIT; writes that wait for the
// loop (reset) come from a separate "vCPU" thread while this one pumps.
#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "vmm/virtio_mmio.h"
#include "vmm/virtio_rng.h"

using namespace berth;
using namespace berth::vmm;

namespace {

struct CountingIrq final : InterruptLine {
  std::atomic<int> n{0};
  void trigger() override { n++; }
};

constexpr uint64_t kRamBase = 0;
constexpr uint16_t kQSize = 8;

struct Rig {
  uv_loop_t loop;
  std::vector<uint8_t> ram = std::vector<uint8_t>(1 << 20, 0);
  GuestMemory mem;
  VirtioRng rng;
  CountingIrq irq;
  std::unique_ptr<VirtioMmio> dev;
  // Ring layout the fake driver uses.
  uint64_t desc = 0x1000, avail = 0x2000, used = 0x3000, buf = 0x10000;
  uint16_t avail_idx = 0;

  Rig() {
    REQUIRE(uv_loop_init(&loop) == 0);
    REQUIRE(mem.add_region(kRamBase, ram));
    dev = std::make_unique<VirtioMmio>(&loop, mem, rng, irq);
  }
  ~Rig() {
    dev->close();
    dev.reset();
    pump();
    CHECK(uv_loop_close(&loop) == 0);
  }

  void pump() {
    for (int i = 0; i < 8; i++) uv_run(&loop, UV_RUN_NOWAIT);
  }
  uint32_t rd(uint64_t off, size_t width = 4) {
    uint8_t b[8];
    std::memset(b, 0xa5, sizeof b);
    dev->bus_read(off, std::span<uint8_t>(b, width));
    uint32_t v = 0;
    std::memcpy(&v, b, std::min<size_t>(width, 4));
    return v;
  }
  void wr(uint64_t off, uint32_t v, size_t width = 4) {
    uint8_t b[8] = {};
    store_le32(b, v);
    dev->bus_write(off, Bytes(b, width));
  }
  // A write from another thread while this one runs the loop.
  void wr_vcpu(uint64_t off, uint32_t v) {
    std::atomic<bool> done{false};
    std::thread t([&] {
      wr(off, v);
      done = true;
    });
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!done && std::chrono::steady_clock::now() < deadline) {
      uv_run(&loop, UV_RUN_NOWAIT);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    t.join();
    CHECK(done);
  }
  uint64_t errors() const { return dev->stats().protocol_errors.load(); }

  uint64_t device_features() {
    wr(mmio::kDeviceFeaturesSel, 1);
    uint64_t hi = rd(mmio::kDeviceFeatures);
    wr(mmio::kDeviceFeaturesSel, 0);
    uint64_t lo = rd(mmio::kDeviceFeatures);
    return hi << 32 | lo;
  }
  void driver_features(uint64_t f) {
    wr(mmio::kDriverFeaturesSel, 1);
    wr(mmio::kDriverFeatures, uint32_t(f >> 32));
    wr(mmio::kDriverFeaturesSel, 0);
    wr(mmio::kDriverFeatures, uint32_t(f));
  }
  void setup_queue(uint16_t n) {
    wr(mmio::kQueueSel, 0);
    REQUIRE(rd(mmio::kQueueReady) == 0);
    REQUIRE(rd(mmio::kQueueNumMax) >= n);
    wr(mmio::kQueueNum, n);
    wr(mmio::kQueueDescLow, uint32_t(desc));
    wr(mmio::kQueueDescHigh, 0);
    wr(mmio::kQueueDriverLow, uint32_t(avail));
    wr(mmio::kQueueDriverHigh, 0);
    wr(mmio::kQueueDeviceLow, uint32_t(used));
    wr(mmio::kQueueDeviceHigh, 0);
    wr(mmio::kQueueReady, 1);
    CHECK(rd(mmio::kQueueReady) == 1);
  }
  // Linux's probe + virtio_dev_probe + find_vqs + virtio_device_ready.
  void linux_init(uint64_t accept = kFeatureVersion1 | kFeatureRingEventIdx | kFeatureRingIndirectDesc) {
    REQUIRE(rd(mmio::kMagic) == mmio::kMagicValue);
    REQUIRE(rd(mmio::kVersion) == 2);
    REQUIRE(rd(mmio::kDeviceId) == kVirtioRng);
    REQUIRE(rd(mmio::kVendorId) == mmio::kVendor);
    wr_vcpu(mmio::kStatus, 0);
    REQUIRE(rd(mmio::kStatus) == 0);
    wr(mmio::kStatus, kStatusAcknowledge);
    wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
    uint64_t offered = device_features();
    driver_features(offered & accept);
    wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    REQUIRE(rd(mmio::kStatus) & kStatusFeaturesOk);
    setup_queue(kQSize);
    avail_idx = 0;
    std::memset(ram.data() + desc, 0, 0x3000);
    wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    REQUIRE(!(rd(mmio::kStatus) & kStatusNeedsReset));
    pump();
  }
  // One writable buffer of `len` bytes at `gpa` as descriptor `i`, made available.
  void offer(uint16_t i, uint64_t gpa, uint32_t len) {
    uint8_t* d = ram.data() + desc + 16 * i;
    store_le32(d, uint32_t(gpa));
    store_le32(d + 4, 0);
    store_le32(d + 8, len);
    store_le16(d + 12, kDescFWrite);
    store_le16(d + 14, 0);
    store_le16(ram.data() + avail + 4 + 2 * (avail_idx % kQSize), i);
    avail_idx++;
    store_le16(ram.data() + avail + 2, avail_idx);
  }
  uint16_t used_idx() { return load_le16(ram.data() + used + 2); }
  uint32_t used_len(uint16_t k) { return load_le32(ram.data() + used + 4 + 8 * (k % kQSize) + 4); }
};

bool all_zero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return false;
  return true;
}

}  // namespace

TEST_CASE("virtio-mmio: identification registers and offered features", "[vmm][virtio_mmio]") {
  Rig r;
  CHECK(r.rd(mmio::kMagic) == 0x74726976);
  CHECK(r.rd(mmio::kVersion) == 2);
  CHECK(r.rd(mmio::kDeviceId) == 4);
  CHECK(r.rd(mmio::kVendorId) == mmio::kVendor);
  uint64_t f = r.device_features();
  CHECK(f == (kFeatureVersion1 | kFeatureRingIndirectDesc | kFeatureRingEventIdx));
  r.wr(mmio::kDeviceFeaturesSel, 2);
  CHECK(r.rd(mmio::kDeviceFeatures) == 0);
  CHECK(r.rd(mmio::kQueueNumMax) == 256);
  r.wr(mmio::kQueueSel, 1);  // rng has one queue
  CHECK(r.rd(mmio::kQueueNumMax) == 0);
  CHECK(r.errors() == 0);
}

TEST_CASE("virtio-mmio: Linux-style bring-up, then the guest gets random bytes", "[vmm][virtio_mmio]") {
  Rig r;
  r.linux_init();
  CHECK(r.dev->stats().activations == 1);
  CHECK(r.errors() == 0);
  CHECK(r.rd(mmio::kStatus) == (kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk));

  r.offer(0, r.buf, 64);
  r.offer(1, r.buf + 0x1000, 100);
  r.wr(mmio::kQueueNotify, 0);
  CHECK(r.dev->stats().notifies == 1);
  r.pump();
  REQUIRE(r.used_idx() == 2);
  CHECK(r.used_len(0) == 64);
  CHECK(r.used_len(1) == 100);
  CHECK(!all_zero(r.ram.data() + r.buf, 64));
  CHECK(!all_zero(r.ram.data() + r.buf + 0x1000 + 36, 64));
  CHECK(all_zero(r.ram.data() + r.buf + 64, 0x1000 - 64));  // nothing past the buffer
  CHECK(r.rng.bytes_served() == 164);
  CHECK(r.irq.n >= 1);
  CHECK((r.rd(mmio::kInterruptStatus) & 1) == 1);
  r.wr(mmio::kInterruptAck, 1);
  CHECK(r.rd(mmio::kInterruptStatus) == 0);
  auto qs = r.dev->queue_stats();
  REQUIRE(qs.size() == 1);
  CHECK(qs[0].chains == 2);
  CHECK(qs[0].notifies == 1);

  SECTION("kicks through an eventfd") {
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    REQUIRE(efd >= 0);
    int mine = dup(efd);
    REQUIRE(r.dev->watch_notify_fd(0, efd));
    r.offer(2, r.buf + 0x2000, 32);
    uint64_t one = 1;
    REQUIRE(write(mine, &one, sizeof one) == sizeof one);
    r.pump();
    CHECK(r.used_idx() == 3);
    CHECK(r.rng.bytes_served() == 196);
    CHECK(r.dev->stats().notifies == 2);
    ::close(mine);
  }
  SECTION("reset handshake, then a second bring-up") {
    r.wr_vcpu(mmio::kStatus, 0);
    CHECK(r.rd(mmio::kStatus) == 0);
    CHECK(r.dev->stats().resets >= 2);
    CHECK(r.rd(mmio::kInterruptStatus) == 0);
    // Kicks after reset reach no device.
    r.offer(3, r.buf + 0x3000, 16);
    r.wr(mmio::kQueueNotify, 0);
    r.pump();
    CHECK(r.used_idx() == 2);
    r.linux_init();
    CHECK(r.dev->stats().activations == 2);
    r.offer(0, r.buf + 0x4000, 48);
    r.wr(mmio::kQueueNotify, 0);
    r.pump();
    CHECK(r.used_idx() == 1);  // rings start over
    CHECK(r.used_len(0) == 48);
    CHECK(r.rng.bytes_served() == 164 + 48);
  }
}

TEST_CASE("virtio-mmio: buffers offered before DRIVER_OK are served at activation", "[vmm][virtio_mmio]") {
  Rig r;
  r.wr_vcpu(mmio::kStatus, 0);
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
  r.driver_features(kFeatureVersion1);
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  r.setup_queue(kQSize);
  r.offer(0, r.buf, 8);
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  r.pump();
  CHECK(r.used_idx() == 1);
  CHECK(r.rng.bytes_served() == 8);
}

TEST_CASE("virtio-mmio: feature negotiation refusals", "[vmm][virtio_mmio]") {
  Rig r;
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
  SECTION("no VERSION_1") {
    r.driver_features(kFeatureRingEventIdx);
  }
  SECTION("bits not offered") {
    r.driver_features(kFeatureVersion1 | 1);
  }
  SECTION("bits beyond 63") {
    r.driver_features(kFeatureVersion1 | kFeatureRingEventIdx);
    r.wr(mmio::kDriverFeaturesSel, 2);
    r.wr(mmio::kDriverFeatures, 1);  // counted, ignored
    r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    CHECK((r.rd(mmio::kStatus) & kStatusFeaturesOk) != 0);
    CHECK(r.errors() == 1);
    return;
  }
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  CHECK((r.rd(mmio::kStatus) & kStatusFeaturesOk) == 0);
  CHECK(r.errors() == 1);
  // DRIVER_OK without FEATURES_OK: DEVICE_NEEDS_RESET, no activation.
  uint32_t gen = r.rd(mmio::kConfigGeneration);
  r.setup_queue(kQSize);
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusDriverOk);
  r.pump();
  CHECK((r.rd(mmio::kStatus) & kStatusNeedsReset) != 0);
  CHECK((r.rd(mmio::kStatus) & kStatusDriverOk) == 0);
  CHECK(r.errors() == 2);
  CHECK(r.dev->stats().activations == 0);
  CHECK(r.rd(mmio::kConfigGeneration) != gen);
  CHECK((r.rd(mmio::kInterruptStatus) & 2) != 0);
  // Reset clears it.
  r.wr_vcpu(mmio::kStatus, 0);
  CHECK(r.rd(mmio::kStatus) == 0);
}

TEST_CASE("virtio-mmio: a bad queue configuration at DRIVER_OK needs a reset", "[vmm][virtio_mmio]") {
  Rig r;
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
  r.driver_features(kFeatureVersion1);
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  SECTION("size not a power of two") {
    r.setup_queue(kQSize);
    r.wr(mmio::kQueueNum, 6);
  }
  SECTION("rings outside RAM") {
    r.setup_queue(kQSize);
    r.wr(mmio::kQueueDescHigh, 0x10);
  }
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  r.pump();
  CHECK((r.rd(mmio::kStatus) & kStatusNeedsReset) != 0);
  CHECK(r.errors() == 1);
  CHECK(r.dev->stats().activations == 0);
  // And the driver can start over.
  r.linux_init();
  CHECK(r.dev->stats().activations == 1);
}

TEST_CASE("virtio-mmio: register protocol errors are counted and harmless", "[vmm][virtio_mmio]") {
  Rig r;
  CHECK(r.rd(mmio::kMagic, 2) == 0);  // 16-bit register read
  CHECK(r.errors() == 1);
  CHECK(r.rd(mmio::kMagic, 1) == 0);
  CHECK(r.rd(mmio::kMagic, 8) == 0);
  CHECK(r.errors() == 3);
  r.wr(mmio::kStatus, kStatusAcknowledge, 2);
  CHECK(r.rd(mmio::kStatus) == 0);
  CHECK(r.errors() == 4);
  r.wr(mmio::kMagic, 1);  // read-only
  CHECK(r.errors() == 5);
  r.wr(mmio::kQueueNotify, 7);  // no such queue
  CHECK(r.errors() == 6);
  r.wr(mmio::kQueueSel, 3);
  r.wr(mmio::kQueueNum, 8);
  CHECK(r.errors() == 7);
  r.wr(mmio::kStatus, kStatusAcknowledge | kStatusDriver);
  r.wr(mmio::kStatus, kStatusAcknowledge);  // clears DRIVER
  CHECK(r.errors() == 8);
  CHECK(r.rd(mmio::kStatus) == (kStatusAcknowledge | kStatusDriver));
  // Config space: rng has none, any width is fine and reads zero.
  CHECK(r.rd(mmio::kConfig, 1) == 0);
  CHECK(r.rd(mmio::kConfig + 4, 8) == 0);
  r.wr(mmio::kConfig, 5, 4);
  CHECK(r.rd(mmio::kConfig, 3) == 0);  // 3 bytes: not a valid width
  CHECK(r.rd(mmio::kWindow - 2, 4) == 0);  // runs past the window
  CHECK(r.errors() == 10);
  // Shared memory regions (as Linux probes them): none, and no error.
  r.wr(0x0ac, 0);
  CHECK(r.rd(0x0b0) == 0xffffffffu);
  CHECK(r.rd(0x0b4) == 0xffffffffu);
  CHECK(r.errors() == 10);
  // Config generation is stable while nothing changes.
  CHECK(r.rd(mmio::kConfigGeneration) == r.rd(mmio::kConfigGeneration));
}

TEST_CASE("virtio-mmio: concurrent register access from several vCPUs", "[vmm][virtio_mmio]") {
  Rig r;
  r.linux_init();
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> vcpus;
  for (int t = 0; t < 3; t++)
    vcpus.emplace_back([&] {
      while (!stop) {
        if (r.rd(mmio::kMagic) != mmio::kMagicValue) bad++;
        r.rd(mmio::kStatus);
        r.wr(mmio::kQueueNotify, 0);
      }
    });
  for (int i = 0; i < 200; i++) {
    // Never more outstanding than the ring holds.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (uint16_t(r.avail_idx - r.used_idx()) >= kQSize && std::chrono::steady_clock::now() < deadline) {
      r.wr(mmio::kQueueNotify, 0);
      uv_run(&r.loop, UV_RUN_NOWAIT);
    }
    r.offer(uint16_t(i % kQSize), r.buf + 64 * (i % kQSize), 16);
    uv_run(&r.loop, UV_RUN_NOWAIT);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  stop = true;
  for (auto& t : vcpus) t.join();
  r.wr(mmio::kQueueNotify, 0);
  r.pump();
  CHECK(bad == 0);
  CHECK(r.used_idx() == 200);
  CHECK(r.rng.bytes_served() == 200 * 16);
}
