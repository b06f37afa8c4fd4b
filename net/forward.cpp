#include "net/forward.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "common/state_file.h"

namespace berth::net {

namespace {

std::string canonical_ip(std::string_view text) {
  std::string a(text);
  if (a.size() >= 2 && a.front() == '[' && a.back() == ']') a = a.substr(1, a.size() - 2);
  char buf[INET6_ADDRSTRLEN] = {};
  in_addr v4;
  in6_addr v6;
  if (inet_pton(AF_INET, a.c_str(), &v4) == 1) return inet_ntop(AF_INET, &v4, buf, sizeof buf);
  if (inet_pton(AF_INET6, a.c_str(), &v6) == 1) return inet_ntop(AF_INET6, &v6, buf, sizeof buf);
  return {};
}

// The host end of a tcp/udp spec as a socket address.
socklen_t host_sockaddr(const ForwardSpec& s, sockaddr_storage& ss) {
  ss = {};
  if (s.host_v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(s.host_port);
    inet_pton(AF_INET6, s.host_ip.c_str(), &a->sin6_addr);
    return sizeof *a;
  }
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  a->sin_family = AF_INET;
  a->sin_port = htons(s.host_port);
  inet_pton(AF_INET, s.host_ip.c_str(), &a->sin_addr);
  return sizeof *a;
}

uint16_t bound_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return 0;
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

std::string sockaddr_key(const sockaddr* sa) {
  size_t len = sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  return std::string(reinterpret_cast<const char*>(sa), len);
}

Error bind_error(int err, const ForwardSpec& s) {
  std::string where = s.proto == ForwardProto::Unix ? s.host_path
                                                    : fmt::format("{}:{}", s.host_v6 ? "[" + s.host_ip + "]" : s.host_ip,
                                                                  s.host_port);
  if (err == EADDRINUSE) return make_error(EADDRINUSE, fmt::format("{} is already in use", where));
  return make_error(err, fmt::format("cannot listen on {}: {}", where, std::strerror(err)));
}

// What --state-dir keeps: the forwards as bound.
struct SavedForward {
  uint32_t id = 0;
  std::string spec;
  std::string name;
  template <class A>
  void serialize(A& ar) {
    ar(cereal::make_nvp("id", id), cereal::make_nvp("spec", spec), cereal::make_nvp("name", name));
  }
};

template <class H>
void close_and_free(H* h) {
  h->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(h), [](uv_handle_t* x) { delete reinterpret_cast<H*>(x); });
}

}  // namespace

Result<void> ForwardPolicy::set_allowed(std::string_view list) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t comma = list.find(',', pos);
    std::string_view item = list.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
    if (!item.empty()) {
      std::string c = canonical_ip(item);
      if (c.empty()) return make_error(EINVAL, fmt::format("'{}' is not an IP address", item));
      out.push_back(c);
    }
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  if (out.empty()) return make_error(EINVAL, "no addresses given");
  allowed_bind = std::move(out);
  return {};
}

struct Forwarder::UdpClient {
  std::string addr;  // the client's sockaddr bytes
  uint16_t gw_port = 0;
  Instant last{};
};

struct Forwarder::Fwd {
  Forwarder* owner = nullptr;
  uint32_t id = 0;
  ForwardSpec spec;  // as bound
  std::string name;  // /port entry, if made there
  int fd = -1;       // listening socket (tcp, unix)
  uv_poll_t* poll = nullptr;
  uv_udp_t* udp = nullptr;
  uv_timer_t* timer = nullptr;
  uint64_t total = 0;                        // connections (or UDP clients) ever
  uint64_t closed_to_guest = 0, closed_to_host = 0;  // bytes of finished connections
  uint64_t udp_to_guest = 0, udp_to_host = 0;
  std::unordered_map<std::string, UdpClient> udp_clients;  // by client address
  std::unordered_map<uint16_t, std::string> udp_by_port;   // gateway port -> client address
  uint8_t rx[65536];
};

Forwarder::Forwarder(uv_loop_t* loop, Tcp& tcp, UdpNat& udp, const MonoClock& clock, const NetConfig& cfg,
                     ForwardPolicy policy, std::string state_dir)
    : loop_(loop), tcp_(tcp), udp_(udp), clock_(clock), cfg_(cfg), policy_(std::move(policy)),
      state_dir_(std::move(state_dir)) {
  tcp_.set_on_tag_closed([this](uint32_t tag, uint64_t to_guest, uint64_t to_host) {
    auto it = fwds_.find(tag);
    if (it == fwds_.end()) return;
    it->second->closed_to_guest += to_guest;
    it->second->closed_to_host += to_host;
  });
}

