// DNS codec (see dns.h). Theory of operation for names: a name is read label
// by label from a "segment" that starts where the name starts; a compression
// pointer ends the segment and starts a new one at its target, which must lie
// before the start of the current segment. Segment starts therefore strictly
// decrease, so no input can make the walk loop, and kMaxPointers bounds the
// work for long chains. The name is copied out uncompressed as it is read,
// and refused as soon as it would exceed 255 octets.
#include "net/wire/dns.h"

#include <fmt/format.h>

#include <cassert>
#include <cstring>

namespace berth::net::wire {

namespace {

uint8_t fold(uint8_t c) { return (c >= 'A' && c <= 'Z') ? uint8_t(c + ('a' - 'A')) : c; }

bool same_folded(const uint8_t* a, const uint8_t* b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (fold(a[i]) != fold(b[i])) return false;
  return true;
}

void put16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(uint8_t(v >> 8));
  out.push_back(uint8_t(v));
}

void put32(std::vector<uint8_t>& out, uint32_t v) {
  put16(out, uint16_t(v >> 16));
  put16(out, uint16_t(v));
}

// A name inside a record's RDATA: it must start at or after `off` and its
// in-place encoding must end by the end of the RDATA. Moves `off` past it.
std::optional<DnsName> rdata_name_at(Bytes msg, const DnsRecord& rr, size_t& off) {
  size_t end = rr.rdata_offset + rr.rdata.size();
  if (off >= end || end > msg.size()) return std::nullopt;
  auto n = DnsName::parse(msg, off);
  if (!n || off > end) return std::nullopt;
  return *n;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool label_is(std::string_view label, std::string_view want) {
  return label.size() == want.size() &&
         same_folded(reinterpret_cast<const uint8_t*>(label.data()), reinterpret_cast<const uint8_t*>(want.data()),
                     want.size());
}

}  // namespace

std::string dns_type_name(uint16_t type) {
  switch (type) {
    case dns::kTypeA: return "A";
    case dns::kTypeNs: return "NS";
    case dns::kTypeCname: return "CNAME";
    case dns::kTypeSoa: return "SOA";
    case dns::kTypePtr: return "PTR";
    case dns::kTypeMx: return "MX";
    case dns::kTypeTxt: return "TXT";
    case dns::kTypeAaaa: return "AAAA";
    case dns::kTypeOpt: return "OPT";
    case dns::kTypeAny: return "ANY";
    default: return fmt::format("TYPE{}", type);
  }
}

// ---- Header (RFC 1035 §4.1.1) -------------------------------------------------

Parsed<DnsHeader> DnsHeader::parse(Bytes msg) {
  if (msg.size() < kLen) return WireError::Truncated;
  DnsHeader h;
  h.id = load_be16(&msg[0]);
  uint16_t f = load_be16(&msg[2]);
  h.qr = f & 0x8000;
  h.opcode = uint8_t((f >> 11) & 0xf);
  h.aa = f & 0x0400;
  h.tc = f & 0x0200;
  h.rd = f & 0x0100;
  h.ra = f & 0x0080;
  h.ad = f & 0x0020;  // RFC 4035 §3.2.3
  h.cd = f & 0x0010;
  h.rcode = uint8_t(f & 0xf);
  h.qdcount = load_be16(&msg[4]);
  h.ancount = load_be16(&msg[6]);
  h.nscount = load_be16(&msg[8]);
  h.arcount = load_be16(&msg[10]);
  return h;
}

uint16_t DnsHeader::flags() const {
  return uint16_t((qr ? 0x8000 : 0) | ((opcode & 0xf) << 11) | (aa ? 0x0400 : 0) | (tc ? 0x0200 : 0) |
                  (rd ? 0x0100 : 0) | (ra ? 0x0080 : 0) | (ad ? 0x0020 : 0) | (cd ? 0x0010 : 0) | (rcode & 0xf));
}

void DnsHeader::emit(std::span<uint8_t> out) const {
  assert(out.size() >= kLen);
  store_be16(&out[0], id);
  store_be16(&out[2], flags());
  store_be16(&out[4], qdcount);
  store_be16(&out[6], ancount);
  store_be16(&out[8], nscount);
  store_be16(&out[10], arcount);
}

// ---- Names (RFC 1035 §3.1, §4.1.4) --------------------------------------------

Parsed<DnsName> DnsName::parse(Bytes msg, size_t& offset) {
  DnsName n;
  n.len_ = 0;
  size_t pos = offset, segment = offset, after = 0;
  bool jumped = false;
  int pointers = 0;
  for (;;) {
    if (pos >= msg.size()) return WireError::Truncated;
    uint8_t l = msg[pos];
    if ((l & 0xc0) == 0xc0) {
      if (pos + 1 >= msg.size()) return WireError::Truncated;
      size_t target = (size_t(l & 0x3f) << 8) | msg[pos + 1];
      if (target >= segment || ++pointers > kMaxPointers) return WireError::BadField;
      if (!jumped) after = pos + 2;
      jumped = true;
      pos = segment = target;
      continue;
    }
    if (l & 0xc0) return WireError::BadField;  // 0x40 (extended) and 0x80: reserved
    if (l == 0) {
      n.b_[n.len_++] = 0;  // fits: every label below left room for it
      if (!jumped) after = pos + 1;
      break;
    }
    if (pos + 1 + l > msg.size()) return WireError::Truncated;
    if (size_t(n.len_) + 1 + l + 1 > kMaxLen) return WireError::BadLength;
    std::memcpy(&n.b_[n.len_], &msg[pos], size_t(l) + 1);
    n.len_ = uint8_t(n.len_ + 1 + l);
    pos += 1 + size_t(l);
  }
  offset = after;
  return n;
}

std::optional<DnsName> DnsName::from_text(std::string_view text) {
  DnsName n;
  if (text == "." || text.empty()) return n;
  if (text.back() == '.') text.remove_suffix(1);
  n.len_ = 0;
  while (true) {
    size_t dot = text.find('.');
    std::string_view label = text.substr(0, dot);
    if (label.empty() || label.size() > kMaxLabel) return std::nullopt;
    if (size_t(n.len_) + 1 + label.size() + 1 > kMaxLen) return std::nullopt;
    n.b_[n.len_] = uint8_t(label.size());
    std::memcpy(&n.b_[n.len_ + 1], label.data(), label.size());
    n.len_ = uint8_t(n.len_ + 1 + label.size());
    if (dot == std::string_view::npos) break;
    text.remove_prefix(dot + 1);
  }
  n.b_[n.len_++] = 0;
  return n;
}

std::optional<DnsName> DnsName::join(std::string_view label, const DnsName& suffix) {
  if (label.empty() || label.size() > kMaxLabel || 1 + label.size() + suffix.len_ > kMaxLen) return std::nullopt;
  DnsName n;
  n.b_[0] = uint8_t(label.size());
  std::memcpy(&n.b_[1], label.data(), label.size());
  std::memcpy(&n.b_[1 + label.size()], suffix.b_.data(), suffix.len_);
  n.len_ = uint8_t(1 + label.size() + suffix.len_);
  return n;
}

std::string DnsName::to_string() const {
  if (is_root()) return ".";
  std::string s;
  for (size_t pos = 0; b_[pos] != 0; pos += 1 + b_[pos]) {
    if (!s.empty()) s += '.';
    for (size_t i = 0; i < b_[pos]; i++) {
      uint8_t c = b_[pos + 1 + i];
      bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
      if (plain) s += char(c);
      else s += fmt::format("\\{:03}", c);
    }
  }
  return s;
}

size_t DnsName::label_count() const {
  size_t n = 0;
  for (size_t pos = 0; b_[pos] != 0; pos += 1 + b_[pos]) n++;
  return n;
}

std::string_view DnsName::label(size_t i) const {
  size_t pos = 0;
  for (; i > 0 && b_[pos] != 0; i--) pos += 1 + b_[pos];
  assert(b_[pos] != 0);
  return std::string_view(reinterpret_cast<const char*>(&b_[pos + 1]), b_[pos]);
}

DnsName DnsName::parent(size_t n) const {
  size_t pos = 0;
  for (; n > 0 && b_[pos] != 0; n--) pos += 1 + b_[pos];
  DnsName p;
  p.len_ = uint8_t(len_ - pos);
  std::memcpy(p.b_.data(), &b_[pos], p.len_);
  return p;
}

DnsName DnsName::lower() const {
  DnsName n = *this;
  // Length octets are at most 63, below 'A': folding every octet is safe.
  for (size_t i = 0; i < len_; i++) n.b_[i] = fold(n.b_[i]);
  return n;
}

bool DnsName::equals(const DnsName& o) const { return len_ == o.len_ && same_folded(b_.data(), o.b_.data(), len_); }

bool DnsName::is_within(const DnsName& zone) const {
  size_t pos = 0;
  while (size_t(len_) - pos > zone.len_) pos += 1 + b_[pos];
  return size_t(len_) - pos == zone.len_ && same_folded(&b_[pos], zone.b_.data(), zone.len_);
}

// ---- Messages ---------------------------------------------------------------

Parsed<DnsMessage> DnsMessage::parse(Bytes msg) {
  auto h = DnsHeader::parse(msg);
  if (!h) return h.error();
  DnsMessage m;
  m.header = *h;
  size_t off = DnsHeader::kLen;
  // Each question takes at least 5 octets and each record 11: never reserve
  // more than the message could hold.
  m.questions.reserve(std::min<size_t>(h->qdcount, msg.size() / 5));
  for (uint16_t i = 0; i < h->qdcount; i++) {
    auto name = DnsName::parse(msg, off);
    if (!name) return name.error();
    if (off + 4 > msg.size()) return WireError::Truncated;
    m.questions.push_back(DnsQuestion{*name, load_be16(&msg[off]), load_be16(&msg[off + 2])});
    off += 4;
  }
  m.question_end = off;
  const uint16_t counts[3] = {h->ancount, h->nscount, h->arcount};
  std::vector<DnsRecord>* sections[3] = {&m.answers, &m.authority, &m.additional};
  for (int s = 0; s < 3; s++) {
    sections[s]->reserve(std::min<size_t>(counts[s], msg.size() / 11));
    for (uint16_t i = 0; i < counts[s]; i++) {
      DnsRecord r;
      r.offset = off;
      auto name = DnsName::parse(msg, off);
      if (!name) return name.error();
      if (off + 10 > msg.size()) return WireError::Truncated;
      r.name = *name;
      r.type = load_be16(&msg[off]);
      r.cls = load_be16(&msg[off + 2]);
      r.ttl_offset = off + 4;
      r.ttl = load_be32(&msg[off + 4]);
      uint16_t rdlen = load_be16(&msg[off + 8]);
      off += 10;
      if (off + rdlen > msg.size()) return WireError::Truncated;
      r.rdata_offset = off;
      r.rdata = msg.subspan(off, rdlen);
      off += rdlen;
      sections[s]->push_back(std::move(r));
    }
  }
  m.end = off;
  return m;
}

const DnsRecord* DnsMessage::opt() const {
  for (const auto& r : additional)
    if (r.type == dns::kTypeOpt) return &r;
  return nullptr;
}

uint16_t DnsMessage::udp_payload_size() const {
  const DnsRecord* o = opt();
  // RFC 6891 §6.2.5: values below 512 are treated as 512.
  return o ? std::max<uint16_t>(o->cls, dns::kMaxUdpPlain) : uint16_t(dns::kMaxUdpPlain);
}

bool DnsMessage::dnssec_ok() const {
  const DnsRecord* o = opt();
  return o && (o->ttl & 0x8000);  // RFC 6891 §6.1.3: DO is the top bit of the low 16 flag bits
}

std::optional<DnsSoa> parse_soa(Bytes msg, const DnsRecord& rr) {
  if (rr.type != dns::kTypeSoa) return std::nullopt;
  size_t off = rr.rdata_offset;
  auto mname = rdata_name_at(msg, rr, off);
  if (!mname) return std::nullopt;
  auto rname = rdata_name_at(msg, rr, off);
  if (!rname) return std::nullopt;
  if (off + 20 != rr.rdata_offset + rr.rdata.size()) return std::nullopt;
  DnsSoa s{*mname, *rname};
  s.serial = load_be32(&msg[off]);
  s.refresh = load_be32(&msg[off + 4]);
  s.retry = load_be32(&msg[off + 8]);
  s.expire = load_be32(&msg[off + 12]);
  s.minimum = load_be32(&msg[off + 16]);
  return s;
}

std::optional<DnsName> parse_rdata_name(Bytes msg, const DnsRecord& rr, size_t rdata_offset) {
  size_t off = rr.rdata_offset + rdata_offset;
  return rdata_name_at(msg, rr, off);
}

// ---- RDATA ------------------------------------------------------------------

std::vector<uint8_t> rdata_a(Ipv4Addr a) {
  std::vector<uint8_t> r(4);
  a.write(r.data());
  return r;
}

std::vector<uint8_t> rdata_aaaa(const Ipv6Addr& a) {
  std::vector<uint8_t> r(16);
  a.write(r.data());
  return r;
}

std::vector<uint8_t> rdata_name(const DnsName& n) {
  Bytes w = n.wire();
  return std::vector<uint8_t>(w.begin(), w.end());
}

std::vector<uint8_t> rdata_mx(uint16_t preference, const DnsName& exchange) {
  std::vector<uint8_t> r;
  put16(r, preference);
  Bytes w = exchange.wire();
  r.insert(r.end(), w.begin(), w.end());
  return r;
}

std::vector<uint8_t> rdata_txt(std::string_view text) {
  std::vector<uint8_t> r;
  do {
    size_t n = std::min<size_t>(text.size(), 255);
    r.push_back(uint8_t(n));
    r.insert(r.end(), text.begin(), text.begin() + ptrdiff_t(n));
    text.remove_prefix(n);
  } while (!text.empty());
  return r;
}

std::vector<uint8_t> rdata_soa(const DnsSoa& soa) {
  std::vector<uint8_t> r;
  Bytes m = soa.mname.wire(), n = soa.rname.wire();
  r.insert(r.end(), m.begin(), m.end());
  r.insert(r.end(), n.begin(), n.end());
  put32(r, soa.serial);
  put32(r, soa.refresh);
  put32(r, soa.retry);
  put32(r, soa.expire);
  put32(r, soa.minimum);
  return r;
}

// ---- Reverse names ----------------------------------------------------------

DnsName reverse_name(Ipv4Addr a) {
  auto n = DnsName::from_text(fmt::format("{}.{}.{}.{}.in-addr.arpa", a.v & 0xff, (a.v >> 8) & 0xff,
                                          (a.v >> 16) & 0xff, a.v >> 24));
  assert(n);
  return *n;
}

DnsName reverse_name(const Ipv6Addr& a) {
  std::string s;
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = 15; i >= 0; i--) {
    s += kHex[a.b[size_t(i)] & 0xf];
    s += '.';
    s += kHex[a.b[size_t(i)] >> 4];
    s += '.';
  }
  s += "ip6.arpa";
  auto n = DnsName::from_text(s);
  assert(n);
  return *n;
}

