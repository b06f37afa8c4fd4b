// Port forwards: the spec grammar (net/forward_spec.h) from fixtures, and the
// Forwarder's policy and bookkeeping over real loopback sockets
// (net/forward.h). Data through forwards is proven by tests/peers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/state_file.h"
#include "net/forward.h"
#include "net/host/uv_dgram_host.h"
#include "net/host/uv_tcp_host.h"
#include "net/stack.h"

using namespace berth;
using namespace berth::net;

TEST_CASE("forward spec: the three forms parse and print back", "[forward]") {
  auto t = parse_forward_spec("tcp:127.0.0.1:8080:tcp:192.168.65.3:80");
  REQUIRE(t.ok());
  CHECK(t->proto == ForwardProto::Tcp);
  CHECK(t->host_ip == "127.0.0.1");
  CHECK_FALSE(t->host_v6);
  CHECK(t->host_port == 8080);
  CHECK(t->guest_ip == wire::Ipv4Addr(192, 168, 65, 3));
  CHECK(t->guest_port == 80);
  CHECK(t->to_string() == "tcp:127.0.0.1:8080:tcp:192.168.65.3:80");

  auto u = parse_forward_spec("udp:[::1]:0:udp:192.168.65.9:53\n");
  REQUIRE(u.ok());
  CHECK(u->proto == ForwardProto::Udp);
  CHECK(u->host_v6);
  CHECK(u->host_ip == "::1");
  CHECK(u->host_port == 0);
  CHECK(u->to_string() == "udp:[::1]:0:udp:192.168.65.9:53");

  auto x = parse_forward_spec("unix:/tmp/a:b.sock:tcp:192.168.65.3:22");
  REQUIRE(x.ok());
  CHECK(x->proto == ForwardProto::Unix);
  CHECK(x->host_path == "/tmp/a:b.sock");
  CHECK(x->to_string() == "unix:/tmp/a:b.sock:tcp:192.168.65.3:22");

  auto v6 = parse_forward_spec("tcp:[0:0:0:0:0:0:0:0]:80:tcp:192.168.65.3:80");
  REQUIRE(v6.ok());
  CHECK(v6->host_ip == "::");  // canonical
  CHECK(parse_forward_spec(v6->to_string()).value() == *v6);
}

TEST_CASE("forward spec: malformed specs are EINVAL and show the grammar", "[forward]") {
  for (const char* bad : {"", "tcp", "tcp:127.0.0.1", "tcp:127.0.0.1:80", "tcp:127.0.0.1:80:udp:192.168.65.3:80",
                          "udp:127.0.0.1:80:tcp:192.168.65.3:80", "tcp:127.0.0.1:65536:tcp:192.168.65.3:80",
                          "tcp:127.0.0.1:-1:tcp:192.168.65.3:80", "tcp:127.0.0.1:080:tcp:192.168.65.3:80",
                          "tcp:::1:80:tcp:192.168.65.3:80", "tcp:[::1:80:tcp:192.168.65.3:80",
                          "tcp:localhost:80:tcp:192.168.65.3:80", "tcp:127.0.0.1:80:tcp:192.168.65.3:0",
                          "tcp:127.0.0.1:80:tcp:192.168.65:80", "tcp:127.0.0.1:80:tcp:192.168.65.3:80:9",
                          "unix:relative.sock:tcp:192.168.65.3:80", "unix:/x:udp:192.168.65.3:80",
                          "sctp:1.2.3.4:5:sctp:192.168.65.3:80", "tcp:127.0.0.1: 80:tcp:192.168.65.3:80"}) {
    INFO(bad);
    auto r = parse_forward_spec(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EINVAL);
    CHECK(r.error().message.find("expected tcp:HOSTIP:HOSTPORT:tcp:GUESTIP:GUESTPORT") != std::string::npos);
  }
  std::string long_path = "unix:/" + std::string(200, 'a') + ":tcp:192.168.65.3:80";
  CHECK_FALSE(parse_forward_spec(long_path).ok());
}

TEST_CASE("forward policy: allowed bind addresses are canonical", "[forward]") {
  ForwardPolicy p;
  REQUIRE(p.set_allowed("127.0.0.2,[::1],0:0::0").ok());
  CHECK(p.allowed_bind == std::vector<std::string>{"127.0.0.2", "::1", "::"});
  CHECK(p.set_allowed("127.0.0.1,nope").error().code == EINVAL);
  CHECK(p.set_allowed(",").error().code == EINVAL);
}

namespace {

struct Loop {
  uv_loop_t loop;
  Loop() { uv_loop_init(&loop); }
  ~Loop() {
    for (int i = 0; i < 10 && uv_run(&loop, UV_RUN_NOWAIT); i++) {
    }
    uv_loop_close(&loop);
  }
};

struct Fixture {
  Loop l;
  SystemMonoClock clock;
  NetConfig cfg;
  Stack stack{cfg};
  UvTcpHost tcp_host{&l.loop, clock};
  UvDgramHost dgram_host{&l.loop, clock};
  Tcp tcp{stack, tcp_host, clock, 1};
  UdpNat udp{stack, dgram_host};
  std::string dir;
  std::unique_ptr<Forwarder> fwd;

