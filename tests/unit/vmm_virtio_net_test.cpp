// virtio-net (vmm/virtio_net.h) against the fake driver: frames from the
// guest reach the link's rx callback without the virtio header; malformed
// ones are counted; frames toward the guest fill posted receive buffers,
// wait (bounded) when there are none, and release a refused sender once the
// queue drains. A uv loop runs the deferred work (run_once).
#include <catch2/catch.hpp>

#include <uv.h>

#include <string>
#include <vector>

#include "vmm_fake_driver.h"
#include "vmm/virtio_net.h"

using namespace berth;
using namespace berth::vmm;
using namespace berth::vmm::testing;

namespace {

constexpr std::array<uint8_t, 6> kMac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr uint32_t kRxBuf = kNetHdrLen + 1514;

std::vector<uint8_t> frame(size_t len, uint8_t seed) {
  std::vector<uint8_t> f(len);
  for (size_t i = 0; i < len; i++) f[i] = uint8_t(seed + i);
  return f;
}

std::vector<uint8_t> tx_header() { return std::vector<uint8_t>(kNetHdrLen, 0); }

// Header and frame in one buffer.
std::vector<uint8_t> with_header(const std::vector<uint8_t>& f) {
  std::vector<uint8_t> out(kNetHdrLen + f.size(), 0);
  std::copy(f.begin(), f.end(), out.begin() + kNetHdrLen);
  return out;
}

struct Rig {
  uv_loop_t loop;
  FakeVirtio v{2, 64};
  std::unique_ptr<VirtioNet> net;
  std::vector<std::vector<uint8_t>> got;  // frames the translator received
  int writable_calls = 0;

  explicit Rig(uint32_t mtu = 1500, bool activate = true) {
    REQUIRE(uv_loop_init(&loop) == 0);
    net = std::make_unique<VirtioNet>(&loop, kMac, mtu);
    REQUIRE(net->start([this](Bytes f) { got.emplace_back(f.begin(), f.end()); }));
    net->set_on_writable([this] { writable_calls++; });
    if (activate) net->activate(v.ctx);
    run_once();
  }
  ~Rig() {
    net.reset();
    uv_run(&loop, UV_RUN_NOWAIT);  // close callbacks
    REQUIRE(uv_loop_close(&loop) == 0);
  }
  void run_once() { uv_run(&loop, UV_RUN_NOWAIT); }

  Chain tx(const std::vector<std::vector<uint8_t>>& parts) { return v.add_chain(1, parts, {}); }
  Chain rx_buffer(uint32_t len = kRxBuf) { return v.add_chain(0, {}, {len}); }
  const net::LinkStats& st() const { return net->stats(); }
};

}  // namespace

TEST_CASE("virtio-net config space holds mac, link status, one queue pair and the mtu", "[vmm][virtio-net]") {
  Rig r(9000, false);
  CHECK(r.net->device_type() == kVirtioNet);
  CHECK(r.net->device_features() == (kNetFMac | kNetFMtu | kNetFStatus));
  CHECK(r.net->max_frame() == 9014);
  std::vector<uint8_t> cfg(16, 0xee);
  r.net->read_config(0, cfg);
  CHECK(std::vector<uint8_t>(cfg.begin(), cfg.begin() + 6) == std::vector<uint8_t>(kMac.begin(), kMac.end()));
  CHECK(load_le16(&cfg[6]) == kNetSLinkUp);
  CHECK(load_le16(&cfg[8]) == 1);
  CHECK(load_le16(&cfg[10]) == 9000);
  CHECK(cfg[12] == 0);  // past the end reads zeros
  std::vector<uint8_t> part(2);
  r.net->read_config(10, part);
  CHECK(load_le16(part.data()) == 9000);
  CHECK(r.net->type() == "virtio");
  CHECK(r.net->peer().find("52:54:00:12:34:56") != std::string::npos);
}

