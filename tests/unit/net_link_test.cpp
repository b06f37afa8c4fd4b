// Guest links (net/link/): each one driven by a real libuv loop in this
// thread, with a real socket client speaking the link's framing. The loop is
// pumped with UV_RUN_NOWAIT under a deadline, so nothing here can hang.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "net/link/links.h"

using namespace berth;
using namespace berth::net;
using Frame = std::vector<uint8_t>;

namespace {

using Clock = std::chrono::steady_clock;

struct Loop {
  uv_loop_t loop;
  Loop() { uv_loop_init(&loop); }
  ~Loop() {
    pump(10);
    uv_loop_close(&loop);
  }
  uv_loop_t* get() { return &loop; }
  void pump(int iterations = 1) {
    for (int i = 0; i < iterations; i++) uv_run(&loop, UV_RUN_NOWAIT);
  }
  // Runs the loop until pred() holds or `ms` pass.
  bool until(const std::function<bool()>& pred, int ms = 3000) {
    auto deadline = Clock::now() + std::chrono::milliseconds(ms);
    while (!pred()) {
      if (Clock::now() > deadline) return false;
      uv_run(&loop, UV_RUN_NOWAIT);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return true;
  }
  // After the links are gone: every handle closed and freed?
  int close_all() {
    pump(10);
    return uv_loop_close(&loop) == 0 ? (uv_loop_init(&loop), 0) : -1;
  }
};

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/berth-lt-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

Frame make_frame(size_t len, uint8_t seed) {
  Frame f(len);
  for (size_t i = 0; i < len; i++) f[i] = uint8_t(seed + i * 7);
  if (len >= 14) {
    f[12] = 0x08;  // IPv4 ethertype, for the look of it
    f[13] = 0x00;
  }
  return f;
}

Frame be32_wrap(const Frame& f) {
  Frame out(4 + f.size());
  store_be32(out.data(), uint32_t(f.size()));
  std::memcpy(out.data() + 4, f.data(), f.size());
  return out;
}

Frame le16_wrap(const Frame& f) {
  Frame out(2 + f.size());
  store_le16(out.data(), uint16_t(f.size()));
  std::memcpy(out.data() + 2, f.data(), f.size());
  return out;
}

int connect_unix(const std::string& path, int type = SOCK_STREAM) {
  int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::strncpy(sun.sun_path, path.c_str(), sizeof(sun.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
    ::close(fd);
    return -1;
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

// Writes everything, pumping the loop while the socket is full.
bool write_all(Loop& loop, int fd, const Frame& data, int ms = 3000) {
  size_t off = 0;
  auto deadline = Clock::now() + std::chrono::milliseconds(ms);
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += size_t(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (Clock::now() > deadline) return false;
    loop.pump();
  }
  return true;
}

// Reads exactly n bytes, pumping the loop in between; shorter on EOF or timeout.
Frame read_exact(Loop& loop, int fd, size_t n, int ms = 3000) {
  Frame out;
  std::vector<uint8_t> buf(64 * 1024);
  auto deadline = Clock::now() + std::chrono::milliseconds(ms);
  while (out.size() < n && Clock::now() < deadline) {
    ssize_t r = ::recv(fd, buf.data(), std::min(buf.size(), n - out.size()), MSG_DONTWAIT);
    if (r > 0) {
      out.insert(out.end(), buf.begin(), buf.begin() + r);
      continue;
    }
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) break;  // closed
    loop.pump();
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return out;
}

// True once the peer has closed the connection (EOF or reset), within ms.
bool sees_eof(Loop& loop, int fd, int ms = 3000) {
  uint8_t buf[4096];
  auto deadline = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < deadline) {
    ssize_t r = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE))) return true;
    if (r > 0) continue;  // discard
    loop.pump();
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return false;
}

// Nothing arrives for a while (the link stays quiet).
bool quiet(Loop& loop, int fd, int ms = 50) {
  uint8_t b;
  auto deadline = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < deadline) {
    loop.pump();
    if (::recv(fd, &b, 1, MSG_DONTWAIT | MSG_PEEK) >= 0) return false;
  }
  return true;
}

struct Received {
  std::vector<Frame> frames;
  FrameLink::Receive fn() {
    return [this](Bytes f) { frames.emplace_back(f.begin(), f.end()); };
  }
};

Frame vmnet_init(uint32_t version = 22, const char* magic = "VMN3T") {
  Frame m(49, '0');
  std::memcpy(m.data(), magic, 5);
  store_le32(m.data() + 5, version);
  return m;
}

Frame vmnet_command(uint8_t cmd, const std::string& uuid, uint32_t ip = 0) {
  Frame c(41, 0);
  c[0] = cmd;
  std::memcpy(c.data() + 1, uuid.data(), std::min<size_t>(uuid.size(), 36));
  store_le32(c.data() + 37, ip);
  return c;
}

Frame concat(std::initializer_list<Frame> parts) {
  Frame out;
  for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

const std::string kUuid = "2f0c4d6e-1a2b-4c3d-8e9f-a0b1c2d3e4f5";

// A connected, attached vmnet client (handshake done, replies consumed).
int vmnet_client(Loop& loop, const std::string& path, const std::string& uuid = kUuid) {
  int c = connect_unix(path);
  if (c < 0) return -1;
  if (!write_all(loop, c, concat({vmnet_init(), vmnet_command(1, uuid)}))) return -1;
  if (read_exact(loop, c, 49 + 258).size() != 49 + 258) return -1;
  return c;
}

std::string run_output(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

}  // namespace

// ---- parse_link_spec / make_link ----------------------------------------

TEST_CASE("parse_link_spec reads the four kinds", "[link]") {
  auto t = parse_link_spec("tap:tap0@bt0");
  REQUIRE(t.ok());
  CHECK(t->kind == "tap");
  CHECK(t->name == "tap0");
  CHECK(t->netns == "bt0");

  auto t2 = parse_link_spec("tap:berth0");
  REQUIRE(t2.ok());
  CHECK(t2->name == "berth0");
  CHECK(t2->netns.empty());

  for (const char* kind : {"qemu", "vfkit", "vmnet"}) {
    auto s = parse_link_spec(std::string(kind) + ":/run/user/1000/berth/x.sock");
    REQUIRE(s.ok());
    CHECK(s->kind == kind);
    CHECK(s->name == "/run/user/1000/berth/x.sock");
  }
}

TEST_CASE("parse_link_spec refuses bad specs with EINVAL or ENAMETOOLONG", "[link]") {
  for (const char* bad : {"tap", "tap:", "tap:@ns", "tap:a/b", "tap:a:b", "tap:has space", "tap:sixteen_chars_xx",
                          "tap:tap0@", "tap:tap0@../etc", "tap:tap0@..", "qemu:", "vmnet:", "vfkit:", "slirp:/x",
                          "/tmp/x.sock"}) {
    INFO(bad);
    auto r = parse_link_spec(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EINVAL);
  }
  auto r = parse_link_spec("qemu:/" + std::string(200, 'x'));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ENAMETOOLONG);
}

TEST_CASE("make_link builds each kind and checks the frame size", "[link]") {
  Loop loop;
  for (auto [spec, type] : {std::pair{"tap:t0@ns", "tap"}, std::pair{"qemu:/tmp/a", "qemu"},
                            std::pair{"vfkit:/tmp/b", "vfkit"}, std::pair{"vmnet:/tmp/c", "vmnet"}}) {
    auto s = parse_link_spec(spec);
    REQUIRE(s.ok());
    auto l = make_link(loop.get(), *s, 1514);
    REQUIRE(l.ok());
    CHECK(l.value()->type() == type);
    CHECK(l.value()->max_frame() == 1514);
  }
  LinkSpec q{"qemu", "/tmp/a", ""};
  CHECK_FALSE(make_link(loop.get(), q, 65535).ok());
  CHECK_FALSE(make_link(loop.get(), q, 60).ok());
  CHECK(make_link(loop.get(), q, 65534).ok());
  LinkSpec bogus{"slirp", "/tmp/a", ""};
  auto b = make_link(loop.get(), bogus, 1514);
  REQUIRE_FALSE(b.ok());
  CHECK(b.error().code == EINVAL);
}

// ---- qemu -----------------------------------------------------------------

TEST_CASE("qemu: frames arrive intact both ways and are counted", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  CHECK(link.type() == "qemu");
  CHECK_FALSE(link.has_peer());

  int c = connect_unix(dir / "q.sock");
  REQUIRE(c >= 0);
  REQUIRE(loop.until([&] { return link.has_peer(); }));
  CHECK(link.peer().find("guest attached") != std::string::npos);

  std::vector<Frame> sent = {make_frame(14, 1), make_frame(60, 2), make_frame(1514, 3)};
  REQUIRE(write_all(loop, c, concat({be32_wrap(sent[0]), be32_wrap(sent[1]), be32_wrap(sent[2])})));
  REQUIRE(loop.until([&] { return rx.frames.size() == 3; }));
  CHECK(rx.frames == sent);
  CHECK(link.stats().rx_frames == 3);
  CHECK(link.stats().rx_bytes == 14 + 60 + 1514);

  std::vector<Frame> back = {make_frame(42, 9), make_frame(1514, 10)};
  for (auto& f : back) CHECK(link.send(f));
  Frame expect = concat({be32_wrap(back[0]), be32_wrap(back[1])});
  CHECK(read_exact(loop, c, expect.size()) == expect);
  CHECK(link.stats().tx_frames == 2);
  CHECK(link.stats().tx_bytes == 42 + 1514);
  CHECK(link.stats().disconnects == 0);

  // The guest leaves: counted, and the link waits for the next one.
  ::close(c);
  REQUIRE(loop.until([&] { return !link.has_peer(); }));
  CHECK(link.stats().disconnects == 1);
  CHECK_FALSE(link.send(back[0]));
  CHECK(link.stats().tx_dropped_no_peer == 1);
}

TEST_CASE("qemu: runt and oversize frames are skipped and the guest stays attached", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int c = connect_unix(dir / "q.sock");
  REQUIRE(c >= 0);

  Frame good = make_frame(100, 4);
  REQUIRE(write_all(loop, c,
                    concat({be32_wrap(make_frame(5, 1)), be32_wrap(make_frame(1515, 2)), be32_wrap(make_frame(13, 3)),
                            be32_wrap(make_frame(9000, 5)), be32_wrap(good)})));
  REQUIRE(loop.until([&] { return rx.frames.size() == 1; }));
  CHECK(rx.frames[0] == good);
  CHECK(link.stats().rx_dropped_runt == 2);
  CHECK(link.stats().rx_dropped_oversize == 2);
  CHECK(link.stats().rx_frames == 1);
  CHECK(link.stats().disconnects == 0);
  CHECK(link.has_peer());
  ::close(c);
}

TEST_CASE("qemu: a zero or impossible length loses framing, disconnects, and the next guest attaches", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());

