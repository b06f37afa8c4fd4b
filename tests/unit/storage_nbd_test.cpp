// The NBD export: the codec from byte fixtures (storage/nbd_proto.h), then
// the server (storage/nbd_server.h) over a socketpair with an in-memory
// backend on a real IoThread, then /disks/<id>/ctl with a fake job.
// Interoperability with real clients (qemu-img, qemu-io, fio) is proven by
// tests/peers/nbd_qemu.sh.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "server9p/tree.h"
#include "storage/disk.h"
#include "storage/disk_tree.h"
#include "storage/io_thread.h"
#include "storage/nbd_proto.h"
#include "storage/nbd_server.h"
#include "storage/qcow2.h"

using namespace berth;
using namespace berth::storage;
namespace n = berth::storage::nbd;

namespace {

std::vector<uint8_t> be(std::initializer_list<std::pair<uint64_t, int>> fields) {
  std::vector<uint8_t> out;
  for (auto [v, width] : fields)
    for (int i = width - 1; i >= 0; i--) out.push_back(i >= 8 ? 0 : uint8_t(v >> (8 * i)));
  return out;
}
std::vector<uint8_t> operator+(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
std::vector<uint8_t> str(std::string_view s) { return {s.begin(), s.end()}; }
std::vector<uint8_t> option(uint32_t opt, const std::vector<uint8_t>& data) {
  return be({{n::kOptMagic, 8}, {opt, 4}, {data.size(), 4}}) + data;
}
std::vector<uint8_t> info_request(std::string_view name, std::vector<uint16_t> infos) {
  auto d = be({{name.size(), 4}}) + str(name) + be({{infos.size(), 2}});
  for (auto t : infos) d = d + be({{t, 2}});
  return d;
}
uint64_t rd64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}
uint16_t rd16(const uint8_t* p) { return uint16_t((p[0] << 8) | p[1]); }

struct OptReply {
  uint32_t option, type;
  std::vector<uint8_t> data;
};
// Splits option replies; the whole buffer must be replies.
std::vector<OptReply> split_replies(const std::vector<uint8_t>& b) {
  std::vector<OptReply> out;
  size_t p = 0;
  while (p < b.size()) {
    REQUIRE(b.size() - p >= 20);
    REQUIRE(rd64(&b[p]) == n::kOptReplyMagic);
    uint32_t len = load_be32(&b[p + 16]);
    REQUIRE(b.size() - p - 20 >= len);
    out.push_back({load_be32(&b[p + 8]), load_be32(&b[p + 12]), {b.begin() + p + 20, b.begin() + p + 20 + len}});
    p += 20 + len;
  }
  return out;
}

n::ExportInfo test_export(uint64_t size = 1 << 20, bool ro = false) {
  n::ExportInfo e;
  e.name = "d0";
  e.description = "test disk";
  e.size = size;
  e.flags = n::transmission_flags(ro);
  return e;
}

}  // namespace

// ---- codec --------------------------------------------------------------------

TEST_CASE("nbd: greeting is NBDMAGIC, IHAVEOPT, fixed-newstyle and no-zeroes", "[nbd]") {
  std::vector<uint8_t> g;
  n::encode_greeting(g);
  CHECK(g == str("NBDMAGICIHAVEOPT") + be({{3, 2}}));
  CHECK(g.size() == n::kGreetingSize);
}

TEST_CASE("nbd: transmission flags for writable and read-only disks", "[nbd]") {
  uint16_t rw = n::transmission_flags(false);
  CHECK(rw == (n::kFlagHasFlags | n::kFlagSendFlush | n::kFlagSendFua | n::kFlagSendTrim | n::kFlagSendWriteZeroes |
               n::kFlagCanMultiConn));
  uint16_t ro = n::transmission_flags(true);
  CHECK((ro & n::kFlagReadOnly));
  CHECK_FALSE((ro & n::kFlagSendTrim));
  CHECK_FALSE((ro & n::kFlagSendWriteZeroes));
}

TEST_CASE("nbd: NBD_OPT_EXPORT_NAME enters transmission with size, flags and 124 zeros", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> out(1, 0xa5);  // pre-filled: only appended bytes count
  auto in = be({{n::kClientFixedNewstyle, 4}}) + option(n::kOptExportName, str("d0")) + be({{n::kRequestMagic, 4}});
  auto r = hs.feed(in, out);
  REQUIRE(r.ok());
  CHECK(r.value() == in.size() - 4);  // the request's first bytes are left
  CHECK(hs.state() == n::Handshake::State::Transmission);
  REQUIRE(out.size() == 1 + 8 + 2 + 124);
  CHECK(rd64(&out[1]) == 1 << 20);
  CHECK(rd16(&out[9]) == n::transmission_flags(false));
  CHECK(std::all_of(out.begin() + 11, out.end(), [](uint8_t b) { return b == 0; }));
}

TEST_CASE("nbd: with NBD_FLAG_C_NO_ZEROES the export-name reply has no padding", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> out;
  auto in = be({{n::kClientFixedNewstyle | n::kClientNoZeroes, 4}}) + option(n::kOptExportName, {});  // "" = default
  REQUIRE(hs.feed(in, out).ok());
  CHECK(out.size() == 10);
  CHECK(hs.chosen().name == "d0");
}

TEST_CASE("nbd: an unknown export with NBD_OPT_EXPORT_NAME is a hard disconnect", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> out;
  auto r = hs.feed(be({{1, 4}}) + option(n::kOptExportName, str("nope")), out);
  CHECK_FALSE(r.ok());
  CHECK(out.empty());
}

TEST_CASE("nbd: unknown client flags are a hard disconnect", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> out;
  CHECK_FALSE(hs.feed(be({{0x4 | 1, 4}}), out).ok());
}

