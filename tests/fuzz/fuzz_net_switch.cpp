// Fuzz the whole translator: arbitrary frames from two guest ports into a
// Stack with the real TCP, UDP and ICMP translators, whose host sides are
// scripted fakes driven by the same input. Time moves forward, so timers
// (retransmission, expiry, reassembly) run too.
//
// Input: a sequence of records, each op[1] arg[1] len[2 LE] data[len]:
//   op & 3 == 0, 1: a frame from port (op & 1), time advances arg*10 ms
//   op & 3 == 2:    host events: connect results, readable data, errors
//   op & 3 == 3:    timers: advance arg seconds and poll
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <vector>

#include "net/host/dgram_host.h"
#include "net/host/tcp_host.h"
#include "net/icmp.h"
#include "net/stack.h"
#include "net/tcp.h"
#include "net/udp.h"
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
    if (f.size() < wire::EthernetFrame::kHeaderLen || f.size() > max_frame()) __builtin_trap();
    return (++count % 11) != 0;  // sometimes the queue is "full"
  }
  void close() override {}
  size_t max_frame() const override { return 65535 + 14; }
  uint64_t count = 0;
};

// Host TCP: connections succeed or fail as the input says; data to read is
// whatever the input supplies.
class FakeTcpHost final : public TcpHost {
 public:
  struct Conn {
    TcpHostSink* sink;
    uint64_t cookie;
    std::vector<uint8_t> rx;  // unconsumed bytes from the "host"
    bool eof = false, open = true;
  };
  Result<HostConnId> connect(wire::Ipv4Addr, uint16_t, TcpHostSink& sink, uint64_t cookie) override {
    if (conns.size() > 5000) return make_error(EMFILE, "fuzz: too many");
    HostConnId id{uint32_t(conns.size()), 1};
    conns.push_back(Conn{&sink, cookie, {}, false, true});
    pending_connects.push_back(id.index);
    return id;
  }
  Result<size_t> send(HostConnId c, Bytes data) override {
    if (!valid(c)) return make_error(EPIPE, "closed");
    return std::min<size_t>(data.size(), 3000);
  }
  Result<PeekResult> peek(HostConnId c, size_t offset, std::span<uint8_t> out) override {
    if (!valid(c)) return make_error(ECONNRESET, "closed");
    auto& k = conns[c.index];
    if (offset >= k.rx.size()) return PeekResult{0, k.eof};
    size_t n = std::min(out.size(), k.rx.size() - offset);
    std::memcpy(out.data(), k.rx.data() + offset, n);
    return PeekResult{n, k.eof && offset + n == k.rx.size()};
  }
  void consume(HostConnId c, size_t n) override {
    if (!valid(c)) return;
    auto& rx = conns[c.index].rx;
    if (n > rx.size()) __builtin_trap();  // the contract: never more than peeked
    rx.erase(rx.begin(), rx.begin() + long(n));
  }
  size_t send_space(HostConnId c) override { return valid(c) ? 3000 : 0; }
  void shutdown_write(HostConnId) override {}
  void close(HostConnId c, bool) override {
    if (valid(c)) conns[c.index].open = false;
  }
  void set_interest(HostConnId, bool, bool) override {}
  bool valid(HostConnId c) const { return c.gen == 1 && c.index < conns.size() && conns[c.index].open; }

  // Deliver scripted events from `data`.
  void events(Bytes data, Instant now) {
    for (size_t i = 0; i + 1 < data.size(); i += 2) {
      uint8_t what = data[i], arg = data[i + 1];
      if (!pending_connects.empty() && (what & 3) == 0) {
        uint32_t idx = pending_connects.front();
        pending_connects.erase(pending_connects.begin());
        if (conns[idx].open) conns[idx].sink->on_host_connected(conns[idx].cookie, arg % 3 == 0 ? ECONNREFUSED : 0, now);
      } else if (!conns.empty()) {
        uint32_t idx = arg % conns.size();
        Conn& k = conns[idx];
        if (!k.open) continue;
        switch (what & 3) {
          case 1: k.rx.insert(k.rx.end(), size_t(what) * 13, uint8_t(arg)); k.sink->on_host_readable(k.cookie, now); break;
          case 2: k.eof = true; k.sink->on_host_readable(k.cookie, now); break;
          case 3: k.sink->on_host_writable(k.cookie, now); break;
          default: k.sink->on_host_error(k.cookie, ECONNRESET, now); break;
        }
      }
    }
  }
  std::vector<Conn> conns;
  std::vector<uint32_t> pending_connects;
};