  SECTION("length 0") {
    int c = connect_unix(dir / "q.sock");
    REQUIRE(write_all(loop, c, concat({be32_wrap(make_frame(60, 1)), Frame{0, 0, 0, 0}, be32_wrap(make_frame(60, 2))})));
    CHECK(sees_eof(loop, c));
    ::close(c);
  }
  SECTION("length beyond any frame") {
    int c = connect_unix(dir / "q.sock");
    Frame huge(4);
    store_be32(huge.data(), QemuLink::kMaxPlausible + 1);
    REQUIRE(write_all(loop, c, concat({be32_wrap(make_frame(60, 1)), huge, make_frame(60, 2)})));
    CHECK(sees_eof(loop, c));
    ::close(c);
  }
  CHECK(rx.frames.size() == 1);  // the frame before the bad length only
  CHECK(link.stats().disconnects == 1);
  CHECK_FALSE(link.has_peer());

  int c2 = connect_unix(dir / "q.sock");
  REQUIRE(c2 >= 0);
  Frame f = make_frame(80, 7);
  REQUIRE(write_all(loop, c2, be32_wrap(f)));
  REQUIRE(loop.until([&] { return rx.frames.size() == 2; }));
  CHECK(rx.frames[1] == f);
  CHECK(link.send(f));
  CHECK(read_exact(loop, c2, 84) == be32_wrap(f));
  ::close(c2);
}

