// 9P session behaviour through the in-memory transport.
//
// Each test builds a Rig (a tree with one file of every kind, the base tree,
// a fake clock and the server's counters) and talks to it over MemoryPipe.
// `Conn` sends raw Fcalls (so tests choose tags and fids, see every reply,
// including error replies to pipelined requests, and can speak 9P2000 and
// 9P2000.u) and also exposes the synchronous Client on the same pipe for
// path-level helpers (cat, ls, ctl). Raw requests use fids from 100 and tags
// from 1000, away from the Client's own.
//
// A read parked on a stream shows as "no reply queued" (recv() gives
// EAGAIN); nothing here waits on time.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "server9p/base.h"
#include "server9p/client.h"
#include "server9p/metrics.h"
#include "server9p/pipe.h"
#include "server9p/session.h"
#include "server9p/tree.h"

using namespace berth;
using namespace berth::p9;

namespace {

constexpr Dialect L = Dialect::P9_2000L;

// P9_DOTL_* open flags as Linux sends them (include/net/9p/9p.h).
constexpr uint32_t kRdonly = 0, kWronly = 1, kRdwr = 2, kCreate = 0100, kTrunc = 01000, kNonblock = 04000,
                   kLargefile = 0100000, kDirectory = 0200000;

constexpr const char* kVersion = "berth-test 1.2.3";

struct Rig {
  FakeClock clock;
  ServerStats stats;
  MetricsRegistry metrics;
  Tree tree;
  std::string state_text = "first\n";
  std::shared_ptr<ByteStream> stream = std::make_shared<ByteStream>(1024);
  std::vector<std::string> commands;  // what /ctl ran
  std::vector<std::string> stored;    // what /rw stored
  std::vector<std::string> removed;   // what /port's unlink hook saw

  Rig() {
    clock.t = {1700000000, 5};
    (void)mount_base_tree(tree, metrics, clock, kVersion);
    auto* self = this;
    metrics.add([self](PromWriter& w) { self->stats.render(w); });
    tree.mount("/", std::make_shared<StateFile>("state", "a snapshot", [self] { return self->state_text; }));
    tree.mount("/", std::make_shared<StateFile>(
                        "rw", "a writable state file", [self] { return std::string("old\n"); },
                        [self](std::string_view c) -> Result<void> {
                          self->stored.emplace_back(c);
                          return {};
                        }));
    tree.mount("/", std::make_shared<CtlFile>(
                        "ctl", "commands",
                        [self](std::string_view cmd) -> Result<std::string> {
                          self->commands.emplace_back(cmd);
                          if (cmd.starts_with("fail")) return make_error(EINVAL, "bad command: " + std::string(cmd));
                          if (cmd == "busy") return make_error(EADDRINUSE, "address in use");
                          if (cmd.starts_with("emit ")) {
                            self->stream->append(as_bytes(cmd.substr(5)));
                            return std::string("emitted");
                          }
                          return "did " + std::string(cmd);
                        },
                        "usage: anything\n"));
    tree.mount("/", std::make_shared<StreamFile>("stream", "a stream", stream, /*replay=*/true));
    tree.mount("/dir/sub", std::make_shared<StateFile>("leaf", "", [] { return std::string("leaf\n"); }));
    tree.mount("/dir", std::make_shared<StateFile>("file", "", [] { return std::string("file\n"); }));
    auto port = std::make_shared<Dir>("port", "VPNKit-style forwards", 0755);
    Dir* p = port.get();
    port->set_mkdir([p](std::string_view name, uint32_t) -> Result<NodePtr> {
      return p->add(std::make_shared<Dir>(std::string(name), "", 0755));
    });
    port->set_unlink([self, p](std::string_view name) -> Result<void> {
      self->removed.emplace_back(name);
      p->remove_static(name);
      return {};
    });
    tree.root()->add(port);
  }
  Rig(const Rig&) = delete;

  uint64_t dropped(ProtoDrop why) const { return stats.dropped[size_t(why)]; }
  Qid qid(std::string_view path) const {
    auto n = tree.resolve(path);
    REQUIRE(n);
    return n->qid();
  }
};

// ---- request builders (tags are filled in by Conn::send) ----

Fcall tversion(uint32_t msize, std::string v) {
  Fcall f;
  f.type = Tversion;
  f.tag = kNoTag;
  f.msize = msize;
  f.version = std::move(v);
  return f;
}
Fcall tattach(uint32_t fid, std::string aname, uint32_t afid = kNoFid) {
  Fcall f;
  f.type = Tattach;
  f.fid = fid;
  f.afid = afid;
  f.uname = "tester";
  f.aname = std::move(aname);
  f.n_uname = 1000;
  return f;
}
Fcall twalk(uint32_t fid, uint32_t newfid, std::vector<std::string> names) {
  Fcall f;
  f.type = Twalk;
  f.fid = fid;
  f.newfid = newfid;
  f.wnames = std::move(names);
  return f;
}
Fcall tlopen(uint32_t fid, uint32_t flags) {
  Fcall f;
  f.type = Tlopen;
  f.fid = fid;
  f.flags = flags;
  return f;
}
Fcall topen(uint32_t fid, uint8_t mode) {
  Fcall f;
  f.type = Topen;
  f.fid = fid;
  f.mode8 = mode;
  return f;
}
Fcall tread(uint32_t fid, uint64_t offset, uint32_t count = 8192) {
  Fcall f;
  f.type = Tread;
  f.fid = fid;
  f.offset = offset;
  f.count = count;
  return f;
}
Fcall twrite(uint32_t fid, uint64_t offset, std::string_view text) {  // `text` must outlive the send
  Fcall f;
  f.type = Twrite;
  f.fid = fid;
  f.offset = offset;
  f.data = as_bytes(text);
  return f;
}
Fcall tclunk(uint32_t fid) {
  Fcall f;
  f.type = Tclunk;
  f.fid = fid;
  return f;
}
Fcall tremove(uint32_t fid) {
  Fcall f = tclunk(fid);
  f.type = Tremove;
  return f;
}
Fcall tgetattr(uint32_t fid, uint64_t mask = kGetattrAll) {
  Fcall f;
  f.type = Tgetattr;
  f.fid = fid;
  f.request_mask = mask;
  return f;
}
Fcall tsetattr(uint32_t fid, uint32_t valid, uint64_t size = 0) {
  Fcall f;
  f.type = Tsetattr;
  f.fid = fid;
  f.valid = valid;
  f.size = size;
  f.mtime_sec = 1700000000;
  return f;
}
Fcall tflush(uint16_t oldtag) {
  Fcall f;
  f.type = Tflush;
  f.oldtag = oldtag;
  return f;
}
Fcall treaddir(uint32_t fid, uint64_t offset, uint32_t count = 8192) {
  Fcall f;
  f.type = Treaddir;
  f.fid = fid;
  f.offset = offset;
  f.count = count;
  return f;
}
Fcall tstat(uint32_t fid) {
  Fcall f;
  f.type = Tstat;
  f.fid = fid;
  return f;
}
Fcall of_type(uint8_t type, uint32_t fid) {
  Fcall f;
  f.type = type;
  f.fid = fid;
  return f;
}

std::string name_of(const Fcall& r) { return msg_name(r.type); }
// The errno of an error reply (Rlerror, or Rerror in 9P2000.u); 0 otherwise.
int err(const Fcall& r) { return r.type == Rlerror || r.type == Rerror ? int(r.ecode) : 0; }
std::string text(const Fcall& r) { return std::string(as_chars(r.data)); }

std::vector<uint8_t> hex(std::string_view s) {
  std::vector<uint8_t> out;
  int hi = -1;
  for (char c : s) {
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) continue;
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(uint8_t(hi << 4 | v));
      hi = -1;
    }
  }
  REQUIRE(hi == -1);
  return out;
}

class Conn {
 public:
  static constexpr uint32_t kRoot = 1;  // the Client's attach fid

  explicit Conn(Rig& rig, SessionLimits limits = {}) {
    auto p = std::make_unique<MemoryPipe>(rig.tree, rig.stats, rig.clock, limits);
    pipe = p.get();
    client = std::make_unique<Client>(std::move(p));
  }

  // Tversion 65536 "9P2000.L" and attach fid 1 at `aname` through the Client.
  Conn& start(const std::string& aname = "") {
    auto v = client->version(65536, "9P2000.L");
    REQUIRE(v);
    auto a = client->attach(aname);
    INFO("attach: " << (a ? "" : a.error().message));
    REQUIRE(a);
    REQUIRE(a.value() == kRoot);
    return *this;
  }

