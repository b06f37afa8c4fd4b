// DHCP messages (RFC 2131) and the options the gateway's server speaks
// (RFC 2132, RFC 3397 domain search), over the BOOTP fixed header (RFC 951).
//
// DhcpPacket is a view over a UDP payload, checked once: the 236-byte fixed
// header plus the 4-byte magic cookie 99.130.83.99 (a packet without it is
// plain BOOTP: Unsupported), an op of 1 or 2 and a hardware address length
// of at most 16 (BadField). After check() no accessor can fail.
//
// DhcpRepr holds the fixed fields and the decoded options. parse() walks the
// options area with DhcpOptionReader and refuses, as BadOption: a length
// byte missing, an option running past the area, or a known option of the
// wrong length (RFC 2132 fixes each one's length or its minimum); as
// BadField: an MTU below 68 or a message type outside 1..8. Pad (0) is
// skipped, End (255) ends the walk, and an area without End simply ends.
// Unknown options are skipped. When an option appears more than once the
// first instance counts (RFC 3396 splitting is not reassembled: the options
// read here are short). Option overload (52) is recorded but the sname and
// file fields it points at are not read. Views in a DhcpRepr point into the
// parsed buffer and are valid as long as it is.
//
// emit() writes a BOOTP header, the cookie, the options that are set (in a
// fixed order, message type first, each longer than 255 bytes split into
// consecutive instances as RFC 3396 says), End, and zero padding up to the
// 300-byte minimum BOOTP message (RFC 1542 §2.1). buffer_len() is exact.
//
// Domain search (option 119) values are RFC 1035 §3.1 names, compressed as
// in §4.1.4 (RFC 3397 §2); encode_domain_search and decode_domain_search
// convert between that and dotted text, bounded and loop-free.
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

enum class BootpOp : uint8_t { Request = 1, Reply = 2 };

// RFC 2132 §9.6.
enum class DhcpMessageType : uint8_t {
  Discover = 1,
  Offer = 2,
  Request = 3,
  Decline = 4,
  Ack = 5,
  Nak = 6,
  Release = 7,
  Inform = 8,
};
const char* dhcp_message_type_name(DhcpMessageType t);

// Option codes (RFC 2132 unless noted).
enum class DhcpOption : uint8_t {
  Pad = 0,
  SubnetMask = 1,         // §3.3, 4 bytes
  Router = 3,             // §3.5, 4n bytes
  DnsServer = 6,          // §3.8, 4n bytes
  Hostname = 12,          // §3.14, >= 1 byte
  DomainName = 15,        // §3.17, >= 1 byte
  InterfaceMtu = 26,      // §5.1, 2 bytes, >= 68
  BroadcastAddress = 28,  // §5.3, 4 bytes
  RequestedIp = 50,       // §9.1, 4 bytes
  LeaseTime = 51,         // §9.2, 4 bytes
  Overload = 52,          // §9.3, 1 byte
  MessageType = 53,       // §9.6, 1 byte
  ServerId = 54,          // §9.7, 4 bytes
  ParameterRequestList = 55,  // §9.8, >= 1 byte
  Message = 56,           // §9.9, >= 1 byte
  MaxMessageSize = 57,    // §9.10, 2 bytes
  RenewalTime = 58,       // §9.11 (T1), 4 bytes
  RebindingTime = 59,     // §9.12 (T2), 4 bytes
  ClientId = 61,          // §9.14, >= 2 bytes
  DomainSearch = 119,     // RFC 3397, >= 1 byte
  End = 255,
};

// One option other than Pad and End: its code and the bytes after code and
// length.
struct DhcpOptionView {
  uint8_t code = 0;
  Bytes data;
};

// Walks an options area. Pad is skipped and End ends the walk. next()
// returns false at the end, and also on a malformed option, which sets
// failed(): the length byte missing, or the value running past the area.
class DhcpOptionReader {
 public:
  explicit DhcpOptionReader(Bytes options) : b_(options) {}
  bool next(DhcpOptionView& out);
  bool failed() const { return failed_; }

 private:
  Bytes b_;
  size_t pos_ = 0;
  bool failed_ = false;
};

class DhcpPacket {
 public:
  static constexpr size_t kFixedLen = 236;             // op .. file
  static constexpr size_t kOptionsOffset = 240;        // after the magic cookie
  static constexpr uint32_t kMagicCookie = 0x63825363;  // RFC 2131 §3
  static constexpr uint16_t kFlagBroadcast = 0x8000;   // RFC 2131 §2, figure 2

