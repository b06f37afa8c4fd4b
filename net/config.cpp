#include "net/config.h"

#include <fmt/format.h>

namespace berth::net {

std::optional<wire::Ipv4Addr> NetConfig::host_target(wire::Ipv4Addr dst) const {
  if (dst == host_alias) {
    if (!host_loopback) return std::nullopt;
    return wire::Ipv4Addr(127, 0, 0, 1);
  }
  if (subnet.contains(dst)) return std::nullopt;
  if (!dst.is_unicast() || dst.is_loopback()) return std::nullopt;  // the guest's own 127/8 never leaves it
  return dst;
}

Result<void> NetConfig::set_subnet(std::string_view text) {
  auto c = wire::Ipv4Cidr::parse(text);
  if (!c) return make_error(EINVAL, "bad subnet '" + std::string(text) + "' (want A.B.C.D/N)");
  if (c->prefix_len > 29 || c->prefix_len < 8)
    return make_error(EINVAL, "subnet prefix must be between /8 and /29");
  wire::Ipv4Cidr net{c->network(), c->prefix_len};
  subnet = net;
  gateway = wire::Ipv4Addr(net.network().v + 1);
  host_alias = wire::Ipv4Addr(net.network().v + 2);
  dhcp_first = wire::Ipv4Addr(net.network().v + 3);
  dhcp_last = wire::Ipv4Addr(net.broadcast().v - 1);
  return {};
}

Result<void> NetConfig::set_mtu(uint32_t m) {
  if (m < 576 || m > 65520) return make_error(EINVAL, fmt::format("MTU {} outside 576..65520", m));
  mtu = m;
  return {};
}

std::string NetConfig::render() const {
  return fmt::format(
      "subnet {}\ngateway {}\ngateway_mac {}\nhost_alias {} -> {}\ndhcp_range {}-{}\nmtu {}\ndomain {}\n"
      "max_tcp_flows {}\nmax_udp_flows {}\nmax_icmp_flows {}\n",
      subnet.to_string(), gateway.to_string(), gateway_mac.to_string(), host_alias.to_string(),
      host_loopback ? "127.0.0.1" : "denied", dhcp_first.to_string(), dhcp_last.to_string(), mtu, domain,
      max_tcp_flows, max_udp_flows, max_icmp_flows);
}

}  // namespace berth::net