TEST_CASE("qemu: a second connection is refused while a guest is attached", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int c1 = connect_unix(dir / "q.sock");
  REQUIRE(loop.until([&] { return link.has_peer(); }));
  int c2 = connect_unix(dir / "q.sock");
  REQUIRE(c2 >= 0);
  CHECK(sees_eof(loop, c2));
  CHECK(link.stats().peers_refused == 1);
  CHECK(link.stats().disconnects == 0);
  // The first guest is undisturbed.
  Frame f = make_frame(64, 1);
  CHECK(link.send(f));
  CHECK(read_exact(loop, c1, 68) == be32_wrap(f));
  ::close(c1);
  ::close(c2);
}

TEST_CASE("qemu: a guest that hung up is replaced by the next connection at once", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int c1 = connect_unix(dir / "q.sock");
  REQUIRE(loop.until([&] { return link.has_peer(); }));
  ::close(c1);
  int c2 = connect_unix(dir / "q.sock");  // before the loop has seen c1's EOF
  REQUIRE(c2 >= 0);
  Frame f = make_frame(64, 1);
  REQUIRE(loop.until([&] { return link.stats().disconnects == 1 && link.has_peer(); }));
  CHECK(link.send(f));
  CHECK(read_exact(loop, c2, 68) == be32_wrap(f));
  CHECK(link.stats().peers_refused == 0);
  ::close(c2);
}

TEST_CASE("qemu: a full queue refuses frames and on_writable fires once it drains below half", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int writable = 0;
  link.set_on_writable([&] { writable++; });
  int c = connect_unix(dir / "q.sock");
  REQUIRE(loop.until([&] { return link.has_peer(); }));

  // Without running the loop nothing is written, so the queue fills at 256.
  Frame f = make_frame(1000, 3);
  int accepted = 0;
  for (int i = 0; i < 300; i++) accepted += link.send(f) ? 1 : 0;
  CHECK(accepted == int(WriteQueue::kMaxFrames));
  CHECK(link.stats().tx_dropped_full == 300 - WriteQueue::kMaxFrames);
  CHECK(writable == 0);

  // 256 KiB is more than the socket takes at once: the link has to wait for
  // writability part way.
  Frame got = read_exact(loop, c, 256 * 1004, 10000);
  REQUIRE(got.size() == 256 * 1004);
  for (size_t i = 0; i < 256; i++) {
    INFO(i);
    REQUIRE(Frame(got.begin() + i * 1004, got.begin() + (i + 1) * 1004) == be32_wrap(f));
  }
  loop.pump(5);
  CHECK(writable == 1);
  CHECK(link.stats().tx_frames == 256);
  CHECK(link.send(f));  // room again
  CHECK(read_exact(loop, c, 1004) == be32_wrap(f));
  CHECK(writable == 1);
  ::close(c);
}

