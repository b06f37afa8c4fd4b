// `berth serve`: builds the tree, listens, runs the loop, cleans up.
#include <spdlog/spdlog.h>
#include <uv.h>

#include <sys/resource.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <random>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/log.h"
#include "net/host/driver.h"
#include "net/host/uv_dgram_host.h"
#include "net/host/uv_tcp_host.h"
#include "net/dhcp.h"
#include "net/dns.h"
#include "net/forward.h"
#include "net/host/uv_dns_upstream.h"
#include "net/icmp.h"
#include "net/link/links.h"
#include "net/ninep_service.h"
#include "net/tcp.h"
#include "net/tree.h"
#include "net/udp.h"
#include "pcap-ring/capture.h"
#include "pcap-ring/link.h"
#include "pcap-ring/tree.h"
#include "pcap-ring/uv_wakeups.h"
#include "server9p/base.h"
#include "storage/disk.h"
#include "server9p/transport.h"
#include "tools/serve.h"
#include "version.h"

using namespace berth;

std::string default_socket_path() {
  const char* rt = std::getenv("XDG_RUNTIME_DIR");
  return std::string(rt && *rt ? rt : "/run") + "/berth/berth.sock";
}

namespace {

void serve_usage(FILE* to) {
  std::fprintf(to,
               "usage: berth serve [--9p unix:PATH|tcp:HOST:PORT]... [--link SPEC]... [--subnet CIDR] [--mtu N]\n"
               "                   [--host-loopback allow|deny] [--forward SPEC]... [--allow-privileged-ports]\n"
               "                   [--allowed-bind-addresses LIST] [--dhcp-static MAC=IP[=NAME]]...\n"
               "                   [--hosts FILE] [--dns-upstream ADDR[:PORT]]... [--state-dir DIR] [--log-level L]\n"
               "                   [--disk ID=PATH[,format=qcow2|raw][,nbd=unix:PATH|tcp:127.0.0.1:PORT]]...\n\n"
               "Serve Berth's control tree over 9P2000.L (also 9P2000.u and 9P2000), and translate\n"
               "the guests' network traffic on the links into host socket calls.\n\n"
               "  --9p ADDR        listen on ADDR; repeatable. Default: unix:%s\n"
               "                   tcp:HOST:PORT listens where told; use 127.0.0.1 to stay local.\n"
               "                   Port 0 picks a free port. Each bound address is printed as\n"
               "                   'berth: listening on ADDR'.\n"
               "  --link SPEC      a guest link, repeatable: tap:IFNAME[@NETNS] (a TAP device, in a\n"
               "                   network namespace from `ip netns add`), qemu:PATH (QEMU -netdev\n"
               "                   stream), vfkit:PATH (unix datagrams), vmnet:PATH (VPNKit protocol)\n"
               "  --subnet CIDR    guest subnet (default 192.168.65.0/24: gateway .1, host alias .2)\n"
               "  --mtu N          link MTU, 576..65520 (default 1500)\n"
               "  --host-loopback allow|deny\n"
               "                   whether the host alias reaches the host's 127.0.0.1 (default allow)\n"
               "  --forward SPEC   a port forward, as written into /ports/ctl; repeatable:\n"
               "                   tcp:HOSTIP:HOSTPORT:tcp:GUESTIP:GUESTPORT, udp:...:udp:...,\n"
               "                   unix:HOSTPATH:tcp:GUESTIP:GUESTPORT (IPv6 host addresses in brackets)\n"
               "  --allow-privileged-ports\n"
               "                   let forwards listen on host ports below 1024\n"
               "  --allowed-bind-addresses LIST\n"
               "                   comma-separated host addresses forwards may listen on\n"
               "                   (default 127.0.0.1,::1,0.0.0.0,::)\n"
               "  --dhcp-static MAC=IP[=NAME]\n"
               "                   a DHCP reservation (also /dhcp/static); repeatable\n"
               "  --hosts FILE     extra DNS records in hosts-file syntax, re-read when it changes\n"
               "  --dns-upstream ADDR[:PORT]\n"
               "                   resolver to forward DNS queries to ([v6]:port); repeatable.\n"
               "                   Default: the nameservers of /etc/resolv.conf (watched)\n"
               "  --disk ID=PATH[,format=qcow2|raw][,nbd=unix:PATH|tcp:127.0.0.1:PORT]\n"
               "                   a disk image: /disks/ID in the tree, exported over NBD when nbd= is given\n"
               "  --state-dir DIR  keep forwards, DHCP leases and reservations here across restarts\n"
               "  --log-level L    trace, debug, info (default), warn, error, off\n",
               default_socket_path().c_str());
}

}  // namespace

