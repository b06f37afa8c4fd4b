// TCP segments (RFC 9293) with the options a modern peer sends: MSS
// (RFC 9293 §3.2), window scale and timestamps (RFC 7323), SACK-permitted and
// SACK blocks (RFC 2018).
//
// TcpPacket is a view over the IP payload, checked once: at least 20 bytes, a
// data offset of at least 5 words and not beyond the buffer. The payload is
// everything after the header (the IP layer has already bounded the segment).
//
// TcpRepr holds every header field and the decoded options. parse() refuses
// a malformed options area (an option of length 0 or 1, one running past the
// header, a known option of the wrong length) as BadOption; unknown options
// are skipped, not kept. emit() writes options in the layout Linux uses
// (MSS; SACK-permitted+timestamps or NOP,NOP+timestamps; NOP+window scale;
// NOP,NOP+SACK blocks), so a Linux segment re-emits byte for byte; when that
// layout would exceed 40 bytes it packs them without NOPs instead.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>

#include "common/bytes.h"
#include "net/wire/ip.h"
#include "net/wire/parsed.h"

namespace berth::net::wire {

// The 12 bits after the data offset (RFC 9293 §3.1; AE from RFC 3540/AccECN,
// the rest reserved). Kept as one field so reserved bits survive a round trip.
inline constexpr uint16_t kTcpFin = 0x001, kTcpSyn = 0x002, kTcpRst = 0x004, kTcpPsh = 0x008, kTcpAck = 0x010,
                          kTcpUrg = 0x020, kTcpEce = 0x040, kTcpCwr = 0x080, kTcpAe = 0x100;
inline constexpr uint16_t kTcpFlagMask = 0x0fff;

enum class TcpOptionKind : uint8_t {
  End = 0,            // RFC 9293 §3.1
  Nop = 1,            // RFC 9293 §3.1
  Mss = 2,            // RFC 9293 §3.2, length 4
  WindowScale = 3,    // RFC 7323 §2.2, length 3
  SackPermitted = 4,  // RFC 2018 §2, length 2
  Sack = 5,           // RFC 2018 §3, length 2 + 8n
  Timestamps = 8,     // RFC 7323 §3.2, length 10
};

// One option of kind >= 2: its kind and the bytes after kind and length.
struct TcpOption {
  uint8_t kind = 0;
  Bytes data;
};

// Walks an options area. NOPs are skipped and End-of-list ends the walk.
// next() returns false at the end, and also on a malformed option, which
// sets failed(): a length byte missing, below 2, or running past the area.
class TcpOptionReader {
 public:
  explicit TcpOptionReader(Bytes options) : b_(options) {}
  bool next(TcpOption& out);
  bool failed() const { return failed_; }

 private:
  Bytes b_;
  size_t pos_ = 0;
  bool failed_ = false;
};

class TcpPacket {
 public:
  static constexpr size_t kMinHeaderLen = 20;
  static constexpr size_t kMaxHeaderLen = 60;

  // Truncated: shorter than 20 bytes or than the data offset.
  // BadHeaderLength: data offset < 5.
  static Parsed<TcpPacket> check(Bytes segment);

  uint16_t src_port() const { return load_be16(&b_[0]); }
  uint16_t dst_port() const { return load_be16(&b_[2]); }
  uint32_t seq() const { return load_be32(&b_[4]); }
  uint32_t ack() const { return load_be32(&b_[8]); }
  size_t header_len() const { return size_t(b_[12] >> 4) * 4; }
  uint16_t flags() const { return load_be16(&b_[12]) & kTcpFlagMask; }
  bool has(uint16_t flag) const { return (flags() & flag) == flag; }
  uint16_t window() const { return load_be16(&b_[14]); }
  uint16_t checksum() const { return load_be16(&b_[16]); }
  uint16_t urgent() const { return load_be16(&b_[18]); }
  Bytes options() const { return b_.subspan(kMinHeaderLen, header_len() - kMinHeaderLen); }
  Bytes payload() const { return b_.subspan(header_len()); }
  Bytes segment() const { return b_; }

  bool verify_checksum(const PseudoHeader& ip) const { return ip.verify(IpProtocol::Tcp, b_); }

 private:
  explicit TcpPacket(Bytes b) : b_(b) {}
  Bytes b_;
};

struct TcpSackBlock {
  uint32_t left = 0;   // first sequence number of the block
  uint32_t right = 0;  // sequence number just after it
  bool operator==(const TcpSackBlock&) const = default;
};

struct TcpTimestamps {
  uint32_t tsval = 0;
  uint32_t tsecr = 0;
  bool operator==(const TcpTimestamps&) const = default;
};

struct TcpRepr {
  static constexpr size_t kMaxSackBlocks = 4;  // 2 + 4*8 = 34 of the 40 option bytes

  uint16_t src_port = 0;
  uint16_t dst_port = 0;
  uint32_t seq = 0;
  uint32_t ack = 0;       // meaningful with kTcpAck; kept as sent
  uint16_t flags = 0;     // kTcp* bits, within kTcpFlagMask
  uint16_t window = 0;    // as on the wire, not scaled
  uint16_t urgent = 0;
  std::optional<uint16_t> mss;
  std::optional<uint8_t> window_scale;  // as sent; RFC 7323 §2.3 says use at most 14
  bool sack_permitted = false;
  std::optional<TcpTimestamps> timestamps;
  uint8_t sack_count = 0;  // blocks in use, 0..kMaxSackBlocks
  std::array<TcpSackBlock, kMaxSackBlocks> sack_blocks{};
  Bytes payload;           // a view

  bool has(uint16_t flag) const { return (flags & flag) == flag; }
  // Sequence space taken: payload plus one each for SYN and FIN (RFC 9293 §3.4).
  uint32_t segment_len() const { return uint32_t(payload.size()) + has(kTcpSyn) + has(kTcpFin); }

  size_t options_len() const;  // a multiple of 4, at most 40
  size_t header_len() const { return TcpPacket::kMinHeaderLen + options_len(); }
  size_t buffer_len() const { return header_len() + payload.size(); }

  // BadChecksum (under Verify), BadOption.
  static Parsed<TcpRepr> parse(const TcpPacket& p, const PseudoHeader& ip,
                               ChecksumPolicy policy = ChecksumPolicy::Verify);
  // Writes header, options and payload with the checksum. `payload` may
  // already lie at its place in `out`. Preconditions: out.size() >=
  // buffer_len(); the options fit in 40 bytes (any parsed set does).
  void emit(std::span<uint8_t> out, const PseudoHeader& ip) const;

  friend bool operator==(const TcpRepr& a, const TcpRepr& b);
};

}  // namespace berth::net::wire