  uint16_t send(Fcall f) {
    if (f.type != Tversion && f.tag == kNoTag) f.tag = next_tag_++;
    send_bytes(encode(f, dialect));
    return f.tag;
  }
  void send_bytes(Bytes b) {
    auto r = pipe->send(b);
    INFO("send: " << (r ? "" : r.error().message));
    REQUIRE(r);
  }
  // The next queued reply, or nullopt when the session has not answered.
  std::optional<Fcall> recv() {
    auto m = pipe->recv();
    if (!m) {
      INFO("recv: " << m.error().message);
      REQUIRE(m.error().code == EAGAIN);
      return std::nullopt;
    }
    kept_.push_back(std::move(m.value()));  // Fcall::data views into it
    Fcall f;
    ParseResult pr = parse(kept_.back(), dialect, f);
    INFO("reply parse: " << parse_error_name(pr.error));
    REQUIRE(pr.ok);
    return f;
  }
  Fcall rpc(Fcall f) {
    uint16_t tag = send(std::move(f));
    auto r = recv();
    REQUIRE(r);
    CHECK(r->tag == tag);
    CHECK_FALSE(recv());  // exactly one reply
    return *r;
  }
  // Walk from the root to `path` into `newfid`; REQUIREs a complete walk.
  uint32_t walk(uint32_t newfid, std::vector<std::string> names, uint32_t from = kRoot) {
    size_t n = names.size();
    Fcall r = rpc(twalk(from, newfid, std::move(names)));
    REQUIRE(name_of(r) == "Rwalk");
    REQUIRE(r.wqids.size() == n);
    return newfid;
  }
  uint32_t open(uint32_t newfid, std::vector<std::string> names, uint32_t flags) {
    walk(newfid, std::move(names));
    Fcall r = rpc(tlopen(newfid, flags));
    REQUIRE(name_of(r) == "Rlopen");
    return newfid;
  }
  std::string read(uint32_t fid, uint64_t offset = 0, uint32_t count = 8192) {
    Fcall r = rpc(tread(fid, offset, count));
    REQUIRE(name_of(r) == "Rread");
    return text(r);
  }
  bool closed() const { return pipe->closed(); }
  int recv_errno() {
    auto m = pipe->recv();
    return m ? 0 : m.error().code;
  }

  MemoryPipe* pipe;
  std::unique_ptr<Client> client;
  Dialect dialect = L;

 private:
  uint16_t next_tag_ = 1000;
  std::deque<std::vector<uint8_t>> kept_;
};

}  // namespace

// ---- version ---------------------------------------------------------------------------

TEST_CASE("Tversion caps msize at 1 MiB and keeps a smaller one", "[session][version]") {
  Rig rig;
  Conn c(rig);
  Fcall r = c.rpc(tversion(2u << 20, "9P2000.L"));
  CHECK(name_of(r) == "Rversion");
  CHECK(r.tag == kNoTag);
  CHECK(r.msize == 1u << 20);
  CHECK(r.version == "9P2000.L");
  CHECK(c.pipe->session().msize() == 1u << 20);

  r = c.rpc(tversion(8192, "9P2000.L"));
  CHECK(r.msize == 8192);
  CHECK(c.pipe->session().msize() == 8192);
}

TEST_CASE("Tversion picks the dialect from the version string's prefix", "[session][version]") {
  struct Case {
    const char* asked;
    const char* answered;
    Dialect dialect;
  };
  for (Case k : {Case{"9P2000.L", "9P2000.L", Dialect::P9_2000L}, Case{"9P2000.u", "9P2000.u", Dialect::P9_2000u},
                 Case{"9P2000", "9P2000", Dialect::P9_2000}, Case{"9P2000.foo", "9P2000", Dialect::P9_2000}}) {
    INFO("asked " << k.asked);
    Rig rig;
    Conn c(rig);
    Fcall r = c.rpc(tversion(8192, k.asked));
    CHECK(r.version == k.answered);
    CHECK(c.pipe->session().dialect() == k.dialect);
  }
}

TEST_CASE("an unknown version is answered 'unknown' and the session stays unversioned", "[session][version]") {
  Rig rig;
  Conn c(rig);
  Fcall r = c.rpc(tversion(8192, "bogus"));
  CHECK(r.version == "unknown");
  CHECK(r.msize == 8192);
  // Any other request is now "before Tversion".
  c.send(tattach(1, ""));
  CHECK(c.closed());
  CHECK(rig.dropped(ProtoDrop::NoVersion) == 1);
}

TEST_CASE("a Tversion msize below 512 is refused with 'unknown'", "[session][version]") {
  Rig rig;
  Conn c(rig);
  Fcall r = c.rpc(tversion(511, "9P2000.L"));
  CHECK(r.version == "unknown");
  Fcall ok = c.rpc(tversion(512, "9P2000.L"));
  CHECK(ok.version == "9P2000.L");
  CHECK(ok.msize == 512);
}

TEST_CASE("a second Tversion clunks every fid", "[session][version]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {"dir"});
  CHECK(c.pipe->session().fid_count() == 2);
  c.rpc(tversion(65536, "9P2000.L"));
  CHECK(c.pipe->session().fid_count() == 0);
  CHECK(err(c.rpc(tgetattr(100))) == EBADF);
}

// ---- auth and attach ----------------------------------------------------------------------

TEST_CASE("Tauth is refused with ENOENT: no authentication is needed", "[session][attach]") {
  Rig rig;
  Conn c(rig);
  c.rpc(tversion(65536, "9P2000.L"));
  Fcall a = tattach(0, "");
  a.type = Tauth;
  a.afid = 5;
  Fcall r = c.rpc(a);
  CHECK(name_of(r) == "Rlerror");
  CHECK(err(r) == ENOENT);
  CHECK(c.pipe->session().fid_count() == 0);
}

TEST_CASE("attach with aname ctl lands in /debug, where version can be walked", "[session][attach]") {
  Rig rig;
  Conn c(rig);
  c.start("ctl");
  Fcall ga = c.rpc(tgetattr(Conn::kRoot));
  CHECK(ga.qid == rig.qid("/debug"));
  auto v = c.client->cat("version");
  REQUIRE(v);
  CHECK(v.value() == std::string(kVersion) + "\n");
}

TEST_CASE("attach errors: afid set, fid in use, missing aname, file aname", "[session][attach]") {
  Rig rig;
  Conn c(rig);
  c.start();
  CHECK(err(c.rpc(tattach(100, "", /*afid=*/7))) == EINVAL);
  CHECK(err(c.rpc(tattach(Conn::kRoot, ""))) == EBADF);
  CHECK(err(c.rpc(tattach(100, "/nope"))) == ENOENT);
  CHECK(err(c.rpc(tattach(100, "/state"))) == ENOTDIR);
  CHECK(c.pipe->session().fid_count() == 1);
  Fcall r = c.rpc(tattach(100, "/dir/sub"));
  CHECK(name_of(r) == "Rattach");
  CHECK(r.qid == rig.qid("/dir/sub"));
}

// ---- walk -------------------------------------------------------------------------------

TEST_CASE("a walk whose first element is missing is Rlerror ENOENT and makes no fid", "[session][walk]") {
  Rig rig;
  Conn c(rig);
  c.start();
  Fcall r = c.rpc(twalk(Conn::kRoot, 100, {"nope", "dir"}));
  CHECK(name_of(r) == "Rlerror");
  CHECK(err(r) == ENOENT);
  CHECK(c.pipe->session().fid_count() == 1);
  CHECK(err(c.rpc(tgetattr(100))) == EBADF);
}

TEST_CASE("a walk failing at a later element returns the qids so far and no newfid", "[session][walk]") {
  Rig rig;
  Conn c(rig);
  c.start();
  Fcall r = c.rpc(twalk(Conn::kRoot, 100, {"dir", "sub", "nope", "leaf"}));
  REQUIRE(name_of(r) == "Rwalk");
  REQUIRE(r.wqids.size() == 2);
  CHECK(r.wqids[0] == rig.qid("/dir"));
  CHECK(r.wqids[1] == rig.qid("/dir/sub"));
  CHECK(c.pipe->session().fid_count() == 1);
  // Using newfid proves it was never created.
  CHECK(err(c.rpc(tgetattr(100))) == EBADF);
  CHECK(err(c.rpc(tclunk(100))) == EBADF);
  // And the number is still free for a walk that succeeds.
  c.walk(100, {"dir", "sub", "leaf"});
}

TEST_CASE("walking through a file stops with ENOTDIR", "[session][walk]") {
  Rig rig;
  Conn c(rig);
  c.start();
  Fcall r = c.rpc(twalk(Conn::kRoot, 100, {"state", "x"}));
  REQUIRE(name_of(r) == "Rwalk");
  CHECK(r.wqids.size() == 1);
  c.walk(101, {"state"});
  CHECK(err(c.rpc(twalk(101, 102, {"x"}))) == ENOTDIR);
}

