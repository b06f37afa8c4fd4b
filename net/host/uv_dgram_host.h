// UvDgramHost: DgramHost over non-blocking Linux sockets watched by uv_poll
// on the loop thread.
//
//  - UDP: one SOCK_DGRAM socket per open_udp(), connected to its remote.
//  - ICMP echo, in the mode probed at construction (or forced by Options):
//    Ping: one SOCK_DGRAM/IPPROTO_ICMP socket per open_icmp_echo(),
//          connected; the kernel rewrites the identifier and checksum.
//    Raw:  one shared SOCK_RAW/IPPROTO_ICMP socket (ICMP_FILTER passes echo
//          replies only). Each open_icmp_echo() gets an identifier of its
//          own, written into what it sends (checksum recomputed); replies are
//          demultiplexed by (identifier, source address). The raw socket is
//          polled only while some echo socket is open.
//    None: open_icmp_echo() fails with EPERM.
//  - At most Options::max_sockets sockets (EMFILE beyond). Each readable
//    event reads at most Options::max_batch datagrams from a socket, so one
//    busy flow cannot starve the loop.
//
// Destroying the host closes every socket; the uv_poll handles are freed by
// their close callbacks, so run the loop once more afterwards (as for any
// libuv handle) before uv_loop_close().
#pragma once

#include <uv.h>

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "net/host/dgram_host.h"

namespace berth::net {

class UvDgramHost final : public DgramHost {
 public:
  struct Options {
    std::optional<IcmpMode> icmp;  // force a mode; default: Ping if permitted, else Raw if permitted
    uint32_t max_sockets = 8192;
    uint32_t max_batch = 64;
  };

  UvDgramHost(uv_loop_t* loop, const MonoClock& clock) : UvDgramHost(loop, clock, Options{}) {}
  UvDgramHost(uv_loop_t* loop, const MonoClock& clock, Options opts);
  ~UvDgramHost() override;
  UvDgramHost(const UvDgramHost&) = delete;
  UvDgramHost& operator=(const UvDgramHost&) = delete;

  // Which ICMP echo mode this process may use: Ping, else Raw, else None.
  static IcmpMode probe_icmp();

  [[nodiscard]] Result<DgramSocket> open_udp(SockAddr4 remote, DgramSink& sink, uint64_t cookie) override;
  [[nodiscard]] Result<DgramSocket> open_icmp_echo(wire::Ipv4Addr remote, DgramSink& sink, uint64_t cookie) override;
  [[nodiscard]] Result<void> send(DgramSocket s, Bytes data) override;
  void close(DgramSocket s) override;
  IcmpMode icmp_mode() const override { return icmp_mode_; }

  size_t open_sockets() const { return open_; }
  // The local (host-side) address of a UDP or ping socket, for diagnostics.
  std::optional<SockAddr4> local_addr(DgramSocket s) const;

 private:
  enum class Kind : uint8_t { Free, Udp, IcmpPing, IcmpRaw };
  struct Watcher;  // a uv_poll_t plus its fd; freed in its close callback
  struct Slot {
    Kind kind = Kind::Free;
    uint32_t gen = 0;
    int fd = -1;                  // Udp, IcmpPing
    Watcher* watcher = nullptr;   // Udp, IcmpPing
    DgramSink* sink = nullptr;
    uint64_t cookie = 0;
    SockAddr4 remote;
    uint16_t raw_ident = 0;       // IcmpRaw
  };

  Result<DgramSocket> open_fd(int fd, Kind kind, SockAddr4 remote, DgramSink& sink, uint64_t cookie);
  Result<DgramSocket> open_raw(wire::Ipv4Addr remote, DgramSink& sink, uint64_t cookie);
  std::optional<uint32_t> alloc_slot();
  Slot* live(DgramSocket s);
  const Slot* live(DgramSocket s) const;
  void on_readable(uint32_t index);
  void on_raw_readable();
  Result<void> start_raw();
  static void poll_cb(uv_poll_t* h, int status, int events);
  static void close_watcher(Watcher* w);

  uv_loop_t* loop_;
  const MonoClock& clock_;
  Options opts_;
  IcmpMode icmp_mode_ = IcmpMode::None;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;
  size_t open_ = 0;
  std::vector<uint8_t> rx_buf_;
  std::vector<uint8_t> tx_buf_;

  // Raw mode.
  int raw_fd_ = -1;
  Watcher* raw_watcher_ = nullptr;
  bool raw_polling_ = false;
  std::unordered_map<uint16_t, uint32_t> raw_idents_;  // identifier -> slot
  uint16_t next_ident_ = 0;
};

}  // namespace berth::net
