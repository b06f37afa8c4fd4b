// Node types of the synthetic tree, exercised directly (no session): the
// contracts in tree.h for Dir, StateFile, CtlFile, ByteStream/StreamFile,
// FuncFile and Tree.
#include <catch2/catch.hpp>

#include <cerrno>
#include <string>
#include <vector>

#include "common/clock.h"
#include "server9p/base.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

using namespace berth;
using namespace berth::p9;

namespace {

std::shared_ptr<StateFile> state(std::string name, std::string text) {
  return std::make_shared<StateFile>(std::move(name), "", [text] { return text; });
}

std::unique_ptr<OpenFile> open_ok(Node& n, Access a, bool truncate = false) {
  auto r = n.open(a, truncate);
  INFO("open failed: " << (r ? std::string() : r.error().message));
  REQUIRE(r);
  return std::move(r.value());
}

// Read from `offset` into a buffer of `max` bytes.
std::string read_at(OpenFile& f, uint64_t offset, size_t max = 4096) {
  std::vector<uint8_t> buf(max, 0xa5);
  auto n = f.read(offset, buf);
  REQUIRE(n);
  REQUIRE(n.value() <= max);
  return std::string(buf.begin(), buf.begin() + long(n.value()));
}

std::string read_all(OpenFile& f) {
  std::string out;
  for (;;) {
    std::string chunk = read_at(f, out.size(), 7);  // small chunks exercise offsets
    if (chunk.empty()) return out;
    out += chunk;
  }
}

int read_errno(OpenFile& f, uint64_t offset = 0) {
  std::vector<uint8_t> buf(16);
  auto n = f.read(offset, buf);
  return n ? 0 : n.error().code;
}

std::vector<std::string> names(const std::vector<NodePtr>& v) {
  std::vector<std::string> out;
  for (auto& n : v) out.push_back(n->name());
  return out;
}

using Strings = std::vector<std::string>;

}  // namespace

// ---- Node and Dir -----------------------------------------------------------------

TEST_CASE("nodes get distinct nonzero qid paths and a type from their kind", "[tree]") {
  auto d = std::make_shared<Dir>("d");
  auto f = state("f", "x");
  CHECK(d->qid().type == kQtDir);
  CHECK(f->qid().type == kQtFile);
  CHECK(d->qid_path() != 0);
  CHECK(f->qid_path() != d->qid_path());
  CHECK(d->qid().path == d->qid_path());
  CHECK(d->perm() == 0555);
  CHECK(d->is_dir());
  CHECK_FALSE(f->is_dir());
}

TEST_CASE("Dir lists static children in order, then generated ones", "[tree]") {
  Dir d("ports");
  d.add(state("ctl", ""));
  d.add(state("README", ""));
  int calls = 0;
  d.set_generator([&] {
    calls++;
    return std::vector<NodePtr>{state("1", "a"), state("2", "b")};
  });
  CHECK(names(d.list()) == Strings{"ctl", "README", "1", "2"});
  CHECK(calls == 1);
  // lookup finds static children without asking the generator.
  CHECK(d.lookup("ctl")->name() == "ctl");
  CHECK(calls == 1);
  CHECK(d.lookup("2")->name() == "2");
  CHECK(calls == 2);
  CHECK(d.lookup("3") == nullptr);
  CHECK(d.lookup("") == nullptr);
}

TEST_CASE("Dir::add replaces a static child of the same name, remove_static drops it", "[tree]") {
  Dir d("x");
  auto a1 = d.add(state("a", "one"));
  d.add(state("b", ""));
  auto a2 = d.add(state("a", "two"));
  CHECK(d.lookup("a") == a2);
  CHECK(d.lookup("a") != a1);
  CHECK(names(d.list()) == Strings{"b", "a"});
  d.remove_static("a");
  CHECK(d.lookup("a") == nullptr);
  CHECK(names(d.list()) == Strings{"b"});
  d.remove_static("missing");  // no effect
  CHECK(d.list().size() == 1);
}