TEST_CASE("qemu: the queue is released when the guest leaves, waking refused senders", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int writable = 0;
  link.set_on_writable([&] { writable++; });
  int c = connect_unix(dir / "q.sock");
  REQUIRE(loop.until([&] { return link.has_peer(); }));
  Frame f = make_frame(1000, 3);
  while (link.send(f)) {
  }
  ::close(c);
  REQUIRE(loop.until([&] { return !link.has_peer(); }));
  CHECK(writable == 1);
}

TEST_CASE("qemu: sending without a guest or with a bad size is refused and counted", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  CHECK_FALSE(link.send(make_frame(60, 1)));  // not even started
  REQUIRE(link.start(rx.fn()).ok());
  CHECK_FALSE(link.send(make_frame(60, 1)));
  CHECK(link.stats().tx_dropped_no_peer == 2);
  CHECK_FALSE(link.send(Frame{}));
  CHECK_FALSE(link.send(make_frame(1515, 1)));
  CHECK(link.stats().tx_dropped_invalid == 2);
  CHECK(link.stats().tx_frames == 0);
  auto again = link.start(rx.fn());
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().code == EALREADY);
}

TEST_CASE("qemu: the socket is 0600, stale sockets are replaced, live ones and files are not", "[link]") {
  Loop loop;
  TempDir dir;
  std::string path = dir / "sub/q.sock";  // the parent is created
  {
    // A stale socket: bound, then closed without unlinking.
    std::filesystem::create_directories(dir / "sub");
    int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strncpy(sun.sun_path, path.c_str(), sizeof(sun.sun_path) - 1);
    REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) == 0);
    ::close(s);
  }
  Received rx;
  {
    QemuLink a(loop.get(), path, 1514);
    REQUIRE(a.start(rx.fn()).ok());
    struct stat st;
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0600);

    QemuLink b(loop.get(), path, 1514);
    auto r = b.start(rx.fn());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EADDRINUSE);
    CHECK(a.has_peer() == false);
    a.close();
    CHECK_FALSE(std::filesystem::exists(path));  // close unlinks it
  }
  {
    std::ofstream(dir / "file") << "x";
    QemuLink c(loop.get(), dir / "file", 1514);
    auto r = c.start(rx.fn());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EEXIST);
    CHECK(std::filesystem::exists(dir / "file"));
  }
  CHECK(loop.close_all() == 0);
}

