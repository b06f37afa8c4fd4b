// Theory of operation: the RFC 1071 sum, wide.
//
// The ones' complement sum is independent of byte order (RFC 1071 §2(B)):
// summing the data as native-endian words and byte-swapping the folded result
// gives the same value as summing big-endian words. So the loop loads 8 bytes
// at a time with memcpy (no alignment assumption, no aliasing trouble), splits
// each into two 32-bit halves and adds them into 64-bit accumulators, where no
// carry can be lost for any buffer below 2^35 bytes. Two accumulators let the
// adds overlap. The carries are folded back in once, at the end (§2(C),
// "deferred carries"). An odd final byte is the high byte of a big-endian
// word; in memory order that is the byte followed by a zero, which is what a
// 2-byte native load of {byte, 0} sums as.
#include "net/wire/checksum.h"

#include <bit>
#include <cstring>

namespace berth::net::wire {

uint16_t ones_sum(Bytes data, uint16_t initial) {
  const uint8_t* p = data.data();
  size_t n = data.size();
  uint64_t a = 0, b = 0;
  while (n >= 16) {
    uint64_t x, y;
    std::memcpy(&x, p, 8);
    std::memcpy(&y, p + 8, 8);
    a += (x & 0xffffffff) + (x >> 32);
    b += (y & 0xffffffff) + (y >> 32);
    p += 16;
    n -= 16;
  }
  if (n >= 8) {
    uint64_t x;
    std::memcpy(&x, p, 8);
    a += (x & 0xffffffff) + (x >> 32);
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    uint32_t x;
    std::memcpy(&x, p, 4);
    b += x;
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    uint16_t x;
    std::memcpy(&x, p, 2);
    a += x;
    p += 2;
    n -= 2;
  }
  if (n == 1) {
    uint8_t last[2] = {p[0], 0};
    uint16_t x;
    std::memcpy(&x, last, 2);
    b += x;
  }
  // a + b cannot overflow: each is below 2^36 for any realistic buffer.
  uint16_t s = fold_sum(a + b);
  if constexpr (std::endian::native == std::endian::little) s = uint16_t((s << 8) | (s >> 8));
  return fold_sum(uint32_t(s) + initial);
}

}  // namespace berth::net::wire