std::optional<Ipv4Addr> reverse_v4(const DnsName& n) {
  if (n.label_count() != 6 || !label_is(n.label(4), "in-addr") || !label_is(n.label(5), "arpa")) return std::nullopt;
  uint32_t v = 0;
  for (size_t i = 0; i < 4; i++) {
    std::string_view l = n.label(i);
    if (l.size() > 3 || (l.size() > 1 && l[0] == '0')) return std::nullopt;
    uint32_t octet = 0;
    for (char c : l) {
      if (c < '0' || c > '9') return std::nullopt;
      octet = octet * 10 + uint32_t(c - '0');
    }
    if (octet > 255) return std::nullopt;
    v |= octet << (8 * i);
  }
  return Ipv4Addr(v);
}

std::optional<Ipv6Addr> reverse_v6(const DnsName& n) {
  if (n.label_count() != 34 || !label_is(n.label(32), "ip6") || !label_is(n.label(33), "arpa")) return std::nullopt;
  Ipv6Addr a;
  for (size_t i = 0; i < 32; i++) {
    std::string_view l = n.label(i);
    int d = l.size() == 1 ? hex_digit(l[0]) : -1;
    if (d < 0) return std::nullopt;
    size_t byte = 15 - i / 2;
    a.b[byte] = uint8_t(i % 2 == 0 ? (a.b[byte] & 0xf0) | d : (a.b[byte] & 0x0f) | (d << 4));
  }
  return a;
}