int serve_main(int argc, char** argv) { return serve_with(argc, argv, nullptr); }

int serve_with(int argc, char** argv, ServeExtension* ext) {
  const char* cmd = ext ? ext->command() : "serve";
  std::vector<std::string> addrs, link_specs, forward_specs, dhcp_statics, dns_upstreams, disk_specs;
  std::string hosts_file;
  net::ForwardPolicy fwd_policy;
  std::string log_level = "info", state_dir;
  net::NetConfig net_cfg;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto need = [&](const char* what) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "berth %s: %s needs a value\n", cmd, what);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      if (ext) ext->usage(stdout);
      serve_usage(stdout);
      return 0;
    }
    if (ext) {
      int used = ext->parse_option(argc, argv, i);
      if (used < 0) return 2;
      if (used > 0) continue;
    }
    if (a == "--9p") {
      addrs.emplace_back(need("--9p"));
    } else if (a == "--log-level") {
      log_level = need("--log-level");
    } else if (a == "--link") {
      link_specs.emplace_back(need("--link"));
    } else if (a == "--subnet") {
      if (auto r = net_cfg.set_subnet(need("--subnet")); !r) {
        std::fprintf(stderr, "berth %s: %s\n", cmd, r.error().message.c_str());
        return 2;
      }
    } else if (a == "--mtu") {
      const char* v = need("--mtu");
      char* end = nullptr;
      unsigned long m = std::strtoul(v, &end, 10);
      auto r = (*v && end && !*end) ? net_cfg.set_mtu(uint32_t(std::min(m, 1ul << 20)))
                                    : Result<void>(make_error(EINVAL, std::string("bad MTU '") + v + "'"));
      if (!r) {
        std::fprintf(stderr, "berth %s: %s\n", cmd, r.error().message.c_str());
        return 2;
      }
    } else if (a == "--host-loopback") {
      std::string v = need("--host-loopback");
      if (v != "allow" && v != "deny") {
        std::fprintf(stderr, "berth %s: --host-loopback takes allow or deny\n", cmd);
        return 2;
      }
      net_cfg.host_loopback = v == "allow";
    } else if (a == "--forward") {
      forward_specs.emplace_back(need("--forward"));
    } else if (a == "--allow-privileged-ports") {
      fwd_policy.allow_privileged = true;
    } else if (a == "--allowed-bind-addresses") {
      if (auto r = fwd_policy.set_allowed(need("--allowed-bind-addresses")); !r) {
        std::fprintf(stderr, "berth %s: --allowed-bind-addresses: %s\n", cmd, r.error().message.c_str());
        return 2;
      }
    } else if (a == "--disk") {
      disk_specs.emplace_back(need("--disk"));
    } else if (a == "--dhcp-static") {
      dhcp_statics.emplace_back(need("--dhcp-static"));
    } else if (a == "--hosts") {
      hosts_file = need("--hosts");
    } else if (a == "--dns-upstream") {
      dns_upstreams.emplace_back(need("--dns-upstream"));
    } else if (a == "--state-dir") {
      state_dir = need("--state-dir");
    } else {
      std::fprintf(stderr, "berth %s: unknown option '%s'\n", cmd, a.c_str());
      if (ext) ext->usage(stderr);
      serve_usage(stderr);
      return 2;
    }
  }
  if (auto r = setup_logging(log_level); !r) {
    std::fprintf(stderr, "berth %s: %s\n", cmd, r.error().message.c_str());
    return 2;
  }
  if (ext) {
    if (auto r = ext->prepare(); !r) {
      std::fprintf(stderr, "berth %s: %s\n", cmd, r.error().message.c_str());
      return 1;
    }
  }
  if (addrs.empty()) addrs.push_back("unix:" + default_socket_path());
  if (!state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(state_dir, ec);
    if (ec) {
      std::fprintf(stderr, "berth %s: cannot create state dir %s: %s\n", cmd, state_dir.c_str(), ec.message().c_str());
      return 1;
    }
  }

  // Every translated flow holds a host socket: take the whole file limit
  // we are allowed (the flow tables are bounded well below it).
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) spdlog::warn("cannot raise the open-file limit: {}", strerror(errno));
  }

  uv_loop_t* loop = uv_default_loop();
  SystemClock clock;
  p9::Tree tree;
  p9::MetricsRegistry metrics;
  p9::ServerStats stats;
  metrics.add([&stats](p9::PromWriter& w) { stats.render(w); });
  auto base = p9::mount_base_tree(tree, metrics, clock, std::string("berth ") + BERTH_VERSION);

  // The network translator: switch + IPv4, then TCP, UDP and ICMP
  // translation to host sockets, and the gateway's 9P service on TCP 564.
  SystemMonoClock mono;
  net::Stack stack(net_cfg);
  net::UvTcpHost tcp_host(loop, mono);
  net::UvDgramHost dgram_host(loop, mono);
  std::random_device rd;
  uint64_t isn_secret = (uint64_t(rd()) << 32) | rd();
  net::Tcp tcp(stack, tcp_host, mono, isn_secret);
  tcp.add_service(564, net::NinepService::factory(tree, stats, clock));
  net::UdpNat udp(stack, dgram_host);
  net::IcmpEcho icmp(stack, dgram_host);
  stack.set_handler(net::wire::IpProtocol::Tcp, &tcp);
  stack.set_handler(net::wire::IpProtocol::Udp, &udp);
  stack.set_handler(net::wire::IpProtocol::Icmp, &icmp);
  net::NetDriver driver(loop, stack, mono);
  net::mount_net_tree(tree, metrics, stack, mono);

  // Gateway services: DHCP (UDP 67) and DNS (UDP and TCP 53).
  net::DhcpServer dhcp(stack, udp, clock, state_dir);
  for (auto& spec : dhcp_statics) {
    if (auto r = dhcp.add_static(spec); !r) {
      std::fprintf(stderr, "berth %s: --dhcp-static %s: %s\n", cmd, spec.c_str(), r.error().message.c_str());
      return 2;
    }
  }
  net::mount_dhcp_tree(tree, metrics, dhcp);
  uv_timer_t dhcp_timer;
  uv_timer_init(loop, &dhcp_timer);
  dhcp_timer.data = &dhcp;
  uv_timer_start(&dhcp_timer, [](uv_timer_t* t) { static_cast<net::DhcpServer*>(t->data)->poll(); }, 5000, 5000);
  uv_unref(reinterpret_cast<uv_handle_t*>(&dhcp_timer));

  net::UvDnsUpstream dns_upstream(loop, mono);
  net::DnsForwarder dns(udp, tcp, dns_upstream, mono, net_cfg, net::DnsForwarder::random_ids());
  dns.set_name_lookup([&dhcp](std::string_view name) { return dhcp.lookup_hostname(name); });
  for (auto& u : dns_upstreams) {
    if (auto r = dns.add_upstream(u); !r) {
      std::fprintf(stderr, "berth %s: --dns-upstream %s: %s\n", cmd, u.c_str(), r.error().message.c_str());
      return 2;
    }
  }
  if (!hosts_file.empty()) {
    if (auto r = dns.set_hosts_file(hosts_file); !r) {
      std::fprintf(stderr, "berth %s: --hosts %s: %s\n", cmd, hosts_file.c_str(), r.error().message.c_str());
      return 2;
    }
  }
  net::mount_dns_tree(tree, metrics, dns);

  // Port forwards: those saved in the state dir, then --forward.
  net::Forwarder forwarder(loop, tcp, udp, mono, net_cfg, fwd_policy, state_dir);
  net::mount_ports_tree(tree, metrics, forwarder);
  forwarder.restore();
  for (auto& spec : forward_specs) {
    auto parsed = net::parse_forward_spec(spec);
    bool have = false;
    for (uint32_t id : forwarder.ids()) have = have || (parsed && forwarder.bound_spec(id) == parsed->to_string());
    if (have) continue;
    auto id = forwarder.add(spec);
    if (!id) {
      std::fprintf(stderr, "berth %s: --forward %s: %s\n", cmd, spec.c_str(), id.error().message.c_str());
      forwarder.close();
      driver.close();
      uv_run(loop, UV_RUN_NOWAIT);
      return 1;
    }
    std::printf("berth: forward %u is %s\n", *id, forwarder.bound_spec(*id)->c_str());
  }
  // Packet capture: every link is wrapped, so rules see both directions.
  pcap::CaptureSet captures(clock);
  pcap::UvWakeups capture_wakeups(loop, captures);
  pcap::mount_pcap_tree(tree, metrics, captures, base.audit, clock);

  std::vector<std::unique_ptr<net::FrameLink>> links;
  for (auto& spec_text : link_specs) {
    auto spec = net::parse_link_spec(spec_text);
    auto link = spec ? net::make_link(loop, *spec, net_cfg.mtu + 14) : Result<std::unique_ptr<net::FrameLink>>(spec.error());
    if (link) link = pcap::wrap_link(std::move(link.value()), captures, uint32_t(links.size()));
    Result<uint32_t> port = link ? driver.attach(link->get()) : Result<uint32_t>(link.error());
    if (!port) {
      std::fprintf(stderr, "berth %s: --link %s: %s\n", cmd, spec_text.c_str(), port.error().message.c_str());
      if (link) (*link)->close();
      driver.close();
      uv_run(loop, UV_RUN_NOWAIT);
      return 1;
    }
    std::printf("berth: link %u is %s %s\n", *port, (*link)->type().c_str(), (*link)->peer().c_str());
    links.push_back(std::move(link.value()));
  }

  // Disks: /disks/<id>, and NBD exports.
  std::unique_ptr<storage::DiskSet> disks;
  if (!disk_specs.empty()) {
    auto d = storage::start_disks(loop, tree, metrics, disk_specs);
    if (!d) {
      std::fprintf(stderr, "berth %s: --disk: %s\n", cmd, d.error().message.c_str());
      return 1;
    }
    disks = std::move(d.value());
    for (auto& line : disks->announcements()) std::printf("%s\n", line.c_str());
  }

  p9::Server server(loop, tree, stats, clock);

  // Shutdown, from a signal or from the extension (the VM ended): the
  // extension first (it refers to the links, disks and tree), then serve's
  // own parts.
  std::signal(SIGPIPE, SIG_IGN);
  uv_signal_t sigint, sigterm;
  struct Stop {
    p9::Server* server;
    uv_loop_t* loop;
    uv_signal_t* sigs[2];
    std::vector<std::unique_ptr<net::FrameLink>>* links;
    net::NetDriver* driver;
    net::Forwarder* forwarder;
    std::unique_ptr<storage::DiskSet>* disks;
    pcap::UvWakeups* wakeups;
    ServeExtension* ext;
    bool done = false;
    int status = 0;
    void run(int st) {
      if (done) return;
      done = true;
      status = st;
      if (ext) ext->stop();
      server->close();
      for (auto& l : *links) l->close();
      forwarder->close();
      if (*disks) (*disks)->close();
      wakeups->close();
      driver->close();
      // Host sockets of live flows would keep the loop alive: stop it; the
      // translators close their sockets as they are destroyed.
      uv_stop(loop);
      for (auto* sig : sigs) uv_close(reinterpret_cast<uv_handle_t*>(sig), nullptr);
    }
  } stop{&server, loop, {&sigint, &sigterm}, &links, &driver, &forwarder, &disks, &capture_wakeups, ext};
  auto on_signal = [](uv_signal_t* h, int signum) {
    spdlog::info("caught signal {}, shutting down", signum);
    static_cast<Stop*>(h->data)->run(0);
  };
  for (auto [h, sig] : {std::pair{&sigint, SIGINT}, std::pair{&sigterm, SIGTERM}}) {
    uv_signal_init(loop, h);
    h->data = &stop;
    uv_signal_start(h, on_signal, sig);
  }

  if (ext) {
    ServeContext ctx;
    ctx.loop = loop;
    ctx.tree = &tree;
    ctx.metrics = &metrics;
    ctx.stats = &stats;
    ctx.clock = &clock;
    ctx.net = &net_cfg;
    ctx.disks = disks.get();
    ctx.attach_link = [&](net::FrameLink* link) -> Result<uint32_t> {
      auto wrapped = pcap::wrap_link(link, captures, uint32_t(links.size()));
      auto port = driver.attach(wrapped.get());
      if (!port) {
        wrapped->close();
        return port.error();
      }
      links.push_back(std::move(wrapped));
      return port;
    };
    ctx.shutdown = [&stop](int status) { stop.run(status); };
    if (auto r = ext->start(ctx); !r) {
      std::fprintf(stderr, "berth %s: %s\n", cmd, r.error().message.c_str());
      stop.run(1);
      uv_run(loop, UV_RUN_NOWAIT);
      return 1;
    }
  }

  for (auto& a : addrs) {
    auto bound = server.listen(a);
    if (!bound) {
      std::fprintf(stderr, "berth %s: %s\n", cmd, bound.error().message.c_str());
      stop.run(1);
      uv_run(loop, UV_RUN_NOWAIT);
      return 1;
    }
    std::printf("berth: listening on %s\n", bound->c_str());
  }
  std::fflush(stdout);
  spdlog::info("serving the control tree ({} listener{})", addrs.size(), addrs.size() == 1 ? "" : "s");

  uv_run(loop, UV_RUN_DEFAULT);
  spdlog::info("stopped");
  return stop.status;
}
