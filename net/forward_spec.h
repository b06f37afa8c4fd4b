// Port-forward specs, as written into /ports/ctl, /port/NAME/ctl and
// --forward (DESIGN.md "The control tree"):
//
//   tcp:HOSTIP:HOSTPORT:tcp:GUESTIP:GUESTPORT
//   udp:HOSTIP:HOSTPORT:udp:GUESTIP:GUESTPORT
//   unix:HOSTPATH:tcp:GUESTIP:GUESTPORT
//
// HOSTIP is an IPv4 address or an IPv6 address in brackets ([::1]);
// HOSTPORT 0 means "any free port". GUESTIP is an IPv4 address. A pure
// parser: no I/O, every input gives a spec or an EINVAL error whose message
// shows the grammar.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"
#include "net/wire/addr.h"

namespace berth::net {

enum class ForwardProto : uint8_t { Tcp, Udp, Unix };

struct ForwardSpec {
  ForwardProto proto = ForwardProto::Tcp;
  std::string host_ip;    // canonical text, without brackets (tcp and udp)
  bool host_v6 = false;
  uint16_t host_port = 0;
  std::string host_path;  // unix
  wire::Ipv4Addr guest_ip;
  uint16_t guest_port = 0;

  // Back to the spec grammar (IPv6 in brackets); parse(to_string()) == *this.
  std::string to_string() const;
  bool operator==(const ForwardSpec&) const = default;
};

inline constexpr const char* kForwardGrammar =
    "expected tcp:HOSTIP:HOSTPORT:tcp:GUESTIP:GUESTPORT, udp:HOSTIP:HOSTPORT:udp:GUESTIP:GUESTPORT or "
    "unix:HOSTPATH:tcp:GUESTIP:GUESTPORT (IPv6 host addresses in brackets)";

[[nodiscard]] Result<ForwardSpec> parse_forward_spec(std::string_view text);

}  // namespace berth::net