TEST_CASE("nbd: a bad option magic and oversized option data disconnect", "[nbd]") {
  {
    n::Handshake hs({test_export()});
    std::vector<uint8_t> out;
    CHECK_FALSE(hs.feed(be({{1, 4}, {0x1122334455667788ull, 8}, {n::kOptList, 4}, {0, 4}}), out).ok());
  }
  {
    n::Handshake hs({test_export()});
    std::vector<uint8_t> out;
    // The length alone decides: no need to send 1 MiB.
    CHECK_FALSE(hs.feed(be({{1, 4}, {n::kOptMagic, 8}, {n::kOptGo, 4}, {1u << 20, 4}}), out).ok());
  }
}

TEST_CASE("nbd: NBD_OPT_LIST lists the export; with data it is NBD_REP_ERR_INVALID", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> out;
  REQUIRE(hs.feed(be({{1, 4}}) + option(n::kOptList, {}) + option(n::kOptList, str("x")), out).ok());
  auto reps = split_replies(out);
  REQUIRE(reps.size() == 3);
  CHECK(reps[0].type == n::kRepServer);
  CHECK(reps[0].data == be({{2, 4}}) + str("d0"));
  CHECK(reps[1].type == n::kRepAck);
  CHECK(reps[2].type == n::kRepErrInvalid);
  CHECK(hs.state() == n::Handshake::State::Options);
}

TEST_CASE("nbd: NBD_OPT_INFO answers export, name, description and block size, then ACK", "[nbd]") {
  n::Handshake hs({test_export(4096 * 3)});
  std::vector<uint8_t> out;
  REQUIRE(hs.feed(be({{1, 4}}) + option(n::kOptInfo, info_request("d0", {n::kInfoName, n::kInfoDescription})), out).ok());
  auto reps = split_replies(out);
  REQUIRE(reps.size() == 5);
  for (auto& r : reps) CHECK(r.option == n::kOptInfo);
  CHECK(reps[0].type == n::kRepInfo);
  CHECK(reps[0].data == be({{n::kInfoExport, 2}, {4096 * 3, 8}, {n::transmission_flags(false), 2}}));
  CHECK(reps[1].data == be({{n::kInfoName, 2}}) + str("d0"));
  CHECK(reps[2].data == be({{n::kInfoDescription, 2}}) + str("test disk"));
  CHECK(reps[3].data == be({{n::kInfoBlockSize, 2}, {1, 4}, {4096, 4}, {n::kMaxRequestLength, 4}}));
  CHECK(reps[4].type == n::kRepAck);
  CHECK(hs.state() == n::Handshake::State::Options);  // INFO does not end negotiation
}

TEST_CASE("nbd: NBD_OPT_GO to an unknown export is NBD_REP_ERR_UNKNOWN, then GO works", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> out;
  REQUIRE(hs.feed(be({{1, 4}}) + option(n::kOptGo, info_request("other", {})), out).ok());
  auto reps = split_replies(out);
  REQUIRE(reps.size() == 1);
  CHECK(reps[0].type == n::kRepErrUnknown);
  out.clear();
  REQUIRE(hs.feed(option(n::kOptGo, info_request("d0", {})), out).ok());
  reps = split_replies(out);
  REQUIRE(reps.size() == 3);  // export, block size, ack
  CHECK(reps.back().type == n::kRepAck);
  CHECK(hs.state() == n::Handshake::State::Transmission);
}

TEST_CASE("nbd: malformed NBD_OPT_GO data is NBD_REP_ERR_INVALID", "[nbd]") {
  for (auto data : {std::vector<uint8_t>{0, 0, 0}, be({{100, 4}, {0, 2}}), be({{2, 4}}) + str("d0") + be({{3, 2}, {1, 2}}),
                    be({{0, 4}, {0, 2}, {0, 1}})}) {
    n::Handshake hs({test_export()});
    std::vector<uint8_t> out;
    REQUIRE(hs.feed(be({{1, 4}}) + option(n::kOptGo, data), out).ok());
    auto reps = split_replies(out);
    REQUIRE(reps.size() == 1);
    CHECK(reps[0].type == n::kRepErrInvalid);
    CHECK(hs.state() == n::Handshake::State::Options);
  }
}

TEST_CASE("nbd: structured replies, STARTTLS and unknown options are refused, not fatal", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> out;
  REQUIRE(hs.feed(be({{1, 4}}) + option(n::kOptStructuredReply, {}) + option(n::kOptStartTls, {}) + option(99, str("zz")),
                  out)
              .ok());
  auto reps = split_replies(out);
  REQUIRE(reps.size() == 3);
  CHECK(reps[0].type == n::kRepErrUnsup);
  CHECK(reps[1].type == n::kRepErrPolicy);
  CHECK(reps[2].type == n::kRepErrUnsup);
  CHECK(reps[2].option == 99);
}

TEST_CASE("nbd: NBD_OPT_ABORT is acknowledged and closes", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> out;
  REQUIRE(hs.feed(be({{1, 4}}) + option(n::kOptAbort, {}) + option(n::kOptList, {}), out).ok());
  auto reps = split_replies(out);
  REQUIRE(reps.size() == 1);
  CHECK(reps[0].type == n::kRepAck);
  CHECK(hs.state() == n::Handshake::State::Closed);
}

TEST_CASE("nbd: the handshake accepts its input one byte at a time", "[nbd]") {
  n::Handshake hs({test_export()});
  auto in = be({{1, 4}}) + option(n::kOptInfo, info_request("d0", {})) + option(n::kOptGo, info_request("", {}));
  std::vector<uint8_t> buf, out;
  for (uint8_t b : in) {
    buf.push_back(b);
    auto r = hs.feed(buf, out);
    REQUIRE(r.ok());
    buf.erase(buf.begin(), buf.begin() + long(r.value()));
  }
  CHECK(buf.empty());
  CHECK(hs.state() == n::Handshake::State::Transmission);
  CHECK(split_replies(out).size() == 6);
}

