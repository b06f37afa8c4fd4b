#include "net/forward_spec.h"

#include <arpa/inet.h>

#include <cerrno>
#include <fmt/format.h>

namespace berth::net {

namespace {

Error bad(std::string_view text, std::string_view why) {
  std::string shown(text.substr(0, 200));
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return make_error(EINVAL, fmt::format("bad forward '{}': {}; {}", shown, why, kForwardGrammar));
}

// A decimal port 0..65535, no sign, no leading zeros beyond "0".
bool parse_port(std::string_view s, uint16_t& out) {
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return false;
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint32_t(c - '0');
  }
  if (v > 65535) return false;
  out = uint16_t(v);
  return true;
}

// "IP:PORT" or "[IP6]:PORT" at the start of `s`; the rest after the port's
// colon goes to `rest`.
bool take_host(std::string_view& s, ForwardSpec& spec, std::string& why) {
  std::string_view addr;
  if (!s.empty() && s[0] == '[') {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      why = "unterminated [IPv6] address";
      return false;
    }
    addr = s.substr(1, close - 1);
    s.remove_prefix(close + 2);
    spec.host_v6 = true;
  } else {
    auto colon = s.find(':');
    if (colon == std::string_view::npos) {
      why = "missing host port";
      return false;
    }
    addr = s.substr(0, colon);
    s.remove_prefix(colon + 1);
  }
  if (addr.size() > 63) {
    why = "host address too long";
    return false;
  }
  std::string a(addr);
  char buf[INET6_ADDRSTRLEN] = {};
  if (spec.host_v6) {
    in6_addr v6;
    if (inet_pton(AF_INET6, a.c_str(), &v6) != 1) {
      why = "bad IPv6 host address";
      return false;
    }
    inet_ntop(AF_INET6, &v6, buf, sizeof buf);
  } else {
    in_addr v4;
    if (inet_pton(AF_INET, a.c_str(), &v4) != 1) {
      why = a.find(':') != std::string::npos ? "IPv6 host addresses go in brackets" : "bad IPv4 host address";
      return false;
    }
    inet_ntop(AF_INET, &v4, buf, sizeof buf);
  }
  spec.host_ip = buf;
  auto colon = s.find(':');
  if (colon == std::string_view::npos || !parse_port(s.substr(0, colon), spec.host_port)) {
    why = "bad host port";
    return false;
  }
  s.remove_prefix(colon + 1);
  return true;
}

}  // namespace

std::string ForwardSpec::to_string() const {
  std::string guest = fmt::format("{}:{}", guest_ip.to_string(), guest_port);
  switch (proto) {
    case ForwardProto::Tcp:
    case ForwardProto::Udp: {
      const char* p = proto == ForwardProto::Tcp ? "tcp" : "udp";
      std::string host = host_v6 ? "[" + host_ip + "]" : host_ip;
      return fmt::format("{}:{}:{}:{}:{}", p, host, host_port, p, guest);
    }
    case ForwardProto::Unix:
      return fmt::format("unix:{}:tcp:{}", host_path, guest);
  }
  return {};
}

Result<ForwardSpec> parse_forward_spec(std::string_view text) {
  std::string_view s = text;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  if (s.empty()) return bad(text, "empty");
  if (s.size() > 4096) return bad(text, "too long");
  if (s.find('\0') != std::string_view::npos) return bad(text, "NUL in the spec");
  ForwardSpec spec;
  std::string why;
  std::string_view guest_proto;
  if (s.starts_with("tcp:") || s.starts_with("udp:")) {
    spec.proto = s[0] == 't' ? ForwardProto::Tcp : ForwardProto::Udp;
    std::string_view proto = s.substr(0, 3);
    s.remove_prefix(4);
    if (!take_host(s, spec, why)) return bad(text, why);
    auto colon = s.find(':');
    if (colon == std::string_view::npos) return bad(text, "missing guest part");
    guest_proto = s.substr(0, colon);
    if (guest_proto != proto) return bad(text, fmt::format("a {} host end needs a {} guest end", proto, proto));
    s.remove_prefix(colon + 1);
  } else if (s.starts_with("unix:")) {
    spec.proto = ForwardProto::Unix;
    s.remove_prefix(5);
    // The path may hold colons: the guest end is the last three fields.
    auto c3 = s.rfind(':');
    auto c2 = c3 == std::string_view::npos || c3 == 0 ? std::string_view::npos : s.rfind(':', c3 - 1);
    auto c1 = c2 == std::string_view::npos || c2 == 0 ? std::string_view::npos : s.rfind(':', c2 - 1);
    if (c1 == std::string_view::npos) return bad(text, "missing guest part");
    spec.host_path = std::string(s.substr(0, c1));
    if (s.substr(c1 + 1, c2 - c1 - 1) != "tcp") return bad(text, "a unix host end needs a tcp guest end");
    if (spec.host_path.empty() || spec.host_path[0] != '/') return bad(text, "the unix path must be absolute");
    if (spec.host_path.size() >= 108) return bad(text, "the unix path is longer than 107 bytes");
    s.remove_prefix(c1 + 5);
  } else {
    return bad(text, "unknown protocol");
  }
  auto colon = s.find(':');
  if (colon == std::string_view::npos) return bad(text, "missing guest port");
  auto gip = wire::Ipv4Addr::parse(s.substr(0, colon));
  if (!gip) return bad(text, "bad guest IPv4 address");
  spec.guest_ip = *gip;
  if (!parse_port(s.substr(colon + 1), spec.guest_port) || spec.guest_port == 0) return bad(text, "bad guest port");
  return spec;
}

}  // namespace berth::net