TEST_CASE(".. never climbs above the attach root", "[session][walk]") {
  Rig rig;
  SECTION("attached at /debug") {
    Conn c(rig);
    c.start("ctl");
    Fcall r = c.rpc(twalk(Conn::kRoot, 100, {".."}));
    REQUIRE(r.wqids.size() == 1);
    CHECK(r.wqids[0] == rig.qid("/debug"));
    r = c.rpc(twalk(Conn::kRoot, 101, {"..", "..", "version"}));
    REQUIRE(r.wqids.size() == 3);
    CHECK(r.wqids[2] == rig.qid("/debug/version"));
    // The root's other children stay out of reach.
    r = c.rpc(twalk(Conn::kRoot, 102, {"..", "README"}));
    CHECK(r.wqids.size() == 1);
    CHECK(err(c.rpc(tgetattr(102))) == EBADF);
  }
  SECTION("attached at the root") {
    Conn c(rig);
    c.start();
    Fcall r = c.rpc(twalk(Conn::kRoot, 100, {"dir", "sub", "..", "..", ".."}));
    REQUIRE(r.wqids.size() == 5);
    CHECK(r.wqids[0] == rig.qid("/dir"));
    CHECK(r.wqids[1] == rig.qid("/dir/sub"));
    CHECK(r.wqids[2] == rig.qid("/dir"));
    CHECK(r.wqids[3] == rig.qid("/"));
    CHECK(r.wqids[4] == rig.qid("/"));
  }
}

TEST_CASE("walking a fid onto itself moves it, a failed self-walk leaves it", "[session][walk]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {});
  c.walk(100, {"dir"}, 100);
  CHECK(c.rpc(tgetattr(100)).qid == rig.qid("/dir"));
  Fcall r = c.rpc(twalk(100, 100, {"sub", "nope"}));
  CHECK(r.wqids.size() == 1);
  CHECK(c.rpc(tgetattr(100)).qid == rig.qid("/dir"));
  CHECK(c.pipe->session().fid_count() == 2);
}

TEST_CASE("names that are not path elements are not found, . stays in place", "[session][walk]") {
  Rig rig;
  Conn c(rig);
  c.start();
  uint32_t fid = 100;
  for (const char* bad : {"", "dir/sub", "nope"}) {
    INFO("name '" << bad << "'");
    CHECK(err(c.rpc(twalk(Conn::kRoot, fid++, {bad}))) == ENOENT);
  }
  Fcall nul = c.rpc(twalk(Conn::kRoot, fid++, {std::string("dir\0x", 5)}));
  CHECK(err(nul) == ENOENT);
  CHECK(c.pipe->session().fid_count() == 1);
  // "." is listed by Treaddir, and diodls -l walks every listed name.
  Fcall dot = c.rpc(twalk(Conn::kRoot, 200, {"dir", ".", "sub", "."}));
  REQUIRE(dot.wqids.size() == 4);
  CHECK(dot.wqids[1] == rig.qid("/dir"));
  CHECK(dot.wqids[3] == rig.qid("/dir/sub"));
  CHECK(c.rpc(tgetattr(200)).qid == rig.qid("/dir/sub"));
  // ... but not through a file.
  Fcall f = c.rpc(twalk(Conn::kRoot, 201, {"state", "."}));
  CHECK(f.wqids.size() == 1);
  CHECK(err(c.rpc(tgetattr(201))) == EBADF);
}

TEST_CASE("a 16-element walk is served", "[session][walk]") {
  Rig rig;
  Conn c(rig);
  c.start();
  std::vector<std::string> names(16, "..");
  Fcall r = c.rpc(twalk(Conn::kRoot, 100, names));
  CHECK(r.wqids.size() == 16);
}

// ---- fid misuse ---------------------------------------------------------------------------

TEST_CASE("requests on an unknown fid are EBADF", "[session][fid]") {
  Rig rig;
  Conn c(rig);
  c.start();
  const uint32_t ghost = 4242;
  CHECK(err(c.rpc(tgetattr(ghost))) == EBADF);
  CHECK(err(c.rpc(twalk(ghost, 100, {}))) == EBADF);
  CHECK(err(c.rpc(tlopen(ghost, kRdonly))) == EBADF);
  CHECK(err(c.rpc(tread(ghost, 0))) == EBADF);
  CHECK(err(c.rpc(twrite(ghost, 0, "x"))) == EBADF);
  CHECK(err(c.rpc(treaddir(ghost, 0))) == EBADF);
  CHECK(err(c.rpc(tsetattr(ghost, kSetattrSize))) == EBADF);
  CHECK(err(c.rpc(tclunk(ghost))) == EBADF);
  CHECK(err(c.rpc(tremove(ghost))) == EBADF);
  CHECK(err(c.rpc(of_type(Tstatfs, ghost))) == EBADF);
  CHECK(err(c.rpc(of_type(Tfsync, ghost))) == EBADF);
  CHECK(rig.stats.errors.at(EBADF) == 11);
}

TEST_CASE("a walk to a newfid already in use is EBADF and leaves both fids", "[session][fid]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {"dir"});
  CHECK(err(c.rpc(twalk(Conn::kRoot, 100, {"state"}))) == EBADF);
  CHECK(c.rpc(tgetattr(100)).qid == rig.qid("/dir"));
}

TEST_CASE("read and write need a fid opened for them", "[session][fid]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {"ctl"});
  CHECK(err(c.rpc(tread(100, 0))) == EBADF);       // not open
  CHECK(err(c.rpc(twrite(100, 0, "x\n"))) == EBADF);
  c.rpc(tlopen(100, kRdonly));
  CHECK(err(c.rpc(twrite(100, 0, "x\n"))) == EBADF);  // open read-only
  c.open(101, {"ctl"}, kWronly);
  CHECK(err(c.rpc(tread(101, 0))) == EBADF);          // open write-only
  CHECK(rig.commands.empty());
}

TEST_CASE("opening an open fid again is EBADF", "[session][fid]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"state"}, kRdonly);
  CHECK(err(c.rpc(tlopen(100, kRdonly))) == EBADF);
  CHECK(c.read(100) == "first\n");
}

TEST_CASE("read-only files refuse opens for writing with EACCES", "[session][perm]") {
  Rig rig;
  Conn c(rig);
  c.start();
  int n = 100;
  for (auto path : {std::vector<std::string>{"state"}, {"stream"}, {"README"}, {"debug", "version"}}) {
    for (uint32_t flags : {kWronly, kRdwr, kWronly | kTrunc}) {
      INFO(path.back() << " flags " << flags);
      uint32_t fid = uint32_t(n++);
      c.walk(fid, path);
      CHECK(err(c.rpc(tlopen(fid, flags))) == EACCES);
      // The fid stays usable for an allowed open.
      CHECK(name_of(c.rpc(tlopen(fid, kRdonly))) == "Rlopen");
    }
  }
  c.walk(999, {"dir"});
  CHECK(err(c.rpc(tlopen(999, kWronly))) == EISDIR);
}

TEST_CASE("Tread on a directory in 9P2000.L is EISDIR", "[session][perm]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"dir"}, kRdonly | kDirectory);
  CHECK(err(c.rpc(tread(100, 0))) == EISDIR);
}

// ---- getattr ------------------------------------------------------------------------------

TEST_CASE("getattr reports 0444 files, 0555 dirs, 0644 ctl and writable files", "[session][getattr]") {
  Rig rig;
  Conn c(rig);
  c.start();
  struct Case {
    std::vector<std::string> path;
    uint32_t mode;
    uint64_t nlink;
  };
  uint32_t fid = 100;
  for (auto& k : {Case{{}, 040555, 2}, Case{{"state"}, 0100444, 1}, Case{{"README"}, 0100444, 1},
                  Case{{"dir"}, 040555, 2}, Case{{"debug"}, 040555, 2}, Case{{"ctl"}, 0100644, 1},
                  Case{{"rw"}, 0100644, 1}, Case{{"stream"}, 0100444, 1}, Case{{"port"}, 040755, 2},
                  Case{{"debug", "null"}, 0100666, 1}}) {
    std::string path;
    for (auto& p : k.path) path += "/" + p;
    INFO("path " << path);
    c.walk(fid, k.path);
    Fcall r = c.rpc(tgetattr(fid++));
    REQUIRE(name_of(r) == "Rgetattr");
    CHECK(r.mode == k.mode);
    CHECK(r.nlink == k.nlink);
    CHECK(r.qid == rig.qid(path.empty() ? "/" : path));
    CHECK(r.valid == kGetattrBasic);
    CHECK(r.mtime_sec == 1700000000);
    CHECK(r.mtime_nsec == 5);
    CHECK(r.blksize == 4096);
  }
}