TEST_CASE("nbd: too many options disconnect", "[nbd]") {
  n::Handshake hs({test_export()});
  std::vector<uint8_t> in = be({{1, 4}}), out;
  for (uint32_t i = 0; i <= n::kMaxOptions; i++) in = in + option(n::kOptList, {});
  CHECK_FALSE(hs.feed(in, out).ok());
}

TEST_CASE("nbd: request header round trip; a bad magic is an error", "[nbd]") {
  n::Request r{n::kCmdFlagFua, n::kCmdWrite, 0x0102030405060708ull, 4096, 512};
  std::vector<uint8_t> b;
  n::encode_request(r, b);
  CHECK(b == be({{n::kRequestMagic, 4}, {1, 2}, {1, 2}, {0x0102030405060708ull, 8}, {4096, 8}, {512, 4}}));
  auto p = n::parse_request(b);
  REQUIRE(p.ok());
  CHECK(p->flags == r.flags);
  CHECK(p->type == r.type);
  CHECK(p->handle == r.handle);
  CHECK(p->offset == r.offset);
  CHECK(p->length == r.length);
  b[0] ^= 1;
  CHECK_FALSE(n::parse_request(b).ok());
  CHECK_FALSE(n::parse_request(Bytes(b.data(), 27)).ok());
}

TEST_CASE("nbd: check_request bounds, flags and permissions", "[nbd]") {
  auto e = test_export(1 << 20);
  auto ro = test_export(1 << 20, true);
  using V = n::Verdict;
  auto check = [](const n::Request& r, const n::ExportInfo& x) { return n::check_request(r, x); };
  auto req = [](uint16_t type, uint64_t off, uint32_t len, uint16_t flags = 0) {
    return n::Request{flags, type, 1, off, len};
  };
  CHECK(check(req(n::kCmdRead, 0, 4096), e).kind == V::Run);
  CHECK(check(req(n::kCmdRead, (1 << 20) - 4096, 4096), e).kind == V::Run);
  CHECK(check(req(n::kCmdRead, (1 << 20) - 4095, 4096), e).error == n::kEinval);
  CHECK(check(req(n::kCmdRead, ~0ull - 10, 4096), e).error == n::kEinval);  // offset + length overflows
  CHECK(check(req(n::kCmdWrite, (1 << 20), 1), e).error == n::kEnospc);
  CHECK(check(req(n::kCmdWrite, 0, n::kMaxRequestLength + 1), e).kind == V::Disconnect);
  CHECK(check(req(n::kCmdWrite, 0, 512, n::kCmdFlagFua), e).kind == V::Run);
  CHECK(check(req(n::kCmdWrite, 0, 512, n::kCmdFlagNoHole), e).error == n::kEinval);
  CHECK(check(req(n::kCmdWrite, 0, 512), ro).error == n::kEperm);
  CHECK(check(req(n::kCmdTrim, 0, 512), ro).error == n::kEinval);  // trim not advertised read-only
  CHECK(check(req(n::kCmdTrim, (1 << 20) - 1, 2), e).error == n::kEinval);
  CHECK(check(req(n::kCmdWriteZeroes, 0, 4096, n::kCmdFlagNoHole | n::kCmdFlagFua), e).kind == V::Run);
  CHECK(check(req(n::kCmdWriteZeroes, 4096, 1 << 20), e).error == n::kEnospc);
  CHECK(check(req(n::kCmdFlush, 0, 0), e).kind == V::Run);
  CHECK(check(req(n::kCmdFlush, 0, 0), ro).kind == V::Run);
  CHECK(check(req(n::kCmdDisc, 0, 0), e).kind == V::Disconnect);
  CHECK(check(req(n::kCmdCache, 0, 512), e).error == n::kEinval);
  CHECK(check(req(n::kCmdBlockStatus, 0, 512), e).error == n::kEinval);
  CHECK(check(req(77, 0, 0), e).error == n::kEinval);
  CHECK(check(req(n::kCmdRead, 0, 512, 1 << 7), e).error == n::kEinval);
  CHECK(check(req(n::kCmdRead, 0, n::kMaxRequestLength + 1), test_export(1ull << 40)).error == n::kEinval);
}

TEST_CASE("nbd: simple reply and errno mapping", "[nbd]") {
  std::vector<uint8_t> b(1, 0xa5);
  n::encode_simple_reply(n::kEio, 0xabcdef0011223344ull, b);
  CHECK(b == std::vector<uint8_t>{0xa5} + be({{n::kSimpleReplyMagic, 4}, {5, 4}, {0xabcdef0011223344ull, 8}}));
  CHECK(n::errno_to_nbd(0) == 0);
  CHECK(n::errno_to_nbd(EROFS) == n::kEperm);
  CHECK(n::errno_to_nbd(EDQUOT) == n::kEnospc);
  CHECK(n::errno_to_nbd(EINVAL) == n::kEinval);
  CHECK(n::errno_to_nbd(EBADMSG) == n::kEio);
}

// ---- server -------------------------------------------------------------------

namespace {

// An in-memory disk. Calls happen on the I/O thread; the test thread reads
// `data` only after the loop is idle.
class MemBackend final : public BlockBackend {
 public:
  explicit MemBackend(uint64_t size, bool ro = false) : data(size), ro_(ro) {}
  uint64_t size() const override { return data.size(); }
  bool read_only() const override { return ro_; }
  std::string format() const override { return "raw"; }
  Result<void> read(uint64_t off, std::span<uint8_t> out) override {
    if (off > data.size() || out.size() > data.size() - off) return make_error(EINVAL, "out of range");
    std::memcpy(out.data(), data.data() + off, out.size());
    bump(s_.reads, s_.bytes_read, out.size());
    if (fail_reads_at != UINT64_MAX && off <= fail_reads_at && fail_reads_at < off + out.size())
      return make_error(EIO, "injected");
    return {};
  }
  Result<void> write(uint64_t off, Bytes d, bool fua) override {
    if (off > data.size() || d.size() > data.size() - off) return make_error(ENOSPC, "out of range");
    if (delay_us) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    std::memcpy(data.data() + off, d.data(), d.size());
    bump(s_.writes, s_.bytes_written, d.size());
    if (fua) fuas++;
    return {};
  }
  Result<void> flush() override {
    std::lock_guard lk(mu_);
    s_.flushes++;
    return {};
  }
  Result<void> discard(uint64_t off, uint64_t len) override {
    std::memset(data.data() + off, 0, len);
    bump(s_.discards, s_.bytes_discarded, len);
    return {};
  }
  Result<void> write_zeroes(uint64_t off, uint64_t len, bool may_unmap, bool) override {
    std::memset(data.data() + off, 0, len);
    bump(s_.write_zeroes, s_.bytes_zeroed, len);
    if (!may_unmap) no_hole++;
    return {};
  }
  BlockStats stats() const override {
    std::lock_guard lk(mu_);
    BlockStats s = s_;
    s.virtual_size = data.size();
    s.file_size = data.size();
    s.cluster_size = 4096;
    return s;
  }