TEST_CASE("a static child shadows a generated child of the same name", "[tree]") {
  Dir d("x");
  auto s = d.add(state("same", "static"));
  d.set_generator([] { return std::vector<NodePtr>{state("same", "generated")}; });
  CHECK(d.lookup("same") == s);
}

TEST_CASE("Dir opens for reading only, its handle refuses byte reads", "[tree]") {
  Dir d("x");
  auto w = d.open(Access::Write, false);
  REQUIRE_FALSE(w);
  CHECK(w.error().code == EISDIR);
  CHECK_FALSE(d.open(Access::ReadWrite, false));
  auto h = open_ok(d, Access::Read);
  CHECK(read_errno(*h) == EISDIR);
}

TEST_CASE("files refuse directory operations with ENOTDIR", "[tree]") {
  auto f = state("f", "");
  CHECK(f->lookup("x") == nullptr);
  CHECK(f->list().empty());
  auto m = f->mkdir("x", 0755);
  REQUIRE_FALSE(m);
  CHECK(m.error().code == ENOTDIR);
  auto u = f->unlink("x");
  REQUIRE_FALSE(u);
  CHECK(u.error().code == ENOTDIR);
  auto c = f->create("x", 0644);
  REQUIRE_FALSE(c);
  CHECK(c.error().code == ENOTDIR);
}

TEST_CASE("a Dir without hooks refuses mkdir, create and unlink with EACCES", "[tree]") {
  Dir d("x");
  d.add(state("f", ""));
  auto m = d.mkdir("new", 0755);
  REQUIRE_FALSE(m);
  CHECK(m.error().code == EACCES);
  auto c = d.create("new", 0644);
  REQUIRE_FALSE(c);
  CHECK(c.error().code == EACCES);
  auto u = d.unlink("f");
  REQUIRE_FALSE(u);
  CHECK(u.error().code == EACCES);
  auto missing = d.unlink("nope");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == ENOENT);
}

TEST_CASE("the mkdir hook runs for new names and never for existing ones", "[tree]") {
  auto d = std::make_shared<Dir>("port", "", 0755);
  std::vector<std::pair<std::string, uint32_t>> seen;
  Dir* raw = d.get();
  d->set_mkdir([&, raw](std::string_view name, uint32_t perm) -> Result<NodePtr> {
    seen.emplace_back(std::string(name), perm);
    if (name == "bad") return make_error(EINVAL, "bad name");
    return raw->add(std::make_shared<Dir>(std::string(name)));
  });
  auto made = d->mkdir("web", 0750);
  REQUIRE(made);
  CHECK(made.value()->name() == "web");
  CHECK(made.value()->is_dir());
  CHECK(d->lookup("web") == made.value());
  REQUIRE(seen.size() == 1);
  CHECK(seen[0] == std::pair<std::string, uint32_t>{"web", 0750});

  auto again = d->mkdir("web", 0755);
  REQUIRE_FALSE(again);
  CHECK(again.error().code == EEXIST);
  CHECK(seen.size() == 1);

  auto bad = d->mkdir("bad", 0755);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == EINVAL);
  CHECK(bad.error().message == "bad name");
  CHECK(seen.size() == 2);
}

TEST_CASE("the unlink hook runs only for names that exist and its error propagates", "[tree]") {
  Dir d("ports", "", 0755);
  d.add(state("1", ""));
  d.add(state("busy", ""));
  std::vector<std::string> seen;
  Dir* raw = &d;
  d.set_unlink([&, raw](std::string_view name) -> Result<void> {
    seen.emplace_back(name);
    if (name == "busy") return make_error(EBUSY, "in use");
    raw->remove_static(name);
    return {};
  });
  CHECK(d.unlink("1"));
  CHECK(d.lookup("1") == nullptr);
  auto missing = d.unlink("1");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == ENOENT);
  auto busy = d.unlink("busy");
  REQUIRE_FALSE(busy);
  CHECK(busy.error().code == EBUSY);
  CHECK(seen == Strings{"1", "busy"});
}

