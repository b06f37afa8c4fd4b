// Link and network addresses: MAC (EUI-48), IPv4 with CIDR prefixes, IPv6.
//
// All are small values compared by content. Reading one from packet bytes
// cannot fail (the caller's view has checked the length); parsing one from
// text returns nullopt on anything but the canonical forms listed at each
// parse function. Formatting allocates a std::string; nothing else does.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/bytes.h"

namespace berth::net::wire {

struct MacAddr {
  std::array<uint8_t, 6> b{};

  static constexpr MacAddr broadcast() { return {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}; }
  static MacAddr from_bytes(const uint8_t* p) { MacAddr m; for (int i = 0; i < 6; i++) m.b[i] = p[i]; return m; }
  void write(uint8_t* p) const { for (int i = 0; i < 6; i++) p[i] = b[i]; }

  bool is_broadcast() const { return *this == broadcast(); }
  bool is_multicast() const { return b[0] & 0x01; }  // I/G bit; broadcast is multicast too
  bool is_unicast() const { return !is_multicast(); }
  bool is_local() const { return b[0] & 0x02; }       // U/L bit: locally administered
  bool is_zero() const { return *this == MacAddr{}; }

  // "52:54:00:12:34:56" (lower case).
  std::string to_string() const;
  // Six two-digit hex groups separated by ':' or '-', either case.
  static std::optional<MacAddr> parse(std::string_view text);

  auto operator<=>(const MacAddr&) const = default;
};

// An IPv4 address, held as a host-order integer so prefix arithmetic is plain.
struct Ipv4Addr {
  uint32_t v = 0;

  constexpr Ipv4Addr() = default;
  constexpr explicit Ipv4Addr(uint32_t host_order) : v(host_order) {}
  constexpr Ipv4Addr(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
      : v((uint32_t(a) << 24) | (uint32_t(b) << 16) | (uint32_t(c) << 8) | d) {}
  static Ipv4Addr from_bytes(const uint8_t* p) { return Ipv4Addr(load_be32(p)); }
  void write(uint8_t* p) const { store_be32(p, v); }

  static constexpr Ipv4Addr unspecified() { return Ipv4Addr(0u); }
  static constexpr Ipv4Addr broadcast() { return Ipv4Addr(0xffffffffu); }
  constexpr bool is_unspecified() const { return v == 0; }
  constexpr bool is_broadcast() const { return v == 0xffffffff; }
  constexpr bool is_loopback() const { return (v >> 24) == 127; }
  constexpr bool is_multicast() const { return (v >> 28) == 0xe; }      // 224.0.0.0/4
  constexpr bool is_link_local() const { return (v >> 16) == 0xa9fe; }  // 169.254.0.0/16
  constexpr bool is_unicast() const { return !is_unspecified() && !is_broadcast() && !is_multicast(); }

  // "192.168.65.1".
  std::string to_string() const;
  // Exactly four decimal octets 0..255 separated by '.', no leading zeros
  // (so "010" is never read as octal), nothing else.
  static std::optional<Ipv4Addr> parse(std::string_view text);

  auto operator<=>(const Ipv4Addr&) const = default;
};

// An address with a prefix length, such as an interface's "192.168.65.1/24".
// Host bits may be set; network() clears them.
struct Ipv4Cidr {
  Ipv4Addr addr;
  uint8_t prefix_len = 0;  // 0..32

  constexpr Ipv4Addr netmask() const { return Ipv4Addr(prefix_len == 0 ? 0u : ~0u << (32 - prefix_len)); }
  constexpr Ipv4Addr network() const { return Ipv4Addr(addr.v & netmask().v); }
  // The directed broadcast address (all host bits set).
  constexpr Ipv4Addr broadcast() const { return Ipv4Addr(addr.v | ~netmask().v); }
  constexpr bool contains(Ipv4Addr a) const { return (a.v & netmask().v) == network().v; }
  // Number of addresses in the prefix, 2^(32-prefix_len).
  constexpr uint64_t size() const { return uint64_t(1) << (32 - prefix_len); }

  // "192.168.65.1/24".
  std::string to_string() const;
  // ADDR "/" LEN with ADDR as Ipv4Addr::parse and LEN 0..32 without leading zeros.
  static std::optional<Ipv4Cidr> parse(std::string_view text);

  auto operator<=>(const Ipv4Cidr&) const = default;
};

struct Ipv6Addr {
  std::array<uint8_t, 16> b{};

  static Ipv6Addr from_bytes(const uint8_t* p) { Ipv6Addr a; for (int i = 0; i < 16; i++) a.b[i] = p[i]; return a; }
  void write(uint8_t* p) const { for (int i = 0; i < 16; i++) p[i] = b[i]; }
  // ::ffff:a.b.c.d (RFC 4291 §2.5.5.2).
  static Ipv6Addr v4_mapped(Ipv4Addr a);

  bool is_unspecified() const { return *this == Ipv6Addr{}; }
  bool is_loopback() const;                                                    // ::1
  bool is_multicast() const { return b[0] == 0xff; }                           // ff00::/8
  bool is_link_local() const { return b[0] == 0xfe && (b[1] & 0xc0) == 0x80; }  // fe80::/10
  bool is_v4_mapped() const;
  // The embedded address of a v4-mapped address.
  std::optional<Ipv4Addr> to_v4() const;

  // RFC 5952 text ("fe80::5054:ff:fe12:3456").
  std::string to_string() const;
  // Any RFC 4291 §2.2 text form, without brackets or a zone.
  static std::optional<Ipv6Addr> parse(std::string_view text);

  auto operator<=>(const Ipv6Addr&) const = default;
};

}  // namespace berth::net::wire