TEST_CASE("getattr size of an unopened state file is its current rendering", "[session][getattr]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {"state"});
  CHECK(c.rpc(tgetattr(100)).size == 6);
  rig.state_text = "a longer text\n";
  CHECK(c.rpc(tgetattr(100)).size == 14);
  CHECK(c.rpc(tgetattr(100)).nblocks == 1);
}

// ---- state files ----------------------------------------------------------------------------

TEST_CASE("a state file's content is the snapshot taken at open, for that fid", "[session][state]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"state"}, kRdonly | kLargefile);
  rig.state_text = "second, longer\n";
  // Fid A keeps the old content throughout, at any offset.
  CHECK(c.read(100, 0, 3) == "fir");
  CHECK(c.read(100, 3) == "st\n");
  CHECK(c.read(100, 6).empty());
  CHECK(c.rpc(tgetattr(100)).size == 6);
  // A new open sees the new content; so does an unopened fid's size.
  c.open(101, {"state"}, kRdonly);
  CHECK(c.read(101) == "second, longer\n");
  CHECK(c.rpc(tgetattr(101)).size == 15);
  c.walk(102, {"state"});
  CHECK(c.rpc(tgetattr(102)).size == 15);
  rig.state_text = "third\n";
  CHECK(c.read(100) == "first\n");
  CHECK(c.read(101) == "second, longer\n");
}

TEST_CASE("echo > a writable state file: whole lines are stored at the write, the rest at clunk", "[session][state]") {
  Rig rig;
  Conn c(rig);
  c.start();
  // Linux v9fs: Tlopen WRONLY|CREATE|LARGEFILE, Tsetattr SIZE|MTIME|CTIME, Twrite, Tclunk.
  c.open(100, {"rw"}, kWronly | kCreate | kLargefile);
  CHECK(name_of(c.rpc(tsetattr(100, kSetattrSize | kSetattrMtime | kSetattrCtime, 0))) == "Rsetattr");
  CHECK(c.rpc(tgetattr(100)).size == 0);
  Fcall w = c.rpc(twrite(100, 0, "text\n"));
  CHECK(w.count == 5);
  CHECK(rig.stored == std::vector<std::string>{"text\n"});  // so a bad line fails echo's write
  CHECK(name_of(c.rpc(tclunk(100))) == "Rclunk");
  CHECK(rig.stored.size() == 1);
  // Without a final newline the text waits for the clunk.
  c.open(101, {"rw"}, kWronly | kTrunc);
  c.rpc(twrite(101, 0, "more"));
  CHECK(rig.stored.size() == 1);
  CHECK(name_of(c.rpc(tclunk(101))) == "Rclunk");
  CHECK(rig.stored.back() == "more");
}

TEST_CASE("Tfsync stores a writable state file before clunk", "[session][state]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"rw"}, kWronly | kTrunc);
  c.rpc(twrite(100, 0, "a"));
  CHECK(rig.stored.empty());
  CHECK(name_of(c.rpc(of_type(Tfsync, 100))) == "Rfsync");
  CHECK(rig.stored == std::vector<std::string>{"a"});
  c.rpc(tclunk(100));
  CHECK(rig.stored.size() == 1);
}

// ---- ctl files ------------------------------------------------------------------------------

TEST_CASE("a ctl write returns the full count and the same fid reads OK", "[session][ctl]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"ctl"}, kRdwr);
  CHECK(c.read(100) == "usage: anything\n");
  Fcall w = c.rpc(twrite(100, 0, "add tcp:8080\n"));
  CHECK(name_of(w) == "Rwrite");
  CHECK(w.count == 13);
  CHECK(rig.commands == std::vector<std::string>{"add tcp:8080"});
  CHECK(c.read(100) == "OK did add tcp:8080\n");
  CHECK(c.rpc(tgetattr(100)).size == 20);
  // Another fid has its own result.
  c.open(101, {"ctl"}, kRdonly);
  CHECK(c.read(101) == "usage: anything\n");
}

TEST_CASE("a failing ctl command is Rlerror with the handler's errno, the fid reads ERROR", "[session][ctl]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"ctl"}, kRdwr);
  Fcall w = c.rpc(twrite(100, 0, "fail hard\n"));
  CHECK(name_of(w) == "Rlerror");
  CHECK(err(w) == EINVAL);
  CHECK(c.read(100) == "ERROR bad command: fail hard\n");
  w = c.rpc(twrite(100, 0, "busy\n"));
  CHECK(err(w) == EADDRINUSE);
  CHECK(c.read(100) == "ERROR address in use\n");
  // The fid keeps working after a failure.
  CHECK(c.rpc(twrite(100, 0, "ok\n")).count == 3);
  CHECK(c.read(100) == "OK did ok\n");
}

TEST_CASE("Client::ctl returns OK text, or the errno with the ERROR text", "[session][ctl]") {
  Rig rig;
  Conn c(rig);
  c.start();
  auto ok = c.client->ctl("ctl", "hello\n");
  REQUIRE(ok);
  CHECK(ok.value() == "OK did hello\n");
  auto bad = c.client->ctl("ctl", "busy\n");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == EADDRINUSE);
  CHECK(bad.error().message == "ERROR address in use");
  CHECK(c.pipe->session().fid_count() == 1);  // the helper clunked its fids
}

TEST_CASE("echo > ctl: Tlopen with O_TRUNC and Tsetattr size 0 are accepted", "[session][ctl]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {"ctl"});
  // Some clients truncate through the path fid before opening.
  CHECK(name_of(c.rpc(tsetattr(100, kSetattrSize, 0))) == "Rsetattr");
  CHECK(name_of(c.rpc(tlopen(100, kWronly | kTrunc | kLargefile))) == "Rlopen");
  CHECK(name_of(c.rpc(tsetattr(100, kSetattrSize | kSetattrMtime | kSetattrCtime, 0))) == "Rsetattr");
  CHECK(c.rpc(twrite(100, 0, "text\n")).count == 5);
  CHECK(name_of(c.rpc(tclunk(100))) == "Rclunk");
  CHECK(rig.commands == std::vector<std::string>{"text"});
}

TEST_CASE("Tsetattr: size 0 on a read-only file is EACCES, fixed attributes are EPERM", "[session][setattr]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {"state"});
  CHECK(err(c.rpc(tsetattr(100, kSetattrSize, 0))) == EACCES);
  CHECK(err(c.rpc(tsetattr(100, kSetattrSize | kSetattrMtime | kSetattrCtime, 0))) == EACCES);
  c.open(101, {"state"}, kRdonly);
  CHECK(err(c.rpc(tsetattr(101, kSetattrSize, 0))) == EACCES);
  // touch is accepted: times are synthetic.
  CHECK(name_of(c.rpc(tsetattr(100, kSetattrAtime | kSetattrMtime))) == "Rsetattr");
  // chmod and chown are refused.
  CHECK(err(c.rpc(tsetattr(100, kSetattrMode))) == EPERM);
  CHECK(err(c.rpc(tsetattr(100, kSetattrUid))) == EPERM);
  // Truncating a directory, or a ctl to a nonzero size, is refused.
  c.walk(102, {"dir"});
  CHECK(err(c.rpc(tsetattr(102, kSetattrSize, 0))) == EISDIR);
  c.walk(103, {"ctl"});
  CHECK(err(c.rpc(tsetattr(103, kSetattrSize, 10))) == EINVAL);
}

// ---- streams --------------------------------------------------------------------------------

TEST_CASE("a read on an empty stream parks without blocking the connection", "[session][stream]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"stream"}, kRdonly);
  uint16_t t = c.send(tread(100, 0));
  CHECK_FALSE(c.recv());  // EAGAIN: no reply yet
  CHECK(c.pipe->session().parked_count() == 1);
  CHECK(rig.stats.reads_parked == 1);
  // Other requests on the same connection are answered meanwhile.
  Fcall ga = c.rpc(tgetattr(100));
  CHECK(name_of(ga) == "Rgetattr");
  CHECK(ga.qid == rig.qid("/stream"));
  c.open(101, {"state"}, kRdonly);
  CHECK(c.read(101) == "first\n");
  // Data completes the parked read with exactly that data.
  rig.stream->append(as_bytes("hello\n"));
  auto r = c.recv();
  REQUIRE(r);
  CHECK(r->tag == t);
  CHECK(name_of(*r) == "Rread");
  CHECK(text(*r) == "hello\n");
  CHECK(c.pipe->session().parked_count() == 0);
  CHECK_FALSE(c.recv());
}

TEST_CASE("each open of a stream has its own cursor", "[session][stream]") {
  Rig rig;
  Conn c(rig);
  c.start();
  rig.stream->append(as_bytes("abc"));
  c.open(100, {"stream"}, kRdonly);
  c.open(101, {"stream"}, kRdonly);
  CHECK(c.read(100) == "abc");
  rig.stream->append(as_bytes("de"));
  CHECK(c.read(100) == "de");
  CHECK(c.read(101) == "abcde");  // the second cursor has not moved until now
  // Offsets are the client's business; the cursor decides what comes next.
  rig.stream->append(as_bytes("f"));
  CHECK(c.read(101, 0) == "f");
  CHECK(c.read(100, 12345) == "f");
}