Forwarder::~Forwarder() {
  tcp_.set_on_tag_closed({});
  close();
}

void Forwarder::close() {
  for (auto& [id, f] : fwds_) stop(*f);
}

void Forwarder::stop(Fwd& f) {
  if (f.poll) {
    uv_poll_stop(f.poll);
    close_and_free(f.poll);
    f.poll = nullptr;
  }
  if (f.fd >= 0) {
    ::close(f.fd);
    f.fd = -1;
    if (f.spec.proto == ForwardProto::Unix) ::unlink(f.spec.host_path.c_str());
  }
  if (f.udp) {
    uv_udp_recv_stop(f.udp);
    close_and_free(f.udp);
    f.udp = nullptr;
  }
  if (f.timer) {
    uv_timer_stop(f.timer);
    close_and_free(f.timer);
    f.timer = nullptr;
  }
  for (auto& [port, addr] : f.udp_by_port) udp_.remove_service(port);
  f.udp_by_port.clear();
  f.udp_clients.clear();
}

Result<uint32_t> Forwarder::add(std::string_view text, std::string name) {
  auto fail = [&](Error e) -> Result<uint32_t> {
    stats_.add_errors++;
    return e;
  };
  auto parsed = parse_forward_spec(text);
  if (!parsed) return fail(parsed.error());
  ForwardSpec spec = *parsed;
  if (!cfg_.subnet.contains(spec.guest_ip) || spec.guest_ip == cfg_.gateway || spec.guest_ip == cfg_.host_alias ||
      spec.guest_ip == cfg_.subnet.network() || spec.guest_ip == cfg_.subnet.broadcast())
    return fail(make_error(EINVAL, fmt::format("guest address {} is not a guest's address in {}",
                                               spec.guest_ip.to_string(), cfg_.subnet.to_string())));
  if (fwds_.size() >= kMaxForwards)
    return fail(make_error(ENOSPC, fmt::format("too many forwards (at most {})", kMaxForwards)));
  if (spec.proto != ForwardProto::Unix) {
    if (spec.host_port != 0 && spec.host_port < 1024 && !policy_.allow_privileged)
      return fail(make_error(EACCES, fmt::format("host port {} is privileged (below 1024); start berth serve with "
                                                 "--allow-privileged-ports to allow it",
                                                 spec.host_port)));
    if (std::find(policy_.allowed_bind.begin(), policy_.allowed_bind.end(), spec.host_ip) ==
        policy_.allowed_bind.end()) {
      std::string allowed;
      for (auto& a : policy_.allowed_bind) allowed += (allowed.empty() ? "" : ",") + a;
      return fail(make_error(EACCES, fmt::format("host address {} is not allowed (--allowed-bind-addresses is {})",
                                                 spec.host_ip, allowed)));
    }
  }
  auto f = std::make_unique<Fwd>();
  f->owner = this;
  f->spec = spec;
  f->name = std::move(name);
  auto started = spec.proto == ForwardProto::Udp ? start_udp(*f) : start_tcp(*f);
  if (!started) {
    stop(*f);
    return fail(started.error());
  }
  uint32_t id = next_id_++;
  while (fwds_.count(id)) id = next_id_++;
  f->id = id;
  if (f->poll) f->poll->data = f.get();
  if (f->udp) f->udp->data = f.get();
  if (f->timer) f->timer->data = f.get();
  spdlog::info("forward {}: {}", id, f->spec.to_string());
  fwds_.emplace(id, std::move(f));
  stats_.added++;
  save();
  return id;
}

Result<void> Forwarder::remove(uint32_t id) {
  auto it = fwds_.find(id);
  if (it == fwds_.end()) return make_error(ENOENT, fmt::format("no forward {}", id));
  spdlog::info("forward {} removed: {}", id, it->second->spec.to_string());
  stop(*it->second);
  fwds_.erase(it);
  stats_.removed++;
  save();
  return {};
}