  std::vector<uint8_t> data;
  std::atomic<int> fuas{0}, no_hole{0};
  std::atomic<int> delay_us{0};
  uint64_t fail_reads_at = UINT64_MAX;

 private:
  void bump(uint64_t& n, uint64_t& bytes, uint64_t len) {
    std::lock_guard lk(mu_);
    n++;
    bytes += len;
  }
  mutable std::mutex mu_;
  BlockStats s_;
  bool ro_;
};

// A blocking NBD client on one end of a socketpair, run on its own thread.
struct Client {
  int fd = -1;
  ~Client() {
    if (fd >= 0) ::close(fd);
  }
  bool send(const std::vector<uint8_t>& b) {
    size_t off = 0;
    while (off < b.size()) {
      ssize_t w = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
      if (w <= 0) return false;
      off += size_t(w);
    }
    return true;
  }
  bool recv(uint8_t* p, size_t len, int timeout_ms = 5000) {
    size_t off = 0;
    while (off < len) {
      pollfd pf{fd, POLLIN, 0};
      if (::poll(&pf, 1, timeout_ms) <= 0) return false;
      ssize_t r = ::recv(fd, p + off, len - off, 0);
      if (r <= 0) return false;
      off += size_t(r);
    }
    return true;
  }
  // True when the server closed the connection (EOF) within the timeout.
  bool closed_by_peer(int timeout_ms = 5000) {
    pollfd pf{fd, POLLIN, 0};
    if (::poll(&pf, 1, timeout_ms) <= 0) return false;
    uint8_t b;
    return ::recv(fd, &b, 1, 0) == 0;
  }
  // Greeting, flags, NBD_OPT_GO; returns the export size (0 on failure).
  uint64_t go(std::string_view name = "d0") {
    uint8_t g[18];
    if (!recv(g, 18) || rd64(g) != n::kInitMagic) return 0;
    if (!send(be({{n::kClientFixedNewstyle | n::kClientNoZeroes, 4}}) + option(n::kOptGo, info_request(name, {}))))
      return 0;
    uint64_t size = 0;
    for (;;) {
      uint8_t h[20];
      if (!recv(h, 20)) return 0;
      uint32_t type = load_be32(h + 12), len = load_be32(h + 16);
      std::vector<uint8_t> d(len);
      if (len && !recv(d.data(), len)) return 0;
      if (type == n::kRepInfo && len >= 12 && rd16(d.data()) == n::kInfoExport) size = rd64(d.data() + 2);
      if (type == n::kRepAck) return size;
      if (type & 0x80000000u) return 0;
    }
  }
  bool send_request(uint16_t type, uint64_t handle, uint64_t off, uint32_t len, uint16_t flags = 0,
                    const std::vector<uint8_t>& payload = {}) {
    std::vector<uint8_t> b;
    n::encode_request(n::Request{flags, type, handle, off, len}, b);
    b.insert(b.end(), payload.begin(), payload.end());
    return send(b);
  }
  void request(uint16_t type, uint64_t handle, uint64_t off, uint32_t len, uint16_t flags = 0,
               const std::vector<uint8_t>& payload = {}) {
    REQUIRE(send_request(type, handle, off, len, flags, payload));
  }
  // Reads one simple reply header: {error, handle}; error UINT32_MAX on failure.
  std::pair<uint32_t, uint64_t> reply() {
    uint8_t h[16];
    if (!recv(h, 16) || load_be32(h) != n::kSimpleReplyMagic) return {UINT32_MAX, 0};
    return {load_be32(h + 4), rd64(h + 8)};
  }
};

// Runs the loop on this thread while `client` runs on another.
void run_with_client(uv_loop_t* loop, const std::function<void()>& client) {
  std::atomic<bool> done{false};
  std::thread t([&] {
    client();
    done = true;
  });
  uv_timer_t timer;
  uv_timer_init(loop, &timer);
  timer.data = &done;
  uv_timer_start(&timer, [](uv_timer_t* h) {
    if (*static_cast<std::atomic<bool>*>(h->data)) uv_stop(h->loop);
  }, 1, 1);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!done && std::chrono::steady_clock::now() < deadline) uv_run(loop, UV_RUN_ONCE);
  t.join();
  uv_timer_stop(&timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
}

struct Fixture {
  uv_loop_t loop;
  std::unique_ptr<MemBackend> mem_owner;
  MemBackend* mem;
  std::unique_ptr<IoThread> io;
  std::unique_ptr<NbdServer> srv;
  explicit Fixture(uint64_t size = 1 << 20, bool ro = false, size_t capacity = 1024) {
    uv_loop_init(&loop);
    mem_owner = std::make_unique<MemBackend>(size, ro);
    mem = mem_owner.get();
    io = std::make_unique<IoThread>(&loop, *mem, capacity);
    srv = std::make_unique<NbdServer>(&loop, *io, test_export(size, ro));
  }
  ~Fixture() {
    srv->close();
    io->stop();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
  }
  std::unique_ptr<Client> connect() {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    REQUIRE(srv->adopt(sv[0]).ok());
    auto c = std::make_unique<Client>();
    c->fd = sv[1];
    return c;
  }
};

std::vector<uint8_t> pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; i++) v[i] = uint8_t(seed + i * 7 + (i >> 9));
  return v;
}

}  // namespace

