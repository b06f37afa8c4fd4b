// Fuzz the whole switch: arbitrary frames from two guest ports, with time
// moving forward, into a Stack. Transport handlers are recording fakes that
// also answer through GuestTx, so replies (ICMP errors, fragmentation) run.
//
// Input: a sequence of records: port[1] advance_ms[1] len[2 LE] frame[len].
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "net/stack.h"
#include "net/wire/ethernet.h"

using namespace berth;
using namespace berth::net;

namespace {

class SinkLink final : public FrameLink {
 public:
  std::string type() const override { return "fuzz"; }
  std::string peer() const override { return "fuzz"; }
  Result<void> start(Receive) override { return {}; }
  bool send(Bytes f) override {
    // Every frame the stack emits must be a well-formed Ethernet frame.
    if (f.size() < wire::EthernetFrame::kHeaderLen) __builtin_trap();
    bytes += f.size();
    return (++count % 7) != 0;  // sometimes the queue is "full"
  }
  void close() override {}
  size_t max_frame() const override { return 65535 + 14; }
  uint64_t count = 0, bytes = 0;
};

// Echo every transport payload back to its sender and sometimes send an
// ICMP error about it, exercising GuestTx under hostile input.
class EchoHandler final : public L4Handler {
 public:
  explicit EchoHandler(GuestTx& tx) : tx_(tx) {}
  void input(const GuestPacket& p, Instant) override {
    tx_.send_ipv4(p.ip.dst, p.ip.src, p.ip.protocol, p.payload.size(), [&](std::span<uint8_t> out, const wire::PseudoHeader&) {
      std::memcpy(out.data(), p.payload.data(), p.payload.size());
    });
    if (p.payload.size() % 3 == 0) tx_.send_icmp_error(p.packet, wire::Icmpv4Type::DstUnreachable, 3);
  }

 private:
  GuestTx& tx_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  NetConfig cfg;
  cfg.mtu = 576 + (size % 1000);
  Stack stack(cfg);
  SinkLink a, b;
  (void)stack.add_port(&a);
  (void)stack.add_port(&b);
  EchoHandler echo(stack);
  stack.set_handler(wire::IpProtocol::Udp, &echo);
  stack.set_handler(wire::IpProtocol::Tcp, &echo);
  Instant now{1'000'000'000};
  size_t pos = 0;
  while (size - pos >= 4) {
    uint32_t port = data[pos] & 1;
    now += std::chrono::milliseconds(data[pos + 1] * 100);
    size_t len = size_t(data[pos + 2]) | (size_t(data[pos + 3]) << 8);
    pos += 4;
    len = std::min(len, size - pos);
    stack.receive(port, Bytes(data + pos, len), now);
    pos += len;
    stack.poll(now);
  }
  (void)stack.render_links();
  (void)stack.stats().render();
  return 0;
}