Result<void> Forwarder::start_tcp(Fwd& f) {
  const ForwardSpec& s = f.spec;
  int fd;
  if (s.proto == ForwardProto::Unix) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error(errno, fmt::format("socket: {}", std::strerror(errno)));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, s.host_path.c_str(), s.host_path.size() + 1);
    // A socket file nobody listens on is left over from an earlier run.
    struct stat st;
    if (lstat(s.host_path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        ::close(fd);
        return make_error(EADDRINUSE, fmt::format("{} exists and is not a socket", s.host_path));
      }
      int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      bool live = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
      if (probe >= 0) ::close(probe);
      if (live) {
        ::close(fd);
        return bind_error(EADDRINUSE, s);
      }
      ::unlink(s.host_path.c_str());
    }
    mode_t old = umask(0177);  // 0600: like the control socket
    int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    int err = errno;
    umask(old);
    if (rc < 0) {
      ::close(fd);
      return bind_error(err, s);
    }
  } else {
    sockaddr_storage ss;
    socklen_t len = host_sockaddr(s, ss);
    fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return make_error(errno, fmt::format("socket: {}", std::strerror(errno)));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s.host_v6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) {
      int err = errno;
      ::close(fd);
      return bind_error(err, s);
    }
    f.spec.host_port = bound_port(fd);
  }
  f.fd = fd;
  if (::listen(fd, 512) < 0) return make_error(errno, fmt::format("listen: {}", std::strerror(errno)));
  f.poll = new uv_poll_t{};
  int rc = uv_poll_init(loop_, f.poll, fd);
  if (rc < 0) {
    delete f.poll;
    f.poll = nullptr;
    return make_error(-rc, fmt::format("uv_poll_init: {}", uv_strerror(rc)));
  }
  f.poll->data = &f;
  uv_poll_start(f.poll, UV_READABLE, on_accept);
  return {};
}

void Forwarder::on_accept(uv_poll_t* h, int status, int) {
  auto* f = static_cast<Fwd*>(h->data);
  if (!f || status < 0) return;
  f->owner->accept_all(*f);
}

void Forwarder::accept_all(Fwd& f) {
  // A bounded batch per wakeup keeps the loop fair to everything else.
  for (int i = 0; i < 64; i++) {
    int c = ::accept4(f.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) return;
      stats_.accept_errors++;
      spdlog::warn("forward {}: accept: {}", f.id, std::strerror(errno));
      return;
    }
    stats_.accepted++;
    f.total++;
    auto r = tcp_.open_to_guest(c, f.spec.guest_ip, f.spec.guest_port, f.id, clock_.now());
    if (!r) {
      stats_.open_errors++;
      spdlog::debug("forward {}: {}", f.id, r.error().message);
    }
  }
}

Result<void> Forwarder::start_udp(Fwd& f) {
  sockaddr_storage ss;
  host_sockaddr(f.spec, ss);
  f.udp = new uv_udp_t{};
  uv_udp_init(loop_, f.udp);
  f.udp->data = &f;
  int rc = uv_udp_bind(f.udp, reinterpret_cast<sockaddr*>(&ss), f.spec.host_v6 ? UV_UDP_IPV6ONLY : 0);
  if (rc < 0) return bind_error(-rc, f.spec);
  sockaddr_storage got{};
  int len = sizeof got;
  if (uv_udp_getsockname(f.udp, reinterpret_cast<sockaddr*>(&got), &len) == 0)
    f.spec.host_port = ntohs(got.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&got)->sin6_port
                                                       : reinterpret_cast<sockaddr_in*>(&got)->sin_port);
  rc = uv_udp_recv_start(f.udp, on_udp_alloc, on_udp_recv);
  if (rc < 0) return make_error(-rc, fmt::format("uv_udp_recv_start: {}", uv_strerror(rc)));
  f.timer = new uv_timer_t{};
  uv_timer_init(loop_, f.timer);
  f.timer->data = &f;
  uv_timer_start(f.timer, on_udp_timer, 5000, 5000);
  uv_unref(reinterpret_cast<uv_handle_t*>(f.timer));
  return {};
}

void Forwarder::on_udp_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* f = static_cast<Fwd*>(h->data);
  if (!f) {
    *buf = uv_buf_init(nullptr, 0);
    return;
  }
  *buf = uv_buf_init(reinterpret_cast<char*>(f->rx), sizeof f->rx);
}