TEST_CASE("Tflush of a parked read suppresses its reply, even after data arrives", "[session][stream][flush]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"stream"}, kRdonly);
  uint16_t t = c.send(tread(100, 0));
  CHECK_FALSE(c.recv());
  Fcall fl = c.rpc(tflush(t));
  CHECK(name_of(fl) == "Rflush");
  CHECK(c.pipe->session().parked_count() == 0);
  CHECK(rig.stats.flushes == 1);
  rig.stream->append(as_bytes("late\n"));
  CHECK_FALSE(c.recv());  // the flushed read is never answered
  // The data was not consumed by the flushed read: the next read gets it.
  CHECK(c.read(100) == "late\n");
  // The flushed tag is free for reuse.
  Fcall again = tread(100, 0);
  again.tag = t;
  c.send(again);
  CHECK_FALSE(c.recv());
  rig.stream->append(as_bytes("x"));
  auto r = c.recv();
  REQUIRE(r);
  CHECK(r->tag == t);
  CHECK(text(*r) == "x");
}

TEST_CASE("Tflush of a tag that is not outstanding is answered with Rflush", "[session][flush]") {
  Rig rig;
  Conn c(rig);
  c.start();
  CHECK(name_of(c.rpc(tflush(4321))) == "Rflush");
}

TEST_CASE("Tflush of one of two parked reads on a fid leaves the other waiting", "[session][stream][flush]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"stream"}, kRdonly);
  uint16_t t1 = c.send(tread(100, 0));
  uint16_t t2 = c.send(tread(100, 0));
  CHECK(c.pipe->session().parked_count() == 2);
  c.rpc(tflush(t1));
  rig.stream->append(as_bytes("y"));
  auto r = c.recv();
  REQUIRE(r);
  CHECK(r->tag == t2);
  CHECK(text(*r) == "y");
  CHECK_FALSE(c.recv());
}

TEST_CASE("Tclunk of a fid with a parked read ends the read with EINTR, then Rclunk", "[session][stream]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"stream"}, kRdonly);
  uint16_t t = c.send(tread(100, 0));
  CHECK_FALSE(c.recv());
  uint16_t tc = c.send(tclunk(100));
  auto first = c.recv();
  REQUIRE(first);
  CHECK(first->tag == t);
  CHECK(err(*first) == EINTR);
  auto second = c.recv();
  REQUIRE(second);
  CHECK(second->tag == tc);
  CHECK(name_of(*second) == "Rclunk");
  CHECK(c.pipe->session().parked_count() == 0);
  rig.stream->append(as_bytes("after"));  // nobody waits now; ASan checks no dangling waiter
  CHECK_FALSE(c.recv());
  CHECK(err(c.rpc(tread(100, 0))) == EBADF);
}

TEST_CASE("a ctl write on the same connection wakes a parked stream read", "[session][stream]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"stream"}, kRdonly);
  c.open(101, {"ctl"}, kWronly);
  uint16_t tr = c.send(tread(100, 0));
  CHECK_FALSE(c.recv());
  uint16_t tw = c.send(twrite(101, 0, "emit ping\n"));
  // Both replies come out of the one feed: the woken read first, then the write.
  auto a = c.recv();
  auto b = c.recv();
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->tag == tr);
  CHECK(text(*a) == "ping");
  CHECK(b->tag == tw);
  CHECK(b->count == 10);
}

TEST_CASE("a second Tversion aborts parked reads without answering them", "[session][stream][version]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"stream"}, kRdonly);
  c.send(tread(100, 0));
  CHECK(c.pipe->session().parked_count() == 1);
  Fcall v = c.rpc(tversion(65536, "9P2000.L"));
  CHECK(name_of(v) == "Rversion");
  CHECK(c.pipe->session().parked_count() == 0);
  rig.stream->append(as_bytes("z"));
  CHECK_FALSE(c.recv());
}

TEST_CASE("a request reusing the tag of a parked read closes the connection", "[session][stream][bad]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"stream"}, kRdonly);
  uint16_t t = c.send(tread(100, 0));
  Fcall dup = tgetattr(100);
  dup.tag = t;
  c.send(dup);
  CHECK(c.closed());
  CHECK(rig.dropped(ProtoDrop::TagInUse) == 1);
  CHECK(c.recv_errno() == ECONNRESET);
}

TEST_CASE("the parked-read table is bounded: the next read gets EAGAIN, counted", "[session][stream][limits]") {
  Rig rig;
  SessionLimits lim;
  lim.max_parked = 2;
  Conn c(rig, lim);
  c.start();
  c.open(100, {"stream"}, kRdonly);
  uint16_t t1 = c.send(tread(100, 0));
  uint16_t t2 = c.send(tread(100, 0));
  CHECK_FALSE(c.recv());
  uint16_t t3 = c.send(tread(100, 0));
  auto r3 = c.recv();
  REQUIRE(r3);
  CHECK(r3->tag == t3);
  CHECK(err(*r3) == EAGAIN);
  CHECK(rig.stats.pending_table_full == 1);
  CHECK(c.pipe->session().parked_count() == 2);
  // Data wakes both; the first takes it all and the second parks again.
  rig.stream->append(as_bytes("xy"));
  auto r1 = c.recv();
  REQUIRE(r1);
  CHECK(r1->tag == t1);
  CHECK(text(*r1) == "xy");
  CHECK_FALSE(c.recv());
  CHECK(c.pipe->session().parked_count() == 1);
  rig.stream->append(as_bytes("z"));
  auto r2 = c.recv();
  REQUIRE(r2);
  CHECK(r2->tag == t2);
  CHECK(text(*r2) == "z");
}

TEST_CASE("a file that says EAGAIN but cannot wait gets EAGAIN instead of parking", "[session][stream]") {
  Rig rig;
  int reads = 0;
  rig.tree.mount("/", std::make_shared<FuncFile>("flaky", "", 0444, [&](uint64_t, std::span<uint8_t>) -> Result<size_t> {
    reads++;
    return make_error(EAGAIN, "nothing yet");
  }));
  Conn c(rig);
  c.start();
  c.open(100, {"flaky"}, kRdonly);
  Fcall r = c.rpc(tread(100, 0));
  CHECK(err(r) == EAGAIN);
  CHECK(reads == 1);
  CHECK(rig.stats.reads_parked == 0);
  CHECK(c.pipe->session().parked_count() == 0);
  CHECK(name_of(c.rpc(tgetattr(100))) == "Rgetattr");
}

// ---- bad input ----------------------------------------------------------------------------

TEST_CASE("a size field below 7 closes only that connection, counted as bad_size", "[session][bad]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.send_bytes(hex("05 00 00 00 78 00 00"));
  CHECK(c.closed());
  CHECK(rig.dropped(ProtoDrop::BadSize) == 1);
  CHECK(c.recv_errno() == ECONNRESET);
  auto again = c.pipe->send(encode(tgetattr(1), L));
  REQUIRE_FALSE(again);
  CHECK(again.error().code == ECONNRESET);
  // A second session on the same tree is unaffected.
  Conn d(rig);
  d.start();
  auto readme = d.client->cat("README");
  REQUIRE(readme);
  CHECK(readme->find("Berth control tree.") == 0);
  CHECK(rig.stats.connections_total == 2);
  CHECK(rig.stats.connections_active == 2);
  // The drop is visible to operators under its reason.
  auto metrics = d.client->cat("metrics");
  REQUIRE(metrics);
  CHECK(metrics->find("berth_9p_dropped_connections_total{reason=\"bad_size\"} 1\n") != std::string::npos);
  CHECK(metrics->find("berth_9p_dropped_connections_total{reason=\"malformed\"} 0\n") != std::string::npos);
}

TEST_CASE("a size field above the negotiated msize closes the connection before the body", "[session][bad]") {
  Rig rig;
  Conn c(rig);
  c.start();  // msize 65536
  std::vector<uint8_t> hdr(4);
  store_le32(hdr.data(), 65537);
  c.send_bytes(hdr);
  CHECK(c.closed());
  CHECK(rig.dropped(ProtoDrop::BadSize) == 1);
}

TEST_CASE("a message of exactly msize is accepted", "[session][bad]") {
  Rig rig;
  Conn c(rig);
  c.rpc(tversion(4096, "9P2000.L"));
  c.rpc(tattach(1, ""));
  c.open(100, {"debug", "null"}, kWronly);
  std::string payload(4096 - 23, 'x');  // Twrite overhead is 23 bytes
  Fcall w = c.rpc(twrite(100, 0, payload));
  CHECK(w.count == payload.size());
  CHECK_FALSE(c.closed());
}

