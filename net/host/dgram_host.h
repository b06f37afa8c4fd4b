// DgramHost: the host datagram sockets behind UDP NAT and ICMP echo
// translation (net/udp.h, net/icmp.h). The real one is UvDgramHost
// (libuv); tests use a fake (STYLE.md §5).
//
// Contract:
//  - Every socket is connected to one remote. A UDP socket receives only
//    that remote's datagrams, and the kernel reports ICMP errors about what
//    it sent as errors on it (ECONNREFUSED for "port unreachable",
//    EHOSTUNREACH, ENETUNREACH).
//  - An ICMP echo socket sends whole ICMP echo request messages (8-byte
//    header plus data) and receives echo replies from its remote, without
//    an IP header. The host may rewrite the identifier of what it sends
//    (ping sockets do; with a shared raw socket the host picks one per
//    socket), so replies carry the host's identifier, not the one sent;
//    the caller maps it back. The checksum of what is sent is the host's
//    business; replies arrive with a correct one.
//  - Events go to the DgramSink given at open, tagged with the cookie given
//    there, on the loop thread, with `now` read from the host's clock. The
//    data span is valid only during the call (STYLE.md §6). A sink may
//    close any socket, the one reporting included, from inside a callback.
//  - close() is immediate: no event for that socket arrives afterwards.
//    The sink must outlive its open sockets.
//  - Failures are operational (Result, with errno codes): EMFILE/ENFILE or
//    ENOSPC when sockets run out, EPERM/EACCES when ICMP is not allowed,
//    EAGAIN/ENOBUFS when a send would block (the datagram is dropped).
#pragma once

#include <cstdint>

#include "common/bytes.h"
#include "common/clock.h"
#include "common/result.h"
#include "net/wire/addr.h"

namespace berth::net {

// An IPv4 address and port on the host's side.
struct SockAddr4 {
  wire::Ipv4Addr addr;
  uint16_t port = 0;
  auto operator<=>(const SockAddr4&) const = default;
};

// A socket of a DgramHost: an index into its table plus a generation, so a
// stale handle never reaches a reused slot.
struct DgramSocket {
  uint32_t index = UINT32_MAX;
  uint32_t gen = 0;
  bool valid() const { return index != UINT32_MAX; }
  auto operator<=>(const DgramSocket&) const = default;
};

// How ICMP echo reaches the host's network.
enum class IcmpMode : uint8_t {
  None,  // neither works: open_icmp_echo fails with EPERM
  Ping,  // unprivileged ICMP datagram sockets (net.ipv4.ping_group_range)
  Raw,   // one shared SOCK_RAW socket (needs CAP_NET_RAW)
};
const char* icmp_mode_name(IcmpMode m);

class DgramSink {
 public:
  virtual ~DgramSink() = default;
  // A datagram (UDP payload, or ICMP echo reply message) from `from`.
  virtual void on_datagram(uint64_t cookie, SockAddr4 from, Bytes data, Instant now) = 0;
  // An asynchronous error on the socket (an errno value), typically an ICMP
  // error about an earlier datagram. The socket stays open.
  virtual void on_error(uint64_t cookie, int err, Instant now) = 0;
};

class DgramHost {
 public:
  virtual ~DgramHost() = default;

  // A UDP socket connected to `remote`.
  [[nodiscard]] virtual Result<DgramSocket> open_udp(SockAddr4 remote, DgramSink& sink, uint64_t cookie) = 0;
  // An ICMP echo socket toward `remote`. EPERM when icmp_mode() is None.
  [[nodiscard]] virtual Result<DgramSocket> open_icmp_echo(wire::Ipv4Addr remote, DgramSink& sink,
                                                           uint64_t cookie) = 0;
  // Send one datagram. An error here may also be a pending asynchronous one
  // (ECONNREFUSED after a port unreachable); the datagram is then not sent.
  [[nodiscard]] virtual Result<void> send(DgramSocket s, Bytes data) = 0;
  // Close a socket; a handle that is not open is ignored.
  virtual void close(DgramSocket s) = 0;

  virtual IcmpMode icmp_mode() const = 0;
};

inline const char* icmp_mode_name(IcmpMode m) {
  switch (m) {
    case IcmpMode::None: return "none";
    case IcmpMode::Ping: return "ping";
    case IcmpMode::Raw: return "raw";
  }
  return "unknown";
}

}  // namespace berth::net
