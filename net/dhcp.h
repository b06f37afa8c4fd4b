// The gateway's DHCP server (RFC 2131, options from RFC 2132 and RFC 3397),
// served in process on UDP port 67 through UdpNat::add_service, and its
// subtree of the control tree: /dhcp/leases, /dhcp/leases.json,
// /dhcp/static, /dhcp/stats (plus counters in /metrics).
//
// Guarantees:
//  - Addresses come from NetConfig::dhcp_first..dhcp_last, or from a static
//    reservation (MAC -> IP [HOSTNAME]) anywhere in the subnet except the
//    network, broadcast, gateway and host-alias addresses. An address is
//    never offered or acknowledged to one client while another holds it
//    (offer or live lease), while it is declined, or while another switch
//    port is using it.
//  - A client is keyed by its client identifier (option 61) when it sends
//    one, else by its MAC (an identifier that is type 1 plus the MAC counts
//    as the MAC). It keeps its address across renewals and, unless
//    the address has gone to someone else since, across expiry and release.
//    A client with a reservation gets the reserved address (a dynamic lease
//    it held before is NAKed at its next renewal, so it moves over).
//  - The server is authoritative for the segment: a REQUEST for an address
//    the client may have is ACKed even without a record of it (after a
//    restart without --state-dir, say); one for an address it may not have
//    is NAKed.
//  - Replies come from the gateway (server id), to 255.255.255.255:68 when
//    the client has no address yet (ciaddr 0) or set the broadcast flag,
//    else unicast to ciaddr. NAKs are always broadcast (RFC 2131 §4.1).
//  - Anti-spoofing: a message whose chaddr is not the MAC the switch learned
//    for the link it came from is dropped (chaddr_mismatch). An ACK binds
//    the leased address to that link (Stack::bind_ip), after which the
//    switch drops other IPv4 sources from it.
//  - Bounded: one record per address of the pool or of a reservation, at
//    most kMaxReservations reservations; offers not followed by a REQUEST
//    lapse after kOfferTimeoutSeconds; a full pool means no OFFER, counted
//    (pool_exhausted) and logged at most once a minute.
//  - Time: lease expiry is wall time from the Clock given at construction
//    (leases are shown to users and saved across restarts). Expiry happens
//    in poll(), which every message runs first; renders and lookups never
//    show a lease past its expiry, whether or not poll() ran.
//  - Persistence: with a state directory, reservations and live leases are
//    saved (state_file.h, document "dhcp") whenever they change, and
//    restored by the constructor, dropping expired leases and entries that
//    no longer fit the configuration. A damaged file is moved aside and the
//    server starts empty. Restored leases are bound to switch ports only
//    when their clients next talk (ports do not exist at start).
//  - Bad input is counted (malformed) and dropped: nothing a guest sends
//    can crash the server or grow its memory without bound.
//
// Everything runs on the main loop thread.
#pragma once

#include <algorithm>
#include <cereal/cereal.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "net/stack.h"
#include "net/udp.h"
#include "net/wire/addr.h"
#include "net/wire/dhcp.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

namespace berth::net {

// Saved and exported state (STYLE.md §10): plain data, addresses as text.
// The same structs are saved under --state-dir and shown in leases.json.
struct DhcpReservationState {
  std::string mac;       // "52:54:00:12:34:56"
  std::string ip;        // "192.168.65.10"
  std::string hostname;  // "" when none

  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(mac), CEREAL_NVP(ip), CEREAL_NVP(hostname));
  }
};

struct DhcpLeaseState {
  std::string mac;
  std::string ip;
  std::string hostname;   // "" when none
  std::string client_id;  // option 61 in hex, "" when the client sent none
  std::string expires;    // ISO-8601 UTC, "2026-11-29T10:00:00Z"

  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(mac), CEREAL_NVP(ip), CEREAL_NVP(hostname), CEREAL_NVP(client_id), CEREAL_NVP(expires));
  }
};