TEST_CASE("unlink reaches generated children", "[tree]") {
  Dir d("flows", "", 0755);
  std::vector<std::string> live{"7", "9"};
  d.set_generator([&] {
    std::vector<NodePtr> v;
    for (auto& n : live) v.push_back(state(n, ""));
    return v;
  });
  d.set_unlink([&](std::string_view name) -> Result<void> {
    std::erase(live, std::string(name));
    return {};
  });
  CHECK(d.unlink("7"));
  CHECK(names(d.list()) == Strings{"9"});
}

// ---- StateFile -------------------------------------------------------------------

TEST_CASE("a StateFile renders once at open, later changes do not reach that handle", "[tree][state]") {
  std::string text = "one\n";
  int renders = 0;
  StateFile f("leases", "", [&] {
    renders++;
    return text;
  });
  CHECK(f.perm() == 0444);
  auto h = open_ok(f, Access::Read);
  CHECK(renders == 1);
  text = "two two\n";
  CHECK(read_all(*h) == "one\n");
  CHECK(read_at(*h, 2) == "e\n");
  CHECK(read_at(*h, 4).empty());
  CHECK(read_at(*h, 100).empty());
  CHECK(h->size() == 4);
  CHECK(renders == 1);
  // The node's own size is the current rendering; a new open sees it too.
  CHECK(f.size() == 8);
  auto h2 = open_ok(f, Access::Read);
  CHECK(read_all(*h2) == "two two\n");
  CHECK(read_all(*h) == "one\n");
}

TEST_CASE("a read-only StateFile handle refuses writes and truncation with EACCES", "[tree][state]") {
  StateFile f("x", "", [] { return std::string("abc"); });
  auto h = open_ok(f, Access::Read);
  std::string data = "zz";
  auto w = h->write(0, as_bytes(data));
  REQUIRE_FALSE(w);
  CHECK(w.error().code == EACCES);
  auto t = h->truncate(0);
  REQUIRE_FALSE(t);
  CHECK(t.error().code == EACCES);
  CHECK(h->close());
}