TEST_CASE("nbd server: write, read back, flush, trim and write-zeroes over a socketpair", "[nbd][server]") {
  Fixture f;
  auto c = f.connect();
  run_with_client(&f.loop, [&] {
    REQUIRE(c->go() == 1 << 20);
    auto data = pattern(8192, 3);
    c->request(n::kCmdWrite, 1, 4096, 8192, n::kCmdFlagFua, data);
    auto [e1, h1] = c->reply();
    CHECK(e1 == 0);
    CHECK(h1 == 1);
    c->request(n::kCmdRead, 2, 4096, 8192);
    auto [e2, h2] = c->reply();
    REQUIRE(e2 == 0);
    CHECK(h2 == 2);
    std::vector<uint8_t> got(8192);
    REQUIRE(c->recv(got.data(), got.size()));
    CHECK(got == data);
    c->request(n::kCmdFlush, 3, 0, 0);
    CHECK(c->reply().first == 0);
    c->request(n::kCmdTrim, 4, 4096, 4096);
    CHECK(c->reply().first == 0);
    c->request(n::kCmdWriteZeroes, 5, 8192, 4096, n::kCmdFlagNoHole);
    CHECK(c->reply().first == 0);
    c->request(n::kCmdRead, 6, 4096, 8192);
    REQUIRE(c->reply().first == 0);
    REQUIRE(c->recv(got.data(), got.size()));
    CHECK(std::all_of(got.begin(), got.end(), [](uint8_t b) { return b == 0; }));
    c->request(n::kCmdDisc, 7, 0, 0);
    CHECK(c->closed_by_peer());
  });
  auto s = f.mem->stats();
  CHECK(s.writes == 1);
  CHECK(s.flushes == 1);
  CHECK(s.discards == 1);
  CHECK(s.write_zeroes == 1);
  CHECK(f.mem->fuas == 1);
  CHECK(f.mem->no_hole == 1);
  CHECK(f.srv->stats().handshakes == 1);
  CHECK(f.srv->stats().requests[n::kCmdRead] == 2);
  CHECK(f.srv->stats().bytes_written == 8192);
}

TEST_CASE("nbd server: bad requests get EINVAL/ENOSPC replies and the connection goes on", "[nbd][server]") {
  Fixture f(65536);
  auto c = f.connect();
  run_with_client(&f.loop, [&] {
    REQUIRE(c->go("") == 65536);
    c->request(n::kCmdRead, 1, 65536 - 100, 4096);  // past the end
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{n::kEinval, 1});
    c->request(n::kCmdWrite, 2, 65536, 512, 0, std::vector<uint8_t>(512, 1));  // past the end, payload skipped
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{n::kEnospc, 2});
    c->request(n::kCmdBlockStatus, 3, 0, 512);
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{n::kEinval, 3});
    c->request(n::kCmdRead, 4, 0, 512, 1 << 9);  // unknown flag
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{n::kEinval, 4});
    c->request(n::kCmdRead, 5, 0, 0);  // zero length: nothing to do
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{0, 5});
    c->request(n::kCmdWrite, 6, 0, 3, 0, {9, 9, 9});  // still in sync after the skipped payload
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{0, 6});
  });
  CHECK(f.mem->data[0] == 9);
  CHECK(f.srv->stats().error_replies == 4);
  CHECK(f.srv->stats().protocol_errors == 0);
}

TEST_CASE("nbd server: backend errors become NBD errors", "[nbd][server]") {
  Fixture f;
  f.mem->fail_reads_at = 8192;
  auto c = f.connect();
  run_with_client(&f.loop, [&] {
    REQUIRE(c->go());
    c->request(n::kCmdRead, 1, 8192, 512);
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{n::kEio, 1});  // no payload follows
    c->request(n::kCmdRead, 2, 0, 512);
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{0, 2});
    std::vector<uint8_t> got(512);
    CHECK(c->recv(got.data(), got.size()));
  });
}

TEST_CASE("nbd server: read-only export refuses writes with EPERM", "[nbd][server]") {
  Fixture f(65536, true);
  auto c = f.connect();
  run_with_client(&f.loop, [&] {
    REQUIRE(c->go());
    c->request(n::kCmdWrite, 1, 0, 4, 0, {1, 2, 3, 4});
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{n::kEperm, 1});
    c->request(n::kCmdWriteZeroes, 2, 0, 4);
    CHECK(c->reply().first == n::kEinval);  // not advertised
    c->request(n::kCmdFlush, 3, 0, 0);
    CHECK(c->reply() == std::pair<uint32_t, uint64_t>{0, 3});
  });
  CHECK(f.mem->data[0] == 0);
}

TEST_CASE("nbd server: a bad request magic or an oversized write closes only that connection", "[nbd][server]") {
  Fixture f;
  auto bad = f.connect();
  auto big = f.connect();
  auto good = f.connect();
  run_with_client(&f.loop, [&] {
    REQUIRE(bad->go());
    REQUIRE(big->go());
    REQUIRE(good->go());
    REQUIRE(bad->send(be({{0xdeadbeef, 4}, {0, 24}})));
    CHECK(bad->closed_by_peer());
    big->request(n::kCmdWrite, 1, 0, n::kMaxRequestLength + 1);
    CHECK(big->closed_by_peer());
    good->request(n::kCmdFlush, 9, 0, 0);
    CHECK(good->reply() == std::pair<uint32_t, uint64_t>{0, 9});
  });
  CHECK(f.srv->stats().protocol_errors == 2);
}