void Forwarder::on_udp_recv(uv_udp_t* h, ssize_t n, const uv_buf_t* buf, const sockaddr* from, unsigned) {
  auto* f = static_cast<Fwd*>(h->data);
  if (!f || n < 0 || !from) return;
  f->owner->udp_from_host(*f, Bytes(reinterpret_cast<const uint8_t*>(buf->base), size_t(n)), from);
}

uint16_t Forwarder::alloc_gateway_port() {
  // Gateway source ports for UDP forwards: 40000..59999, skipping services.
  constexpr uint32_t kFirst = 40000, kCount = 20000;
  for (uint32_t tries = 0; tries < kCount; tries++) {
    uint16_t p = uint16_t(kFirst + next_gw_port_++ % kCount);
    if (next_gw_port_ >= kCount) next_gw_port_ = 0;
    if (!udp_.has_service(p)) return p;
  }
  return 0;
}

void Forwarder::udp_from_host(Fwd& f, Bytes data, const sockaddr* from) {
  Instant now = clock_.now();
  std::string key = sockaddr_key(from);
  auto it = f.udp_clients.find(key);
  if (it == f.udp_clients.end()) {
    if (f.udp_clients.size() >= kMaxUdpClients) expire_udp(f);
    uint16_t port = f.udp_clients.size() < kMaxUdpClients ? alloc_gateway_port() : 0;
    if (!port) {
      stats_.udp_clients_refused++;
      return;
    }
    it = f.udp_clients.emplace(key, UdpClient{key, port, now}).first;
    f.udp_by_port[port] = key;
    f.total++;
    uint32_t id = f.id;
    // The guest's replies to the gateway port go back to this client.
    udp_.add_service(port, [this, id, port](const GuestPacket& p, UdpNat::Reply) {
      auto fi = fwds_.find(id);
      if (fi == fwds_.end()) return;
      Fwd& g = *fi->second;
      auto bp = g.udp_by_port.find(port);
      if (bp == g.udp_by_port.end() || !g.udp) return;
      auto ci = g.udp_clients.find(bp->second);
      if (ci == g.udp_clients.end()) return;
      if (p.ip.src != g.spec.guest_ip) return;  // only the forward's guest answers
      Bytes payload = UdpNat::udp_payload(p);
      ci->second.last = clock_.now();
      uv_buf_t b = uv_buf_init(const_cast<char*>(reinterpret_cast<const char*>(payload.data())),
                               unsigned(payload.size()));
      const auto* to = reinterpret_cast<const sockaddr*>(ci->second.addr.data());
      if (uv_udp_try_send(g.udp, &b, 1, to) >= 0) g.udp_to_host += payload.size();
    });
  }
  it->second.last = now;
  if (udp_.send_from_gateway(it->second.gw_port, f.spec.guest_ip, f.spec.guest_port, data))
    f.udp_to_guest += data.size();
}

void Forwarder::drop_udp_client(Fwd& f, uint16_t gw_port) {
  udp_.remove_service(gw_port);
  auto it = f.udp_by_port.find(gw_port);
  if (it == f.udp_by_port.end()) return;
  f.udp_clients.erase(it->second);
  f.udp_by_port.erase(it);
}

void Forwarder::expire_udp(Fwd& f) {
  Instant now = clock_.now();
  std::vector<uint16_t> idle;
  for (auto& [key, c] : f.udp_clients)
    if (now - c.last >= kUdpIdle) idle.push_back(c.gw_port);
  for (uint16_t p : idle) drop_udp_client(f, p);
}

void Forwarder::on_udp_timer(uv_timer_t* t) {
  auto* f = static_cast<Fwd*>(t->data);
  if (f) f->owner->expire_udp(*f);
}

std::optional<std::string> Forwarder::bound_spec(uint32_t id) const {
  auto it = fwds_.find(id);
  if (it == fwds_.end()) return std::nullopt;
  return it->second->spec.to_string();
}

std::optional<uint32_t> Forwarder::by_name(std::string_view name) const {
  for (auto& [id, f] : fwds_)
    if (!f->name.empty() && f->name == name) return id;
  return std::nullopt;
}

std::string Forwarder::name_of(uint32_t id) const {
  auto it = fwds_.find(id);
  return it == fwds_.end() ? std::string() : it->second->name;
}