struct DhcpState {
  std::vector<DhcpReservationState> reservations;
  std::vector<DhcpLeaseState> leases;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(reservations), CEREAL_NVP(leases));
  }
};

// Messages are counted as received (discovers, requests, releases,
// declines, informs) or sent (offers, acks, naks).
struct DhcpStats {
  uint64_t discovers = 0, offers = 0, requests = 0, acks = 0, naks = 0;
  uint64_t releases = 0, declines = 0, informs = 0;
  uint64_t malformed = 0;        // not a DHCP request we serve (bad options, BOOTP, relayed, not Ethernet)
  uint64_t pool_exhausted = 0;   // a DISCOVER found no address to offer
  uint64_t chaddr_mismatch = 0;  // chaddr is not the link's MAC
  uint64_t save_errors = 0;      // the state file could not be written
  std::string render() const;    // "name value" lines
};

class DhcpServer {
 public:
  static constexpr uint32_t kDefaultLeaseSeconds = 3600;
  static constexpr uint32_t kMinLeaseSeconds = 60;
  static constexpr int64_t kOfferTimeoutSeconds = 60;
  static constexpr int64_t kDeclineHoldSeconds = 600;  // a declined address rests this long
  static constexpr int64_t kExhaustedLogIntervalSeconds = 60;
  static constexpr size_t kMaxReservations = 1024;
  static constexpr uint16_t kServerPort = 67, kClientPort = 68;

  // Registers the service on UDP port 67 of `udp`. The server must outlive
  // any datagram `udp` may still deliver (construct it after the UdpNat,
  // destroy it before). An empty state_dir means nothing is saved.
  DhcpServer(Stack& stack, UdpNat& udp, const Clock& wall_clock, std::string state_dir);
  DhcpServer(const DhcpServer&) = delete;
  DhcpServer& operator=(const DhcpServer&) = delete;

  // Lease time offered from now on (RFC 2131 T1 = 1/2, T2 = 7/8 of it).
  // EINVAL below kMinLeaseSeconds.
  [[nodiscard]] Result<void> set_lease_time(uint32_t seconds);
  uint32_t lease_time() const { return lease_seconds_; }

  // Expire offers, leases and declines whose time has come.
  void poll();

  // Add or replace the reservation of one MAC: "MAC=IP" or
  // "MAC=IP=HOSTNAME" (the --dhcp-static flag). EINVAL on a bad spec or an
  // IP reserved for another MAC; a save failure leaves nothing changed.
  [[nodiscard]] Result<void> add_static(std::string_view spec);
  // Replace every reservation with `text`: lines "MAC IP [HOSTNAME]",
  // blank lines and '#' comments allowed. EINVAL naming the first bad line;
  // on any error nothing changes.
  [[nodiscard]] Result<void> set_statics(std::string_view text);

  // The address of a live lease or reservation with this hostname,
  // compared case-insensitively; "NAME", "NAME." and "NAME.<domain>" all
  // match. Reservations win over leases, newer leases over older ones.
  std::optional<wire::Ipv4Addr> lookup_hostname(std::string_view name) const;

  // Live leases, ordered by address.
  std::vector<DhcpLeaseState> leases() const;
  std::vector<DhcpReservationState> reservations() const;
  size_t lease_count() const { return leases().size(); }
  const DhcpStats& stats() const { return stats_; }

  std::string render_leases() const;       // "MAC IP HOSTNAME EXPIRES" lines, "-" for no hostname
  std::string render_leases_json() const;  // {"leases": [...]}
  std::string render_statics() const;      // "MAC IP [HOSTNAME]" lines
  std::string render_stats() const;        // counters, leases, reservations, pool size
  void render_metrics(p9::PromWriter& w) const;

