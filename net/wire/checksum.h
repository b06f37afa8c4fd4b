// The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//
// Terms used below:
//   - the *sum* of some bytes is their 16-bit ones' complement sum, taking
//     them as big-endian 16-bit words (an odd final byte is padded with a zero
//     byte), folded to 16 bits. It is not complemented.
//   - the *checksum* is the complement of the sum over the covered bytes with
//     the checksum field set to zero: the value stored in the header.
//   - covered bytes *verify* when their sum, checksum field included, is 0xffff.
//
// Sums chain: ones_sum(b, ones_sum(a)) == ones_sum(a ‖ b) when a has an even
// length. That is how pseudo-headers and scattered headers are combined.
#pragma once

#include <cstdint>

#include "common/bytes.h"

namespace berth::net::wire {

// Fold a wide accumulator of 16-bit words to 16 bits (end-around carry).
constexpr uint16_t fold_sum(uint64_t acc) {
  acc = (acc & 0xffffffff) + (acc >> 32);
  acc = (acc & 0xffff) + (acc >> 16);
  acc = (acc & 0xffff) + (acc >> 16);
  acc = (acc & 0xffff) + (acc >> 16);
  return uint16_t(acc);
}

// The sum of `data`, added (ones' complement) to `initial`. Reads 8 bytes at a
// time; any alignment is fine.
uint16_t ones_sum(Bytes data, uint16_t initial = 0);

// The checksum to store for `data` (whose checksum field is zero), given the
// sum of anything else covered (a pseudo-header) as `initial`.
inline uint16_t internet_checksum(Bytes data, uint16_t initial = 0) { return uint16_t(~ones_sum(data, initial)); }

// True when `data`, checksum field included, verifies.
inline bool checksum_verifies(Bytes data, uint16_t initial = 0) { return ones_sum(data, initial) == 0xffff; }

// RFC 1624 eqn. 3: the new checksum after one 16-bit word of the covered data
// changes from old_word to new_word: HC' = ~(~HC + ~m + m'). Unlike eqn. 2 it
// never turns a correct 0x0000 into 0xffff. (UDP: a result of 0 must still be
// sent as 0xffff, and a checksum of 0 means "none" and is not updated.)
constexpr uint16_t checksum_update16(uint16_t checksum, uint16_t old_word, uint16_t new_word) {
  return uint16_t(~fold_sum(uint64_t(uint16_t(~checksum)) + uint16_t(~old_word) + new_word));
}

// The same for a 32-bit field on a 16-bit boundary (an IPv4 address, a TCP
// sequence number).
constexpr uint16_t checksum_update32(uint16_t checksum, uint32_t old_value, uint32_t new_value) {
  uint64_t acc = uint16_t(~checksum);
  acc += uint16_t(~uint16_t(old_value >> 16)) + uint16_t(~uint16_t(old_value));
  acc += uint16_t(new_value >> 16) + uint16_t(new_value);
  return uint16_t(~fold_sum(acc));
}

}  // namespace berth::net::wire