TEST_CASE("qemu: frames split into single bytes reassemble", "[link]") {
  Loop loop;
  TempDir dir;
  QemuLink link(loop.get(), dir / "q.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int c = connect_unix(dir / "q.sock");
  std::vector<Frame> sent = {make_frame(300, 1), make_frame(20, 2)};
  Frame bytes = concat({be32_wrap(sent[0]), be32_wrap(sent[1])});
  for (uint8_t b : bytes) {
    REQUIRE(write_all(loop, c, Frame{b}));
    loop.pump();
  }
  REQUIRE(loop.until([&] { return rx.frames.size() == 2; }));
  CHECK(rx.frames == sent);
  ::close(c);
}

TEST_CASE("qemu: closing the link from the rx callback stops delivery", "[link]") {
  Loop loop;
  TempDir dir;
  auto link = std::make_unique<QemuLink>(loop.get(), dir / "q.sock", 1514);
  int seen = 0;
  REQUIRE(link->start([&](Bytes) {
                seen++;
                link->close();
              }).ok());
  int c = connect_unix(dir / "q.sock");
  REQUIRE(write_all(loop, c, concat({be32_wrap(make_frame(60, 1)), be32_wrap(make_frame(60, 2))})));
  REQUIRE(loop.until([&] { return seen > 0; }));
  loop.pump(5);
  CHECK(seen == 1);
  CHECK_FALSE(link->send(make_frame(60, 3)));
  CHECK(sees_eof(loop, c));
  link.reset();
  ::close(c);
  CHECK(loop.close_all() == 0);
}

// ---- vmnet ----------------------------------------------------------------

TEST_CASE("vmnet: the handshake answers 49 then 258 bytes with the MTU and the UUID's MAC", "[link]") {
  Loop loop;
  TempDir dir;
  VmnetLink link(loop.get(), dir / "v.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int c = connect_unix(dir / "v.sock");
  REQUIRE(c >= 0);

  REQUIRE(write_all(loop, c, vmnet_init()));
  Frame init = read_exact(loop, c, 49);
  REQUIRE(init.size() == 49);
  CHECK(std::memcmp(init.data(), "VMN3T", 5) == 0);
  CHECK(load_le32(init.data() + 5) == 22);
  CHECK_FALSE(link.has_peer());  // not before the command

  REQUIRE(write_all(loop, c, vmnet_command(1, kUuid)));
  Frame resp = read_exact(loop, c, 258);
  REQUIRE(resp.size() == 258);
  CHECK(resp[0] == 1);                           // vif
  CHECK(load_le16(resp.data() + 1) == 1500);     // mtu
  CHECK(load_le16(resp.data() + 3) == 1550);     // max_packet_size, as VPNKit: mtu + 50
  auto mac = wire::MacAddr::from_bytes(resp.data() + 5);
  CHECK(mac == vmnet_mac_for_uuid(kUuid));
  CHECK(mac.is_unicast());
  CHECK(mac.is_local());
  for (size_t i = 11; i < 258; i++) REQUIRE(resp[i] == 0);
  CHECK(quiet(loop, c));  // nothing more than 258

  REQUIRE(loop.until([&] { return link.has_peer(); }));
  CHECK(link.guest_uuid() == kUuid);
  CHECK(link.guest_mac() == mac);
  CHECK_FALSE(link.preferred_ipv4().has_value());
  CHECK(link.peer().find(mac.to_string()) != std::string::npos);
  CHECK(link.stats().tx_frames == 0);  // handshake messages are not frames
  ::close(c);
}

TEST_CASE("vmnet: frames with 2-byte little-endian lengths both ways, pipelined after the handshake", "[link]") {
  Loop loop;
  TempDir dir;
  VmnetLink link(loop.get(), dir / "v.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int c = connect_unix(dir / "v.sock");
  std::vector<Frame> sent = {make_frame(60, 1), make_frame(1514, 2)};
  // All in one write, as a client that does not wait could send it.
  REQUIRE(write_all(loop, c,
                    concat({vmnet_init(), vmnet_command(1, kUuid), le16_wrap(sent[0]), le16_wrap(make_frame(7, 0)),
                            le16_wrap(make_frame(1600, 0)), le16_wrap(sent[1])})));
  REQUIRE(loop.until([&] { return rx.frames.size() == 2; }));
  CHECK(rx.frames == sent);
  CHECK(link.stats().rx_dropped_runt == 1);
  CHECK(link.stats().rx_dropped_oversize == 1);
  REQUIRE(read_exact(loop, c, 49 + 258).size() == 49 + 258);

  Frame back = make_frame(1514, 5);
  CHECK(link.send(back));
  CHECK(read_exact(loop, c, 1516) == le16_wrap(back));
  CHECK(link.stats().tx_frames == 1);

  // A zero length loses framing.
  REQUIRE(write_all(loop, c, Frame{0, 0}));
  CHECK(sees_eof(loop, c));
  CHECK(link.stats().disconnects == 1);
  ::close(c);

  // And the guest can come back, with the same MAC.
  int c2 = vmnet_client(loop, dir / "v.sock");
  REQUIRE(c2 >= 0);
  REQUIRE(loop.until([&] { return link.has_peer(); }));
  CHECK(link.guest_mac() == vmnet_mac_for_uuid(kUuid));
  ::close(c2);
}

TEST_CASE("vmnet: bad magic, other versions, unknown commands and bad UUIDs are refused", "[link]") {
  Loop loop;
  TempDir dir;
  VmnetLink link(loop.get(), dir / "v.sock", 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());

  SECTION("bad magic: closed without an answer") {
    int c = connect_unix(dir / "v.sock");
    REQUIRE(write_all(loop, c, vmnet_init(22, "VMN4T")));
    Frame got = read_exact(loop, c, 1, 2000);
    CHECK(got.empty());
    CHECK(sees_eof(loop, c));
    ::close(c);
  }
  SECTION("another version: our init, then closed") {
    int c = connect_unix(dir / "v.sock");
    REQUIRE(write_all(loop, c, vmnet_init(2)));
    Frame got = read_exact(loop, c, 49);
    REQUIRE(got.size() == 49);
    CHECK(load_le32(got.data() + 5) == 22);
    CHECK(sees_eof(loop, c));
    ::close(c);
  }
  SECTION("unknown command (6, bind_ipv4): a disconnect response, then closed") {
    int c = connect_unix(dir / "v.sock");
    REQUIRE(write_all(loop, c, concat({vmnet_init(), vmnet_command(6, kUuid)})));
    Frame got = read_exact(loop, c, 49 + 258);
    REQUIRE(got.size() == 49 + 258);
    CHECK(got[49] == 2);  // disconnect
    std::string reason(reinterpret_cast<const char*>(&got[51]), got[50]);
    CHECK(reason.find("command 6") != std::string::npos);
    CHECK(sees_eof(loop, c));
    ::close(c);
  }
  SECTION("malformed UUID: a disconnect response, then closed") {
    int c = connect_unix(dir / "v.sock");
    REQUIRE(write_all(loop, c, concat({vmnet_init(), vmnet_command(1, "not-a-uuid-not-a-uuid-not-a-uuid-xx")})));
    Frame got = read_exact(loop, c, 49 + 258);
    REQUIRE(got.size() == 49 + 258);
    CHECK(got[49] == 2);
    CHECK(sees_eof(loop, c));
    ::close(c);
  }
  CHECK(link.stats().disconnects == 1);
  CHECK(rx.frames.empty());
  CHECK_FALSE(link.has_peer());
  // A good client still gets in.
  int ok = vmnet_client(loop, dir / "v.sock");
  REQUIRE(ok >= 0);
  CHECK(loop.until([&] { return link.has_peer(); }));
  ::close(ok);
}

TEST_CASE("vmnet: a preferred-IPv4 command attaches and records the address", "[link]") {
  Loop loop;
  TempDir dir;
  VmnetLink link(loop.get(), dir / "v.sock", 9014);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int c = connect_unix(dir / "v.sock");
  // VPNKit's encoding: the address as a host-order integer, little-endian.
  REQUIRE(write_all(loop, c, concat({vmnet_init(), vmnet_command(8, kUuid, wire::Ipv4Addr(192, 168, 65, 7).v)})));
  Frame got = read_exact(loop, c, 49 + 258);
  REQUIRE(got.size() == 49 + 258);
  CHECK(got[49] == 1);
  CHECK(load_le16(&got[50]) == 9000);
  CHECK(load_le16(&got[52]) == 9050);
  REQUIRE(loop.until([&] { return link.has_peer(); }));
  REQUIRE(link.preferred_ipv4().has_value());
  CHECK(*link.preferred_ipv4() == wire::Ipv4Addr(192, 168, 65, 7));
  ::close(c);
}

TEST_CASE("vmnet: the MAC is stable per UUID, case-insensitive, and differs between UUIDs", "[link]") {
  auto a = vmnet_mac_for_uuid(kUuid);
  CHECK(a == vmnet_mac_for_uuid("2F0C4D6E-1A2B-4C3D-8E9F-A0B1C2D3E4F5"));
  CHECK(a != vmnet_mac_for_uuid("2f0c4d6e-1a2b-4c3d-8e9f-a0b1c2d3e4f6"));
  for (const char* u : {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff", kUuid.c_str()}) {
    auto m = vmnet_mac_for_uuid(u);
    CHECK(m.is_unicast());
    CHECK(m.is_local());
    CHECK_FALSE(m.is_zero());
  }
  CHECK(is_uuid_text(kUuid));
  CHECK_FALSE(is_uuid_text("2f0c4d6e-1a2b-4c3d-8e9f-a0b1c2d3e4f"));
  CHECK_FALSE(is_uuid_text("2f0c4d6e-1a2b-4c3d-8e9f_a0b1c2d3e4f5"));
  CHECK_FALSE(is_uuid_text("2f0c4d6e-1a2b-4c3d-8e9f-a0b1c2d3e4fg"));
}

// ---- vfkit ----------------------------------------------------------------

namespace {
int dgram_client(const std::string& own, const std::string& server, bool connect_it = true) {
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::strncpy(sun.sun_path, own.c_str(), sizeof(sun.sun_path) - 1);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) return -1;
  if (connect_it) {
    sockaddr_un s{};
    s.sun_family = AF_UNIX;
    std::strncpy(s.sun_path, server.c_str(), sizeof(s.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&s), sizeof(s)) != 0) return -1;
  }
  return fd;
}

bool dgram_send(int fd, const std::string& server, const Frame& f) {
  sockaddr_un s{};
  s.sun_family = AF_UNIX;
  std::strncpy(s.sun_path, server.c_str(), sizeof(s.sun_path) - 1);
  return ::sendto(fd, f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&s), sizeof(s)) == ssize_t(f.size());
}

Frame dgram_recv(Loop& loop, int fd, int ms = 3000) {
  Frame buf(70000);
  auto deadline = Clock::now() + std::chrono::milliseconds(ms);
  while (Clock::now() < deadline) {
    ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n >= 0) return Frame(buf.begin(), buf.begin() + n);
    loop.pump();
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return {};
}
}  // namespace

TEST_CASE("vfkit: the first sender becomes the guest; frames both ways, one per datagram", "[link]") {
  Loop loop;
  TempDir dir;
  std::string path = dir / "vf.sock";
  VfkitLink link(loop.get(), path, 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK_FALSE(link.send(make_frame(60, 1)));
  CHECK(link.stats().tx_dropped_no_peer == 1);

  int c = dgram_client(dir / "guest.sock", path);
  REQUIRE(c >= 0);
  REQUIRE(dgram_send(c, path, Frame{'V', 'F', 'K', 'T'}));  // older vfkit's hello
  REQUIRE(loop.until([&] { return link.has_peer(); }));
  CHECK(rx.frames.empty());
  CHECK(link.stats().rx_dropped_runt == 0);
  CHECK(link.peer().find("guest.sock") != std::string::npos);

  std::vector<Frame> sent = {make_frame(60, 1), make_frame(1514, 2)};
  for (auto& f : sent) REQUIRE(dgram_send(c, path, f));
  REQUIRE(dgram_send(c, path, make_frame(5, 3)));
  REQUIRE(dgram_send(c, path, make_frame(1515, 4)));
  REQUIRE(loop.until([&] { return link.stats().rx_dropped_oversize == 1; }));
  CHECK(rx.frames == sent);
  CHECK(link.stats().rx_dropped_runt == 1);
  CHECK(link.stats().rx_frames == 2);

  std::vector<Frame> back = {make_frame(42, 7), make_frame(1514, 8)};
  for (auto& f : back) CHECK(link.send(f));
  CHECK(dgram_recv(loop, c) == back[0]);
  CHECK(dgram_recv(loop, c) == back[1]);
  CHECK(link.stats().tx_frames == 2);
  ::close(c);
}

TEST_CASE("vfkit: a second sender is refused while the guest lives, and replaces it once gone", "[link]") {
  Loop loop;
  TempDir dir;
  std::string path = dir / "vf.sock";
  VfkitLink link(loop.get(), path, 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());

  int c1 = dgram_client(dir / "g1.sock", path);
  REQUIRE(dgram_send(c1, path, make_frame(60, 1)));  // no hello: the first frame attaches
  REQUIRE(loop.until([&] { return rx.frames.size() == 1; }));

  int c2 = dgram_client(dir / "g2.sock", path, false);
  REQUIRE(dgram_send(c2, path, make_frame(60, 2)));
  REQUIRE(loop.until([&] { return link.stats().peers_refused == 1; }));
  CHECK(rx.frames.size() == 1);

  // An unbound sender can never be answered.
  int anon = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  REQUIRE(dgram_send(anon, path, make_frame(60, 3)));
  REQUIRE(loop.until([&] { return link.stats().peers_refused == 2; }));
  ::close(anon);

  ::close(c1);  // the guest goes away (its socket file stays, stale)
  REQUIRE(dgram_send(c2, path, make_frame(60, 4)));
  REQUIRE(loop.until([&] { return rx.frames.size() == 2; }));
  CHECK(rx.frames[1] == make_frame(60, 4));
  CHECK(link.stats().disconnects == 1);
  Frame f = make_frame(100, 5);
  CHECK(link.send(f));
  CHECK(dgram_recv(loop, c2) == f);

  // Sending to a guest whose socket is gone forgets it.
  ::close(c2);
  ::unlink((dir / "g2.sock").c_str());
  CHECK(link.send(f));
  REQUIRE(loop.until([&] { return !link.has_peer(); }));
  CHECK(link.stats().disconnects == 2);
  CHECK_FALSE(link.send(f));
}

TEST_CASE("vfkit: a new vfkit announcing itself replaces the old guest", "[link]") {
  Loop loop;
  TempDir dir;
  std::string path = dir / "vf.sock";
  VfkitLink link(loop.get(), path, 1514);
  Received rx;
  REQUIRE(link.start(rx.fn()).ok());
  int c1 = dgram_client(dir / "g1.sock", path);
  REQUIRE(dgram_send(c1, path, Frame{'V', 'F', 'K', 'T'}));
  REQUIRE(loop.until([&] { return link.has_peer(); }));
  int c2 = dgram_client(dir / "g2.sock", path);
  REQUIRE(dgram_send(c2, path, Frame{'V', 'F', 'K', 'T'}));
  REQUIRE(loop.until([&] { return link.stats().disconnects == 1; }));
  Frame f = make_frame(70, 1);
  CHECK(link.send(f));
  CHECK(dgram_recv(loop, c2) == f);
  ::close(c1);
  ::close(c2);
}

// ---- tap ------------------------------------------------------------------

TEST_CASE("tap: a missing namespace is a clear error", "[link]") {
  Loop loop;
  TapLink link(loop.get(), "berthlt0", "berth-no-such-ns-" + std::to_string(::getpid()), 1514);
  Received rx;
  auto r = link.start(rx.fn());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ENOENT);
  CHECK(r.error().message.find("ip netns add") != std::string::npos);
  CHECK_FALSE(link.has_peer());
}

TEST_CASE("tap: the kernel in a namespace is a guest: its ARP arrives and our reply reaches it", "[link]") {
  if (::geteuid() != 0 || ::access("/dev/net/tun", R_OK | W_OK) != 0 ||
      std::system("ip netns list >/dev/null 2>&1") != 0) {
    WARN("skipped: needs root, /dev/net/tun and ip(8)");
    return;
  }
  std::string ns = "berth-lt-" + std::to_string(::getpid());
  if (std::system(("ip netns add " + ns + " 2>/dev/null").c_str()) != 0) {
    WARN("skipped: cannot create a network namespace");
    return;
  }
  struct Cleanup {
    std::string ns;
    ~Cleanup() { (void)std::system(("ip netns del " + ns + " 2>/dev/null").c_str()); }
  } cleanup{ns};

  Loop loop;
  const std::string ifname = "berthlt0";
  auto link = std::make_unique<TapLink>(loop.get(), ifname, ns, 1514);
  Received rx;
  auto started = link->start(rx.fn());
  REQUIRE(started.ok());
  CHECK(link->has_peer());
  CHECK(link->peer() == ifname + "@" + ns);
  // Up, with our MTU, and not in our own namespace.
  std::string show = run_output("ip -n " + ns + " -o link show " + ifname);
  CHECK(show.find("mtu 1500") != std::string::npos);
  CHECK(show.find(",UP") != std::string::npos);
  CHECK(std::system(("ip link show " + ifname + " >/dev/null 2>&1").c_str()) != 0);

  REQUIRE(std::system(("ip -n " + ns + " addr add 192.168.65.3/24 dev " + ifname).c_str()) == 0);
  // One UDP datagram to the gateway makes the kernel ARP for it (ping is not
  // always installed; bash's /dev/udp is). The datagram waits for the answer.
  REQUIRE(std::system(("ip netns exec " + ns + " bash -c 'echo hello >/dev/udp/192.168.65.1/9'").c_str()) == 0);

  auto is_arp_for_gateway = [](const Frame& f) {
    return f.size() >= 42 && load_be16(&f[12]) == 0x0806 && load_be16(&f[14 + 6]) == 1 &&
           wire::Ipv4Addr::from_bytes(&f[14 + 24]) == wire::Ipv4Addr(192, 168, 65, 1);
  };
  Frame req;  // a copy: rx.frames grows
  REQUIRE(loop.until(
      [&] {
        for (auto& f : rx.frames)
          if (is_arp_for_gateway(f)) req = f;
        return !req.empty();
      },
      5000));
  INFO("frames seen: " << rx.frames.size());
  auto guest_mac = wire::MacAddr::from_bytes(&req[6]);
  CHECK(wire::MacAddr::from_bytes(&req[0]).is_broadcast());
  CHECK(wire::Ipv4Addr::from_bytes(&req[14 + 14]) == wire::Ipv4Addr(192, 168, 65, 3));
  CHECK(link->stats().rx_frames >= 1);

  // Answer as the gateway; the kernel's neighbour table must take it.
  const wire::MacAddr gw{{0x02, 0xb5, 0xe7, 0x41, 0x00, 0x01}};
  Frame reply(42, 0);
  guest_mac.write(&reply[0]);
  gw.write(&reply[6]);
  store_be16(&reply[12], 0x0806);
  store_be16(&reply[14], 1);       // Ethernet
  store_be16(&reply[16], 0x0800);  // IPv4
  reply[18] = 6;
  reply[19] = 4;
  store_be16(&reply[20], 2);  // reply
  gw.write(&reply[22]);
  wire::Ipv4Addr(192, 168, 65, 1).write(&reply[28]);
  guest_mac.write(&reply[32]);
  wire::Ipv4Addr(192, 168, 65, 3).write(&reply[38]);
  REQUIRE(link->send(reply));
  bool learned = loop.until(
      [&] { return run_output("ip -n " + ns + " neigh show 192.168.65.1").find(gw.to_string()) != std::string::npos; },
      3000);
  CHECK(learned);
  CHECK(link->stats().tx_frames == 1);
  // And the datagram that waited on it now comes to the gateway's MAC.
  auto is_udp_to_gateway = [&](const Frame& f) {
    return f.size() >= 42 && wire::MacAddr::from_bytes(&f[0]) == gw && load_be16(&f[12]) == 0x0800 && f[14 + 9] == 17 &&
           load_be16(&f[14 + 20 + 2]) == 9;
  };
  CHECK(loop.until([&] {
    for (auto& f : rx.frames)
      if (is_udp_to_gateway(f)) return true;
    return false;
  }));

  link.reset();  // the device goes away with its descriptor
  CHECK(loop.close_all() == 0);
  CHECK(std::system(("ip -n " + ns + " link show " + ifname + " >/dev/null 2>&1").c_str()) != 0);
}

// ---- robustness -----------------------------------------------------------

TEST_CASE("stream links survive random garbage and still serve a good guest", "[link]") {
  std::mt19937 rng(0xb3e7);
  for (const char* kind : {"qemu", "vmnet"}) {
    INFO(kind);
    Loop loop;
    TempDir dir;
    auto made = make_link(loop.get(), LinkSpec{kind, dir / "s.sock", ""}, 1514);
    REQUIRE(made.ok());
    auto* link = static_cast<StreamLink*>(made.value().get());
    Received rx;
    REQUIRE(link->start(rx.fn()).ok());
    const int rounds = 60;
    for (int round = 0; round < rounds; round++) {
      int c = connect_unix(dir / "s.sock");
      REQUIRE(c >= 0);
      Frame junk;
      if (std::string(kind) == "vmnet" && round % 2) junk = concat({vmnet_init(), vmnet_command(1, kUuid)});
      size_t n = 1 + rng() % 20000;
      for (size_t i = 0; i < n; i++) junk.push_back(uint8_t(rng()));
      (void)write_all(loop, c, junk, 1000);  // may fail once the link hangs up
      // Sometimes the translator talks back meanwhile.
      (void)link->send(make_frame(60 + rng() % 1000, uint8_t(round)));
      ::close(c);
      REQUIRE(loop.until([&] { return link->stats().disconnects == uint64_t(round + 1); }));
    }
    CHECK(link->stats().peers_refused == 0);
    CHECK_FALSE(link->has_peer());

    size_t before = rx.frames.size();
    int c = std::string(kind) == "vmnet" ? vmnet_client(loop, dir / "s.sock") : connect_unix(dir / "s.sock");
    REQUIRE(c >= 0);
    Frame f = make_frame(200, 9);
    REQUIRE(write_all(loop, c, std::string(kind) == "vmnet" ? le16_wrap(f) : be32_wrap(f)));
    REQUIRE(loop.until([&] { return rx.frames.size() == before + 1; }));
    CHECK(rx.frames.back() == f);
    ::close(c);
  }
}