 private:
  enum class AddrState : uint8_t {
    Offered,   // OFFER sent; held for the client until `expires`
    Bound,     // ACKed lease until `expires`
    Released,  // free: released or lapsed, remembered for its last client
    Declined,  // a client found it in use; unusable until `expires`
  };
  // One address's record; at most one per pool or reserved address.
  struct Record {
    AddrState state = AddrState::Released;
    std::string key;        // client key (see client_key()); empty when Declined
    wire::MacAddr mac;
    std::string client_id;  // raw option 61, empty when none
    std::string hostname;
    int64_t expires = 0;    // unix seconds; for Released, when it became free
  };
  struct Reservation {
    wire::Ipv4Addr ip;
    std::string hostname;
  };
  using Reservations = std::map<wire::MacAddr, Reservation>;

  void handle(const GuestPacket& p, const UdpNat::Reply& reply);
  void on_discover(const GuestPacket& p, const wire::DhcpRepr& m, const UdpNat::Reply& reply, int64_t now);
  void on_request(const GuestPacket& p, const wire::DhcpRepr& m, const UdpNat::Reply& reply, int64_t now);
  void on_decline(const wire::DhcpRepr& m, int64_t now);
  void on_release(const wire::DhcpRepr& m, int64_t now);
  void on_inform(const wire::DhcpRepr& m, const UdpNat::Reply& reply);

  static std::string client_key(const wire::DhcpRepr& m);
  bool assignable(wire::Ipv4Addr ip) const;  // in the subnet, not a special address
  bool in_pool(wire::Ipv4Addr ip) const;
  std::optional<wire::MacAddr> reserved_for(wire::Ipv4Addr ip) const;
  bool held_by_other(wire::Ipv4Addr ip, const std::string& key) const;
  bool used_by_other_port(wire::Ipv4Addr ip, uint32_t port) const;
  bool acceptable(wire::Ipv4Addr ip, const std::string& key, const wire::MacAddr& mac, uint32_t port) const;
  std::optional<wire::Ipv4Addr> choose(const wire::DhcpRepr& m, const std::string& key, uint32_t port);
  Record& take(wire::Ipv4Addr ip, const std::string& key);  // the client's record at ip, moved there
  void set_deadline(int64_t t) { next_deadline_ = std::min(next_deadline_, t); }

  // Build and send a reply to `m`; `yiaddr` unspecified for NAK and INFORM.
  void send_reply(const wire::DhcpRepr& m, wire::DhcpMessageType type, wire::Ipv4Addr yiaddr, bool with_lease,
                  const std::string& hostname, const UdpNat::Reply& reply, std::string_view nak_message = {});
  void nak(const wire::DhcpRepr& m, const UdpNat::Reply& reply, std::string_view why);

  Result<Reservations> parse_statics(std::string_view text) const;
  [[nodiscard]] Result<void> validate_reservation(const wire::MacAddr& mac, const Reservation& r) const;
  [[nodiscard]] Result<void> replace_statics(Reservations next);
  DhcpState state_with(const Reservations& res) const;
  void save();
  void restore();

  Stack& stack_;
  const Clock& clock_;
  std::string state_dir_;
  uint32_t lease_seconds_ = kDefaultLeaseSeconds;
  std::map<wire::Ipv4Addr, Record> addrs_;
  std::unordered_map<std::string, wire::Ipv4Addr> by_key_;  // client key -> its record's address
  Reservations reservations_;
  std::map<wire::Ipv4Addr, wire::MacAddr> reserved_ips_;  // the reverse of reservations_
  std::vector<uint8_t> search_;  // option 119 for NetConfig::domain, empty when it does not encode
  uint32_t cursor_ = 0;                // where the next search of the pool starts
  int64_t next_deadline_ = INT64_MAX;  // earliest `expires` poll() has to act on
  std::optional<int64_t> last_exhausted_log_;  // wall seconds of the last warning
  DhcpStats stats_;
  std::vector<uint8_t> tx_;  // scratch for replies
};

// /dhcp/leases, /dhcp/leases.json, /dhcp/static (read-write), /dhcp/stats,
// and the server's counters in /metrics.
void mount_dhcp_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, DhcpServer& dhcp);

}  // namespace berth::net
