// DNS messages (RFC 1035 §4), for the gateway's forwarder (net/dns.h).
//
// Pure codec, no I/O. What it guarantees:
//  - DnsHeader::parse needs only the 12-byte header; nothing past it is read.
//  - DnsName::parse follows compression pointers (RFC 1035 §4.1.4) with
//    bounds that make every input terminate quickly: a pointer must point
//    strictly before the place it is read from (so pointers cannot loop),
//    at most kMaxPointers pointers per name, labels of 1..63 octets, at most
//    255 octets in all (root label included, RFC 1035 §2.3.4), and the
//    reserved label types 0x40 and 0x80 (RFC 6891 §5) are refused.
//  - DnsMessage::parse checks the whole message: every question and record
//    lies inside the buffer and every name is valid. It keeps, per record,
//    the offsets of its TTL and RDATA in the message, so a forwarder can
//    rewrite the id and TTLs of an upstream reply in place without
//    re-encoding it (compressed names in RDATA stay as they are). Bytes
//    after the last record are ignored.
//  - DnsBuilder emits messages without compression; it cannot fail. Sections
//    must be appended in order (question, answer, authority, additional).
//
// Parse failures are WireError values (net/wire/parsed.h): Truncated when a
// field runs past the end, BadField for an invalid name or label type,
// BadLength for a name over 255 octets.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "net/wire/addr.h"
#include "net/wire/parsed.h"

namespace berth::net::wire {

namespace dns {
// RR types (RFC 1035 §3.2.2, RFC 3596, RFC 6891) and QTYPEs (§3.2.3).
constexpr uint16_t kTypeA = 1;
constexpr uint16_t kTypeNs = 2;
constexpr uint16_t kTypeCname = 5;
constexpr uint16_t kTypeSoa = 6;
constexpr uint16_t kTypePtr = 12;
constexpr uint16_t kTypeMx = 15;
constexpr uint16_t kTypeTxt = 16;
constexpr uint16_t kTypeAaaa = 28;
constexpr uint16_t kTypeOpt = 41;
constexpr uint16_t kTypeAny = 255;
constexpr uint16_t kClassIn = 1;
constexpr uint16_t kClassAny = 255;
// Opcodes and response codes (RFC 1035 §4.1.1).
constexpr uint8_t kOpcodeQuery = 0;
constexpr uint8_t kNoError = 0;
constexpr uint8_t kFormErr = 1;
constexpr uint8_t kServFail = 2;
constexpr uint8_t kNxDomain = 3;
constexpr uint8_t kNotImp = 4;
constexpr uint8_t kRefused = 5;
// The largest message over UDP without EDNS (RFC 1035 §4.2.1).
constexpr size_t kMaxUdpPlain = 512;
}  // namespace dns

// "A", "AAAA"... or "TYPE<n>" (RFC 3597 §5).
std::string dns_type_name(uint16_t type);

struct DnsHeader {
  static constexpr size_t kLen = 12;

  uint16_t id = 0;
  bool qr = false;  // a response
  uint8_t opcode = 0;
  bool aa = false, tc = false, rd = false, ra = false, ad = false, cd = false;
  uint8_t rcode = 0;
  uint16_t qdcount = 0, ancount = 0, nscount = 0, arcount = 0;

  // Truncated when shorter than 12 bytes.
  static Parsed<DnsHeader> parse(Bytes msg);
  uint16_t flags() const;
  // Writes 12 bytes. Precondition: out.size() >= kLen.
  void emit(std::span<uint8_t> out) const;

  bool operator==(const DnsHeader&) const = default;
};

// A domain name in uncompressed wire form: length-prefixed labels ending
// with the root label. Holds no heap memory. Comparison with == is exact;
// equals() and the hash key lower() ignore ASCII case (RFC 4343).
class DnsName {
 public:
  static constexpr size_t kMaxLen = 255;
  static constexpr size_t kMaxLabel = 63;
  static constexpr int kMaxPointers = 32;

  DnsName() = default;  // the root

  // The name at msg[offset], following compression pointers. On success
  // `offset` moves past the name as written there (past its first pointer,
  // or its root label); on failure it is unspecified.
  static Parsed<DnsName> parse(Bytes msg, size_t& offset);
  // Dotted text: "www.example.com" or with a trailing dot; "" and "." are
  // the root. Octets are taken as they are, '.' separates (no escapes).
  // nullopt for an empty label, a label over 63 octets or a name over 255.
  static std::optional<DnsName> from_text(std::string_view text);
  // A label followed by a name ("foo" + "berth.internal").
  static std::optional<DnsName> join(std::string_view label, const DnsName& suffix);

  // Dotted text without the trailing dot ("." for the root). Octets other
  // than letters, digits, '-' and '_' are written as \DDD (RFC 1035 §5.1).
  std::string to_string() const;
  Bytes wire() const { return Bytes(b_.data(), len_); }
  size_t wire_len() const { return len_; }
  size_t label_count() const;
  // Label i counted from the left (0 is the first); precondition i < label_count().
  std::string_view label(size_t i) const;
  // The name without its first n labels (the root when n >= label_count()).
  DnsName parent(size_t n = 1) const;
  bool is_root() const { return len_ == 1; }

