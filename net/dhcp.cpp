// Theory of operation: the DHCP server.
//
// The server keeps one Record per address it has ever handed out, keyed by
// the address, and an index from client key (client identifier, else MAC)
// to that client's one record. An address's life (RFC 2131 §4.3):
//
//      DISCOVER          REQUEST             lease ends / RELEASE
//   (free) ---> Offered ---------> Bound -------------------------> Released
//                 |  60 s without      ^  renew (REQUEST)             |   |
//                 +--> Released        +------------------------------+   |
//                                        same client asks again           |
//   DECLINE of a Bound/Offered address: Declined, for kDeclineHoldSeconds, |
//   then forgotten. A Released record remembers its last client, so that |
//   client gets it back, until the pool has no never-used address left:  |
//   then the record released longest ago goes to a new client. <---------+
//
// Which address a client may have is one predicate, acceptable(): inside
// the subnet and not special; reserved for this client's MAC, or in the
// pool and reserved for nobody; not held (Offered, Bound, Declined) for
// another client; not in use by another switch port; and, when the client
// has a reservation that is free, that reservation and nothing else. OFFER
// picks the first acceptable address from: the reservation, the client's
// own record, the address it asked for, a never-used pool address (a
// rotating cursor), the longest-released record. REQUEST, in every state
// (selecting, init-reboot, renewing, rebinding), is ACKed exactly when its
// address is acceptable, NAKed otherwise. Being the only server on a
// virtual segment, we answer authoritatively rather than stay silent about
// clients we have no record of (RFC 2131 §4.3.2 leaves that to policy).
//
// Expiry is wall time, so leases survive restarts in --state-dir with their
// real end. poll() walks the table only when the earliest deadline has
// passed; renders and lookups filter by the clock themselves, so a lease is
// never shown past its end even before the next poll().
#include "net/dhcp.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <ctime>

#include "common/state_file.h"