TEST_CASE("a writable StateFile stores the written content at close", "[tree][state]") {
  std::string text = "old line\n";
  std::vector<std::string> stored;
  StateFile f("static", "", [&] { return text; }, [&](std::string_view c) -> Result<void> {
    stored.emplace_back(c);
    return {};
  });
  CHECK(f.perm() == 0644);

  SECTION("open with truncate, write, close") {
    auto h = open_ok(f, Access::Write, /*truncate=*/true);
    CHECK(h->size() == 0);
    std::string a = "aa:bb 10.0.0.5\n";
    auto n = h->write(0, as_bytes(a));
    REQUIRE(n);
    CHECK(n.value() == a.size());
    CHECK(stored == Strings{"aa:bb 10.0.0.5\n"});  // a whole line is stored at once
    CHECK(h->close());
    CHECK(stored == Strings{"aa:bb 10.0.0.5\n"});  // and not again
  }
  SECTION("open without truncate overwrites in place from the snapshot") {
    auto h = open_ok(f, Access::ReadWrite);
    std::string a = "new";
    REQUIRE(h->write(0, as_bytes(a)));
    CHECK(read_all(*h) == "new line\n");
    CHECK(h->close());
    CHECK(stored == Strings{"new line\n"});
  }
  SECTION("a write past the end extends the content") {
    auto h = open_ok(f, Access::Write);
    std::string a = "tail\n";
    REQUIRE(h->write(9, as_bytes(a)));
    CHECK(h->size() == 14);
    CHECK(h->close());
    CHECK(stored == Strings{"old line\ntail\n"});
  }
  SECTION("truncate(0) then write, as echo > file does through setattr") {
    auto h = open_ok(f, Access::Write);
    CHECK(h->truncate(0));
    std::string a = "text\n";
    REQUIRE(h->write(0, as_bytes(a)));
    CHECK(h->close());
    CHECK(stored == Strings{"text\n"});
  }
  SECTION("> file with no write stores empty content") {
    auto h = open_ok(f, Access::Write, true);
    CHECK(h->close());
    CHECK(stored == Strings{""});
  }
  SECTION("an open for writing that writes nothing stores nothing") {
    auto h = open_ok(f, Access::Write);
    CHECK(h->close());
    CHECK(stored.empty());
  }
  SECTION("a read-only open of a writable file never stores") {
    auto h = open_ok(f, Access::Read);
    std::string a = "x";
    auto w = h->write(0, as_bytes(a));
    REQUIRE_FALSE(w);
    CHECK(w.error().code == EACCES);
    CHECK(h->close());
    CHECK(stored.empty());
  }
  SECTION("sync stores once; close after it stores only new changes") {
    auto h = open_ok(f, Access::Write, true);
    std::string a = "one\n";
    REQUIRE(h->write(0, as_bytes(a)));
    CHECK(h->sync());
    CHECK(stored == Strings{"one\n"});
    CHECK(h->close());
    CHECK(stored.size() == 1);
  }
  SECTION("truncate cannot extend") {
    auto h = open_ok(f, Access::Write);
    auto t = h->truncate(100);
    REQUIRE_FALSE(t);
    CHECK(t.error().code == EINVAL);
  }
  SECTION("content is bounded to 1 MiB") {
    auto h = open_ok(f, Access::Write, true);
    std::string a = "x";
    auto w = h->write(1u << 20, as_bytes(a));
    REQUIRE_FALSE(w);
    CHECK(w.error().code == EFBIG);
  }
}

TEST_CASE("a StateFile store failure fails the write of a whole line, else the close", "[tree][state]") {
  StateFile f("static", "", [] { return std::string(); },
              [](std::string_view) -> Result<void> { return make_error(EINVAL, "line 1: bad MAC"); });
  auto h = open_ok(f, Access::Write, true);
  std::string a = "zz\n";
  auto w = h->write(0, as_bytes(a));
  REQUIRE_FALSE(w);
  CHECK(w.error().code == EINVAL);
  CHECK(w.error().message == "line 1: bad MAC");
  h = open_ok(f, Access::Write, true);
  std::string b = "zz";
  REQUIRE(h->write(0, as_bytes(b)));
  auto c = h->close();
  REQUIRE_FALSE(c);
  CHECK(c.error().code == EINVAL);
  CHECK(c.error().message == "line 1: bad MAC");
}

// ---- CtlFile ---------------------------------------------------------------------

TEST_CASE("a CtlFile handle reads its usage until the first write", "[tree][ctl]") {
  CtlFile c("ctl", "", [](std::string_view) -> Result<std::string> { return std::string(); }, "usage: add SPEC\n");
  CHECK(c.perm() == 0644);
  auto h = open_ok(c, Access::ReadWrite);
  CHECK(read_all(*h) == "usage: add SPEC\n");
  CHECK(h->size() == 16);
}

TEST_CASE("a successful ctl write returns the full count and reads back OK lines", "[tree][ctl]") {
  std::vector<std::string> seen;
  CtlFile c("ctl", "", [&](std::string_view cmd) -> Result<std::string> {
    seen.emplace_back(cmd);
    if (cmd == "quiet") return std::string();
    return "id " + std::to_string(seen.size());
  });
  auto h = open_ok(c, Access::ReadWrite);
  std::string cmd = "  add tcp:1:2 \r\n\nquiet\n";
  auto n = h->write(0, as_bytes(cmd));
  REQUIRE(n);
  CHECK(n.value() == cmd.size());
  CHECK(seen == Strings{"add tcp:1:2", "quiet"});  // trimmed, blank lines skipped
  CHECK(read_all(*h) == "OK id 1\nOK\n");
  CHECK(h->size() == 11);
}

