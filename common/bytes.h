// Bounds-checked little-endian readers and writers over byte spans.
//
// ByteReader never reads past its span: every accessor reports failure with
// `false` and leaves the reader in a failed state, so a parser can chain reads
// and check once. ByteWriter appends to a std::vector and cannot fail.
// Both are for wire formats; big-endian helpers exist for network protocols.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace berth {

using Bytes = std::span<const uint8_t>;

inline uint16_t load_le16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
inline uint32_t load_le32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
inline uint64_t load_le64(const uint8_t* p) { return uint64_t(load_le32(p)) | (uint64_t(load_le32(p + 4)) << 32); }
inline void store_le16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v); p[1] = uint8_t(v >> 8); }
inline void store_le32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = uint8_t(v >> (8 * i));
}
inline uint16_t load_be16(const uint8_t* p) { return uint16_t((p[0] << 8) | p[1]); }
inline uint32_t load_be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}
inline void store_be16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v >> 8); p[1] = uint8_t(v); }
inline void store_be32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = uint8_t(v >> (24 - 8 * i));
}

class ByteReader {
 public:
  explicit ByteReader(Bytes data) : data_(data) {}

  bool ok() const { return ok_; }
  size_t remaining() const { return data_.size() - pos_; }
  size_t position() const { return pos_; }

  bool u8(uint8_t& v) { return take(1) && (v = data_[pos_ - 1], true); }
  bool u16(uint16_t& v) { return take(2) && (v = load_le16(&data_[pos_ - 2]), true); }
  bool u32(uint32_t& v) { return take(4) && (v = load_le32(&data_[pos_ - 4]), true); }
  bool u64(uint64_t& v) { return take(8) && (v = load_le64(&data_[pos_ - 8]), true); }
  // A view of the next n bytes; valid as long as the underlying buffer.
  bool bytes(size_t n, Bytes& out) {
    if (!take(n)) return false;
    out = data_.subspan(pos_ - n, n);
    return true;
  }

 private:
  bool take(size_t n) {
    if (!ok_ || n > remaining()) return ok_ = false;
    pos_ += n;
    return true;
  }
  Bytes data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

class ByteWriter {
 public:
  explicit ByteWriter(std::vector<uint8_t>& out) : out_(out) {}
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { uint8_t b[2]; store_le16(b, v); out_.insert(out_.end(), b, b + 2); }
  void u32(uint32_t v) { uint8_t b[4]; store_le32(b, v); out_.insert(out_.end(), b, b + 4); }
  void u64(uint64_t v) { u32(uint32_t(v)); u32(uint32_t(v >> 32)); }
  void bytes(Bytes b) { out_.insert(out_.end(), b.begin(), b.end()); }
  size_t size() const { return out_.size(); }
  std::vector<uint8_t>& buffer() { return out_; }

 private:
  std::vector<uint8_t>& out_;
};

inline Bytes as_bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }
inline std::string_view as_chars(Bytes b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

}  // namespace berth
