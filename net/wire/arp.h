// ARP (RFC 826), and the one flavour the translator speaks: IPv4 over
// Ethernet, requests and replies.
//
// ArpPacket checks the 8-byte fixed part and that both address pairs, whose
// sizes the packet itself declares, are inside the buffer; it reads any
// hardware/protocol combination. ArpRepr accepts only Ethernet (hlen 6) and
// IPv4 (plen 4) with operation 1 or 2; anything else is Unsupported. The
// packet is 28 bytes, so bytes after it (Ethernet padding) are ignored.
#pragma once

#include <cstdint>
#include <span>

#include "common/bytes.h"
#include "net/wire/addr.h"
#include "net/wire/parsed.h"

namespace berth::net::wire {

enum class ArpOperation : uint16_t { Request = 1, Reply = 2 };

class ArpPacket {
 public:
  static constexpr size_t kFixedLen = 8;
  static constexpr uint16_t kHardwareEthernet = 1;
  static constexpr uint16_t kProtocolIpv4 = 0x0800;

  static Parsed<ArpPacket> check(Bytes packet);

  uint16_t hardware_type() const { return load_be16(&b_[0]); }
  uint16_t protocol_type() const { return load_be16(&b_[2]); }
  uint8_t hardware_len() const { return b_[4]; }
  uint8_t protocol_len() const { return b_[5]; }
  uint16_t operation() const { return load_be16(&b_[6]); }
  Bytes sender_hardware_addr() const { return b_.subspan(kFixedLen, hardware_len()); }
  Bytes sender_protocol_addr() const { return b_.subspan(kFixedLen + hardware_len(), protocol_len()); }
  Bytes target_hardware_addr() const { return b_.subspan(kFixedLen + hardware_len() + protocol_len(), hardware_len()); }
  Bytes target_protocol_addr() const { return b_.subspan(kFixedLen + 2 * hardware_len() + protocol_len(), protocol_len()); }
  // The packet's own length, 8 + 2 * (hlen + plen).
  size_t len() const { return kFixedLen + 2 * (size_t(hardware_len()) + protocol_len()); }

 private:
  explicit ArpPacket(Bytes b) : b_(b) {}
  Bytes b_;
};

struct ArpRepr {
  ArpOperation op = ArpOperation::Request;
  MacAddr sender_mac;
  Ipv4Addr sender_ip;
  MacAddr target_mac;
  Ipv4Addr target_ip;

  static constexpr size_t kLen = 28;

  static Parsed<ArpRepr> parse(const ArpPacket& p);
  size_t buffer_len() const { return kLen; }
  // Precondition: out.size() >= buffer_len().
  void emit(std::span<uint8_t> out) const;

  bool operator==(const ArpRepr&) const = default;
};

}  // namespace berth::net::wire