TEST_CASE("a failing ctl command fails the write and reads back ERROR", "[tree][ctl]") {
  std::vector<std::string> seen;
  CtlFile c("ctl", "", [&](std::string_view cmd) -> Result<std::string> {
    seen.emplace_back(cmd);
    if (cmd.starts_with("dup")) return make_error(EADDRINUSE, "port 8080 already forwarded");
    return std::string("ok");
  });
  auto h = open_ok(c, Access::ReadWrite);
  std::string cmd = "first\ndup 8080\nnever\n";
  auto n = h->write(0, as_bytes(cmd));
  REQUIRE_FALSE(n);
  CHECK(n.error().code == EADDRINUSE);
  CHECK(seen == Strings{"first", "dup 8080"});  // stops at the first error
  CHECK(read_all(*h) == "ERROR port 8080 already forwarded\n");
  // A later good write replaces the result.
  std::string ok = "again\n";
  REQUIRE(h->write(0, as_bytes(ok)));
  CHECK(read_all(*h) == "OK ok\n");
}

TEST_CASE("an empty ctl write is EINVAL and reads back ERROR empty command", "[tree][ctl]") {
  int calls = 0;
  CtlFile c("ctl", "", [&](std::string_view) -> Result<std::string> {
    calls++;
    return std::string();
  });
  auto h = open_ok(c, Access::ReadWrite);
  std::string blank = " \n\n";
  auto n = h->write(0, as_bytes(blank));
  REQUIRE_FALSE(n);
  CHECK(n.error().code == EINVAL);
  CHECK(calls == 0);
  CHECK(read_all(*h) == "ERROR empty command\n");
}

TEST_CASE("ctl truncation to any size is accepted and changes nothing", "[tree][ctl]") {
  CtlFile c("ctl", "", [](std::string_view) -> Result<std::string> { return std::string("x"); }, "usage\n");
  auto h = open_ok(c, Access::Write, true);
  CHECK(h->truncate(0));
  CHECK(h->truncate(5));
  CHECK(read_all(*h) == "usage\n");
}

TEST_CASE("each ctl open has its own result", "[tree][ctl]") {
  CtlFile c("ctl", "", [](std::string_view cmd) -> Result<std::string> { return std::string(cmd); });
  auto a = open_ok(c, Access::ReadWrite);
  auto b = open_ok(c, Access::ReadWrite);
  std::string x = "alpha", y = "beta";
  REQUIRE(a->write(0, as_bytes(x)));
  REQUIRE(b->write(0, as_bytes(y)));
  CHECK(read_all(*a) == "OK alpha\n");
  CHECK(read_all(*b) == "OK beta\n");
}

// ---- ByteStream and StreamFile ---------------------------------------------------

TEST_CASE("ByteStream keeps the newest bytes and advances start_seq on overflow", "[tree][stream]") {
  ByteStream s(8);
  std::string a = "abcdef", b = "ghij";
  s.append(as_bytes(a));
  CHECK(s.start_seq() == 0);
  CHECK(s.end_seq() == 6);
  s.append(as_bytes(b));
  CHECK(s.start_seq() == 2);
  CHECK(s.end_seq() == 10);
  std::vector<uint8_t> out(16, 0xa5);
  REQUIRE(s.copy_out(2, out) == 8);
  CHECK(std::string(out.begin(), out.begin() + 8) == "cdefghij");
  CHECK(out[8] == 0xa5);
  CHECK(s.copy_out(1, out) == 0);   // already dropped
  CHECK(s.copy_out(10, out) == 0);  // not yet written
  REQUIRE(s.copy_out(7, out) == 3);
  CHECK(std::string(out.begin(), out.begin() + 3) == "hij");
}