TEST_CASE("virtio-net TX delivers the frame without the virtio header", "[vmm][virtio-net]") {
  Rig r;
  auto f1 = frame(60, 1);
  auto f2 = frame(1514, 7);
  // Header and frame in separate descriptors, then together in one.
  r.tx({tx_header(), f1});
  r.tx({with_header(f2)});
  r.net->notify(1);
  REQUIRE(r.got.size() == 2);
  CHECK(r.got[0] == f1);
  CHECK(r.got[1] == f2);
  for (int i = 0; i < 2; i++) {
    auto u = r.v.next_used(1);
    REQUIRE(u);
    CHECK(u->len == 0);
  }
  CHECK(r.st().rx_frames == 2);
  CHECK(r.st().rx_bytes == 60 + 1514);
  CHECK(r.v.ctx.interrupts[1] == 1);  // one interrupt for the batch
}

TEST_CASE("virtio-net TX counts runts and oversized frames", "[vmm][virtio-net]") {
  Rig r;
  r.tx({std::vector<uint8_t>(5, 0)});             // shorter than the header
  r.tx({tx_header(), frame(13, 0)});              // runt
  r.tx({tx_header(), frame(1515, 0)});            // one over max_frame
  r.tx({tx_header(), frame(14, 3)});              // the smallest frame
  r.net->notify(1);
  CHECK(r.st().rx_dropped_runt == 2);
  CHECK(r.net->net_stats().tx_bad_header == 1);
  CHECK(r.st().rx_dropped_oversize == 1);
  REQUIRE(r.got.size() == 1);
  CHECK(r.got[0] == frame(14, 3));
  int used = 0;
  while (r.v.next_used(1)) used++;
  CHECK(used == 4);  // every chain went back
}

TEST_CASE("virtio-net TX is bounded per loop iteration", "[vmm][virtio-net]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  {
    FakeVirtio v(2, 256);
    VirtioNet net(&loop, kMac, 1500);
    size_t added = 0, delivered = 0;
    const std::vector<uint8_t> joined = with_header(frame(60, 9));
    // The driver keeps refilling while the device works, up to 300 chains.
    REQUIRE(net.start([&](Bytes) {
      delivered++;
      while (v.next_used(1)) {
      }
      while (added < 300 && v.outstanding(1) < 256) {
        v.add_chain(1, {joined}, {});
        added++;
      }
    }));
    net.activate(v.ctx);
    while (added < 256) {
      v.add_chain(1, {joined}, {});
      added++;
    }
    net.notify(1);
    CHECK(delivered == VirtioNet::kTxBudget);
    CHECK(net.net_stats().tx_deferred == 1);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(delivered == 300);
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  REQUIRE(uv_loop_close(&loop) == 0);
}

TEST_CASE("virtio-net RX fills posted buffers with a header and the frame", "[vmm][virtio-net]") {
  Rig r;
  Chain b1 = r.rx_buffer();
  Chain b2 = r.rx_buffer();
  auto f1 = frame(60, 1), f2 = frame(1514, 2), f3 = frame(100, 3);
  CHECK(r.net->writable());
  CHECK(r.net->send(f1));
  CHECK(r.net->send(f2));
  CHECK(r.net->send(f3));
  CHECK(r.v.next_used(0) == std::nullopt);  // deferred to the loop
  r.run_once();
  auto u1 = r.v.next_used(0);
  auto u2 = r.v.next_used(0);
  REQUIRE(u1);
  REQUIRE(u2);
  CHECK(u1->id == b1.head);
  CHECK(u1->len == kNetHdrLen + 60);
  auto w1 = r.v.written(b1, u1->len);
  std::vector<uint8_t> hdr(w1.begin(), w1.begin() + kNetHdrLen);
  std::vector<uint8_t> want_hdr(kNetHdrLen, 0);
  want_hdr[10] = 1;  // num_buffers
  CHECK(hdr == want_hdr);
  CHECK(std::vector<uint8_t>(w1.begin() + kNetHdrLen, w1.end()) == f1);
  auto w2 = r.v.written(b2, u2->len);
  CHECK(std::vector<uint8_t>(w2.begin() + kNetHdrLen, w2.end()) == f2);
  CHECK(r.net->queued() == 1);  // f3 waits for a buffer
  CHECK(r.v.ctx.interrupts[0] == 1);

  Chain b3 = r.rx_buffer();
  r.net->notify(0);  // the driver posted a buffer
  auto u3 = r.v.next_used(0);
  REQUIRE(u3);
  auto w3 = r.v.written(b3, u3->len);
  CHECK(std::vector<uint8_t>(w3.begin() + kNetHdrLen, w3.end()) == f3);
  CHECK(r.st().tx_frames == 3);
  CHECK(r.st().tx_bytes == 60 + 1514 + 100);
}