std::vector<uint32_t> Forwarder::ids() const {
  std::vector<uint32_t> out;
  for (auto& [id, f] : fwds_) out.push_back(id);
  return out;
}

std::optional<std::string> Forwarder::render(uint32_t id) const {
  auto it = fwds_.find(id);
  if (it == fwds_.end()) return std::nullopt;
  const Fwd& f = *it->second;
  uint64_t active, to_guest, to_host;
  if (f.spec.proto == ForwardProto::Udp) {
    active = f.udp_clients.size();
    to_guest = f.udp_to_guest;
    to_host = f.udp_to_host;
  } else {
    auto t = tcp_.tag_totals(id);
    active = t.active;
    to_guest = f.closed_to_guest + t.to_guest;
    to_host = f.closed_to_host + t.to_host;
  }
  return fmt::format("spec {}\nname {}\nactive {}\ntotal {}\nbytes_to_guest {}\nbytes_to_host {}\n",
                     f.spec.to_string(), f.name.empty() ? "-" : f.name, active, f.total, to_guest, to_host);
}

std::string Forwarder::render_stats() const {
  return fmt::format(
      "forwards {}\nforwards_added {}\nforwards_removed {}\nforward_add_errors {}\nforward_accepted {}\n"
      "forward_accept_errors {}\nforward_open_errors {}\nforward_udp_clients_refused {}\n",
      fwds_.size(), stats_.added, stats_.removed, stats_.add_errors, stats_.accepted, stats_.accept_errors,
      stats_.open_errors, stats_.udp_clients_refused);
}

void Forwarder::save() const {
  if (state_dir_.empty() || restoring_) return;
  std::vector<SavedForward> out;
  for (auto& [id, f] : fwds_) out.push_back(SavedForward{id, f->spec.to_string(), f->name});
  if (auto r = save_state(state_dir_, "forwards", out); !r)
    spdlog::warn("cannot save forwards: {}", r.error().message);
}

void Forwarder::restore() {
  auto saved = load_state<std::vector<SavedForward>>(state_dir_, "forwards");
  if (!saved) return;
  restoring_ = true;
  for (auto& s : *saved) {
    uint32_t keep = next_id_;
    if (s.id && !fwds_.count(s.id)) next_id_ = s.id;
    auto r = add(s.spec, s.name);
    next_id_ = std::max(keep, next_id_);
    if (!r) spdlog::warn("forward {} ({}) not restored: {}", s.id, s.spec, r.error().message);
    else spdlog::info("forward {} restored", *r);
  }
  restoring_ = false;
  save();
}

// ---------------------------------------------------------------------------
// The tree.