TEST_CASE("an append larger than the ring keeps only its tail", "[tree][stream]") {
  ByteStream s(4);
  std::string a = "xy", b = "0123456789";
  s.append(as_bytes(a));
  s.append(as_bytes(b));
  CHECK(s.end_seq() == 12);
  CHECK(s.start_seq() == 8);
  std::vector<uint8_t> out(4);
  REQUIRE(s.copy_out(8, out) == 4);
  CHECK(std::string(out.begin(), out.end()) == "6789");
}

TEST_CASE("a reader that falls behind skips ahead and counts the lost bytes", "[tree][stream]") {
  auto s = std::make_shared<ByteStream>(8);
  ByteStreamReader r(s, 0);
  std::string a = "abc";
  s->append(as_bytes(a));
  std::vector<uint8_t> two(2);
  auto n = r.read(0, two);
  REQUIRE(n);
  CHECK(n.value() == 2);  // "ab"; the cursor is at 2
  std::string b = "0123456789";
  s->append(as_bytes(b));  // 13 bytes written, 8 kept: start is 5
  CHECK(s->start_seq() == 5);
  CHECK(read_at(r, 0) == "23456789");
  CHECK(r.lost() == 3);  // "c", "0", "1" were overwritten before this reader saw them
  CHECK(read_errno(r) == EAGAIN);
  CHECK(r.lost() == 3);
}

TEST_CASE("a caught-up reader gets EAGAIN, then data, then EOF after close", "[tree][stream]") {
  auto s = std::make_shared<ByteStream>(64);
  ByteStreamReader r(s, s->end_seq());
  CHECK(read_errno(r) == EAGAIN);
  std::string a = "line\n";
  s->append(as_bytes(a));
  CHECK(read_at(r, 0) == "line\n");
  CHECK(read_errno(r) == EAGAIN);
  std::string b = "last\n";
  s->append(as_bytes(b));
  s->close();
  CHECK(read_at(r, 0) == "last\n");
  CHECK(read_at(r, 0).empty());  // end of file
  s->append(as_bytes(a));        // appends after close are ignored
  CHECK(s->end_seq() == 10);
}

TEST_CASE("wait_readable fires once on the next append, cancel_wait prevents it", "[tree][stream]") {
  auto s = std::make_shared<ByteStream>(64);
  ByteStreamReader r(s, 0);
  int woke = 0;
  r.wait_readable([&] { woke++; });
  CHECK(woke == 0);
  std::string a = "x";
  s->append(as_bytes(a));
  CHECK(woke == 1);
  s->append(as_bytes(a));
  CHECK(woke == 1);  // one-shot

  // Data is pending: the callback runs at once.
  r.wait_readable([&] { woke++; });
  CHECK(woke == 2);

  CHECK(read_at(r, 0) == "xx");
  r.wait_readable([&] { woke++; });
  r.cancel_wait();
  s->append(as_bytes(a));
  CHECK(woke == 2);

  // A new wait replaces the previous one.
  CHECK(read_at(r, 0) == "x");
  int first = 0, second = 0;
  r.wait_readable([&] { first++; });
  r.wait_readable([&] { second++; });
  s->append(as_bytes(a));
  CHECK(first == 0);
  CHECK(second == 1);
}

TEST_CASE("a reader destroyed while waiting is never called back", "[tree][stream]") {
  auto s = std::make_shared<ByteStream>(64);
  int woke = 0;
  {
    ByteStreamReader r(s, 0);
    r.wait_readable([&] { woke++; });
  }
  std::string a = "x";
  s->append(as_bytes(a));  // ASan would report a use-after-free here
  CHECK(woke == 0);
}

TEST_CASE("close wakes waiting readers so they can see end of file", "[tree][stream]") {
  auto s = std::make_shared<ByteStream>(64);
  ByteStreamReader r(s, 0);
  int woke = 0;
  r.wait_readable([&] { woke++; });
  s->close();
  CHECK(woke == 1);
  CHECK(read_at(r, 0).empty());
}

