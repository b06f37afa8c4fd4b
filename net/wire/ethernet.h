// Ethernet II frames (IEEE 802.3 with an EtherType; RFC 894 for IPv4).
//
// EthernetFrame is a view checked once for the 14-byte header. The payload is
// everything after it, Ethernet padding included: the layer above bounds it
// (IPv4 by its total length, ARP by its address lengths). No FCS is present;
// links deliver frames without it.
//
// Frames tagged with 802.1Q (0x8100) or 802.1ad (0x88a8) are recognised and
// reported (is_vlan_tagged(), WireError::VlanTagged) but not decoded. Frames
// whose type field is an 802.3 length (< 0x0600) are not Ethernet II and
// parse as Unsupported.
#pragma once

#include <cstdint>
#include <span>

#include "common/bytes.h"
#include "net/wire/addr.h"
#include "net/wire/parsed.h"

namespace berth::net::wire {

enum class EtherType : uint16_t {
  Ipv4 = 0x0800,
  Arp = 0x0806,
  Vlan = 0x8100,    // IEEE 802.1Q C-tag
  Ipv6 = 0x86dd,
  QinQ = 0x88a8,    // IEEE 802.1ad S-tag
};

class EthernetFrame {
 public:
  static constexpr size_t kHeaderLen = 14;
  static constexpr uint16_t kMinEtherType = 0x0600;  // below: an 802.3 length field

  // Truncated when shorter than the header. Nothing else is checked here.
  static Parsed<EthernetFrame> check(Bytes frame);

  MacAddr dst() const { return MacAddr::from_bytes(&b_[0]); }
  MacAddr src() const { return MacAddr::from_bytes(&b_[6]); }
  EtherType ethertype() const { return EtherType(load_be16(&b_[12])); }
  bool is_vlan_tagged() const { return ethertype() == EtherType::Vlan || ethertype() == EtherType::QinQ; }
  Bytes payload() const { return b_.subspan(kHeaderLen); }
  Bytes bytes() const { return b_; }

 private:
  explicit EthernetFrame(Bytes b) : b_(b) {}
  Bytes b_;
};

// The header only: emit() writes 14 bytes and the payload goes after them.
struct EthernetRepr {
  MacAddr src;
  MacAddr dst;
  EtherType ethertype = EtherType::Ipv4;

  // VlanTagged for tagged frames, Unsupported for 802.3 length frames.
  static Parsed<EthernetRepr> parse(const EthernetFrame& f);
  size_t buffer_len() const { return EthernetFrame::kHeaderLen; }
  // Precondition: out.size() >= buffer_len().
  void emit(std::span<uint8_t> out) const;

  bool operator==(const EthernetRepr&) const = default;
};

}  // namespace berth::net::wire