namespace {

Result<uint32_t> parse_id(std::string_view s) {
  uint32_t v = 0;
  if (s.empty() || s.size() > 9) return make_error(EINVAL, fmt::format("bad forward id '{}'", s));
  for (char c : s) {
    if (c < '0' || c > '9') return make_error(EINVAL, fmt::format("bad forward id '{}'", s));
    v = v * 10 + uint32_t(c - '0');
  }
  return v;
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

}  // namespace

void mount_ports_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, Forwarder& fwd) {
  Forwarder* F = &fwd;
  auto ports = std::make_shared<p9::Dir>("ports", "port forwards: write a spec into ctl; rm ID removes one", 0755);
  tree.root()->add(ports);
  ports->add(std::make_shared<p9::CtlFile>(
      "ctl", "write a forward spec (tcp:HOSTIP:HOSTPORT:tcp:GUESTIP:GUESTPORT, udp:..., unix:PATH:tcp:...) or 'rm ID'",
      [F](std::string_view cmd) -> Result<std::string> {
        std::string c = trim(cmd);
        if (c.starts_with("rm ") || c.starts_with("rm\t")) {
          auto id = parse_id(trim(std::string_view(c).substr(3)));
          if (!id) return id.error();
          if (auto r = F->remove(*id); !r) return r.error();
          return fmt::format("removed {}", *id);
        }
        auto id = F->add(c);
        if (!id) return id.error();
        return fmt::format("{} {}", *id, *F->bound_spec(*id));
      },
      std::string("forward spec or 'rm ID'; ") + kForwardGrammar));
  ports->add(std::make_shared<p9::StateFile>("stats", "port forward counters", [F] { return F->render_stats(); }));
  // Nodes are kept per id, so a forward's file keeps its qid.
  auto files = std::make_shared<std::map<uint32_t, p9::NodePtr>>();
  ports->set_generator([F, files] {
    std::vector<p9::NodePtr> out;
    auto live = F->ids();
    std::erase_if(*files, [&](auto& kv) { return !std::binary_search(live.begin(), live.end(), kv.first); });
    for (uint32_t id : live) {
      auto& node = (*files)[id];
      if (!node)
        node = std::make_shared<p9::StateFile>(std::to_string(id), "a port forward: its spec and counters",
                                               [F, id] { return F->render(id).value_or(""); });
      out.push_back(node);
    }
    return out;
  });
  ports->set_unlink([F](std::string_view name) -> Result<void> {
    auto id = parse_id(name);
    if (!id) return make_error(ENOENT, fmt::format("no forward {}", name));
    return F->remove(*id);
  });

  // VPNKit's tree: mkdir NAME, then write a spec into NAME/ctl and read
  // back "OK spec" or "ERROR message". rmdir NAME removes the forward.
  // Unlike VPNKit, clunking the ctl fid leaves the forward in place.
  auto port = std::make_shared<p9::Dir>("port", "VPNKit-compatible forwards: mkdir NAME, write a spec to NAME/ctl",
                                        0755);
  tree.root()->add(port);
  auto entries = std::make_shared<std::map<std::string, p9::NodePtr, std::less<>>>();
  auto make_entry = [F](const std::string& name) {
    auto dir = std::make_shared<p9::Dir>(name, "a VPNKit-style forward: write its spec into ctl", 0755);
    dir->add(std::make_shared<p9::CtlFile>(
        "ctl", "write a forward spec; read back OK SPEC or ERROR MESSAGE",
        [F, name](std::string_view cmd) -> Result<std::string> {
          if (auto old = F->by_name(name)) {
            if (auto r = F->remove(*old); !r) return r.error();
          }
          auto id = F->add(trim(cmd), name);
          if (!id) return id.error();
          return *F->bound_spec(*id);
        },
        kForwardGrammar));
    return dir;
  };
  port->set_generator([F, entries, make_entry] {
    // Forwards restored from the state dir get their entries back.
    for (uint32_t id : F->ids()) {
      auto name = F->name_of(id);
      if (!name.empty() && !entries->count(name) && entries->size() < Forwarder::kMaxForwards)
        entries->emplace(name, make_entry(name));
    }
    std::vector<p9::NodePtr> out;
    for (auto& [name, node] : *entries) out.push_back(node);
    return out;
  });
  port->set_mkdir([entries, make_entry](std::string_view name, uint32_t) -> Result<p9::NodePtr> {
    if (name.empty() || name.size() > 255 || name == "." || name == ".." || name.find('/') != std::string_view::npos)
      return make_error(EINVAL, "bad entry name");
    if (entries->count(name)) return make_error(EEXIST, fmt::format("{} exists", name));
    if (entries->size() >= Forwarder::kMaxForwards) return make_error(ENOSPC, "too many /port entries");
    p9::NodePtr node = make_entry(std::string(name));
    entries->emplace(std::string(name), node);
    return node;
  });
  port->set_unlink([F, entries](std::string_view name) -> Result<void> {
    auto it = entries->find(name);
    if (it == entries->end()) return make_error(ENOENT, fmt::format("no entry {}", name));
    if (auto id = F->by_name(name)) (void)F->remove(*id);
    entries->erase(it);
    return {};
  });

  metrics.add([F](p9::PromWriter& w) {
    const ForwardStats& s = F->stats();
    w.family("berth_forwards", "gauge", "port forwards in place");
    w.sample("berth_forwards", F->size());
    w.family("berth_forward_connections_total", "counter", "connections accepted by port forwards");
    w.sample("berth_forward_connections_total", s.accepted);
    w.family("berth_forward_errors_total", "counter", "port forward errors, by kind");
    w.sample("berth_forward_errors_total", s.add_errors, "kind=\"add\"");
    w.sample("berth_forward_errors_total", s.accept_errors, "kind=\"accept\"");
    w.sample("berth_forward_errors_total", s.open_errors, "kind=\"open\"");
    w.sample("berth_forward_errors_total", s.udp_clients_refused, "kind=\"udp_clients_full\"");
  });
}

}  // namespace berth::net