TEST_CASE("StreamFile opens have independent cursors, replay starts at the oldest byte", "[tree][stream]") {
  auto s = std::make_shared<ByteStream>(64);
  std::string a = "old\n";
  s->append(as_bytes(a));
  StreamFile replay("console", "", s, /*replay=*/true);
  StreamFile live("live", "", s, /*replay=*/false);
  CHECK(replay.perm() == 0444);
  auto r1 = open_ok(replay, Access::Read);
  auto l1 = open_ok(live, Access::Read);
  CHECK(read_at(*r1, 0) == "old\n");
  CHECK(read_errno(*l1) == EAGAIN);
  std::string b = "new\n";
  s->append(as_bytes(b));
  auto r2 = open_ok(replay, Access::Read);
  CHECK(read_at(*r1, 0) == "new\n");
  CHECK(read_at(*l1, 0) == "new\n");
  CHECK(read_at(*r2, 0) == "old\nnew\n");
  auto w = replay.open(Access::Write, false);
  REQUIRE_FALSE(w);
  CHECK(w.error().code == EACCES);
}

// ---- FuncFile ----------------------------------------------------------------------

TEST_CASE("FuncFile reads and writes through its lambdas, no writer means EACCES", "[tree]") {
  std::string sink;
  FuncFile rw("null", "", 0666, [](uint64_t, std::span<uint8_t>) -> Result<size_t> { return size_t(0); },
              [&](uint64_t off, Bytes d) -> Result<size_t> {
                sink += std::to_string(off) + ":" + std::string(as_chars(d));
                return d.size();
              });
  auto h = open_ok(rw, Access::ReadWrite);
  std::string a = "abc";
  auto n = h->write(5, as_bytes(a));
  REQUIRE(n);
  CHECK(n.value() == 3);
  CHECK(sink == "5:abc");
  CHECK(read_at(*h, 0).empty());

  FuncFile ro("zero", "", 0444, [](uint64_t, std::span<uint8_t> out) -> Result<size_t> {
    std::fill(out.begin(), out.end(), uint8_t(0));
    return out.size();
  });
  auto z = open_ok(ro, Access::Read);
  CHECK(read_at(*z, 0, 5) == std::string(5, '\0'));
  auto w = z->write(0, as_bytes(a));
  REQUIRE_FALSE(w);
  CHECK(w.error().code == EACCES);
}

// ---- Tree --------------------------------------------------------------------------

TEST_CASE("split_path ignores empty components", "[tree]") {
  CHECK(split_path("") == Strings{});
  CHECK(split_path("/") == Strings{});
  CHECK(split_path("/a//b/") == Strings{"a", "b"});
  CHECK(split_path("a/b/c") == Strings{"a", "b", "c"});
}

TEST_CASE("Tree::mount creates missing directories and resolve finds the node", "[tree]") {
  Tree t;
  auto f = t.mount("/dhcp/v4", state("leases", "x"));
  CHECK(t.resolve("/dhcp/v4/leases") == f);
  CHECK(t.resolve("dhcp/v4/leases") == f);
  REQUIRE(t.resolve("/dhcp") != nullptr);
  CHECK(t.resolve("/dhcp")->is_dir());
  CHECK(t.resolve("/") == t.root());
  CHECK(t.resolve("") == t.root());
  CHECK(t.resolve("/dhcp/missing") == nullptr);
  CHECK(t.resolve("/dhcp/v4/leases/deeper") == nullptr);
  // Mounting again reuses the existing directories.
  auto dir_before = t.resolve("/dhcp/v4");
  t.mount("/dhcp/v4", state("static", ""));
  CHECK(t.resolve("/dhcp/v4") == dir_before);
  CHECK(names(t.resolve("/dhcp/v4")->list()) == Strings{"leases", "static"});
  CHECK(t.mkdirs("/dhcp") == t.resolve("/dhcp"));
}