TEST_CASE("a Tread larger than msize is clamped so the reply fits", "[session]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"debug", "zero"}, kRdonly);
  Fcall r = c.rpc(tread(100, 0, 0xffffffff));
  CHECK(r.data.size() == 65536 - 11);
  CHECK(std::all_of(r.data.begin(), r.data.end(), [](uint8_t b) { return b == 0; }));
}

TEST_CASE("a malformed body closes the connection, counted as malformed", "[session][bad]") {
  Rig rig;
  SECTION("trailing bytes") {
    Conn c(rig);
    c.start();
    c.send_bytes(hex("0c 00 00 00 78 05 00 01 00 00 00 00"));
    CHECK(c.closed());
  }
  SECTION("a string running past the end") {
    Conn c(rig);
    c.start();
    c.send_bytes(hex("16 00 00 00 6e 05 00 01 00 00 00 02 00 00 00 01 00 ff 00 61 62 63"));
    CHECK(c.closed());
  }
  SECTION("an R-message sent to the server") {
    Conn c(rig);
    c.start();
    c.send_bytes(hex("07 00 00 00 79 05 00"));
    CHECK(c.closed());
  }
  CHECK(rig.dropped(ProtoDrop::Malformed) == 1);
}

TEST_CASE("a walk of 17 names closes the connection, counted", "[session][bad]") {
  Rig rig;
  Conn c(rig);
  c.start();
  std::vector<uint8_t> m = hex("00 00 00 00 6e 05 00 01 00 00 00 02 00 00 00 11 00");
  for (int i = 0; i < 17; i++) m.insert(m.end(), {0x02, 0x00, '.', '.'});
  store_le32(m.data(), uint32_t(m.size()));
  c.send_bytes(m);
  CHECK(c.closed());
  CHECK(rig.dropped(ProtoDrop::TooManyWalkElems) == 1);
}

TEST_CASE("a request before Tversion closes the connection, counted as no_version", "[session][bad]") {
  Rig rig;
  Conn c(rig);
  c.send(tattach(1, ""));
  CHECK(c.closed());
  CHECK(rig.dropped(ProtoDrop::NoVersion) == 1);
  CHECK(c.recv_errno() == ECONNRESET);
  Conn d(rig);
  d.start();
  CHECK(d.client->cat("state").value() == "first\n");
}

TEST_CASE("replies to requests before the bad one are still delivered", "[session][bad]") {
  Rig rig;
  Conn c(rig);
  c.start();
  std::vector<uint8_t> batch = encode([] {
    Fcall f = tgetattr(Conn::kRoot);
    f.tag = 7;
    return f;
  }(), L);
  auto bad = hex("05 00 00 00 78 00 00");
  batch.insert(batch.end(), bad.begin(), bad.end());
  c.send_bytes(batch);
  auto r = c.recv();
  REQUIRE(r);
  CHECK(r->tag == 7);
  CHECK(name_of(*r) == "Rgetattr");
  CHECK(c.recv_errno() == ECONNRESET);
}

TEST_CASE("a dropped session releases its fids and open files", "[session][bad]") {
  Rig rig;
  {
    Conn c(rig);
    c.start();
    c.open(100, {"rw"}, kWronly | kTrunc);
    c.rpc(twrite(100, 0, "partial\n"));
    c.send_bytes(hex("05 00 00 00 78 00 00"));
    CHECK(c.closed());
    CHECK(rig.stats.connections_active == 1);
  }
  CHECK(rig.stats.connections_active == 0);
  // The implicit clunk commits what was written, like close(2) on exit.
  CHECK(rig.stored == std::vector<std::string>{"partial\n"});
}

// ---- framing ------------------------------------------------------------------------------

TEST_CASE("a message split across sends is reassembled", "[session][framing]") {
  Rig rig;
  Conn c(rig);
  c.start();
  Fcall g = tgetattr(Conn::kRoot);
  g.tag = 9;
  auto bytes = encode(g, L);
  for (size_t i = 0; i + 1 < bytes.size(); i++) {
    c.send_bytes(Bytes(&bytes[i], 1));
    CHECK_FALSE(c.recv());
  }
  c.send_bytes(Bytes(&bytes.back(), 1));
  auto r = c.recv();
  REQUIRE(r);
  CHECK(r->tag == 9);
  CHECK(name_of(*r) == "Rgetattr");
}

TEST_CASE("pipelined requests in one send are answered in order", "[session][framing]") {
  Rig rig;
  Conn c(rig);
  c.start();
  std::vector<uint8_t> batch;
  for (uint16_t tag = 1; tag <= 3; tag++) {
    Fcall w = twalk(Conn::kRoot, 100 + tag, {"dir"});
    w.tag = tag;
    emit(w, L, batch);
  }
  // Plus half of a fourth message, completed later.
  Fcall last = tgetattr(101);
  last.tag = 4;
  auto tail = encode(last, L);
  batch.insert(batch.end(), tail.begin(), tail.begin() + 5);
  c.send_bytes(batch);
  for (uint16_t tag = 1; tag <= 3; tag++) {
    auto r = c.recv();
    REQUIRE(r);
    CHECK(r->tag == tag);
    CHECK(name_of(*r) == "Rwalk");
  }
  CHECK_FALSE(c.recv());
  c.send_bytes(Bytes(tail).subspan(5));
  auto r = c.recv();
  REQUIRE(r);
  CHECK(r->tag == 4);
  CHECK(r->qid == rig.qid("/dir"));
}

// ---- tables ---------------------------------------------------------------------------------

TEST_CASE("a full fid table answers EMFILE, counted, clunking frees a slot", "[session][limits]") {
  Rig rig;
  SessionLimits lim;
  lim.max_fids = 16;
  Conn c(rig, lim);
  c.start();  // fid 1
  for (uint32_t fid = 100; fid < 115; fid++) c.walk(fid, {});
  CHECK(c.pipe->session().fid_count() == 16);
  CHECK(err(c.rpc(twalk(Conn::kRoot, 200, {}))) == EMFILE);
  CHECK(err(c.rpc(tattach(201, ""))) == EMFILE);
  CHECK(rig.stats.fid_table_full == 2);
  CHECK(err(c.rpc(tgetattr(200))) == EBADF);
  // Walking a fid onto itself needs no new slot.
  CHECK(name_of(c.rpc(twalk(100, 100, {"dir"}))) == "Rwalk");
  c.rpc(tclunk(105));
  c.walk(200, {"state"});
  CHECK(c.pipe->session().fid_count() == 16);
  CHECK(err(c.rpc(twalk(Conn::kRoot, 201, {}))) == EMFILE);
  CHECK(rig.stats.fid_table_full == 3);
}

// ---- unsupported messages -------------------------------------------------------------------

TEST_CASE("unknown message types get EOPNOTSUPP and the session keeps going", "[session][unknown]") {
  Rig rig;
  Conn c(rig);
  c.start();
  // Tsymlink (16), a real 9P2000.L message this server does not implement.
  c.send_bytes(hex("15 00 00 00 10 09 00 01 00 00 00 01 00 61 01 00 62 00 00 00 00"));
  auto r = c.recv();
  REQUIRE(r);
  CHECK(r->tag == 9);
  CHECK(err(*r) == EOPNOTSUPP);
  // A type no dialect defines, with a valid frame.
  c.send_bytes(hex("0b 00 00 00 c8 0a 00 de ad be ef"));
  r = c.recv();
  REQUIRE(r);
  CHECK(r->tag == 10);
  CHECK(err(*r) == EOPNOTSUPP);
  CHECK_FALSE(c.closed());
  CHECK(rig.stats.requests[200] == 1);
  CHECK(name_of(c.rpc(tgetattr(Conn::kRoot))) == "Rgetattr");
}

TEST_CASE("9P2000 messages sent in a 9P2000.L session are EOPNOTSUPP", "[session][unknown]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {"state"});
  CHECK(err(c.rpc(tstat(100))) == EOPNOTSUPP);
  CHECK(err(c.rpc(topen(100, kOread))) == EOPNOTSUPP);
  CHECK(name_of(c.rpc(tlopen(100, kRdonly))) == "Rlopen");
}

TEST_CASE("Txattrwalk is ENODATA: there are no extended attributes", "[session][unknown]") {
  Rig rig;
  Conn c(rig);
  c.start();
  Fcall x;
  x.type = Txattrwalk;
  x.fid = Conn::kRoot;
  x.newfid = 100;
  x.name = "security.capability";
  CHECK(err(c.rpc(x)) == ENODATA);
  CHECK(c.pipe->session().fid_count() == 1);
}

