// Port forwards: host listeners whose connections and datagrams are carried
// into a guest through the translator (DESIGN.md: /ports, /port).
//
//  - TCP and unix: the host listens; each accepted connection becomes an
//    active open from the gateway to GUESTIP:GUESTPORT (Tcp::open_to_guest).
//    Data, half-close and resets are carried both ways by the translator,
//    with the same flow control as guest-initiated connections.
//  - UDP: the host socket is bound to HOSTIP:HOSTPORT; each host client
//    (address and port) gets its own gateway source port toward the guest,
//    so the guest's replies find their client. At most kMaxUdpClients
//    clients per forward; a client idle for kUdpIdle is forgotten.
//  - Policy: host ports below 1024 need allow_privileged; host addresses
//    must be in allowed_bind (default 127.0.0.1, ::1, 0.0.0.0, ::). Errors
//    carry errno values for the ctl file: EINVAL (bad spec, with the
//    grammar), EADDRINUSE, EACCES, ENOSPC (kMaxForwards).
//  - Host port 0 binds any free port; the spec "as bound" names it.
//  - With a state dir, the forwards are saved (as bound) on every change
//    and bound again by restore().
//
// Everything runs on the loop thread.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "net/config.h"
#include "net/forward_spec.h"
#include "net/tcp.h"
#include "net/udp.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

namespace berth::net {

struct ForwardPolicy {
  bool allow_privileged = false;
  std::vector<std::string> allowed_bind{"127.0.0.1", "::1", "0.0.0.0", "::"};  // canonical text
  // "ADDR,ADDR,..." (IPv6 with or without brackets) replaces allowed_bind.
  [[nodiscard]] Result<void> set_allowed(std::string_view list);
};

struct ForwardStats {
  uint64_t added = 0, removed = 0, add_errors = 0;
  uint64_t accepted = 0, accept_errors = 0, open_errors = 0;
  uint64_t udp_clients_refused = 0;  // a forward's client table was full
};

class Forwarder {
 public:
  static constexpr size_t kMaxForwards = 256;
  static constexpr size_t kMaxUdpClients = 256;
  static constexpr std::chrono::seconds kUdpIdle{60};

  Forwarder(uv_loop_t* loop, Tcp& tcp, UdpNat& udp, const MonoClock& clock, const NetConfig& cfg,
            ForwardPolicy policy, std::string state_dir);
  ~Forwarder();
  Forwarder(const Forwarder&) = delete;
  Forwarder& operator=(const Forwarder&) = delete;

  // Parse, check, bind and start a forward. `name` is the /port entry that
  // made it (VPNKit's tree), if any. Returns the new forward's id.
  [[nodiscard]] Result<uint32_t> add(std::string_view spec, std::string name = {});
  [[nodiscard]] Result<void> remove(uint32_t id);
  // The forward's spec as bound ("tcp:127.0.0.1:40123:tcp:..."), if it exists.
  std::optional<std::string> bound_spec(uint32_t id) const;
  std::optional<uint32_t> by_name(std::string_view name) const;
  std::vector<uint32_t> ids() const;  // ascending
  std::string name_of(uint32_t id) const;  // the /port entry, or empty
  // /ports/<id>: the spec and counters, "key value" lines.
  std::optional<std::string> render(uint32_t id) const;
  std::string render_stats() const;
  const ForwardStats& stats() const { return stats_; }
  size_t size() const { return fwds_.size(); }

  // Bind the forwards saved in the state dir again; failures are logged.
  void restore();
  // Stop listening (at shutdown, before the loop's last run).
  void close();

 private:
  struct Fwd;
  struct UdpClient;
  static void on_accept(uv_poll_t* h, int status, int events);
  static void on_udp_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void on_udp_recv(uv_udp_t* h, ssize_t n, const uv_buf_t* buf, const sockaddr* from, unsigned flags);
  static void on_udp_timer(uv_timer_t* t);
  Result<void> start_tcp(Fwd& f);
  Result<void> start_udp(Fwd& f);
  void accept_all(Fwd& f);
  void udp_from_host(Fwd& f, Bytes data, const sockaddr* from);
  void expire_udp(Fwd& f);
  void drop_udp_client(Fwd& f, uint16_t gw_port);
  uint16_t alloc_gateway_port();
  void stop(Fwd& f);
  void save() const;

  uv_loop_t* loop_;
  Tcp& tcp_;
  UdpNat& udp_;
  const MonoClock& clock_;
  const NetConfig& cfg_;
  ForwardPolicy policy_;
  std::string state_dir_;
  std::map<uint32_t, std::unique_ptr<Fwd>> fwds_;
  uint32_t next_id_ = 1;
  uint16_t next_gw_port_ = 0;
  bool restoring_ = false;
  ForwardStats stats_;
};

// /ports/ctl, /ports/<id>, the VPNKit-compatible /port/ tree, /ports/stats,
// and metrics.
void mount_ports_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, Forwarder& fwd);

}  // namespace berth::net