TEST_CASE("nbd server: a garbage handshake is dropped; NBD_OPT_ABORT closes cleanly", "[nbd][server]") {
  Fixture f;
  auto a = f.connect();
  auto b = f.connect();
  run_with_client(&f.loop, [&] {
    uint8_t g[18];
    REQUIRE(a->recv(g, 18));
    REQUIRE(a->send(be({{1, 4}}) + str("GARBAGE!GARBAGE!")));
    CHECK(a->closed_by_peer());
    REQUIRE(b->recv(g, 18));
    REQUIRE(b->send(be({{1, 4}}) + option(n::kOptAbort, {})));
    uint8_t h[20];
    REQUIRE(b->recv(h, 20));
    CHECK(load_be32(h + 12) == n::kRepAck);
    CHECK(b->closed_by_peer());
  });
}

TEST_CASE("nbd server: pipelined requests from several clients all complete, matched by handle",
          "[nbd][server]") {
  Fixture f(4 << 20, false, 16);  // a small disk queue: backpressure is exercised
  f.mem->delay_us = 50;
  constexpr int kClients = 4, kPerClient = 200;
  std::vector<std::unique_ptr<Client>> cs;
  for (int i = 0; i < kClients; i++) cs.push_back(f.connect());
  std::atomic<int> failures{0};
  run_with_client(&f.loop, [&] {
    std::vector<std::thread> ts;
    for (int ci = 0; ci < kClients; ci++) {
      ts.emplace_back([&, ci] {
        Client& c = *cs[ci];
        if (!c.go()) return void(failures++);
        // Each client owns a 1 MiB region; all writes go out before any
        // reply is read, then every reply must come back exactly once.
        std::thread writer([&] {
          for (int i = 0; i < kPerClient; i++) {
            uint64_t off = uint64_t(ci) * (1 << 20) + uint64_t(i % 256) * 4096;
            std::vector<uint8_t> b;
            n::encode_request(n::Request{0, n::kCmdWrite, uint64_t(i), off, 4096}, b);
            auto p = pattern(4096, uint8_t(ci * 31 + i));
            b.insert(b.end(), p.begin(), p.end());
            if (!c.send(b)) return void(failures++);
          }
        });
        std::vector<int> seen(kPerClient, 0);
        for (int i = 0; i < kPerClient; i++) {
          auto [e, h] = c.reply();
          if (e != 0 || h >= uint64_t(kPerClient)) {
            failures++;
            break;
          }
          seen[h]++;
        }
        writer.join();
        if (std::count(seen.begin(), seen.end(), 1) != kPerClient) failures++;
        // Read back the region.
        for (int i = 0; i < kPerClient; i++) {
          uint64_t off = uint64_t(ci) * (1 << 20) + uint64_t(i) * 4096;
          if (!c.send_request(n::kCmdRead, 1000 + uint64_t(i), off, 4096)) {
            failures++;
            break;
          }
          auto [e, h] = c.reply();
          std::vector<uint8_t> got(4096);
          if (e != 0 || h != 1000 + uint64_t(i) || !c.recv(got.data(), got.size()) ||
              got != pattern(4096, uint8_t(ci * 31 + i)))
            failures++;
        }
      });
    }
    for (auto& t : ts) t.join();
  });
  CHECK(failures == 0);
  CHECK(f.srv->stats().connections_total == kClients);
  CHECK(f.io->in_flight() == 0);
}

TEST_CASE("nbd server: tight memory bounds still let pipelined large requests through", "[nbd][server]") {
  Fixture f(4 << 20);
  f.srv->max_held_bytes = 100 * 1024;       // less than two 64 KiB requests per connection
  f.srv->max_total_held_bytes = 150 * 1024;  // and across both connections
  f.mem->delay_us = 200;
  auto a = f.connect();
  auto b = f.connect();
  std::atomic<int> failures{0};
  run_with_client(&f.loop, [&] {
    std::vector<std::thread> ts;
    for (Client* c : {a.get(), b.get()}) {
      ts.emplace_back([&, c] {
        if (!c->go()) return void(failures++);
        uint64_t base = c == a.get() ? 0 : 2 << 20;
        std::thread writer([&] {
          for (int i = 0; i < 24; i++)
            if (!c->send_request(n::kCmdWrite, uint64_t(i), base + uint64_t(i) * 65536, 65536, 0,
                                 pattern(65536, uint8_t(i))))
              return void(failures++);
          for (int i = 0; i < 24; i++)
            if (!c->send_request(n::kCmdRead, 100 + uint64_t(i), base + uint64_t(i) * 65536, 65536))
              return void(failures++);
        });
        // Writes are answered first (the disk runs one connection's
        // requests in order); then each read brings its data.
        for (int i = 0; i < 48; i++) {
          auto [e, h] = c->reply();
          if (e != 0) {
            failures++;
            break;
          }
          if (h >= 100) {
            std::vector<uint8_t> got(65536);
            if (!c->recv(got.data(), got.size()) || got != pattern(65536, uint8_t(h - 100))) failures++;
          }
        }
        writer.join();
      });
    }
    for (auto& t : ts) t.join();
  });
  CHECK(failures == 0);
  CHECK(f.srv->held_bytes() == 0);
  CHECK(f.srv->stats().read_pauses > 0);
}

TEST_CASE("nbd server: listens on a unix socket with mode 0600 and refuses a live one", "[nbd][server]") {
  Fixture f;
  std::string path = "/tmp/berth-nbd-test-" + std::to_string(::getpid()) + ".sock";
  auto bound = f.srv->listen("unix:" + path);
  REQUIRE(bound.ok());
  CHECK(bound.value() == "unix:" + path);
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  NbdServer other(&f.loop, *f.io, test_export());
  auto again = other.listen("unix:" + path);
  CHECK_FALSE(again.ok());
  CHECK(again.error().code == EADDRINUSE);
  other.close();
  auto tcp = f.srv->listen("tcp:127.0.0.1:0");
  REQUIRE(tcp.ok());
  CHECK(tcp.value().rfind("tcp:127.0.0.1:", 0) == 0);
  CHECK(f.srv->listen("udp:1").error().code == EINVAL);
  f.srv->close();
  CHECK(::access(path.c_str(), F_OK) != 0);  // removed on close
  f.io->set_space_callback({});
}