TEST_CASE("Tstatfs reports the v9fs magic", "[session]") {
  Rig rig;
  Conn c(rig);
  c.start();
  Fcall r = c.rpc(of_type(Tstatfs, Conn::kRoot));
  CHECK(name_of(r) == "Rstatfs");
  CHECK(r.fstype == 0x01021997);
  CHECK(r.bsize == 4096);
  CHECK(r.namelen == 255);
}

// ---- readdir --------------------------------------------------------------------------------

TEST_CASE("Treaddir lists . and .. then the children, with increasing offsets", "[session][readdir]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"dir"}, kRdonly | kNonblock | kLargefile | kDirectory);
  Fcall r = c.rpc(treaddir(100, 0));
  std::vector<DirEntry> e;
  REQUIRE(parse_readdir(r.data, e));
  REQUIRE(e.size() == 4);
  CHECK(e[0].name == ".");
  CHECK(e[0].qid == rig.qid("/dir"));
  CHECK(e[1].name == "..");
  CHECK(e[1].qid == rig.qid("/"));
  CHECK(e[2].name == "sub");
  CHECK(e[2].qid == rig.qid("/dir/sub"));
  CHECK(e[2].dtype == 4);  // DT_DIR
  CHECK(e[3].name == "file");
  CHECK(e[3].dtype == 8);  // DT_REG
  for (size_t i = 0; i < e.size(); i++) CHECK(e[i].offset == i + 1);
  // From the last cookie: the end.
  Fcall end = c.rpc(treaddir(100, e.back().offset));
  CHECK(end.data.empty());
}

TEST_CASE("Treaddir resumes from a cookie when the first reply was full", "[session][readdir]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.open(100, {"dir"}, kRdonly | kDirectory);
  // Room for "." (25 bytes) and ".." (26 bytes) only.
  Fcall r = c.rpc(treaddir(100, 0, 51));
  std::vector<DirEntry> e;
  REQUIRE(parse_readdir(r.data, e));
  REQUIRE(e.size() == 2);
  CHECK(e[1].name == "..");
  r = c.rpc(treaddir(100, e[1].offset, 27 + 28));  // "sub" and "file"
  std::vector<DirEntry> more;
  REQUIRE(parse_readdir(r.data, more));
  REQUIRE(more.size() == 2);
  CHECK(more[0].name == "sub");
  CHECK(more[0].offset == 3);
  CHECK(more[1].name == "file");
  CHECK(more[1].offset == 4);
  // A count too small for one entry returns nothing rather than a torn entry.
  CHECK(c.rpc(treaddir(100, 2, 10)).data.empty());
}

TEST_CASE("Treaddir needs an open directory", "[session][readdir]") {
  Rig rig;
  Conn c(rig);
  c.start();
  c.walk(100, {"dir"});
  CHECK(err(c.rpc(treaddir(100, 0))) == EBADF);
  c.open(101, {"state"}, kRdonly);
  CHECK(err(c.rpc(treaddir(101, 0))) == ENOTDIR);
}

TEST_CASE("Client::ls of the root shows the base tree and the rig's files", "[session][readdir]") {
  Rig rig;
  Conn c(rig);
  c.start();
  auto ls = c.client->ls("");
  REQUIRE(ls);
  std::vector<std::string> names;
  for (auto& e : ls.value()) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{".", "..", "README", "metrics", "audit", "debug", "state", "rw", "ctl",
                                          "stream", "dir", "port"});
}

// ---- mkdir, remove, unlinkat ------------------------------------------------------------------

TEST_CASE("mkdir and remove reach a directory's hooks", "[session][dir]") {
  Rig rig;
  Conn c(rig);
  c.start();
  auto mk = c.client->mkdir("port/web");
  REQUIRE(mk);
  REQUIRE(rig.tree.resolve("/port/web"));
  auto again = c.client->mkdir("port/web");
  REQUIRE_FALSE(again);
  CHECK(again.error().code == EEXIST);
  auto rm = c.client->remove("port/web");
  REQUIRE(rm);
  CHECK(rig.removed == std::vector<std::string>{"web"});
  CHECK(rig.tree.resolve("/port/web") == nullptr);
  // Tunlinkat names the entry in its directory.
  REQUIRE(c.client->mkdir("port/db"));
  c.walk(100, {"port"});
  Fcall u;
  u.type = Tunlinkat;
  u.fid = 100;
  u.name = "db";
  CHECK(name_of(c.rpc(u)) == "Runlinkat");
  CHECK(rig.removed == std::vector<std::string>{"web", "db"});
  u.name = "db";
  CHECK(err(c.rpc(u)) == ENOENT);
  u.name = "..";
  CHECK(err(c.rpc(u)) == EINVAL);
}

TEST_CASE("mkdir and remove in a read-only directory are EACCES, the removed fid is gone", "[session][dir]") {
  Rig rig;
  Conn c(rig);
  c.start();
  auto mk = c.client->mkdir("dir/new");
  REQUIRE_FALSE(mk);
  CHECK(mk.error().code == EACCES);
  c.walk(100, {"state"});
  CHECK(err(c.rpc(tremove(100))) == EACCES);
  CHECK(err(c.rpc(tgetattr(100))) == EBADF);  // Tremove clunks even when it fails
  CHECK(rig.tree.resolve("/state") != nullptr);
  // The attach point itself cannot be removed.
  c.walk(101, {});
  CHECK(err(c.rpc(tremove(101))) == EBUSY);
}

// ---- 9P2000 and 9P2000.u sessions -------------------------------------------------------------

namespace {
// A 9P2000 or .u connection attached at the root as fid 1.
void start_legacy(Conn& c, const char* version, Dialect d) {
  Fcall v = c.rpc(tversion(8192, version));
  REQUIRE(v.version == version);
  c.dialect = d;
  Fcall a = tattach(1, "");
  a.uname = "glenda";
  Fcall r = c.rpc(a);
  REQUIRE(name_of(r) == "Rattach");
}
}  // namespace

TEST_CASE("9P2000: Topen and Tread of a directory return whole stat entries", "[session][dialect]") {
  Rig rig;
  Conn c(rig);
  start_legacy(c, "9P2000", Dialect::P9_2000);
  c.walk(100, {"debug"});
  Fcall o = c.rpc(topen(100, kOread));
  REQUIRE(name_of(o) == "Ropen");
  CHECK(o.qid == rig.qid("/debug"));
  CHECK(o.iounit == 8192 - 24);
  Fcall r = c.rpc(tread(100, 0, 8000));
  REQUIRE(name_of(r) == "Rread");
  ByteReader br(r.data);
  std::vector<Stat> st;
  while (br.remaining() > 0) {
    Stat s;
    REQUIRE(parse_stat(br, Dialect::P9_2000, s));
    st.push_back(s);
  }
  REQUIRE(st.size() == 4);
  CHECK(st[0].name == "version");
  CHECK(st[0].mode == 0444);
  CHECK(st[0].length == std::string(kVersion).size() + 1);
  CHECK(st[0].qid == rig.qid("/debug/version"));
  CHECK(st[0].mtime == 1700000000);
  CHECK(st[1].name == "date");
  CHECK(st[2].name == "zero");
  CHECK(st[3].name == "null");
  CHECK(st[3].mode == 0666);
  // The next read continues at the end of the previous one: nothing left.
  CHECK(c.rpc(tread(100, r.data.size(), 8000)).data.empty());
  // Any other offset is refused with a message.
  Fcall bad = c.rpc(tread(100, 3, 8000));
  CHECK(name_of(bad) == "Rerror");
  CHECK(bad.ename == "directory read at a bad offset");
}

TEST_CASE("9P2000: a directory read returns only entries that fit", "[session][dialect]") {
  Rig rig;
  Conn c(rig);
  start_legacy(c, "9P2000", Dialect::P9_2000);
  c.walk(100, {"debug"});
  c.rpc(topen(100, kOread));
  std::vector<std::string> names;
  uint64_t off = 0;
  for (int i = 0; i < 10; i++) {
    Fcall r = c.rpc(tread(100, off, 80));  // one stat entry per read
    if (r.data.empty()) break;
    ByteReader br(r.data);
    Stat s;
    REQUIRE(parse_stat(br, Dialect::P9_2000, s));
    CHECK(br.remaining() == 0);
    names.push_back(s.name);
    off += r.data.size();
  }
  CHECK(names == std::vector<std::string>{"version", "date", "zero", "null"});
}