  explicit Fixture(ForwardPolicy policy = {}, std::string state_dir = {}) : dir(std::move(state_dir)) {
    fwd = std::make_unique<Forwarder>(&l.loop, tcp, udp, clock, cfg, policy, dir);
  }
  ~Fixture() { fwd->close(); }
};

// A port something already listens on.
struct Taken {
  int fd = -1;
  uint16_t port = 0;
  Taken() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(fd, 1) == 0);
    socklen_t len = sizeof sa;
    getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    port = ntohs(sa.sin_port);
  }
  ~Taken() { ::close(fd); }
};

}  // namespace

TEST_CASE("forwarder: port 0 binds a free port and the spec as bound names it", "[forward][uv]") {
  Fixture f;
  auto id = f.fwd->add("tcp:127.0.0.1:0:tcp:192.168.65.3:80");
  REQUIRE(id.ok());
  auto spec = f.fwd->bound_spec(*id);
  REQUIRE(spec);
  CHECK(spec->rfind("tcp:127.0.0.1:", 0) == 0);
  CHECK(spec->find(":0:") == std::string::npos);
  auto udp = f.fwd->add("udp:127.0.0.1:0:udp:192.168.65.3:53");
  REQUIRE(udp.ok());
  CHECK(*udp != *id);
  CHECK(f.fwd->render(*udp)->find("active 0\n") != std::string::npos);
  CHECK(f.fwd->size() == 2);
  REQUIRE(f.fwd->remove(*id).ok());
  CHECK(f.fwd->remove(*id).error().code == ENOENT);
  CHECK(f.fwd->size() == 1);
}

TEST_CASE("forwarder: each refusal has its errno and message", "[forward][uv]") {
  Fixture f;
  Taken taken;
  auto inuse = f.fwd->add("tcp:127.0.0.1:" + std::to_string(taken.port) + ":tcp:192.168.65.3:80");
  REQUIRE_FALSE(inuse.ok());
  CHECK(inuse.error().code == EADDRINUSE);
  CHECK(inuse.error().message.find("already in use") != std::string::npos);

  auto priv = f.fwd->add("tcp:127.0.0.1:80:tcp:192.168.65.3:80");
  REQUIRE_FALSE(priv.ok());
  CHECK(priv.error().code == EACCES);
  CHECK(priv.error().message.find("--allow-privileged-ports") != std::string::npos);

  auto addr = f.fwd->add("tcp:10.1.2.3:8080:tcp:192.168.65.3:80");
  REQUIRE_FALSE(addr.ok());
  CHECK(addr.error().code == EACCES);
  CHECK(addr.error().message.find("not allowed") != std::string::npos);

  auto guest = f.fwd->add("tcp:127.0.0.1:0:tcp:192.168.65.1:80");
  REQUIRE_FALSE(guest.ok());
  CHECK(guest.error().code == EINVAL);
  auto outside = f.fwd->add("tcp:127.0.0.1:0:tcp:10.0.0.3:80");
  REQUIRE_FALSE(outside.ok());
  CHECK(outside.error().code == EINVAL);

  CHECK(f.fwd->stats().add_errors == 5);
  CHECK(f.fwd->size() == 0);
}

TEST_CASE("forwarder: the table is bounded", "[forward][uv]") {
  Fixture f;
  for (size_t i = 0; i < Forwarder::kMaxForwards; i++) REQUIRE(f.fwd->add("udp:127.0.0.1:0:udp:192.168.65.3:53").ok());
  auto more = f.fwd->add("udp:127.0.0.1:0:udp:192.168.65.3:53");
  REQUIRE_FALSE(more.ok());
  CHECK(more.error().code == ENOSPC);
}

TEST_CASE("forwarder: forwards are saved and bound again from the state dir", "[forward][uv]") {
  auto dir = std::filesystem::temp_directory_path() / ("berth-fwd-test-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::string spec;
  {
    Fixture f({}, dir.string());
    auto id = f.fwd->add("tcp:127.0.0.1:0:tcp:192.168.65.3:80", "web");
    REQUIRE(id.ok());
    spec = *f.fwd->bound_spec(*id);
    REQUIRE(f.fwd->add("udp:127.0.0.1:0:udp:192.168.65.4:53").ok());
    REQUIRE(std::filesystem::exists(dir / "forwards.json"));
  }
  {
    Fixture f({}, dir.string());
    f.fwd->restore();
    REQUIRE(f.fwd->size() == 2);
    auto web = f.fwd->by_name("web");
    REQUIRE(web);
    CHECK(f.fwd->bound_spec(*web) == spec);  // the same host port again
  }
  // A damaged file is moved aside and the start goes on.
  {
    std::ofstream(dir / "forwards.json") << "{ this is not json";
    Fixture f({}, dir.string());
    f.fwd->restore();
    CHECK(f.fwd->size() == 0);
    bool aside = false;
    for (auto& e : std::filesystem::directory_iterator(dir))
      aside = aside || e.path().filename().string().rfind("forwards.json.damaged-", 0) == 0;
    CHECK(aside);
  }
  std::filesystem::remove_all(dir);
}
