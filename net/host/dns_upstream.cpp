// DnsServerAddr text forms (see dns_upstream.h).
#include "net/host/dns_upstream.h"

#include <fmt/format.h>

#include <algorithm>

namespace berth::net {

namespace {

std::optional<uint16_t> parse_port(std::string_view s) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + uint32_t(c - '0');
  }
  if (v == 0 || v > 65535) return std::nullopt;
  return uint16_t(v);
}

}  // namespace

std::string DnsServerAddr::to_string() const {
  return v6 ? fmt::format("[{}]:{}", addr6.to_string(), port) : fmt::format("{}:{}", addr4.to_string(), port);
}

std::optional<DnsServerAddr> DnsServerAddr::parse(std::string_view text, uint16_t default_port) {
  DnsServerAddr a;
  a.port = default_port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return std::nullopt;
      auto p = parse_port(rest.substr(1));
      if (!p) return std::nullopt;
      a.port = *p;
    }
    auto v6 = wire::Ipv6Addr::parse(text.substr(1, close - 1));
    if (!v6) return std::nullopt;
    a.v6 = true;
    a.addr6 = *v6;
    return a;
  }
  size_t colons = std::count(text.begin(), text.end(), ':');
  if (colons > 1) {  // a bare IPv6 address
    auto v6 = wire::Ipv6Addr::parse(text);
    if (!v6) return std::nullopt;
    a.v6 = true;
    a.addr6 = *v6;
    return a;
  }
  std::string_view host = text;
  if (colons == 1) {
    size_t c = text.find(':');
    auto p = parse_port(text.substr(c + 1));
    if (!p) return std::nullopt;
    a.port = *p;
    host = text.substr(0, c);
  }
  auto v4 = wire::Ipv4Addr::parse(host);
  if (!v4) return std::nullopt;
  a.addr4 = *v4;
  return a;
}

}  // namespace berth::net