TEST_CASE("9P2000: Tstat describes the node, an open fid reports its snapshot size", "[session][dialect]") {
  Rig rig;
  Conn c(rig);
  start_legacy(c, "9P2000", Dialect::P9_2000);
  Fcall r = c.rpc(tstat(1));
  REQUIRE(name_of(r) == "Rstat");
  CHECK(r.stat.mode == (kDmDir | 0555));
  CHECK(r.stat.qid == rig.qid("/"));
  c.walk(100, {"state"});
  c.rpc(topen(100, kOread));
  rig.state_text = "much longer than before\n";
  r = c.rpc(tstat(100));
  CHECK(r.stat.name == "state");
  CHECK(r.stat.mode == 0444);
  CHECK(r.stat.length == 6);
  CHECK(c.read(100) == "first\n");
}

TEST_CASE("9P2000: errors are Rerror with a message and no errno", "[session][dialect]") {
  Rig rig;
  Conn c(rig);
  start_legacy(c, "9P2000", Dialect::P9_2000);
  Fcall r = c.rpc(twalk(1, 100, {"nope"}));
  REQUIRE(name_of(r) == "Rerror");
  CHECK(r.ename == "no such file or directory: nope");
  CHECK(r.ecode == 0);
  // .L-only messages are not part of this dialect.
  r = c.rpc(tgetattr(1));
  CHECK(name_of(r) == "Rerror");
  CHECK(r.ename.find("not supported") != std::string::npos);
}

TEST_CASE("9P2000.u: Rerror carries the message and the errno", "[session][dialect]") {
  Rig rig;
  Conn c(rig);
  start_legacy(c, "9P2000.u", Dialect::P9_2000u);
  Fcall r = c.rpc(twalk(1, 100, {"nope"}));
  REQUIRE(name_of(r) == "Rerror");
  CHECK(r.ename == "no such file or directory: nope");
  CHECK(r.ecode == ENOENT);
  c.walk(101, {"state"});
  r = c.rpc(topen(101, kOwrite));
  CHECK(r.ecode == EACCES);
  CHECK(r.ename == "permission denied: state");
  // Stat carries the .u fields.
  r = c.rpc(tstat(101));
  CHECK(r.stat.n_uid == uint32_t(geteuid()));
}

TEST_CASE("9P2000: Twstat accepts don't-touch and truncation of writable files only", "[session][dialect]") {
  Rig rig;
  Conn c(rig);
  start_legacy(c, "9P2000", Dialect::P9_2000);
  Fcall w;
  w.type = Twstat;
  w.stat.type = 0xffff;
  w.stat.dev = 0xffffffff;
  w.stat.qid = Qid{0xff, 0xffffffff, ~0ull};
  w.stat.mode = 0xffffffff;
  w.stat.atime = w.stat.mtime = 0xffffffff;
  w.stat.length = ~0ull;
  c.walk(100, {"state"});
  w.fid = 100;
  CHECK(name_of(c.rpc(w)) == "Rwstat");  // a sync
  w.stat.length = 0;
  CHECK(name_of(c.rpc(w)) == "Rerror");  // read-only
  c.walk(101, {"ctl"});
  w.fid = 101;
  CHECK(name_of(c.rpc(w)) == "Rwstat");  // truncating a ctl
  w.stat.length = ~0ull;
  w.stat.mode = 0600;
  CHECK(name_of(c.rpc(w)) == "Rerror");  // chmod
  w.stat.mode = 0xffffffff;
  w.stat.name = "renamed";
  CHECK(name_of(c.rpc(w)) == "Rerror");  // rename
}

// ---- the Linux v9fs client's sequences ------------------------------------------------------

// The requests Linux sends (see proto_test.cpp for their bytes): sequential
// requests all use tag 0, fids come from 0 upward, and every open is on a
// fid cloned with a zero-name walk.
TEST_CASE("the Linux v9fs mount, ls, cat and echo sequences are served", "[session][v9fs]") {
  Rig rig;
  Conn c(rig);
  auto tag0 = [](Fcall f) {
    f.tag = 0;
    return f;
  };
  auto expect = [&](Fcall req, const char* reply) {
    Fcall r = c.rpc(tag0(std::move(req)));
    INFO("errno " << err(r));
    REQUIRE(name_of(r) == reply);
    return r;
  };

  // mount -t 9p -o trans=tcp,version=9p2000.L
  Fcall v = c.rpc(tversion(131072, "9P2000.L"));
  CHECK(v.msize == 131072);
  CHECK(v.version == "9P2000.L");
  Fcall a = tattach(0, "");
  a.uname = "nobody";
  a.n_uname = 0xffffffff;
  CHECK(expect(a, "Rattach").qid == rig.qid("/"));
  CHECK(expect(tgetattr(0, kGetattrBasic), "Rgetattr").mode == 040555);
  expect(tgetattr(0, kGetattrAll), "Rgetattr");

  // ls /mnt
  CHECK(expect(twalk(0, 1, {}), "Rwalk").wqids.empty());
  Fcall lo = expect(tlopen(1, kRdonly | kNonblock | kLargefile | kDirectory), "Rlopen");
  CHECK(lo.qid == rig.qid("/"));
  CHECK(lo.iounit == 131072 - 24);
  Fcall rd = expect(treaddir(1, 0, 131072 - 24), "Rreaddir");
  std::vector<DirEntry> e;
  REQUIRE(parse_readdir(rd.data, e));
  REQUIRE(e.size() == 12);
  CHECK(expect(treaddir(1, e.back().offset, 131072 - 24), "Rreaddir").data.empty());
  expect(tclunk(1), "Rclunk");

  // cat /mnt/state
  CHECK(expect(twalk(0, 2, {"state"}), "Rwalk").wqids.size() == 1);
  CHECK(expect(tgetattr(2, 0x17ff), "Rgetattr").size == 6);
  expect(twalk(2, 3, {}), "Rwalk");
  expect(tlopen(3, kRdonly | kLargefile), "Rlopen");
  CHECK(text(expect(tread(3, 0, 131072 - 24), "Rread")) == "first\n");
  CHECK(expect(tread(3, 6, 131072 - 24), "Rread").data.empty());
  expect(tclunk(3), "Rclunk");

  // echo text > /mnt/ctl
  expect(twalk(0, 4, {"ctl"}), "Rwalk");
  expect(tgetattr(4, 0x17ff), "Rgetattr");
  expect(twalk(4, 5, {}), "Rwalk");
  expect(tlopen(5, kWronly | kCreate | kLargefile), "Rlopen");
  expect(tsetattr(5, kSetattrSize | kSetattrMtime | kSetattrCtime, 0), "Rsetattr");
  CHECK(expect(twrite(5, 0, "text\n"), "Rwrite").count == 5);
  expect(tclunk(5), "Rclunk");
  CHECK(rig.commands == std::vector<std::string>{"text"});

  // echo text > /mnt/state fails in open, as the shell reports.
  expect(twalk(0, 6, {"state"}), "Rwalk");
  expect(twalk(6, 7, {}), "Rwalk");
  CHECK(err(expect(tlopen(7, kWronly | kCreate | kLargefile), "Rlerror")) == EACCES);

  CHECK(c.pipe->session().fid_count() == 5);  // 0, 2, 4, 6, 7 (the kernel clunks them later)
  CHECK_FALSE(c.closed());
}

// ---- backpressure -------------------------------------------------------------

TEST_CASE("a closed output gate pauses a session between messages until resume", "[session][backpressure]") {
  Rig r;
  std::vector<std::vector<uint8_t>> replies;
  Session s(r.tree, r.stats, r.clock, SessionLimits{}, [&](std::vector<uint8_t>&& b) { replies.push_back(std::move(b)); });
  bool blocked = false;
  s.set_output_gate([&] { return blocked; });
  std::vector<uint8_t> in;
  auto add = [&](Fcall f, uint16_t tag) {
    f.tag = tag;
    auto b = encode(f, Dialect::P9_2000L);
    in.insert(in.end(), b.begin(), b.end());
  };
  add(tversion(8192, "9P2000.L"), kNoTag);
  add(tattach(1, ""), 1);
  REQUIRE(s.feed(in));
  REQUIRE(replies.size() == 1);  // one batch: Rversion + Rattach
  in.clear();
  for (uint16_t t = 10; t < 20; t++) {
    Fcall g;
    g.type = Tgetattr;
    g.fid = 1;
    g.request_mask = kGetattrBasic;
    add(g, t);
  }
  blocked = true;
  REQUIRE(s.feed(in));
  CHECK(s.paused());
  CHECK(replies.size() == 1);  // nothing processed while the gate is closed
  REQUIRE(s.feed(in));         // more input while paused is buffered, not processed
  CHECK(replies.size() == 1);
  blocked = false;
  REQUIRE(s.resume());
  CHECK(!s.paused());
  size_t total = 0;
  for (size_t i = 1; i < replies.size(); i++) {
    Bytes b(replies[i]);
    while (!b.empty()) {
      uint32_t n = load_le32(b.data());
      CHECK(b[4] == Rgetattr);
      b = b.subspan(n);
      total++;
    }
  }
  CHECK(total == 20);
}