// ---- disks and /disks/<id>/ctl ----------------------------------------------------

TEST_CASE("disk spec: grammar, defaults and errors", "[disk]") {
  auto d = parse_disk_spec("d0=/var/lib/a,,b.qcow2,format=qcow2,nbd=unix:/tmp/d0.sock,nbd=tcp:127.0.0.1:0,ro");
  REQUIRE(d.ok());
  CHECK(d->id == "d0");
  CHECK(d->path == "/var/lib/a,b.qcow2");
  CHECK(d->format == "qcow2");
  CHECK(d->nbd == std::vector<std::string>{"unix:/tmp/d0.sock", "tcp:127.0.0.1:0"});
  CHECK(d->read_only);
  CHECK(parse_disk_spec(d->to_string())->to_string() == d->to_string());
  auto plain = parse_disk_spec("root=img.raw");
  REQUIRE(plain.ok());
  CHECK(plain->format.empty());
  CHECK(plain->nbd.empty());
  for (const char* bad : {"", "noequals", "=x", "a/b=x", "d0=", "d0=x,format=vmdk", "d0=x,nbd=", "d0=x,cache=none",
                          "d0=x,"})
    CHECK(parse_disk_spec(bad).error().code == EINVAL);
}

namespace {

// A job that takes `steps` steps and can be made to fail.
class FakeJob final : public IoJob {
 public:
  FakeJob(std::string name, int steps, bool fail, std::atomic<bool>* gate, int sleep_ms = 0)
      : name_(std::move(name)), steps_(steps), fail_(fail), gate_(gate), sleep_ms_(sleep_ms) {}
  std::string name() const override { return name_; }
  Result<bool> step(BlockBackend&) override {
    while (gate_ && !gate_->load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (sleep_ms_) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    done_++;
    if (fail_ && done_ == steps_) return make_error(EIO, "injected failure");
    return done_ >= steps_;
  }
  int percent() const override { return done_ * 100 / steps_; }
  std::string summary() const override { return "file 1.0 GiB -> 512 MiB"; }

 private:
  std::string name_;
  int steps_, done_ = 0;
  bool fail_;
  std::atomic<bool>* gate_;
  int sleep_ms_;
};

std::string read_all(p9::OpenFile& f) {
  std::string s;
  uint8_t buf[7];  // small reads: offsets past 0 must use the same snapshot
  for (uint64_t off = 0;;) {
    auto r = f.read(off, buf);
    REQUIRE(r.ok());
    if (r.value() == 0) return s;
    s.append(reinterpret_cast<char*>(buf), r.value());
    off += r.value();
  }
}

void wait_job(uv_loop_t* loop, Disk& d) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (d.job_status().state == JobStatus::State::Running && std::chrono::steady_clock::now() < deadline)
    uv_run(loop, UV_RUN_NOWAIT);
  uv_run(loop, UV_RUN_NOWAIT);
}

}  // namespace