TEST_CASE("attach_point: empty and / are the root, ctl is /debug, others are paths", "[tree]") {
  Tree t;
  CHECK(t.attach_point("") == t.root());
  CHECK(t.attach_point("/") == t.root());
  CHECK(t.attach_point("ctl") == nullptr);  // no /debug yet
  auto debug = t.mkdirs("/debug");
  t.mkdirs("/ctl");  // a directory named ctl does not win over the diod alias
  CHECK(t.attach_point("ctl") == debug);
  CHECK(t.attach_point("/net") == nullptr);
  auto net = t.mkdirs("/net");
  CHECK(t.attach_point("/net") == net);
  CHECK(t.attach_point("net") == net);
}

TEST_CASE("describe lists described nodes depth first, padded to column 24", "[tree]") {
  Tree t;
  t.root()->add(std::make_shared<StateFile>("README", "what is here", [] { return std::string(); }));
  auto ports = t.root()->add(std::make_shared<Dir>("ports", "port forwards"));
  t.mount("/ports", std::make_shared<CtlFile>("ctl", "add a forward",
                                              [](std::string_view) -> Result<std::string> { return std::string(); }));
  t.mount("/quiet", state("hidden", ""));  // no description: skipped, but its dir is walked
  t.mount("/quiet", std::make_shared<StateFile>("a-very-long-file-name-here", "long",
                                                [] { return std::string(); }));
  CHECK(t.describe() ==
        "/README                 what is here\n"
        "/ports/                 port forwards\n"
        "/ports/ctl              add a forward\n"
        "/quiet/a-very-long-file-name-here long\n");
}

TEST_CASE("the base tree's README includes every described node", "[tree][base]") {
  Tree t;
  MetricsRegistry m;
  FakeClock clock;
  clock.t = {1700000000, 250000000};
  BaseTree b = mount_base_tree(t, m, clock, "berth 9.9.9");
  REQUIRE(b.audit != nullptr);
  auto readme = t.resolve("/README");
  REQUIRE(readme);
  auto h = open_ok(*readme, Access::Read);
  std::string text = read_all(*h);
  CHECK(text.find("Berth control tree.") == 0);
  CHECK(text.find(t.describe()) != std::string::npos);
  CHECK(text.find("\n/debug/version          server version\n") != std::string::npos);
  CHECK(text.find("\n/metrics                every counter in Prometheus text format\n") != std::string::npos);

  auto version = t.resolve("/debug/version");
  REQUIRE(version);
  CHECK(read_all(*open_ok(*version, Access::Read)) == "berth 9.9.9\n");
  auto date = t.resolve("/debug/date");
  REQUIRE(date);
  CHECK(read_all(*open_ok(*date, Access::Read)) == "1700000000.250000 0.0\n");
  CHECK(t.attach_point("ctl") == t.resolve("/debug"));
  CHECK(t.resolve("/debug/null")->perm() == 0666);
  CHECK(t.resolve("/audit")->perm() == 0444);
}

TEST_CASE("the audit log keeps the newest lines and says how many were dropped", "[tree][base]") {
  Tree t;
  MetricsRegistry m;
  FakeClock clock;
  BaseTree b = mount_base_tree(t, m, clock, "v");
  auto audit = t.resolve("/audit");
  REQUIRE(audit);
  CHECK(read_all(*open_ok(*audit, Access::Read)).empty());

  AuditLog log(2);
  log.record("a");
  log.record("b");
  CHECK(log.render() == "a\nb\n");
  log.record("c");
  CHECK(log.dropped() == 1);
  CHECK(log.render() == "# 1 older entries dropped\nb\nc\n");

  b.audit->record("alice read dns.pcap 120 bytes");
  CHECK(read_all(*open_ok(*audit, Access::Read)) == "alice read dns.pcap 120 bytes\n");
}
