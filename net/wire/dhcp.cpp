// Theory of operation: DHCP messages.
//
// A DHCP message is a BOOTP message (RFC 951) whose `vend` area starts with
// the magic cookie; the options follow it as code/length/value triples
// (RFC 2132 §2). Everything here is fixed offsets plus one bounded walk over
// the options, so the checks are: the fixed part is present, each option's
// length byte and value are inside the area, and the options we read have
// the lengths RFC 2132 gives them. A client's message is never trusted
// further than that: what the values mean (is the requested address ours?)
// is the server's business (net/dhcp.cpp).
//
// The sname and file fields are never read: option overload (52) would put
// more options there, but no client sends it to a server, and RFC 2131
// §4.1 lets a server ignore it.
#include "net/wire/dhcp.h"

#include <algorithm>
#include <bitset>
#include <cassert>
#include <cstring>
#include <map>

namespace berth::net::wire {

const char* dhcp_message_type_name(DhcpMessageType t) {
  switch (t) {
    case DhcpMessageType::Discover: return "DISCOVER";
    case DhcpMessageType::Offer: return "OFFER";
    case DhcpMessageType::Request: return "REQUEST";
    case DhcpMessageType::Decline: return "DECLINE";
    case DhcpMessageType::Ack: return "ACK";
    case DhcpMessageType::Nak: return "NAK";
    case DhcpMessageType::Release: return "RELEASE";
    case DhcpMessageType::Inform: return "INFORM";
  }
  return "UNKNOWN";
}

bool DhcpOptionReader::next(DhcpOptionView& out) {
  while (pos_ < b_.size()) {
    uint8_t code = b_[pos_];
    if (code == uint8_t(DhcpOption::Pad)) {
      pos_++;
      continue;
    }
    if (code == uint8_t(DhcpOption::End)) {
      pos_ = b_.size();
      return false;
    }
    if (pos_ + 1 >= b_.size()) {
      failed_ = true;
      pos_ = b_.size();
      return false;
    }
    size_t len = b_[pos_ + 1];
    if (len > b_.size() - pos_ - 2) {
      failed_ = true;
      pos_ = b_.size();
      return false;
    }
    out.code = code;
    out.data = b_.subspan(pos_ + 2, len);
    pos_ += 2 + len;
    return true;
  }
  return false;
}

Parsed<DhcpPacket> DhcpPacket::check(Bytes payload) {
  if (payload.size() < kOptionsOffset) return WireError::Truncated;
  if (load_be32(&payload[kFixedLen]) != kMagicCookie) return WireError::Unsupported;
  if (payload[0] != uint8_t(BootpOp::Request) && payload[0] != uint8_t(BootpOp::Reply)) return WireError::BadField;
  if (payload[2] > 16) return WireError::BadField;
  return DhcpPacket(payload);
}

bool DhcpRepr::requested(DhcpOption o) const {
  return std::find(parameter_request_list.begin(), parameter_request_list.end(), uint8_t(o)) !=
         parameter_request_list.end();
}

Parsed<DhcpRepr> DhcpRepr::parse(Bytes payload) {
  auto p = DhcpPacket::check(payload);
  if (!p) return p.error();
  return parse(*p);
}

Parsed<DhcpRepr> DhcpRepr::parse(const DhcpPacket& p) {
  DhcpRepr r;
  r.op = BootpOp(p.op());
  r.htype = p.htype();
  r.hlen = p.hlen();
  r.hops = p.hops();
  r.xid = p.xid();
  r.secs = p.secs();
  r.flags = p.flags();
  r.ciaddr = p.ciaddr();
  r.yiaddr = p.yiaddr();
  r.siaddr = p.siaddr();
  r.giaddr = p.giaddr();
  Bytes ch = p.chaddr();
  for (size_t i = 0; i < 6 && i < ch.size(); i++) r.chaddr.b[i] = ch[i];

  std::bitset<256> seen;
  DhcpOptionReader rd(p.options());
  DhcpOptionView o;
  while (rd.next(o)) {
    if (seen[o.code]) continue;  // the first instance counts
    seen[o.code] = true;
    const size_t n = o.data.size();
    const uint8_t* d = o.data.data();
    auto addr = [&](std::optional<Ipv4Addr>& dst) {
      if (n != 4) return false;
      dst = Ipv4Addr::from_bytes(d);
      return true;
    };
    auto u32 = [&](std::optional<uint32_t>& dst) {
      if (n != 4) return false;
      dst = load_be32(d);
      return true;
    };
    auto bytes = [&](Bytes& dst, size_t min) {
      if (n < min) return false;
      dst = o.data;
      return true;
    };
    bool ok = true;
    switch (DhcpOption(o.code)) {
      case DhcpOption::SubnetMask: ok = addr(r.subnet_mask); break;
      case DhcpOption::BroadcastAddress: ok = addr(r.broadcast_address); break;
      case DhcpOption::RequestedIp: ok = addr(r.requested_ip); break;
      case DhcpOption::ServerId: ok = addr(r.server_id); break;
      case DhcpOption::Router:
        ok = n >= 4 && n % 4 == 0;
        if (ok) r.router = Ipv4Addr::from_bytes(d);
        break;
      case DhcpOption::DnsServer:
        ok = n >= 4 && n % 4 == 0;
        if (ok) {
          r.dns_count = uint8_t(std::min(n / 4, kMaxDnsServers));
          for (size_t i = 0; i < r.dns_count; i++) r.dns_servers[i] = Ipv4Addr::from_bytes(d + 4 * i);
        }
        break;
      case DhcpOption::Hostname: ok = bytes(r.hostname, 1); break;
      case DhcpOption::DomainName: ok = bytes(r.domain_name, 1); break;
      case DhcpOption::ParameterRequestList: ok = bytes(r.parameter_request_list, 1); break;
      case DhcpOption::Message: ok = bytes(r.message, 1); break;
      case DhcpOption::ClientId: ok = bytes(r.client_id, 2); break;  // RFC 2132 §9.14: type + at least one byte
      case DhcpOption::DomainSearch: ok = bytes(r.domain_search, 1); break;
      case DhcpOption::InterfaceMtu:
        if (n != 2) return WireError::BadOption;
        if (load_be16(d) < 68) return WireError::BadField;  // RFC 2132 §5.1: minimum legal value
        r.interface_mtu = load_be16(d);
        break;
      case DhcpOption::MaxMessageSize:
        ok = n == 2;
        if (ok) r.max_message_size = load_be16(d);
        break;
      case DhcpOption::LeaseTime: ok = u32(r.lease_time); break;
      case DhcpOption::RenewalTime: ok = u32(r.renewal_time); break;
      case DhcpOption::RebindingTime: ok = u32(r.rebinding_time); break;
      case DhcpOption::Overload:
        ok = n == 1;
        if (ok) r.overload = d[0];
        break;
      case DhcpOption::MessageType:
        if (n != 1) return WireError::BadOption;
        if (d[0] < 1 || d[0] > 8) return WireError::BadField;
        r.message_type = DhcpMessageType(d[0]);
        break;
      default: break;  // unknown: skipped
    }
    if (!ok) return WireError::BadOption;
  }
  if (rd.failed()) return WireError::BadOption;
  return r;
}

namespace {

// Bytes one option takes, split into 255-byte instances (RFC 3396 §5).
size_t option_len(size_t value_len) {
  if (value_len == 0) return 2;
  return value_len + 2 * ((value_len + 254) / 255);
}

class OptionWriter {
 public:
  explicit OptionWriter(std::span<uint8_t> out) : out_(out) {}
  void put(DhcpOption code, Bytes value) {
    size_t off = 0;
    do {
      size_t n = std::min<size_t>(255, value.size() - off);
      out_[pos_++] = uint8_t(code);
      out_[pos_++] = uint8_t(n);
      if (n) std::memcpy(&out_[pos_], value.data() + off, n);
      pos_ += n;
      off += n;
    } while (off < value.size());
  }
  void addr(DhcpOption code, Ipv4Addr a) {
    uint8_t b[4];
    a.write(b);
    put(code, b);
  }
  void u32(DhcpOption code, uint32_t v) {
    uint8_t b[4];
    store_be32(b, v);
    put(code, b);
  }
  void u16(DhcpOption code, uint16_t v) {
    uint8_t b[2];
    store_be16(b, v);
    put(code, b);
  }
  void end() { out_[pos_++] = uint8_t(DhcpOption::End); }
  size_t pos() const { return pos_; }

