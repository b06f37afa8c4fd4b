// The translator's addresses and limits (DESIGN.md "Addresses and names").
// Plain data: the CLI fills it, components read it, /net/config shows it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/result.h"
#include "net/wire/addr.h"

namespace berth::net {

struct NetConfig {
  wire::Ipv4Cidr subnet{wire::Ipv4Addr(192, 168, 65, 0), 24};
  wire::Ipv4Addr gateway{192, 168, 65, 1};
  wire::Ipv4Addr host_alias{192, 168, 65, 2};  // translated to the host's 127.0.0.1
  wire::Ipv4Addr dhcp_first{192, 168, 65, 3};
  wire::Ipv4Addr dhcp_last{192, 168, 65, 254};
  // Locally administered, fixed so guests' ARP caches survive restarts.
  wire::MacAddr gateway_mac{{0x02, 0xb5, 0xe7, 0x41, 0x00, 0x01}};
  uint32_t mtu = 1500;  // 576..65520
  bool host_loopback = true;  // --host-loopback allow|deny
  std::string domain = "berth.internal";

  // Bounds (all visible in /net/stats when hit).
  uint32_t max_ports = 64;
  uint32_t max_tcp_flows = 4096;
  uint32_t max_udp_flows = 1024;
  uint32_t max_icmp_flows = 256;
  uint32_t max_reassembly = 16;  // IPv4 datagrams being reassembled at once

  // The host address that a guest destination stands for: 127.0.0.1 for the
  // host alias (when allowed), the address itself when outside the subnet,
  // nothing for other in-subnet addresses (gateway services, other guests).
  std::optional<wire::Ipv4Addr> host_target(wire::Ipv4Addr dst) const;

  // Derive gateway, host alias and the DHCP range from a subnet ("10.0.9.0/24").
  [[nodiscard]] Result<void> set_subnet(std::string_view cidr);
  [[nodiscard]] Result<void> set_mtu(uint32_t mtu);
  std::string render() const;  // /net/config
};

}  // namespace berth::net