  // Truncated: shorter than 240 bytes. Unsupported: no magic cookie.
  // BadField: op not 1 or 2, hlen > 16.
  static Parsed<DhcpPacket> check(Bytes payload);

  uint8_t op() const { return b_[0]; }
  uint8_t htype() const { return b_[1]; }
  uint8_t hlen() const { return b_[2]; }
  uint8_t hops() const { return b_[3]; }
  uint32_t xid() const { return load_be32(&b_[4]); }
  uint16_t secs() const { return load_be16(&b_[8]); }
  uint16_t flags() const { return load_be16(&b_[10]); }
  Ipv4Addr ciaddr() const { return Ipv4Addr::from_bytes(&b_[12]); }
  Ipv4Addr yiaddr() const { return Ipv4Addr::from_bytes(&b_[16]); }
  Ipv4Addr siaddr() const { return Ipv4Addr::from_bytes(&b_[20]); }
  Ipv4Addr giaddr() const { return Ipv4Addr::from_bytes(&b_[24]); }
  Bytes chaddr() const { return b_.subspan(28, hlen()); }  // hlen <= 16 after check
  Bytes options() const { return b_.subspan(kOptionsOffset); }

 private:
  explicit DhcpPacket(Bytes b) : b_(b) {}
  Bytes b_;
};

struct DhcpRepr {
  static constexpr size_t kMinLen = 300;  // RFC 1542 §2.1: pad BOOTP messages to this

  // Fixed header. chaddr holds the first 6 bytes of the client hardware
  // address (Ethernet); emit writes hlen bytes of it, zero after the sixth.
  BootpOp op = BootpOp::Request;
  uint8_t htype = 1;  // Ethernet
  uint8_t hlen = 6;
  uint8_t hops = 0;
  uint32_t xid = 0;
  uint16_t secs = 0;
  uint16_t flags = 0;
  Ipv4Addr ciaddr, yiaddr, siaddr, giaddr;
  MacAddr chaddr;

  // Options; unset ones are not emitted. Byte views are raw option values.
  std::optional<DhcpMessageType> message_type;
  std::optional<Ipv4Addr> subnet_mask;
  std::optional<Ipv4Addr> router;  // the first router of option 3
  static constexpr size_t kMaxDnsServers = 4;
  std::array<Ipv4Addr, kMaxDnsServers> dns_servers{};  // the first dns_count are set
  uint8_t dns_count = 0;
  Bytes hostname;       // 12
  Bytes domain_name;    // 15
  std::optional<uint16_t> interface_mtu;
  std::optional<Ipv4Addr> broadcast_address;
  std::optional<Ipv4Addr> requested_ip;
  std::optional<uint32_t> lease_time;  // seconds
  std::optional<uint8_t> overload;     // recorded, not followed
  std::optional<Ipv4Addr> server_id;
  Bytes parameter_request_list;  // 55: option codes
  Bytes message;                 // 56: text, for NAKs
  std::optional<uint16_t> max_message_size;
  std::optional<uint32_t> renewal_time;    // T1, seconds
  std::optional<uint32_t> rebinding_time;  // T2, seconds
  Bytes client_id;       // 61: type byte then identifier
  Bytes domain_search;   // 119: RFC 1035 encoded names (see encode_domain_search)

  bool broadcast_flag() const { return flags & DhcpPacket::kFlagBroadcast; }
  // Whether the parameter request list names `o`.
  bool requested(DhcpOption o) const;

  static Parsed<DhcpRepr> parse(const DhcpPacket& p);
  // check() then parse().
  static Parsed<DhcpRepr> parse(Bytes payload);
  size_t buffer_len() const;
  // Precondition: out.size() >= buffer_len(), hlen <= 16, dns_count <= 4.
  void emit(std::span<uint8_t> out) const;
};

// RFC 1035 §3.1 encoding of dotted names ("a.example" -> 1 'a' 7 'example' 0),
// with §4.1.4 compression of repeated suffixes. nullopt when a name is empty
// or not a sequence of 1..63-byte labels of at most 255 bytes encoded, or
// when the result would exceed `max_len`. A trailing dot is accepted.
std::optional<std::vector<uint8_t>> encode_domain_search(std::span<const std::string_view> names,
                                                         size_t max_len = 1024);
// The reverse, for tests and tools. Pointers must point strictly backwards
// (so there are no loops); BadOption on anything else malformed. At most
// `max_names` names are returned (later ones are still validated).
Parsed<std::vector<std::string>> decode_domain_search(Bytes encoded, size_t max_names = 64);

}  // namespace berth::net::wire
