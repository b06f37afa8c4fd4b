// Theory of operation: Ethernet II framing.
//
// The view checks only that the fixed header is there. The representation
// refuses what the translator does not speak: 802.3 length frames (LLC/SNAP,
// spanning tree) and VLAN-tagged frames, each with its own reason so the
// switch can count them. Everything else, unknown EtherTypes included,
// parses; dispatching on the type is the caller's business.
#include "net/wire/ethernet.h"

#include <cassert>

namespace berth::net::wire {

Parsed<EthernetFrame> EthernetFrame::check(Bytes frame) {
  if (frame.size() < kHeaderLen) return WireError::Truncated;
  return EthernetFrame(frame);
}

Parsed<EthernetRepr> EthernetRepr::parse(const EthernetFrame& f) {
  // IEEE 802.3 §3.2.6: values below 0x0600 are a length, not a type.
  if (uint16_t(f.ethertype()) < EthernetFrame::kMinEtherType) return WireError::Unsupported;
  // IEEE 802.1Q §9.5: a tag sits where the type was; the real type follows it.
  if (f.is_vlan_tagged()) return WireError::VlanTagged;
  return EthernetRepr{f.src(), f.dst(), f.ethertype()};
}

void EthernetRepr::emit(std::span<uint8_t> out) const {
  assert(out.size() >= buffer_len());
  dst.write(&out[0]);
  src.write(&out[6]);
  store_be16(&out[12], uint16_t(ethertype));
}

}  // namespace berth::net::wire
