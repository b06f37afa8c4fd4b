// libFuzzer target: the 9P codec (server9p/proto.h).
//
// Each input is one frame, parsed in all three dialects; the same bytes (and
// the bytes after an Rread/Rreaddir header) are also parsed as directory
// contents with parse_readdir and parse_stat.
// Invariants checked (abort on violation, so libFuzzer reports a crash):
//   - parse never reads out of bounds (ASan) and sets type/tag whenever the
//     7-byte header was present;
//   - when parse succeeds, y = emit(parse(x)) has buffer_len(...) bytes, is
//     x itself (the wire format is canonical; the one exception is Tfsync
//     without its optional datasync[4], which emit writes out), and is a
//     fixed point: parse(y) succeeds and emit(parse(y)) == y;
//   - parse_readdir / parse_stat accept only canonical encodings: re-emitting
//     what they parsed reproduces the bytes consumed, with the sizes that
//     readdir_entry_len / stat_len predict.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "server9p/proto.h"

using namespace berth;
using namespace berth::p9;

namespace {

[[noreturn]] void fail(const char* what, const Fcall* f = nullptr) {
  std::fprintf(stderr, "fuzz_9p_codec invariant violated: %s", what);
  if (f) std::fprintf(stderr, " (type %u %s, tag %u)", f->type, msg_name(f->type), f->tag);
  std::fprintf(stderr, "\n");
  std::abort();
}

void check(bool cond, const char* what, const Fcall* f = nullptr) {
  if (!cond) fail(what, f);
}

void fuzz_frame(Bytes x, Dialect d) {
  Fcall f;
  ParseResult pr = parse(x, d, f);
  if (x.size() >= kHeaderSize) {
    check(f.type == x[4], "parse did not set type from the header", &f);
    check(f.tag == load_le16(&x[5]), "parse did not set tag from the header", &f);
  }
  if (!pr.ok) {
    check(pr.error != ParseError::BadSize || !FrameView::check(x), "BadSize on a well-sized frame", &f);
    return;
  }
  check(FrameView::check(x), "parse accepted a badly sized frame", &f);

  std::vector<uint8_t> y;
  emit(f, d, y);
  check(buffer_len(f, d) == y.size(), "buffer_len != emitted size", &f);
  check(encode(f, d) == y, "encode != emit", &f);
  check(y.size() >= kHeaderSize && load_le32(y.data()) == y.size(), "emitted size field wrong", &f);
  bool same = std::equal(y.begin(), y.end(), x.begin(), x.end());
  if (!same) {
    // Tfsync: fid[4] with datasync[4] optional on input, always written.
    bool short_fsync = f.type == Tfsync && x.size() + 4 == y.size() && std::memcmp(y.data() + 4, x.data() + 4, x.size() - 4) == 0;
    check(short_fsync, "emit(parse(x)) != x", &f);
  }

  Fcall g;
  ParseResult pr2 = parse(y, d, g);
  check(pr2.ok, "re-emitted frame does not parse", &f);
  std::vector<uint8_t> z;
  emit(g, d, z);
  check(z == y, "emit(parse(y)) != y: not a fixed point", &f);
  // A few semantic fields survive the round trip.
  check(g.type == f.type && g.tag == f.tag, "type/tag changed", &f);
  check(g.wnames == f.wnames && g.wqids == f.wqids, "walk elements changed", &f);
  check(g.stat == f.stat, "stat changed", &f);
  check(g.data.size() == f.data.size(), "data length changed", &f);
  check(g.version == f.version && g.uname == f.uname && g.aname == f.aname && g.name == f.name &&
            g.ename == f.ename && g.extension == f.extension,
        "strings changed", &f);
}

void fuzz_readdir(Bytes x) {
  std::vector<DirEntry> entries;
  if (!parse_readdir(x, entries)) return;
  std::vector<uint8_t> y;
  ByteWriter w(y);
  size_t predicted = 0;
  for (auto& e : entries) {
    predicted += readdir_entry_len(e.name);
    emit_readdir_entry(w, e.qid, e.offset, e.dtype, e.name);
  }
  check(predicted == y.size(), "readdir_entry_len disagrees with emit_readdir_entry");
  check(std::equal(y.begin(), y.end(), x.begin(), x.end()), "readdir re-emit differs");
}

void fuzz_stats(Bytes x, Dialect d) {
  // A 9P2000 directory read: a sequence of stat structures.
  ByteReader r(x);
  size_t consumed = 0;
  std::vector<uint8_t> y;
  ByteWriter w(y);
  while (r.remaining() > 0) {
    Stat s;
    if (!parse_stat(r, d, s)) break;
    size_t len = r.position() - consumed;
    check(stat_len(s, d) == len, "stat_len != bytes parsed");
    size_t before = y.size();
    emit_stat(w, s, d);
    check(y.size() - before == len, "emit_stat size != bytes parsed");
    check(std::memcmp(y.data() + before, x.data() + consumed, len) == 0, "stat re-emit differs");
    consumed = r.position();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes x(data, size);
  fuzz_frame(x, Dialect::P9_2000L);
  fuzz_frame(x, Dialect::P9_2000u);
  fuzz_frame(x, Dialect::P9_2000);
  // The same bytes as directory contents (what Rreaddir / Rread on a
  // directory carry), so the corpus of frames also seeds these.
  fuzz_readdir(x);
  fuzz_stats(x, Dialect::P9_2000u);
  fuzz_stats(x, Dialect::P9_2000);
  if (size > kHeaderSize + 4) {
    Bytes body = x.subspan(kHeaderSize + 4);  // after size[4] type[1] tag[2] count[4]
    fuzz_readdir(body);
    fuzz_stats(body, Dialect::P9_2000u);
    fuzz_stats(body, Dialect::P9_2000);
  }
  return 0;
}