  // ASCII letters folded to lower case.
  DnsName lower() const;
  bool equals(const DnsName& o) const;
  // This name is `zone` or a name below it (case-insensitive).
  bool is_within(const DnsName& zone) const;

  bool operator==(const DnsName& o) const { return same_bytes(wire(), o.wire()); }

 private:
  std::array<uint8_t, kMaxLen> b_{};  // b_[0] = 0: the root label
  uint8_t len_ = 1;
};

struct DnsQuestion {
  DnsName name;
  uint16_t type = 0;
  uint16_t cls = 0;

  size_t buffer_len() const { return name.wire_len() + 4; }
  bool operator==(const DnsQuestion&) const = default;
};

// A resource record as it lies in a parsed message.
struct DnsRecord {
  DnsName name;
  uint16_t type = 0;
  uint16_t cls = 0;
  uint32_t ttl = 0;
  size_t offset = 0;        // where the record starts in the message
  size_t ttl_offset = 0;    // its 4-byte TTL field
  size_t rdata_offset = 0;  // its RDATA
  Bytes rdata;              // a view into the message
};

// SOA RDATA (RFC 1035 §3.3.13).
struct DnsSoa {
  DnsName mname, rname;
  uint32_t serial = 0, refresh = 0, retry = 0, expire = 0, minimum = 0;
};

struct DnsMessage {
  DnsHeader header;
  std::vector<DnsQuestion> questions;
  std::vector<DnsRecord> answers, authority, additional;
  size_t question_end = 0;  // offset just past the question section
  size_t end = 0;           // offset just past the last record

  // The whole message: Truncated, BadField or BadLength as above. Holds
  // views into `msg` (DnsRecord::rdata): keep msg alive while using them.
  static Parsed<DnsMessage> parse(Bytes msg);

  // The OPT pseudo-record of the additional section (RFC 6891 §6.1.1), if any.
  const DnsRecord* opt() const;
  // Its requestor's UDP payload size, at least 512; 512 without EDNS.
  uint16_t udp_payload_size() const;
  // The DO bit of its flags (RFC 3225).
  bool dnssec_ok() const;
};

// The names and numbers of an SOA record of `msg`; nullopt when its RDATA
// does not hold one (names may be compressed, but must start inside the
// RDATA; the RDATA must end with the five numbers).
std::optional<DnsSoa> parse_soa(Bytes msg, const DnsRecord& rr);

// A name inside a record's RDATA at `rdata_offset` (PTR, CNAME, NS, the
// exchange of an MX after its 2-byte preference).
std::optional<DnsName> parse_rdata_name(Bytes msg, const DnsRecord& rr, size_t rdata_offset = 0);

// RDATA of the record types the gateway answers with.
std::vector<uint8_t> rdata_a(Ipv4Addr a);
std::vector<uint8_t> rdata_aaaa(const Ipv6Addr& a);
std::vector<uint8_t> rdata_name(const DnsName& n);  // PTR, CNAME, NS
std::vector<uint8_t> rdata_mx(uint16_t preference, const DnsName& exchange);
// TXT: the text split into character-strings of at most 255 octets
// (RFC 1035 §3.3.14); empty text is one empty string.
std::vector<uint8_t> rdata_txt(std::string_view text);
std::vector<uint8_t> rdata_soa(const DnsSoa& soa);

// The reverse-mapping name of an address (RFC 1035 §3.5, RFC 3596 §2.5):
// "4.3.2.1.in-addr.arpa", nibbles under "ip6.arpa".
DnsName reverse_name(Ipv4Addr a);
DnsName reverse_name(const Ipv6Addr& a);
// The address a reverse name stands for, when it has all its labels.
std::optional<Ipv4Addr> reverse_v4(const DnsName& n);
std::optional<Ipv6Addr> reverse_v6(const DnsName& n);

// Builds a message, names uncompressed. Counts in the header are those of
// what was appended.
class DnsBuilder {
 public:
  enum class Section : uint8_t { Question, Answer, Authority, Additional };

  explicit DnsBuilder(const DnsHeader& h);

  void question(const DnsQuestion& q);
  void record(Section s, const DnsName& name, uint16_t type, uint16_t cls, uint32_t ttl, Bytes rdata);
  // An OPT pseudo-record (RFC 6891 §6.1.2) in the additional section.
  void opt(uint16_t udp_payload_size, bool dnssec_ok);

  size_t size() const { return out_.size(); }
  std::vector<uint8_t> finish() &&;

 private:
  void enter(Section s);
  std::vector<uint8_t> out_;
  Section section_ = Section::Question;
  std::array<uint16_t, 4> counts_{};
};

}  // namespace berth::net::wire