// ---- Builder ----------------------------------------------------------------

DnsBuilder::DnsBuilder(const DnsHeader& h) : out_(DnsHeader::kLen) {
  DnsHeader copy = h;
  copy.qdcount = copy.ancount = copy.nscount = copy.arcount = 0;
  copy.emit(out_);
}

void DnsBuilder::enter(Section s) {
  assert(s >= section_);  // sections in order
  section_ = s;
  counts_[size_t(s)]++;
}

void DnsBuilder::question(const DnsQuestion& q) {
  enter(Section::Question);
  Bytes w = q.name.wire();
  out_.insert(out_.end(), w.begin(), w.end());
  put16(out_, q.type);
  put16(out_, q.cls);
}

void DnsBuilder::record(Section s, const DnsName& name, uint16_t type, uint16_t cls, uint32_t ttl, Bytes rdata) {
  assert(s != Section::Question && rdata.size() <= 0xffff);
  enter(s);
  Bytes w = name.wire();
  out_.insert(out_.end(), w.begin(), w.end());
  put16(out_, type);
  put16(out_, cls);
  put32(out_, ttl);
  put16(out_, uint16_t(rdata.size()));
  out_.insert(out_.end(), rdata.begin(), rdata.end());
}

void DnsBuilder::opt(uint16_t udp_payload_size, bool dnssec_ok) {
  record(Section::Additional, DnsName(), dns::kTypeOpt, udp_payload_size, dnssec_ok ? 0x8000u : 0u, {});
}

std::vector<uint8_t> DnsBuilder::finish() && {
  store_be16(&out_[4], counts_[0]);
  store_be16(&out_[6], counts_[1]);
  store_be16(&out_[8], counts_[2]);
  store_be16(&out_[10], counts_[3]);
  return std::move(out_);
}

}  // namespace berth::net::wire
