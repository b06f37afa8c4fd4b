// What every codec in net/wire/ shares: the reasons a packet is refused, and
// Parsed<T>, the value-or-reason that views and representations return.
//
// Refusing a packet is not an operational Error (STYLE.md §9): it is bad input
// from a guest, to be counted under its reason and dropped. So parse failures
// are a small enum with stable names (for /net/stats), never a message string,
// and producing one never allocates.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <utility>
#include <variant>

#include "common/bytes.h"

namespace berth::net::wire {

enum class WireError : uint8_t {
  Truncated,        // the buffer ends before the header, or before the length a header field claims
  BadVersion,       // IP version field is not the one expected
  BadHeaderLength,  // IPv4 IHL < 5, TCP data offset < 5
  BadLength,        // a length field smaller than the header it must cover
  BadChecksum,      // checksum did not verify (only with ChecksumPolicy::Verify)
  BadOption,        // a TCP option with length 0/1, a wrong fixed length, or running past the header
  BadField,         // a reserved bit set, or a value the protocol forbids
  Unsupported,      // well formed, but a kind this codec does not represent (ARP for non-IPv4, ICMP redirect…)
  VlanTagged,       // an 802.1Q / 802.1ad tagged Ethernet frame: recognised, not decoded
};

// Stable snake_case name, used as a drop-counter label.
constexpr const char* wire_error_name(WireError e) {
  switch (e) {
    case WireError::Truncated: return "truncated";
    case WireError::BadVersion: return "bad_version";
    case WireError::BadHeaderLength: return "bad_header_length";
    case WireError::BadLength: return "bad_length";
    case WireError::BadChecksum: return "bad_checksum";
    case WireError::BadOption: return "bad_option";
    case WireError::BadField: return "bad_field";
    case WireError::Unsupported: return "unsupported";
    case WireError::VlanTagged: return "vlan_tagged";
  }
  return "unknown";
}

// Whether Repr::parse checks checksums. Ignore is for frames whose checksum a
// device will fill in later (virtio-net / TAP checksum offload, where the
// field holds only the pseudo-header sum) and for fuzzing deeper layers.
enum class ChecksumPolicy : uint8_t { Verify, Ignore };

// A T, or the reason there is none. Holds no heap memory.
template <class T>
class [[nodiscard]] Parsed {
 public:
  Parsed(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Parsed(WireError err) : v_(std::in_place_index<1>, err) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  const T& value() const& { assert(ok()); return *std::get_if<0>(&v_); }
  T& value() & { assert(ok()); return *std::get_if<0>(&v_); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

  WireError error() const { assert(!ok()); return *std::get_if<1>(&v_); }

 private:
  std::variant<T, WireError> v_;
};

// Content equality of two byte views, for Reprs that hold views.
inline bool same_bytes(Bytes a, Bytes b) { return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin()); }

}  // namespace berth::net::wire