// Host datagrams: every send is "answered" later from the input.
class FakeDgramHost final : public DgramHost {
 public:
  struct Sock {
    DgramSink* sink;
    uint64_t cookie;
    SockAddr4 remote;
    bool open = true;
  };
  Result<DgramSocket> open_udp(SockAddr4 remote, DgramSink& sink, uint64_t cookie) override {
    return add(remote, sink, cookie);
  }
  Result<DgramSocket> open_icmp_echo(wire::Ipv4Addr remote, DgramSink& sink, uint64_t cookie) override {
    return add(SockAddr4{remote, 0}, sink, cookie);
  }
  Result<void> send(DgramSocket s, Bytes) override {
    if (s.index >= socks.size() || !socks[s.index].open) return make_error(EBADF, "closed");
    return {};
  }
  void close(DgramSocket s) override {
    if (s.index < socks.size()) socks[s.index].open = false;
  }
  IcmpMode icmp_mode() const override { return IcmpMode::Ping; }

  void events(Bytes data, Instant now) {
    for (size_t i = 0; i + 1 < data.size() && !socks.empty(); i += 2) {
      Sock& k = socks[data[i + 1] % socks.size()];
      if (!k.open) continue;
      if (data[i] & 1) {
        k.sink->on_error(k.cookie, data[i] & 2 ? ECONNREFUSED : EHOSTUNREACH, now);
      } else {
        std::vector<uint8_t> reply(size_t(data[i]) * 7, data[i + 1]);
        if (reply.size() >= 8) reply[0] = 0;  // sometimes a plausible echo reply
        k.sink->on_datagram(k.cookie, k.remote, reply, now);
      }
    }
  }

 private:
  Result<DgramSocket> add(SockAddr4 remote, DgramSink& sink, uint64_t cookie) {
    if (socks.size() > 5000) return make_error(EMFILE, "fuzz: too many");
    socks.push_back(Sock{&sink, cookie, remote, true});
    return DgramSocket{uint32_t(socks.size() - 1), 0};
  }

 public:
  std::vector<Sock> socks;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  NetConfig cfg;
  cfg.mtu = 576 + (size % 1000);
  cfg.max_tcp_flows = 64;
  cfg.max_udp_flows = 32;
  cfg.max_icmp_flows = 8;
  FakeMonoClock clock;
  Stack stack(cfg);
  SinkLink a, b;
  (void)stack.add_port(&a);
  (void)stack.add_port(&b);
  FakeTcpHost tcp_host;
  FakeDgramHost dgram_host;
  Tcp tcp(stack, tcp_host, clock, 0x5eed);
  UdpNat udp(stack, dgram_host);
  IcmpEcho icmp(stack, dgram_host);
  stack.set_handler(wire::IpProtocol::Tcp, &tcp);
  stack.set_handler(wire::IpProtocol::Udp, &udp);
  stack.set_handler(wire::IpProtocol::Icmp, &icmp);

  size_t pos = 0;
  while (size - pos >= 4) {
    uint8_t op = data[pos], arg = data[pos + 1];
    size_t len = std::min<size_t>(size_t(data[pos + 2]) | (size_t(data[pos + 3]) << 8), size - pos - 4);
    Bytes payload(data + pos + 4, len);
    pos += 4 + len;
    switch (op & 3) {
      case 0:
      case 1:
        clock.advance(std::chrono::milliseconds(arg * 10));
        stack.receive(op & 1, payload, clock.now());
        break;
      case 2:
        tcp_host.events(payload, clock.now());
        dgram_host.events(payload, clock.now());
        break;
      case 3:
        clock.advance(std::chrono::seconds(arg));
        break;
    }
    stack.poll(clock.now());
    if (tcp.flow_count() > cfg.max_tcp_flows) __builtin_trap();
  }
  (void)stack.render_stats();
  (void)stack.render_flows(clock.now());
  return 0;
}