TEST_CASE("disk ctl: a job starts at once, shows progress, then OK; a second is EBUSY", "[disk]") {
  uv_loop_t loop;
  uv_loop_init(&loop);
  std::atomic<bool> gate{false};
  {
    Disk disk(&loop, "d0", "/images/d0.img", std::make_unique<MemBackend>(1 << 20),
              [&](std::string_view cmd, BlockBackend&) -> Result<std::unique_ptr<IoJob>> {
                if (cmd == "compact") return std::unique_ptr<IoJob>(std::make_unique<FakeJob>("compact", 4, false, &gate));
                if (cmd == "check") return std::unique_ptr<IoJob>(std::make_unique<FakeJob>("check", 2, true, nullptr));
                return make_error(EINVAL, "unknown command");
              });
    p9::Tree tree;
    p9::MetricsRegistry metrics;
    mount_disk_tree(tree, disk);
    mount_disk_metrics(metrics, {&disk});
    auto ctl = tree.resolve("/disks/d0/ctl");
    REQUIRE(ctl);
    REQUIRE(tree.resolve("/disks/d0/info"));
    REQUIRE(tree.resolve("/disks/d0/stats"));

    auto idle = ctl->open(p9::Access::Read, false);
    CHECK(read_all(*idle.value()) == "idle\n");

    auto w = ctl->open(p9::Access::ReadWrite, true);
    REQUIRE(w.ok());
    REQUIRE(w.value()->truncate(0).ok());
    auto r = w.value()->write(0, as_bytes("compact\n"));
    REQUIRE(r.ok());
    CHECK(r.value() == 8);
    CHECK(read_all(*w.value()) == "OK started compact\ncompact 0%\n");

    auto busy = ctl->open(p9::Access::Write, false);
    auto r2 = busy.value()->write(0, as_bytes("check"));
    REQUIRE_FALSE(r2.ok());
    CHECK(r2.error().code == EBUSY);
    CHECK(read_all(*busy.value()).rfind("ERROR compact is running", 0) == 0);

    gate = true;
    wait_job(&loop, disk);
    std::string done = read_all(*w.value());
    CHECK(done.rfind("OK started compact\nOK compact: file 1 MiB -> 1 MiB; file 1.0 GiB -> 512 MiB (", 0) == 0);
    auto fresh = ctl->open(p9::Access::Read, false);
    CHECK(read_all(*fresh.value()).rfind("OK compact: file 1 MiB -> 1 MiB; file 1.0 GiB -> 512 MiB", 0) == 0);
    CHECK(render_disk_stats(disk).find("job OK compact") != std::string::npos);

    // A failing job ends as ERROR; an unknown command fails the write.
    auto w2 = ctl->open(p9::Access::ReadWrite, false);
    REQUIRE(w2.value()->write(0, as_bytes("check")).ok());
    wait_job(&loop, disk);
    CHECK(read_all(*w2.value()) == "OK started check\nERROR check: injected failure\n");
    auto bad = ctl->open(p9::Access::ReadWrite, false);
    auto r3 = bad.value()->write(0, as_bytes("defrag"));
    CHECK(r3.error().code == EINVAL);
    CHECK(read_all(*bad.value()) == "ERROR unknown command\n");
    CHECK(bad.value()->write(0, as_bytes("\n")).error().code == EINVAL);

    std::string info = render_disk_info(disk);
    CHECK(info.find("format raw\n") != std::string::npos);
    CHECK(info.find("virtual_size 1048576\n") != std::string::npos);
    CHECK(info.find("path /images/d0.img\n") != std::string::npos);
    std::string m = metrics.render();
    CHECK(m.find("berth_disk_virtual_size_bytes{disk=\"d0\"} 1048576") != std::string::npos);
    CHECK(m.find("# TYPE berth_disk_reads_total counter") != std::string::npos);
    disk.close();
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("disk: requests keep being served while a job runs", "[disk]") {
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    Disk disk(&loop, "d1", "mem", std::make_unique<MemBackend>(1 << 20),
              [&](std::string_view, BlockBackend&) -> Result<std::unique_ptr<IoJob>> {
                return std::unique_ptr<IoJob>(std::make_unique<FakeJob>("compact", 100, false, nullptr, 2));
              });
    REQUIRE(disk.command("compact").ok());
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    REQUIRE(disk.nbd().adopt(sv[0]).ok());
    Client c;
    c.fd = sv[1];
    run_with_client(&loop, [&] {
      REQUIRE(c.go("d1"));
      for (int i = 0; i < 20; i++) {
        c.request(n::kCmdWrite, uint64_t(i), uint64_t(i) * 512, 512, 0, std::vector<uint8_t>(512, uint8_t(i)));
        CHECK(c.reply() == std::pair<uint32_t, uint64_t>{0, uint64_t(i)});
      }
      CHECK(disk.job_status().state == JobStatus::State::Running);  // the job was still going
    });
    wait_job(&loop, disk);
    CHECK(disk.status_line().rfind("OK compact", 0) == 0);
    disk.close();
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("start_disks: opens qcow2 and raw images, mounts the tree, refuses bad specs", "[disk]") {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("berth-disks-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::string q = (dir / "a.qcow2").string(), r = (dir / "b.raw").string();
  {
    auto img = Qcow2Backend::create(q, 8 << 20);
    REQUIRE(img.ok());
    REQUIRE(img.value()->close().ok());
    std::vector<char> zeros(1 << 20);
    FILE* fp = std::fopen(r.c_str(), "wb");
    REQUIRE(fp);
    std::fwrite(zeros.data(), 1, zeros.size(), fp);
    std::fclose(fp);
  }
  CHECK(detect_format(q).value() == "qcow2");
  CHECK(detect_format(r).value() == "raw");
  uv_loop_t loop;
  uv_loop_init(&loop);
  {
    p9::Tree tree;
    p9::MetricsRegistry metrics;
    std::string sock = (dir / "a.nbd").string();
    auto set = start_disks(&loop, tree, metrics, {"a=" + q + ",nbd=unix:" + sock, "b=" + r + ",ro"});
    REQUIRE(set.ok());
    auto lines = set.value()->announcements();
    REQUIRE(lines.size() == 3);
    CHECK(lines[0] == "berth: disk a is qcow2 " + q + " (8388608 bytes)");
    CHECK(lines[1] == "berth: disk a nbd on unix:" + sock);
    CHECK(lines[2] == "berth: disk b is raw " + r + " (1048576 bytes)");
    auto info = tree.resolve("/disks/a/info");
    REQUIRE(info);
    auto fa = info->open(p9::Access::Read, false);
    std::string text = read_all(*fa.value());
    CHECK(text.find("format qcow2\n") != std::string::npos);
    CHECK(text.find("cluster_size 65536\n") != std::string::npos);
    auto fb = tree.resolve("/disks/b/info")->open(p9::Access::Read, false);
    CHECK(read_all(*fb.value()).find("read_only true\n") != std::string::npos);
    std::string m = metrics.render();
    CHECK(m.find("berth_disk_virtual_size_bytes{disk=\"a\"} 8388608") != std::string::npos);
    CHECK(m.find("berth_disk_virtual_size_bytes{disk=\"b\"} 1048576") != std::string::npos);
    CHECK(tree.describe().find("/disks/a/ctl") != std::string::npos);

    // check on the qcow2 disk runs as a job and reports the engine's summary.
    Disk& a = *set.value()->disks()[0];
    REQUIRE(a.command("check").ok());
    wait_job(&loop, a);
    CHECK(a.status_line().rfind("OK check: No errors were found on the image.", 0) == 0);
    // The raw disk has no such jobs; a read-only one no writing jobs.
    Disk& b = *set.value()->disks()[1];
    CHECK(b.command("compact").error().code == ENOTSUP);
    CHECK(b.command("check").error().code == ENOTSUP);
    CHECK(a.command("check please").error().code == EINVAL);
    set.value()->close();
  }
  {
    p9::Tree tree;
    p9::MetricsRegistry metrics;
    auto dup = start_disks(&loop, tree, metrics, {"a=" + q, "a=" + r});
    CHECK(dup.error().code == EEXIST);
    auto missing = start_disks(&loop, tree, metrics, {"c=" + (dir / "nope.qcow2").string()});
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().message.find("nope.qcow2") != std::string::npos);
    auto bad = start_disks(&loop, tree, metrics, {"a=" + q + ",nbd=udp:1"});
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().message.find("nbd=udp:1") != std::string::npos);
    CHECK(start_disks(&loop, tree, metrics, {"a b=" + q}).error().code == EINVAL);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0);
  fs::remove_all(dir);
}
