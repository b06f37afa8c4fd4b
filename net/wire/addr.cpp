// Theory of operation: text forms of addresses.
//
// Parsing is strict on purpose: these strings come from ctl files and config,
// and a lenient parser (inet_aton's octal "010", a trailing newline taken as
// part of the address) turns typos into surprising addresses. IPv6 text has
// many legal spellings, so it goes through inet_pton/inet_ntop, which follow
// RFC 4291 §2.2 and RFC 5952 (glibc never compresses a single zero group).
#include "net/wire/addr.h"

#include <arpa/inet.h>

#include <cstdio>

namespace berth::net::wire {
namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A decimal number without sign or leading zeros, at most `max`. Advances `s`.
bool take_decimal(std::string_view& s, uint32_t max, uint32_t& out) {
  size_t i = 0;
  uint32_t v = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    v = v * 10 + uint32_t(s[i] - '0');
    if (v > max) return false;
    if (++i > 3) return false;
  }
  if (i == 0 || (i > 1 && s[0] == '0')) return false;
  s.remove_prefix(i);
  out = v;
  return true;
}

}  // namespace

std::string MacAddr::to_string() const {
  char buf[18];
  std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
  return buf;
}

std::optional<MacAddr> MacAddr::parse(std::string_view text) {
  if (text.size() != 17) return std::nullopt;
  char sep = text[2];
  if (sep != ':' && sep != '-') return std::nullopt;
  MacAddr m;
  for (int i = 0; i < 6; i++) {
    int hi = hex_digit(text[3 * i]), lo = hex_digit(text[3 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    if (i < 5 && text[3 * i + 2] != sep) return std::nullopt;
    m.b[i] = uint8_t(hi << 4 | lo);
  }
  return m;
}

std::string Ipv4Addr::to_string() const {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%u.%u.%u.%u", v >> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff);
  return buf;
}

std::optional<Ipv4Addr> Ipv4Addr::parse(std::string_view text) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    uint32_t octet;
    if (!take_decimal(text, 255, octet)) return std::nullopt;
    v = v << 8 | octet;
    if (i < 3) {
      if (text.empty() || text[0] != '.') return std::nullopt;
      text.remove_prefix(1);
    }
  }
  if (!text.empty()) return std::nullopt;
  return Ipv4Addr(v);
}

std::string Ipv4Cidr::to_string() const { return addr.to_string() + "/" + std::to_string(prefix_len); }

std::optional<Ipv4Cidr> Ipv4Cidr::parse(std::string_view text) {
  size_t slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto addr = Ipv4Addr::parse(text.substr(0, slash));
  std::string_view len_text = text.substr(slash + 1);
  uint32_t len;
  if (!addr || !take_decimal(len_text, 32, len) || !len_text.empty()) return std::nullopt;
  return Ipv4Cidr{*addr, uint8_t(len)};
}

Ipv6Addr Ipv6Addr::v4_mapped(Ipv4Addr a) {
  Ipv6Addr r;
  r.b[10] = r.b[11] = 0xff;
  a.write(&r.b[12]);
  return r;
}

bool Ipv6Addr::is_loopback() const {
  Ipv6Addr one;
  one.b[15] = 1;
  return *this == one;
}

bool Ipv6Addr::is_v4_mapped() const {
  for (int i = 0; i < 10; i++)
    if (b[i] != 0) return false;
  return b[10] == 0xff && b[11] == 0xff;
}

std::optional<Ipv4Addr> Ipv6Addr::to_v4() const {
  if (!is_v4_mapped()) return std::nullopt;
  return Ipv4Addr::from_bytes(&b[12]);
}

std::string Ipv6Addr::to_string() const {
  char buf[INET6_ADDRSTRLEN];
  if (!inet_ntop(AF_INET6, b.data(), buf, sizeof buf)) return "?";  // cannot happen with this buffer size
  return buf;
}

std::optional<Ipv6Addr> Ipv6Addr::parse(std::string_view text) {
  char buf[INET6_ADDRSTRLEN];
  if (text.empty() || text.size() >= sizeof buf || text.find('\0') != std::string_view::npos) return std::nullopt;
  text.copy(buf, text.size());
  buf[text.size()] = '\0';
  Ipv6Addr a;
  if (inet_pton(AF_INET6, buf, a.b.data()) != 1) return std::nullopt;
  return a;
}

}  // namespace berth::net::wire