 private:
  std::span<uint8_t> out_;
  size_t pos_ = 0;
};

// One place that lists the options in emit order, for both measuring and
// writing, so buffer_len() and emit() cannot disagree.
template <class F>
void for_each_option(const DhcpRepr& r, F&& f) {
  // f(code, length, write(OptionWriter&))
  if (r.message_type)
    f(size_t(1), [&](OptionWriter& w) {
      uint8_t t = uint8_t(*r.message_type);
      w.put(DhcpOption::MessageType, Bytes(&t, 1));
    });
  if (r.server_id) f(size_t(4), [&](OptionWriter& w) { w.addr(DhcpOption::ServerId, *r.server_id); });
  if (r.lease_time) f(size_t(4), [&](OptionWriter& w) { w.u32(DhcpOption::LeaseTime, *r.lease_time); });
  if (r.renewal_time) f(size_t(4), [&](OptionWriter& w) { w.u32(DhcpOption::RenewalTime, *r.renewal_time); });
  if (r.rebinding_time)
    f(size_t(4), [&](OptionWriter& w) { w.u32(DhcpOption::RebindingTime, *r.rebinding_time); });
  if (r.subnet_mask) f(size_t(4), [&](OptionWriter& w) { w.addr(DhcpOption::SubnetMask, *r.subnet_mask); });
  if (r.broadcast_address)
    f(size_t(4), [&](OptionWriter& w) { w.addr(DhcpOption::BroadcastAddress, *r.broadcast_address); });
  if (r.router) f(size_t(4), [&](OptionWriter& w) { w.addr(DhcpOption::Router, *r.router); });
  if (r.dns_count)
    f(size_t(4) * r.dns_count, [&](OptionWriter& w) {
      uint8_t b[4 * DhcpRepr::kMaxDnsServers];
      for (size_t i = 0; i < r.dns_count; i++) r.dns_servers[i].write(b + 4 * i);
      w.put(DhcpOption::DnsServer, Bytes(b, 4 * size_t(r.dns_count)));
    });
  auto bytes = [&](DhcpOption code, Bytes v) {
    if (!v.empty()) f(v.size(), [code, v](OptionWriter& w) { w.put(code, v); });
  };
  bytes(DhcpOption::DomainName, r.domain_name);
  bytes(DhcpOption::DomainSearch, r.domain_search);
  if (r.interface_mtu) f(size_t(2), [&](OptionWriter& w) { w.u16(DhcpOption::InterfaceMtu, *r.interface_mtu); });
  bytes(DhcpOption::Hostname, r.hostname);
  if (r.requested_ip) f(size_t(4), [&](OptionWriter& w) { w.addr(DhcpOption::RequestedIp, *r.requested_ip); });
  bytes(DhcpOption::ParameterRequestList, r.parameter_request_list);
  if (r.max_message_size)
    f(size_t(2), [&](OptionWriter& w) { w.u16(DhcpOption::MaxMessageSize, *r.max_message_size); });
  bytes(DhcpOption::ClientId, r.client_id);
  bytes(DhcpOption::Message, r.message);
}

}  // namespace

size_t DhcpRepr::buffer_len() const {
  size_t n = DhcpPacket::kOptionsOffset + 1;  // + End
  for_each_option(*this, [&](size_t len, auto&&) { n += option_len(len); });
  return std::max(n, kMinLen);
}

void DhcpRepr::emit(std::span<uint8_t> out) const {
  const size_t len = buffer_len();
  assert(out.size() >= len && hlen <= 16 && dns_count <= kMaxDnsServers);
  std::memset(out.data(), 0, len);
  out[0] = uint8_t(op);
  out[1] = htype;
  out[2] = hlen;
  out[3] = hops;
  store_be32(&out[4], xid);
  store_be16(&out[8], secs);
  store_be16(&out[10], flags);
  ciaddr.write(&out[12]);
  yiaddr.write(&out[16]);
  siaddr.write(&out[20]);
  giaddr.write(&out[24]);
  for (size_t i = 0; i < 6 && i < hlen; i++) out[28 + i] = chaddr.b[i];
  // sname (64 bytes at 44) and file (128 bytes at 108) stay zero.
  store_be32(&out[DhcpPacket::kFixedLen], DhcpPacket::kMagicCookie);
  OptionWriter w(out.subspan(DhcpPacket::kOptionsOffset, len - DhcpPacket::kOptionsOffset));
  for_each_option(*this, [&](size_t, auto&& write) { write(w); });
  w.end();
}

// ---- Domain search (RFC 3397) -------------------------------------------------

std::optional<std::vector<uint8_t>> encode_domain_search(std::span<const std::string_view> names,
                                                         size_t max_len) {
  std::vector<uint8_t> out;
  std::map<std::string, uint16_t> suffixes;  // dotted suffix -> offset where it was written
  for (std::string_view name : names) {
    if (!name.empty() && name.back() == '.') name.remove_suffix(1);
    if (name.empty()) return std::nullopt;
    std::vector<std::string_view> labels;
    size_t encoded = 1;
    for (size_t start = 0;;) {
      size_t dot = name.find('.', start);
      std::string_view label = name.substr(start, dot == std::string_view::npos ? dot : dot - start);
      if (label.empty() || label.size() > 63) return std::nullopt;
      labels.push_back(label);
      encoded += 1 + label.size();
      if (dot == std::string_view::npos) break;
      start = dot + 1;
    }
    if (encoded > 255) return std::nullopt;  // RFC 1035 §3.1
    size_t i = 0;
    std::optional<uint16_t> pointer;
    for (; i < labels.size(); i++) {
      std::string suffix(name.substr(size_t(labels[i].data() - name.data())));
      if (auto it = suffixes.find(suffix); it != suffixes.end()) {
        pointer = it->second;
        break;
      }
      if (out.size() < 0x4000) suffixes.emplace(std::move(suffix), uint16_t(out.size()));
      out.push_back(uint8_t(labels[i].size()));
      out.insert(out.end(), labels[i].begin(), labels[i].end());
    }
    if (pointer) {
      out.push_back(uint8_t(0xc0 | (*pointer >> 8)));
      out.push_back(uint8_t(*pointer));
    } else {
      out.push_back(0);
    }
    if (out.size() > max_len) return std::nullopt;
  }
  return out;
}

Parsed<std::vector<std::string>> decode_domain_search(Bytes enc, size_t max_names) {
  std::vector<std::string> names;
  size_t pos = 0;
  while (pos < enc.size()) {
    const size_t name_start = pos;
    std::string name;
    size_t wire_len = 1;   // RFC 1035 §3.1: at most 255 bytes encoded
    size_t limit = name_start;  // a pointer must go strictly below this
    size_t at = pos;
    bool jumped = false;
    for (;;) {
      if (at >= enc.size()) return WireError::BadOption;
      uint8_t len = enc[at];
      if (len == 0) {
        if (!jumped) pos = at + 1;
        break;
      }
      if ((len & 0xc0) == 0xc0) {
        if (at + 1 >= enc.size()) return WireError::BadOption;
        size_t target = (size_t(len & 0x3f) << 8) | enc[at + 1];
        if (target >= limit) return WireError::BadOption;  // only backwards, each jump further back
        if (!jumped) pos = at + 2;
        jumped = true;
        limit = target;
        at = target;
        continue;
      }
      if (len & 0xc0) return WireError::BadOption;  // 01 and 10 label types are reserved
      if (at + 1 + len > enc.size()) return WireError::BadOption;
      wire_len += 1 + len;
      if (wire_len > 255) return WireError::BadOption;
      if (!name.empty()) name += '.';
      name.append(reinterpret_cast<const char*>(&enc[at + 1]), len);
      at += 1 + len;
    }
    if (name.empty()) return WireError::BadOption;  // the root is no search domain
    if (names.size() < max_names) names.push_back(std::move(name));
  }
  return names;
}

}  // namespace berth::net::wire