TEST_CASE("virtio-net RX drops a frame whose buffer is too small", "[vmm][virtio-net]") {
  Rig r;
  r.rx_buffer(kNetHdrLen + 50);
  Chain ok = r.rx_buffer();
  CHECK(r.net->send(frame(60, 1)));
  CHECK(r.net->send(frame(61, 2)));
  r.run_once();
  auto u1 = r.v.next_used(0);
  REQUIRE(u1);
  CHECK(u1->len == 0);
  auto u2 = r.v.next_used(0);
  REQUIRE(u2);
  CHECK(u2->id == ok.head);
  auto w = r.v.written(ok, u2->len);
  CHECK(std::vector<uint8_t>(w.begin() + kNetHdrLen, w.end()) == frame(61, 2));
  CHECK(r.net->net_stats().rx_buffer_too_small == 1);
  CHECK(r.st().tx_frames == 1);
}

TEST_CASE("virtio-net send refuses without a driver, and invalid frames", "[vmm][virtio-net]") {
  Rig r(1500, false);
  CHECK_FALSE(r.net->writable());
  CHECK_FALSE(r.net->send(frame(60, 1)));
  CHECK(r.st().tx_dropped_no_peer == 1);
  r.net->activate(r.v.ctx);
  CHECK_FALSE(r.net->send(frame(1515, 1)));
  CHECK_FALSE(r.net->send({}));
  CHECK(r.st().tx_dropped_invalid == 2);
  CHECK(r.net->send(frame(60, 1)));
  r.net->reset();
  CHECK(r.net->queued() == 0);
  CHECK_FALSE(r.net->send(frame(60, 1)));
  CHECK(r.st().tx_dropped_no_peer == 2);
}

TEST_CASE("virtio-net queue toward the guest is bounded; on_writable fires once it drains", "[vmm][virtio-net]") {
  Rig r;
  // No receive buffers: frames queue up to the bound.
  for (size_t i = 0; i < VirtioNet::kMaxQueued; i++) REQUIRE(r.net->send(frame(60, uint8_t(i))));
  CHECK_FALSE(r.net->writable());
  CHECK_FALSE(r.net->send(frame(60, 0)));
  CHECK(r.st().tx_dropped_full == 1);
  r.run_once();  // nothing to fill
  CHECK(r.net->queued() == VirtioNet::kMaxQueued);
  CHECK(r.writable_calls == 0);
  // The guest posts buffers in rounds of 64; the sender is released once the
  // queue is below half.
  size_t rounds = 0;
  while (r.writable_calls == 0 && rounds < 20) {
    while (r.v.next_used(0)) {
    }
    for (int i = 0; i < 64; i++) r.rx_buffer();
    r.net->notify(0);
    rounds++;
  }
  CHECK(r.writable_calls == 1);
  CHECK(r.net->queued() < VirtioNet::kMaxQueued / 2);
  CHECK(r.net->writable());
  CHECK(r.st().tx_frames == VirtioNet::kMaxQueued - r.net->queued());
}

TEST_CASE("virtio-net reset releases a refused sender and forgets queued frames", "[vmm][virtio-net]") {
  Rig r;
  for (size_t i = 0; i < VirtioNet::kMaxQueued; i++) REQUIRE(r.net->send(frame(60, 1)));
  CHECK_FALSE(r.net->send(frame(60, 1)));
  r.net->reset();
  CHECK(r.writable_calls == 1);
  CHECK(r.net->queued() == 0);
  CHECK(r.net->net_stats().queue_discarded == VirtioNet::kMaxQueued);
  // TX after reset does nothing until the next activation.
  r.tx({tx_header(), frame(60, 1)});
  r.net->notify(1);
  CHECK(r.got.empty());
}

TEST_CASE("virtio-net close stops delivery but still consumes guest frames", "[vmm][virtio-net]") {
  Rig r;
  r.net->close();
  r.tx({tx_header(), frame(60, 1)});
  r.net->notify(1);
  CHECK(r.got.empty());
  CHECK(r.v.next_used(1));
  CHECK(r.net->net_stats().tx_discarded == 1);
  CHECK_FALSE(r.net->send(frame(60, 1)));
}