namespace berth::net {

using wire::DhcpMessageType;
using wire::DhcpOption;
using wire::DhcpRepr;
using wire::Ipv4Addr;
using wire::MacAddr;

namespace {

constexpr const char* kStateName = "dhcp";

std::string iso8601(int64_t secs) {
  std::time_t t = std::time_t(secs);
  std::tm tm{};
  if (!gmtime_r(&t, &tm)) return "1970-01-01T00:00:00Z";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<int64_t> parse_iso8601(const std::string& s) {
  std::tm tm{};
  int y, mo, d, h, mi, sec;
  char z = 0;
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%c", &y, &mo, &d, &h, &mi, &sec, &z) != 7 || z != 'Z')
    return std::nullopt;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return std::nullopt;
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = sec;
  return int64_t(timegm(&tm));
}

std::string hex(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

std::optional<std::string> unhex(std::string_view s) {
  if (s.size() % 2) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < s.size(); i += 2) {
    auto digit = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = digit(s[i]), lo = digit(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += char(hi << 4 | lo);
  }
  return out;
}

// RFC 1123 §2.1 host name label: letters, digits, hyphens, 1..63, no hyphen
// at either end.
bool valid_label(std::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(uint8_t(c)) || c == '-'; });
}

bool valid_hostname(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  for (size_t start = 0;;) {
    size_t dot = s.find('.', start);
    if (!valid_label(s.substr(start, dot == std::string_view::npos ? dot : dot - start))) return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// Option 12 as a client sends it: some add a NUL, some a whole FQDN. We keep
// the first label when it is a valid one, and nothing otherwise.
std::string client_hostname(Bytes b) {
  std::string_view s = as_chars(b);
  s = s.substr(0, s.find('\0'));
  s = s.substr(0, s.find('.'));
  return valid_label(s) ? std::string(s) : std::string();
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(uint8_t(x)) == std::tolower(uint8_t(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(uint8_t(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(uint8_t(s.back()))) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> fields(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && std::isspace(uint8_t(s[i]))) i++;
    size_t j = i;
    while (j < s.size() && !std::isspace(uint8_t(s[j]))) j++;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

std::string DhcpStats::render() const {
  return fmt::format(
      "discovers {}\noffers {}\nrequests {}\nacks {}\nnaks {}\nreleases {}\ndeclines {}\ninforms {}\n"
      "malformed {}\npool_exhausted {}\nchaddr_mismatch {}\nsave_errors {}\n",
      discovers, offers, requests, acks, naks, releases, declines, informs, malformed, pool_exhausted,
      chaddr_mismatch, save_errors);
}

DhcpServer::DhcpServer(Stack& stack, UdpNat& udp, const Clock& wall_clock, std::string state_dir)
    : stack_(stack), clock_(wall_clock), state_dir_(std::move(state_dir)) {
  const std::string& domain = stack_.config().domain;
  if (!domain.empty()) {
    std::string_view d = domain;
    if (auto enc = wire::encode_domain_search(std::span<const std::string_view>(&d, 1), 255)) search_ = *enc;
  }
  restore();
  udp.add_service(kServerPort, [this](const GuestPacket& p, UdpNat::Reply r) { handle(p, r); });
}

Result<void> DhcpServer::set_lease_time(uint32_t seconds) {
  if (seconds < kMinLeaseSeconds)
    return make_error(EINVAL, fmt::format("lease time {} s is below the minimum of {} s", seconds, kMinLeaseSeconds));
  lease_seconds_ = seconds;
  return {};
}

// ---- Address bookkeeping -------------------------------------------------------

std::string DhcpServer::client_key(const DhcpRepr& m) {
  // RFC 2131 §4.2: the client identifier if given, else chaddr. An
  // identifier that is just the MAC (type 1, RFC 2132 §9.14: what busybox
  // udhcpc sends) counts as the MAC, so a guest switching between clients
  // that do and do not send one (udhcpc in the initramfs, dhclient later)
  // keeps one lease.
  const bool is_mac = m.client_id.size() == 7 && m.client_id[0] == 1 &&
                      std::equal(m.chaddr.b.begin(), m.chaddr.b.end(), m.client_id.begin() + 1);
  if (!m.client_id.empty() && !is_mac) return "c" + std::string(as_chars(m.client_id));
  std::string k = "m";
  k.append(reinterpret_cast<const char*>(m.chaddr.b.data()), 6);
  return k;
}

bool DhcpServer::assignable(Ipv4Addr ip) const {
  const NetConfig& c = stack_.config();
  return c.subnet.contains(ip) && ip != c.subnet.network() && ip != c.subnet.broadcast() && ip != c.gateway &&
         ip != c.host_alias && ip.is_unicast();
}

bool DhcpServer::in_pool(Ipv4Addr ip) const {
  const NetConfig& c = stack_.config();
  return ip >= c.dhcp_first && ip <= c.dhcp_last && assignable(ip);
}

std::optional<MacAddr> DhcpServer::reserved_for(Ipv4Addr ip) const {
  auto it = reserved_ips_.find(ip);
  if (it == reserved_ips_.end()) return std::nullopt;
  return it->second;
}

bool DhcpServer::held_by_other(Ipv4Addr ip, const std::string& key) const {
  auto it = addrs_.find(ip);
  if (it == addrs_.end()) return false;
  const Record& r = it->second;
  if (r.state == AddrState::Declined) return true;
  return (r.state == AddrState::Offered || r.state == AddrState::Bound) && r.key != key;
}

bool DhcpServer::used_by_other_port(Ipv4Addr ip, uint32_t port) const {
  for (uint32_t i = 0; i < stack_.port_count(); i++)
    if (i != port && stack_.port(i).ip == ip) return true;
  return false;
}

bool DhcpServer::acceptable(Ipv4Addr ip, const std::string& key, const MacAddr& mac, uint32_t port) const {
  if (!assignable(ip)) return false;
  // A client with a free reservation gets it and nothing else; while
  // another client still holds the reserved address, it gets a dynamic one.
  if (auto it = reservations_.find(mac); it != reservations_.end() && !held_by_other(it->second.ip, key)) {
    if (ip != it->second.ip) return false;
    return !used_by_other_port(ip, port);
  }
  auto owner = reserved_for(ip);
  if (owner && *owner != mac) return false;
  if (!owner && !in_pool(ip)) return false;
  return !held_by_other(ip, key) && !used_by_other_port(ip, port);
}

std::optional<Ipv4Addr> DhcpServer::choose(const DhcpRepr& m, const std::string& key, uint32_t port) {
  const MacAddr& mac = m.chaddr;
  if (auto it = reservations_.find(mac); it != reservations_.end() && acceptable(it->second.ip, key, mac, port))
    return it->second.ip;
  if (auto it = by_key_.find(key); it != by_key_.end() && acceptable(it->second, key, mac, port)) return it->second;
  // RFC 2131 §4.3.1: the address the client asks for, if it is free. One
  // remembered for another client is not: that client should get it back.
  if (m.requested_ip && acceptable(*m.requested_ip, key, mac, port)) {
    auto it = addrs_.find(*m.requested_ip);
    if (it == addrs_.end() || it->second.key.empty() || it->second.key == key) return *m.requested_ip;
  }
  // A never-used pool address, searching from a rotating cursor so freed
  // addresses rest before reuse. Records are skipped by walking the ordered
  // table alongside; each step is O(1).
  const NetConfig& c = stack_.config();
  if (c.dhcp_first <= c.dhcp_last) {
    const uint32_t first = c.dhcp_first.v, last = c.dhcp_last.v;
    const uint64_t n = uint64_t(last) - first + 1;
    uint32_t ip = cursor_ < first || cursor_ > last ? first : cursor_;
    auto it = addrs_.lower_bound(Ipv4Addr(ip));
    for (uint64_t i = 0; i < n; i++) {
      if (it != addrs_.end() && it->first.v == ip) {
        ++it;
      } else if (acceptable(Ipv4Addr(ip), key, mac, port)) {
        cursor_ = ip == last ? first : ip + 1;
        return Ipv4Addr(ip);
      }
      if (ip == last) {
        ip = first;
        it = addrs_.lower_bound(Ipv4Addr(first));
      } else {
        ip++;
      }
    }
  }
  // The pool is all records: reuse the one released longest ago.
  std::optional<Ipv4Addr> best;
  int64_t best_time = INT64_MAX;
  for (const auto& [ip, r] : addrs_) {
    if (r.state == AddrState::Released && r.expires < best_time && acceptable(ip, key, mac, port)) {
      best = ip;
      best_time = r.expires;
    }
  }
  return best;
}

DhcpServer::Record& DhcpServer::take(Ipv4Addr ip, const std::string& key) {
  if (auto it = by_key_.find(key); it != by_key_.end() && it->second != ip) {
    addrs_.erase(it->second);  // the client moves: its old address is free and forgotten
    by_key_.erase(it);
  }
  Record& r = addrs_[ip];
  if (r.key != key) {
    if (!r.key.empty()) by_key_.erase(r.key);
    r = Record{};
    r.key = key;
    by_key_[key] = ip;
  }
  return r;
}

void DhcpServer::poll() {
  const int64_t now = clock_.now().sec;
  if (now < next_deadline_) return;
  int64_t next = INT64_MAX;
  for (auto it = addrs_.begin(); it != addrs_.end();) {
    Record& r = it->second;
    switch (r.state) {
      case AddrState::Offered:
      case AddrState::Bound:
        if (r.expires > now) {
          next = std::min(next, r.expires);
          break;
        }
        if (r.state == AddrState::Bound)
          spdlog::info("dhcp: lease of {} by {} expired", it->first.to_string(), r.mac.to_string());
        r.state = AddrState::Released;
        if (!in_pool(it->first) && reserved_for(it->first) != r.mac) {  // a reservation that is gone
          by_key_.erase(r.key);
          it = addrs_.erase(it);
          continue;
        }
        break;
      case AddrState::Declined:
        if (r.expires <= now) {
          it = addrs_.erase(it);
          continue;
        }
        next = std::min(next, r.expires);
        break;
      case AddrState::Released: break;
    }
    ++it;
  }
  next_deadline_ = next;
}

// ---- Messages -------------------------------------------------------------------

void DhcpServer::handle(const GuestPacket& p, const UdpNat::Reply& reply) {
  poll();
  const int64_t now = clock_.now().sec;
  auto m = DhcpRepr::parse(UdpNat::udp_payload(p));
  if (!m) {
    spdlog::debug("dhcp: malformed message from {} ({})", p.ip.src.to_string(), wire::wire_error_name(m.error()));
    stats_.malformed++;
    return;
  }
  // Only DHCP (not plain BOOTP) requests from Ethernet clients on the link
  // itself: relay agents (giaddr) have no place on a virtual segment.
  if (m->op != wire::BootpOp::Request || !m->message_type || m->htype != 1 || m->hlen != 6 ||
      !m->giaddr.is_unspecified() || p.port >= stack_.port_count()) {
    spdlog::debug("dhcp: ignoring a message that is not a DHCP request from an Ethernet client");
    stats_.malformed++;
    return;
  }
  const auto& port = stack_.port(p.port);
  if (!port.mac || *port.mac != m->chaddr) {
    spdlog::debug("dhcp: chaddr {} on port {} is not the link's MAC", m->chaddr.to_string(), p.port);
    stats_.chaddr_mismatch++;
    return;
  }
  switch (*m->message_type) {
    case DhcpMessageType::Discover: return on_discover(p, *m, reply, now);
    case DhcpMessageType::Request: return on_request(p, *m, reply, now);
    case DhcpMessageType::Decline: return on_decline(*m, now);
    case DhcpMessageType::Release: return on_release(*m, now);
    case DhcpMessageType::Inform: return on_inform(*m, reply);
    case DhcpMessageType::Offer:
    case DhcpMessageType::Ack:
    case DhcpMessageType::Nak: break;  // server messages: not for us
  }
  stats_.malformed++;
}

// RFC 2131 §4.3.1: offer an address, held for the client for a while.
void DhcpServer::on_discover(const GuestPacket& p, const DhcpRepr& m, const UdpNat::Reply& reply, int64_t now) {
  stats_.discovers++;
  const std::string key = client_key(m);
  auto ip = choose(m, key, p.port);
  if (!ip) {
    stats_.pool_exhausted++;
    if (!last_exhausted_log_ || now - *last_exhausted_log_ >= kExhaustedLogIntervalSeconds) {
      last_exhausted_log_ = now;
      spdlog::warn("dhcp: no address to offer {} (pool {}-{} exhausted)", m.chaddr.to_string(),
                   stack_.config().dhcp_first.to_string(), stack_.config().dhcp_last.to_string());
    }
    return;
  }
  Record& r = take(*ip, key);
  if (!(r.state == AddrState::Bound && r.expires > now)) {  // a live lease stays one
    r.state = AddrState::Offered;
    r.expires = now + kOfferTimeoutSeconds;
    set_deadline(r.expires);
  }
  r.mac = m.chaddr;
  r.client_id = std::string(as_chars(m.client_id));
  auto res = reservations_.find(m.chaddr);
  send_reply(m, DhcpMessageType::Offer, *ip, true, res != reservations_.end() ? res->second.hostname : "", reply);
}

// RFC 2131 §4.3.2: the REQUEST's state decides which address it is about.
void DhcpServer::on_request(const GuestPacket& p, const DhcpRepr& m, const UdpNat::Reply& reply, int64_t now) {
  stats_.requests++;
  const std::string key = client_key(m);
  const Ipv4Addr gateway = stack_.config().gateway;
  Ipv4Addr ip;
  if (m.server_id) {
    // SELECTING: 'server identifier' MUST be set, 'requested IP' MUST be.
    if (*m.server_id != gateway) {
      // The client chose another server: our offer lapses now.
      if (auto it = by_key_.find(key); it != by_key_.end()) {
        Record& r = addrs_.at(it->second);
        if (r.state == AddrState::Offered) {
          r.state = AddrState::Released;
          r.expires = now;
        }
      }
      return;
    }
    if (!m.requested_ip) {
      stats_.malformed++;
      return;
    }
    ip = *m.requested_ip;
  } else if (m.requested_ip) {
    ip = *m.requested_ip;  // INIT-REBOOT: ciaddr MUST be 0
  } else if (!m.ciaddr.is_unspecified()) {
    ip = m.ciaddr;  // RENEWING (unicast) or REBINDING (broadcast)
  } else {
    stats_.malformed++;
    return;
  }
  if (!acceptable(ip, key, m.chaddr, p.port)) {
    spdlog::debug("dhcp: NAK {} for {}", m.chaddr.to_string(), ip.to_string());
    return nak(m, reply, "address not available");
  }
  const bool renewal = by_key_.count(key) && by_key_.at(key) == ip && addrs_.at(ip).state == AddrState::Bound;
  Record& r = take(ip, key);
  r.state = AddrState::Bound;
  r.expires = now + lease_seconds_;
  set_deadline(r.expires);
  r.mac = m.chaddr;
  r.client_id = std::string(as_chars(m.client_id));
  auto res = reservations_.find(m.chaddr);
  if (res != reservations_.end() && !res->second.hostname.empty()) {
    r.hostname = res->second.hostname;
  } else if (!m.hostname.empty()) {
    r.hostname = client_hostname(m.hostname);
  }
  stack_.bind_ip(p.port, ip);
  if (!renewal)
    spdlog::info("dhcp: {} leased to {}{} until {}", ip.to_string(), m.chaddr.to_string(),
                 r.hostname.empty() ? "" : " (" + r.hostname + ")", iso8601(r.expires));
  save();
  send_reply(m, DhcpMessageType::Ack, ip, true, r.hostname, reply);
}

// RFC 2131 §4.3.3: the client found the address in use; rest it.
void DhcpServer::on_decline(const DhcpRepr& m, int64_t now) {
  stats_.declines++;
  if ((m.server_id && *m.server_id != stack_.config().gateway) || !m.requested_ip) return;
  const std::string key = client_key(m);
  auto it = addrs_.find(*m.requested_ip);
  if (it == addrs_.end() || it->second.key != key) return;
  spdlog::warn("dhcp: {} declined {}: someone else uses it; resting it for {} s", m.chaddr.to_string(),
               it->first.to_string(), kDeclineHoldSeconds);
  by_key_.erase(key);
  it->second = Record{};
  it->second.state = AddrState::Declined;
  it->second.expires = now + kDeclineHoldSeconds;
  set_deadline(it->second.expires);
  save();
}

// RFC 2131 §4.3.4: the lease ends now; the address stays remembered.
void DhcpServer::on_release(const DhcpRepr& m, int64_t now) {
  stats_.releases++;
  if (m.server_id && *m.server_id != stack_.config().gateway) return;
  auto it = addrs_.find(m.ciaddr);
  if (it == addrs_.end() || it->second.key != client_key(m) || it->second.state != AddrState::Bound) return;
  spdlog::info("dhcp: {} released {}", m.chaddr.to_string(), m.ciaddr.to_string());
  it->second.state = AddrState::Released;
  it->second.expires = now;
  save();
}

// RFC 2131 §4.3.5: configuration only, no lease, no address.
void DhcpServer::on_inform(const DhcpRepr& m, const UdpNat::Reply& reply) {
  stats_.informs++;
  send_reply(m, DhcpMessageType::Ack, Ipv4Addr(), false, "", reply);
}

void DhcpServer::nak(const DhcpRepr& m, const UdpNat::Reply& reply, std::string_view why) {
  send_reply(m, DhcpMessageType::Nak, Ipv4Addr(), false, "", reply, why);
}

// RFC 2131 §4.3.1 table 3 for the fields, §4.1 for where replies go.
void DhcpServer::send_reply(const DhcpRepr& m, DhcpMessageType type, Ipv4Addr yiaddr, bool with_lease,
                            const std::string& hostname, const UdpNat::Reply& reply, std::string_view nak_message) {
  const NetConfig& c = stack_.config();
  DhcpRepr r;
  r.op = wire::BootpOp::Reply;
  r.htype = m.htype;
  r.hlen = m.hlen;
  r.xid = m.xid;
  r.flags = m.flags;
  r.giaddr = m.giaddr;
  r.chaddr = m.chaddr;
  r.ciaddr = type == DhcpMessageType::Ack ? m.ciaddr : Ipv4Addr();
  r.yiaddr = yiaddr;
  r.message_type = type;
  r.server_id = c.gateway;
  if (type == DhcpMessageType::Nak) {
    r.message = as_bytes(nak_message);
  } else {
    // Always: what a client needs to use the network. The rest when the
    // client asks for it (or sends no list), or when it differs from what a
    // client assumes (an MTU other than 1500).
    const bool all = m.parameter_request_list.empty();
    r.subnet_mask = c.subnet.netmask();
    r.broadcast_address = c.subnet.broadcast();
    r.router = c.gateway;
    r.dns_servers[0] = c.gateway;
    r.dns_count = 1;
    r.domain_name = as_bytes(c.domain);
    if (all || m.requested(DhcpOption::DomainSearch)) r.domain_search = search_;
    if (all || m.requested(DhcpOption::InterfaceMtu) || c.mtu != 1500) r.interface_mtu = uint16_t(c.mtu);
    if (!hostname.empty() && (all || m.requested(DhcpOption::Hostname))) r.hostname = as_bytes(hostname);
    if (with_lease) {
      r.lease_time = lease_seconds_;
      r.renewal_time = lease_seconds_ / 2;                     // RFC 2131 §4.4.5: T1 = 0.5 * lease
      r.rebinding_time = uint32_t(uint64_t(lease_seconds_) * 7 / 8);  // T2 = 0.875 * lease
    }
    // RFC 2131 §2: a client takes at least 576-byte messages, more when it
    // says so (option 57); drop what matters least until the reply fits.
    size_t limit = std::max<size_t>(576, m.max_message_size.value_or(576));
    limit = std::min<size_t>(limit, c.mtu) - 28;  // IPv4 and UDP headers
    if (r.buffer_len() > limit) r.domain_search = {};
    if (r.buffer_len() > limit) r.hostname = {};
    if (r.buffer_len() > limit) r.domain_name = {};
  }
  tx_.assign(r.buffer_len(), 0);
  r.emit(tx_);
  const bool bcast = type == DhcpMessageType::Nak || m.ciaddr.is_unspecified() || m.broadcast_flag();
  const Ipv4Addr dst = bcast ? Ipv4Addr::broadcast() : m.ciaddr;
  if (!reply.send_to(dst, kClientPort, tx_))
    spdlog::debug("dhcp: could not send {} to {}", wire::dhcp_message_type_name(type), dst.to_string());
  switch (type) {
    case DhcpMessageType::Offer: stats_.offers++; break;
    case DhcpMessageType::Ack: stats_.acks++; break;
    case DhcpMessageType::Nak: stats_.naks++; break;
    default: break;
  }
}

// ---- Reservations -----------------------------------------------------------------

Result<void> DhcpServer::validate_reservation(const MacAddr& mac, const Reservation& r) const {
  const NetConfig& c = stack_.config();
  if (!mac.is_unicast() || mac.is_zero()) return make_error(EINVAL, "MAC " + mac.to_string() + " is not a unicast address");
  if (!c.subnet.contains(r.ip))
    return make_error(EINVAL, "IP " + r.ip.to_string() + " is outside the subnet " + c.subnet.to_string());
  if (r.ip == c.gateway) return make_error(EINVAL, "IP " + r.ip.to_string() + " is the gateway");
  if (r.ip == c.host_alias) return make_error(EINVAL, "IP " + r.ip.to_string() + " is the host alias");
  if (r.ip == c.subnet.network()) return make_error(EINVAL, "IP " + r.ip.to_string() + " is the network address");
  if (r.ip == c.subnet.broadcast()) return make_error(EINVAL, "IP " + r.ip.to_string() + " is the broadcast address");
  if (!r.hostname.empty() && !valid_hostname(r.hostname))
    return make_error(EINVAL, "bad hostname '" + r.hostname + "' (letters, digits, '-', dots between labels)");
  return {};
}

Result<DhcpServer::Reservations> DhcpServer::parse_statics(std::string_view text) const {
  Reservations out;
  std::map<Ipv4Addr, MacAddr> ips;
  size_t line_no = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = trim(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    line_no++;
    if (line.empty() || line.front() == '#') continue;
    auto fail = [&](const std::string& why) {
      return make_error(EINVAL, fmt::format("line {} '{}': {}", line_no, line.substr(0, 120), why));
    };
    auto f = fields(line);
    if (f.size() < 2 || f.size() > 3) return fail("want MAC IP [HOSTNAME]");
    auto mac = MacAddr::parse(f[0]);
    if (!mac) return fail("bad MAC '" + std::string(f[0]) + "'");
    auto ip = Ipv4Addr::parse(f[1]);
    if (!ip) return fail("bad IP '" + std::string(f[1]) + "'");
    Reservation r{*ip, f.size() == 3 ? std::string(f[2]) : std::string()};
    if (auto v = validate_reservation(*mac, r); !v) return fail(v.error().message);
    if (out.count(*mac)) return fail("MAC " + mac->to_string() + " is reserved twice");
    if (ips.count(*ip)) return fail("IP " + ip->to_string() + " is reserved twice");
    if (out.size() >= kMaxReservations) return fail(fmt::format("more than {} reservations", kMaxReservations));
    ips.emplace(*ip, *mac);
    out.emplace(*mac, std::move(r));
  }
  return out;
}

Result<void> DhcpServer::set_statics(std::string_view text) {
  auto next = parse_statics(text);
  if (!next) return next.error();
  return replace_statics(std::move(*next));
}

Result<void> DhcpServer::add_static(std::string_view spec) {
  spec = trim(spec);
  auto bad = [&](const std::string& why) {
    return make_error(EINVAL, "bad DHCP reservation '" + std::string(spec) + "': " + why);
  };
  size_t eq1 = spec.find('=');
  if (eq1 == std::string_view::npos) return bad("want MAC=IP or MAC=IP=HOSTNAME");
  std::string_view rest = spec.substr(eq1 + 1);
  size_t eq2 = rest.find('=');
  auto mac = MacAddr::parse(spec.substr(0, eq1));
  if (!mac) return bad("bad MAC");
  auto ip = Ipv4Addr::parse(rest.substr(0, eq2));
  if (!ip) return bad("bad IP");
  Reservation r{*ip, eq2 == std::string_view::npos ? std::string() : std::string(rest.substr(eq2 + 1))};
  if (eq2 != std::string_view::npos && r.hostname.empty()) return bad("empty hostname");
  if (auto v = validate_reservation(*mac, r); !v) return bad(v.error().message);
  Reservations next = reservations_;
  for (const auto& [m, other] : next)
    if (other.ip == *ip && m != *mac) return bad("IP is already reserved for " + m.to_string());
  if (next.size() >= kMaxReservations && !next.count(*mac))
    return bad(fmt::format("more than {} reservations", kMaxReservations));
  next[*mac] = std::move(r);
  return replace_statics(std::move(next));
}

Result<void> DhcpServer::replace_statics(Reservations next) {
  // Saved first, so that a failure to save changes nothing.
  if (auto r = save_state(state_dir_, kStateName, state_with(next)); !r) {
    stats_.save_errors++;
    return r.error();
  }
  reservations_ = std::move(next);
  reserved_ips_.clear();
  for (const auto& [mac, r] : reservations_) reserved_ips_.emplace(r.ip, mac);
  // Forget free records that are no longer pool or reserved addresses.
  for (auto it = addrs_.begin(); it != addrs_.end();) {
    if (it->second.state == AddrState::Released && !in_pool(it->first) && reserved_for(it->first) != it->second.mac) {
      by_key_.erase(it->second.key);
      it = addrs_.erase(it);
    } else {
      ++it;
    }
  }
  return {};
}

// ---- Views ----------------------------------------------------------------------

std::vector<DhcpLeaseState> DhcpServer::leases() const {
  const int64_t now = clock_.now().sec;
  std::vector<DhcpLeaseState> out;
  for (const auto& [ip, r] : addrs_) {
    if (r.state != AddrState::Bound || r.expires <= now) continue;
    out.push_back(DhcpLeaseState{r.mac.to_string(), ip.to_string(), r.hostname, hex(r.client_id), iso8601(r.expires)});
  }
  return out;
}

std::vector<DhcpReservationState> DhcpServer::reservations() const {
  std::vector<DhcpReservationState> out;
  for (const auto& [mac, r] : reservations_) out.push_back({mac.to_string(), r.ip.to_string(), r.hostname});
  return out;
}

std::optional<Ipv4Addr> DhcpServer::lookup_hostname(std::string_view name) const {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty()) return std::nullopt;
  // "NAME.<domain>" also matches a plain "NAME".
  std::string_view bare = name;
  const std::string& domain = stack_.config().domain;
  if (!domain.empty() && name.size() > domain.size() + 1 && name[name.size() - domain.size() - 1] == '.' &&
      iequals(name.substr(name.size() - domain.size()), domain))
    bare.remove_suffix(domain.size() + 1);
  auto matches = [&](const std::string& h) { return !h.empty() && (iequals(h, name) || iequals(h, bare)); };
  for (const auto& [mac, r] : reservations_)
    if (matches(r.hostname)) return r.ip;
  const int64_t now = clock_.now().sec;
  std::optional<Ipv4Addr> best;
  int64_t best_expires = 0;
  for (const auto& [ip, r] : addrs_) {
    if (r.state == AddrState::Bound && r.expires > now && matches(r.hostname) && (!best || r.expires > best_expires)) {
      best = ip;
      best_expires = r.expires;
    }
  }
  return best;
}

std::string DhcpServer::render_leases() const {
  std::string out;
  for (const auto& l : leases())
    out += fmt::format("{} {} {} {}\n", l.mac, l.ip, l.hostname.empty() ? "-" : l.hostname, l.expires);
  return out;
}

std::string DhcpServer::render_leases_json() const { return to_json("leases", leases()); }

std::string DhcpServer::render_statics() const {
  std::string out;
  for (const auto& [mac, r] : reservations_)
    out += mac.to_string() + " " + r.ip.to_string() + (r.hostname.empty() ? "" : " " + r.hostname) + "\n";
  return out;
}

std::string DhcpServer::render_stats() const {
  const NetConfig& c = stack_.config();
  uint64_t pool = c.dhcp_first <= c.dhcp_last ? uint64_t(c.dhcp_last.v) - c.dhcp_first.v + 1 : 0;
  return stats_.render() + fmt::format("leases {}\nreservations {}\npool_size {}\nlease_time {}\n", leases().size(),
                                       reservations_.size(), pool, lease_seconds_);
}

void DhcpServer::render_metrics(p9::PromWriter& w) const {
  w.family("berth_dhcp_messages_total", "counter", "DHCP messages received (discover..inform) and sent (offer, ack, nak)");
  const std::pair<const char*, uint64_t> msgs[] = {
      {"discover", stats_.discovers}, {"offer", stats_.offers},     {"request", stats_.requests},
      {"ack", stats_.acks},           {"nak", stats_.naks},         {"release", stats_.releases},
      {"decline", stats_.declines},   {"inform", stats_.informs},
  };
  for (auto [type, n] : msgs) w.sample("berth_dhcp_messages_total", n, fmt::format("type=\"{}\"", type));
  w.family("berth_dhcp_dropped_total", "counter", "DHCP messages dropped, by reason");
  w.sample("berth_dhcp_dropped_total", stats_.malformed, "reason=\"malformed\"");
  w.sample("berth_dhcp_dropped_total", stats_.chaddr_mismatch, "reason=\"chaddr_mismatch\"");
  w.family("berth_dhcp_pool_exhausted_total", "counter", "DISCOVERs that found no address to offer");
  w.sample("berth_dhcp_pool_exhausted_total", stats_.pool_exhausted);
  w.family("berth_dhcp_save_errors_total", "counter", "failures to write the DHCP state file");
  w.sample("berth_dhcp_save_errors_total", stats_.save_errors);
  w.family("berth_dhcp_leases", "gauge", "live DHCP leases");
  w.sample("berth_dhcp_leases", leases().size());
}

// ---- Persistence ------------------------------------------------------------------

DhcpState DhcpServer::state_with(const Reservations& res) const {
  DhcpState s;
  for (const auto& [mac, r] : res) s.reservations.push_back({mac.to_string(), r.ip.to_string(), r.hostname});
  s.leases = leases();
  return s;
}

void DhcpServer::save() {
  if (state_dir_.empty()) return;
  if (auto r = save_state(state_dir_, kStateName, state_with(reservations_)); !r) {
    stats_.save_errors++;
    spdlog::warn("dhcp: {}", r.error().message);
  }
}

void DhcpServer::restore() {
  auto st = load_state<DhcpState>(state_dir_, kStateName);
  if (!st) return;
  Reservations res;
  for (const auto& s : st->reservations) {
    auto mac = MacAddr::parse(s.mac);
    auto ip = Ipv4Addr::parse(s.ip);
    Reservation r{ip.value_or(Ipv4Addr()), s.hostname};
    bool dup = mac && ip && (res.count(*mac) || std::any_of(res.begin(), res.end(), [&](const auto& e) {
                               return e.second.ip == *ip;
                             }));
    if (!mac || !ip || dup || !validate_reservation(*mac, r).ok() || res.size() >= kMaxReservations) {
      spdlog::warn("dhcp: dropping saved reservation '{} {} {}': not valid here", s.mac, s.ip, s.hostname);
      continue;
    }
    res.emplace(*mac, std::move(r));
  }
  reservations_ = std::move(res);
  for (const auto& [mac, r] : reservations_) reserved_ips_.emplace(r.ip, mac);

  const int64_t now = clock_.now().sec;
  size_t restored = 0;
  for (const auto& s : st->leases) {
    auto mac = MacAddr::parse(s.mac);
    auto ip = Ipv4Addr::parse(s.ip);
    auto expires = parse_iso8601(s.expires);
    auto cid = unhex(s.client_id);
    if (expires && *expires <= now) continue;  // lapsed while we were away
    bool fits = mac && ip && expires && cid && assignable(*ip) && !addrs_.count(*ip) &&
                (reserved_for(*ip) ? *reserved_for(*ip) == *mac : in_pool(*ip)) && cid->size() <= 255;
    std::string mac_key = mac ? "m" + std::string(reinterpret_cast<const char*>(mac->b.data()), 6) : "";
    bool cid_is_mac = cid && mac && cid->size() == 7 && (*cid)[0] == 1 && cid->substr(1) == mac_key.substr(1);
    std::string key = cid && !cid->empty() && !cid_is_mac ? "c" + *cid : mac_key;
    if (!fits || by_key_.count(key)) {
      spdlog::warn("dhcp: dropping saved lease '{} {} {}': not valid here", s.mac, s.ip, s.expires);
      continue;
    }
    Record r;
    r.state = AddrState::Bound;
    r.key = key;
    r.mac = *mac;
    r.client_id = *cid;
    r.hostname = valid_hostname(s.hostname) ? s.hostname : "";
    r.expires = *expires;
    addrs_.emplace(*ip, std::move(r));
    by_key_.emplace(key, *ip);
    set_deadline(*expires);
    restored++;
  }
  spdlog::info("dhcp: restored {} reservations and {} leases from {}", reservations_.size(), restored, state_dir_);
}

// ---- Tree -----------------------------------------------------------------------------

void mount_dhcp_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, DhcpServer& dhcp) {
  DhcpServer* d = &dhcp;
  auto dir = std::make_shared<p9::Dir>("dhcp", "the DHCP server: leases, reservations, counters");
  tree.root()->add(dir);
  dir->add(std::make_shared<p9::StateFile>("leases", "one line per live lease: MAC IP HOSTNAME EXPIRES (UTC)", [d] {
    d->poll();
    return d->render_leases();
  }));
  dir->add(std::make_shared<p9::StateFile>("leases.json", "the live leases as JSON", [d] {
    d->poll();
    return d->render_leases_json();
  }));
  dir->add(std::make_shared<p9::StateFile>(
      "static", "reservations, one 'MAC IP [HOSTNAME]' per line; write the whole set to replace it",
      [d] { return d->render_statics(); }, [d](std::string_view text) { return d->set_statics(text); }));
  dir->add(std::make_shared<p9::StateFile>("stats", "DHCP counters: messages by type, drops, pool exhaustion", [d] {
    return d->render_stats();
  }));
  metrics.add([d](p9::PromWriter& w) { d->render_metrics(w); });
}

}  // namespace berth::net
