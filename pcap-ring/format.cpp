// pcap and pcapng encoders. Field order and values follow pcap-savefile(5)
// and the pcapng spec (section numbers below are those of
// draft-ietf-opsawg-pcapng-02).
#include "pcap-ring/format.h"

#include <algorithm>

namespace berth::pcap {

namespace {

constexpr uint32_t kShbType = 0x0A0D0D0A;      // §4.1
constexpr uint32_t kByteOrderMagic = 0x1A2B3C4D;
constexpr uint32_t kIdbType = 0x00000001;      // §4.2
constexpr uint32_t kEpbType = 0x00000006;      // §4.3
constexpr uint16_t kOptEnd = 0;                // opt_endofopt
constexpr uint16_t kShbUserAppl = 4;           // shb_userappl
constexpr uint16_t kIfName = 2;                // if_name
constexpr uint16_t kIfTsresol = 9;             // if_tsresol: 9 = 10^-9 s
constexpr uint16_t kEpbFlags = 2;              // epb_flags: bits 0-1 direction, 01 inbound, 10 outbound

size_t pad4(size_t n) { return (4 - n % 4) % 4; }

void put16(std::vector<uint8_t>& out, uint16_t v) {
  uint8_t b[2];
  store_le16(b, v);
  out.insert(out.end(), b, b + 2);
}
void put32(std::vector<uint8_t>& out, uint32_t v) {
  uint8_t b[4];
  store_le32(b, v);
  out.insert(out.end(), b, b + 4);
}
void put_bytes(std::vector<uint8_t>& out, Bytes b) { out.insert(out.end(), b.begin(), b.end()); }
void put_zeros(std::vector<uint8_t>& out, size_t n) { out.insert(out.end(), n, 0); }

// An option: code, length, value, padding to 32 bits (§3.5).
void put_option(std::vector<uint8_t>& out, uint16_t code, Bytes value) {
  put16(out, code);
  put16(out, uint16_t(value.size()));
  put_bytes(out, value);
  put_zeros(out, pad4(value.size()));
}
size_t option_len(size_t value_len) { return 4 + value_len + pad4(value_len); }

}  // namespace

const char* direction_name(Direction d) { return d == Direction::FromGuest ? "guest->net" : "net->guest"; }

void emit_pcap_header(uint8_t* out, uint32_t snaplen) {
  store_le32(out, kPcapMagicNs);
  store_le16(out + 4, 2);   // version_major
  store_le16(out + 6, 4);   // version_minor
  store_le32(out + 8, 0);   // thiszone: timestamps are UTC
  store_le32(out + 12, 0);  // sigfigs
  store_le32(out + 16, snaplen);
  store_le32(out + 20, kLinktypeEthernet);
}

void emit_pcap_record_header(uint8_t* out, const RecordMeta& m, uint32_t caplen) {
  store_le32(out, uint32_t(m.ts_ns / 1000000000));
  store_le32(out + 4, uint32_t(m.ts_ns % 1000000000));
  store_le32(out + 8, caplen);
  store_le32(out + 12, m.orig_len);
}

void append_pcap_header(std::vector<uint8_t>& out, uint32_t snaplen) {
  size_t at = out.size();
  out.resize(at + kPcapHeaderLen);
  emit_pcap_header(out.data() + at, snaplen);
}

void append_pcap_record(std::vector<uint8_t>& out, const RecordMeta& m, Bytes a, Bytes b) {
  size_t at = out.size();
  out.resize(at + kPcapRecordHeaderLen);
  emit_pcap_record_header(out.data() + at, m, uint32_t(a.size() + b.size()));
  put_bytes(out, a);
  put_bytes(out, b);
}

// §4.1: block type, total length, byte-order magic, major 1, minor 0,
// section length -1 ("not specified"), options, total length again.
void append_pcapng_shb(std::vector<uint8_t>& out) {
  static constexpr std::string_view kAppl = "berth";
  uint32_t len = uint32_t(28 + option_len(kAppl.size()) + 4);
  put32(out, kShbType);
  put32(out, len);
  put32(out, kByteOrderMagic);
  put16(out, 1);
  put16(out, 0);
  put32(out, 0xffffffff);
  put32(out, 0xffffffff);
  put_option(out, kShbUserAppl, as_bytes(kAppl));
  put_option(out, kOptEnd, {});
  put32(out, len);
}

// §4.2: block type, total length, linktype, reserved, snaplen, options.
void append_pcapng_idb(std::vector<uint8_t>& out, uint32_t snaplen, std::string_view if_name) {
  if_name = if_name.substr(0, 255);
  const uint8_t tsresol = 9;
  uint32_t len = uint32_t(20 + (if_name.empty() ? 0 : option_len(if_name.size())) + option_len(1) + 4);
  put32(out, kIdbType);
  put32(out, len);
  put16(out, uint16_t(kLinktypeEthernet));
  put16(out, 0);
  put32(out, snaplen);
  if (!if_name.empty()) put_option(out, kIfName, as_bytes(if_name));
  put_option(out, kIfTsresol, Bytes(&tsresol, 1));
  put_option(out, kOptEnd, {});
  put32(out, len);
}

size_t pcapng_epb_len(size_t caplen) { return 32 + caplen + pad4(caplen) + option_len(4) + 4; }

// §4.3: block type, total length, interface id, timestamp (upper, lower
// 32 bits, in the interface's if_tsresol units: ns here), captured length,
// original length, data padded to 32 bits, options, total length.
void append_pcapng_epb(std::vector<uint8_t>& out, const RecordMeta& m, Bytes a, Bytes b) {
  size_t caplen = a.size() + b.size();
  uint32_t len = uint32_t(pcapng_epb_len(caplen));
  put32(out, kEpbType);
  put32(out, len);
  put32(out, m.link);
  put32(out, uint32_t(m.ts_ns >> 32));
  put32(out, uint32_t(m.ts_ns));
  put32(out, uint32_t(caplen));
  put32(out, m.orig_len);
  put_bytes(out, a);
  put_bytes(out, b);
  put_zeros(out, pad4(caplen));
  uint8_t flags[4];
  store_le32(flags, m.dir == Direction::FromGuest ? 1u : 2u);
  put_option(out, kEpbFlags, Bytes(flags, 4));
  put_option(out, kOptEnd, {});
  put32(out, len);
}

}  // namespace berth::pcap
