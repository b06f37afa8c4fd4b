// libFuzzer target: a 9P Session (server9p/session.h) behind a MemoryPipe.
//
// Each input is one connection to a fresh tree: the default base tree
// (mount_base_tree) plus
//   /ctl     CtlFile: "append TEXT" appends to /stream, "close" closes it,
//            "echo TEXT" answers TEXT, "fail" fails; anything else fails
//   /state   writable StateFile (stored text is rendered on the next open)
//   /stream  StreamFile over a small ByteStream (64 bytes, replay), so reads
//            park, wake, and lose bytes
//   /work    a writable Dir whose mkdir/unlink hooks add and remove children
//
// Input layout:
//   byte 0  flags
//     bits 0-1  dialect of the prepended Tversion: .L, .u, 9P2000, .L
//     bit 2     prepend Tversion (msize chosen by byte 1)
//     bit 3     also prepend Tattach fid 0 to "/"
//     bits 4-5  chunking: whole input, one byte at a time, 1..64, 1..4096
//     bit 6     append a few bytes to /stream after every chunk (wakes
//               parked reads outside feed)
//     bit 7     close /stream before the connection ends
//   byte 1  seed for chunk sizes; bits 0-1 also pick the msize of the
//           prepended Tversion (8192, 256, 65536, 1000); bit 2 selects
//           record mode for the rest; bit 3 makes the client a slow reader
//           (Session's output gate says "blocked" while more than
//           16 << (bits 4-6) reply bytes are unread, and the harness reads
//           replies only after some chunks, then resumes the session)
//   rest    bytes the client sends, or in record mode a sequence of
//           len[2] type[1] tag[2] body[len] records that the harness frames
//           with a correct size[4] (so mutations that grow or shrink a body
//           keep the framing and reach the message handlers)
//
// Invariants (abort on violation, so libFuzzer reports a crash): no memory
// error, leak or UB (sanitizers); every reply is a whole R-message that
// parses in the dialect negotiated when it was sent, fits the negotiated
// msize and uses the error reply of that dialect; every reply answers an
// outstanding request with the same tag and the matching type, and a
// flushed request is never answered after its Rflush (see Conversation);
// no reply at all once the session has closed the connection; the fid and
// parked-read tables stay within their limits; at the end, with nothing
// parked, every request has been answered and the session is not paused.
//
// Triage: BERTH_FUZZ_LOG=debug build/fuzz/fuzz_9p_session FILE prints the
// session's log and every reply.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "server9p/base.h"
#include "server9p/metrics.h"
#include "server9p/pipe.h"
#include "server9p/proto.h"
#include "server9p/session.h"
#include "server9p/tree.h"

using namespace berth;
using namespace berth::p9;

namespace {

constexpr SessionLimits kLimits{.max_msize = 65536, .max_fids = 64, .max_parked = 8};
constexpr size_t kMaxWorkChildren = 16;
bool g_trace = false;  // BERTH_FUZZ_LOG set: print every reply

[[noreturn]] void fail(const char* what, const Fcall* f = nullptr) {
  std::fprintf(stderr, "fuzz_9p_session invariant violated: %s", what);
  if (f) std::fprintf(stderr, " (reply type %u %s, tag %u)", f->type, msg_name(f->type), f->tag);
  std::fprintf(stderr, "\n");
  std::abort();
}

void check(bool cond, const char* what, const Fcall* f = nullptr) {
  if (!cond) fail(what, f);
}

struct Rng {
  uint32_t s;
  uint32_t next() {  // xorshift32
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
  }
};

// The fixture: one fresh tree per input, so inputs do not affect each other.
struct World {
  FakeClock clock;
  MetricsRegistry metrics;
  ServerStats stats;
  Tree tree;
  std::shared_ptr<ByteStream> stream = std::make_shared<ByteStream>(64);
  std::string state_text = "initial state\n";

  World() {
    metrics.add([this](PromWriter& w) { stats.render(w); });
    mount_base_tree(tree, metrics, clock, "fuzz");
    ByteStream* s = stream.get();
    tree.root()->add(std::make_shared<CtlFile>(
        "ctl", "fuzz commands",
        [s](std::string_view cmd) -> Result<std::string> {
          if (cmd.rfind("append ", 0) == 0) {
            s->append(as_bytes(cmd.substr(7)));
            return std::string();
          }
          if (cmd == "close") {
            s->close();
            return std::string();
          }
          if (cmd.rfind("echo ", 0) == 0) return std::string(cmd.substr(5));
          if (cmd == "fail") return make_error(EIO, "failed on purpose");
          return make_error(EINVAL, "unknown command");
        },
        "usage: append TEXT | close | echo TEXT | fail\n"));
    std::string* st = &state_text;
    tree.root()->add(std::make_shared<StateFile>(
        "state", "writable state", [st] { return *st; },
        [st](std::string_view content) -> Result<void> {
          if (content.find("reject") != std::string_view::npos) return make_error(EINVAL, "rejected");
          st->assign(content);
          return {};
        }));
    tree.root()->add(std::make_shared<StreamFile>("stream", "fuzz stream", stream, /*replay=*/true));
    auto work = std::make_shared<Dir>("work", "writable directory", 0755);
    Dir* w = work.get();  // raw: the hooks live in the Dir itself
    work->set_mkdir([w](std::string_view name, uint32_t perm) -> Result<NodePtr> {
      if (w->list().size() >= kMaxWorkChildren) return make_error(ENOSPC, "too many entries");
      return w->add(std::make_shared<Dir>(std::string(name), "made by mkdir", perm & 0777));
    });
    work->set_unlink([w](std::string_view name) -> Result<void> {
      w->remove_static(name);
      return {};
    });
    tree.root()->add(work);
  }
};

// The client's view of the conversation. Requests are cut from the bytes
// the harness sends (the same size[4] framing the server uses); replies are
// checked in the order they arrive, as a client would:
//  - the dialect and msize change exactly at a successful Rversion;
//  - every reply answers an outstanding request with its tag, with the
//    matching R-type (T+1) or the dialect's error reply. Requests are
//    grouped in epochs: the k-th Tversion starts epoch k and aborts the
//    requests before it, and its Rversion is the k-th Rversion;
//  - once Rflush answers Tflush(oldtag), the flushed request gets no reply.
struct Conversation {
  struct Request {
    uint16_t tag;
    uint8_t type;
    bool flushed = false;  // Rflush answered a Tflush naming it: no reply may follow
  };
  // Requests not yet answered, oldest first, per epoch.
  std::vector<std::vector<Request>> outstanding{1};
  std::vector<std::vector<uint16_t>> flush_oldtags{1};  // Tflush oldtag, in the same order as its Request
  std::vector<uint8_t> pending;  // client bytes not yet a whole frame
  bool framing_lost = false;     // a size field the server cannot accept
  size_t reply_epoch = 0;

  Dialect dialect = Dialect::P9_2000L;  // Session's initial dialect
  uint32_t msize = 8192;                // Session's initial msize
  bool versioned = false;

  void sent(Bytes b) {
    if (framing_lost) return;
    pending.insert(pending.end(), b.begin(), b.end());
    size_t pos = 0;
    while (pending.size() - pos >= 4) {
      uint32_t size = load_le32(&pending[pos]);
      if (size < kHeaderSize || size > kLimits.max_msize) {
        framing_lost = true;  // the server drops the connection here (or earlier)
        break;
      }
      if (pending.size() - pos < size) break;
      const uint8_t* m = &pending[pos];
      Request r{load_le16(m + 5), m[4]};
      if (r.type == Tversion) {
        outstanding.emplace_back();
        flush_oldtags.emplace_back();
      }
      outstanding.back().push_back(r);
      flush_oldtags.back().push_back(r.type == Tflush && size >= kHeaderSize + 2 ? load_le16(m + 7) : 0);
      pos += size;
    }
    pending.erase(pending.begin(), pending.begin() + pos);
  }

  void check_reply(const std::vector<uint8_t>& m) {
    Fcall f;
    ParseResult pr = parse(m, dialect, f);
    if (g_trace)
      std::fprintf(stderr, "reply: %s tag %u size %zu ecode %u ename \"%s\"%s\n", msg_name(f.type), f.tag, m.size(),
                   f.ecode, f.ename.c_str(), pr.ok ? "" : " (does not parse)");
    if (!pr.ok) {
      std::fprintf(stderr, "reply does not parse: %s\n", parse_error_name(pr.error));
      fail("reply is not a valid R-message", &f);
    }
    check(f.type % 2 == 1 && std::string_view(msg_name(f.type)) != "unknown", "reply is not an R-message", &f);
    check(versioned || f.type == Rversion, "reply other than Rversion before version negotiation", &f);
    const bool dotl = dialect == Dialect::P9_2000L;
    const uint8_t error_type = dotl ? Rlerror : Rerror;
    if (dotl) {
      check(f.type != Rerror && f.type != Ropen && f.type != Rcreate && f.type != Rstat && f.type != Rwstat,
            "9P2000-only reply in 9P2000.L", &f);
    } else {
      check(f.type >= Rversion, "9P2000.L-only reply in 9P2000/.u", &f);
    }

    if (f.type == Rversion) {
      reply_epoch++;
      check(reply_epoch < outstanding.size(), "Rversion without a Tversion", &f);
      for (size_t e = 0; e < reply_epoch; e++) outstanding[e].clear();  // aborted, never answered
    }
    auto& reqs = outstanding.at(reply_epoch);
    auto it = std::find_if(reqs.begin(), reqs.end(), [&](const Request& r) { return !r.flushed && r.tag == f.tag; });
    check(it != reqs.end(), "reply to no outstanding request (unknown, answered or flushed tag)", &f);
    // A mismatch here usually means two replies for one tag: a request that
    // reused the tag of a parked read was answered instead of being refused
    // as TagInUse, and the parked read was answered as well.
    check(f.type == uint8_t(it->type + 1) || (f.type == error_type && it->type != Tversion),
          "reply type does not match the request with that tag (a reused tag answered twice?)", &f);
    size_t idx = size_t(it - reqs.begin());
    if (f.type == Rflush) {
      // The flushed request, if still unanswered, is never answered now.
      uint16_t oldtag = flush_oldtags[reply_epoch][idx];
      for (size_t i = 0; i < idx; i++)
        if (reqs[i].tag == oldtag) reqs[i].flushed = true;
    }
    reqs.erase(it);
    flush_oldtags[reply_epoch].erase(flush_oldtags[reply_epoch].begin() + ptrdiff_t(idx));

    if (f.type == Rversion) {
      if (f.version == "9P2000.L" || f.version == "9P2000.u" || f.version == "9P2000") {
        dialect = f.version == "9P2000.L"   ? Dialect::P9_2000L
                  : f.version == "9P2000.u" ? Dialect::P9_2000u
                                            : Dialect::P9_2000;
        check(f.msize >= 256 && f.msize <= kLimits.max_msize, "negotiated msize out of range", &f);
        msize = f.msize;
        versioned = true;
      } else {
        check(f.version == "unknown", "Rversion with an unexpected version string", &f);
        versioned = false;
      }
      return;
    }
    check(m.size() <= msize, "reply larger than the negotiated msize", &f);
    if (f.type == Rreaddir) {
      std::vector<DirEntry> entries;
      check(parse_readdir(f.data, entries), "Rreaddir data does not parse", &f);
    }
  }

  // Requests of the current epoch still waiting for a reply.
  size_t unanswered() const {
    size_t n = 0;
    for (auto& r : outstanding.back()) n += !r.flushed;
    return n;
  }
};

void drain(MemoryPipe& pipe, Conversation& c) {
  for (;;) {
    auto r = pipe.recv();
    if (!r) {
      check(r.error().code == EAGAIN || r.error().code == ECONNRESET, "recv: unexpected error");
      check(pipe.queued_bytes() == 0, "a partial reply is queued");  // replies are whole messages
      return;
    }
    c.check_reply(r.value());
  }
}

// Backpressure (Session::set_output_gate, paused, resume) is exercised when
// Session has it; the requires-expression keeps this target building against
// a Session without it.
template <class S>
concept HasOutputGate = requires(S& s, std::function<bool()> g) {
  s.set_output_gate(g);
  { s.paused() } -> std::convertible_to<bool>;
  { s.resume() } -> std::convertible_to<bool>;
};
template <class S>
constexpr bool kHasOutputGate = HasOutputGate<S>;

template <class S>
void install_output_gate(S& s, std::function<bool()> blocked) {
  if constexpr (HasOutputGate<S>) s.set_output_gate(std::move(blocked));
}
template <class S>
bool is_paused(S& s) {
  if constexpr (HasOutputGate<S>)
    return s.paused();
  else
    return false;
}
// Returns false when the session rejected input while resuming.
template <class S>
bool resume_if_paused(S& s) {
  if constexpr (HasOutputGate<S>) {
    if (s.paused()) return s.resume();
  }
  return true;
}

std::vector<uint8_t> prologue(uint8_t flags, uint8_t seed) {
  std::vector<uint8_t> out;
  if (!(flags & 4)) return out;
  static const char* const kVersions[] = {"9P2000.L", "9P2000.u", "9P2000", "9P2000.L"};
  static const uint32_t kMsizes[] = {8192, 256, 65536, 1000};
  Dialect d = (flags & 3) == 1 ? Dialect::P9_2000u : (flags & 3) == 2 ? Dialect::P9_2000 : Dialect::P9_2000L;
  Fcall v;
  v.type = Tversion;
  v.tag = kNoTag;
  v.msize = kMsizes[seed & 3];
  v.version = kVersions[flags & 3];
  emit(v, d, out);
  if (flags & 8) {
    Fcall a;
    a.type = Tattach;
    a.tag = 1;
    a.fid = 0;
    a.afid = kNoFid;
    a.uname = "fuzz";
    a.aname = "";
    a.n_uname = 0;
    emit(a, d, out);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Quiet by default (every dropped connection logs a warning). To triage a
  // reproducer: BERTH_FUZZ_LOG=debug build/fuzz/fuzz_9p_session FILE
  const char* level = std::getenv("BERTH_FUZZ_LOG");
  g_trace = level != nullptr;
  spdlog::set_level(level ? spdlog::level::from_str(level) : spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t flags = data[0], seed = data[1];
  std::vector<uint8_t> input = prologue(flags, seed);
  if (seed & 4) {
    ByteReader r(Bytes(data + 2, size - 2));
    uint16_t len;
    Bytes hdr, body;
    while (r.u16(len) && r.bytes(3, hdr)) {
      if (!r.bytes(std::min<size_t>(len, r.remaining()), body)) break;
      ByteWriter w(input);
      w.u32(uint32_t(kHeaderSize + body.size()));
      w.bytes(hdr);
      w.bytes(body);
    }
  } else {
    input.insert(input.end(), data + 2, data + size);
  }

  World world;
  Conversation conv;
  Rng rng{0x9e3779b9u ^ (uint32_t(seed) << 8) ^ flags};
  const int mode = (flags >> 4) & 3;
  const bool slow_reader = (seed & 8) && kHasOutputGate<Session>;
  {
    MemoryPipe pipe(world.tree, world.stats, world.clock, kLimits);
    if (seed & 8) {
      // A client that reads replies late: the transport says "blocked" while
      // more than `limit` reply bytes are unread (16..2048 bytes).
      size_t limit = size_t(16) << ((seed >> 4) & 7);
      install_output_gate(pipe.session(), [&pipe, limit] { return pipe.queued_bytes() > limit; });
    }
    bool resume_failed = false;
    auto closed = [&] { return pipe.closed() || resume_failed; };
    auto read_replies = [&] {
      drain(pipe, conv);
      if (g_trace && is_paused(pipe.session())) std::fprintf(stderr, "resume\n");
      if (!resume_if_paused(pipe.session())) resume_failed = true;
    };
    size_t closed_at = SIZE_MAX;  // queued reply bytes when the session closed
    size_t pos = 0;
    while (pos < input.size()) {
      size_t n = mode == 0 ? input.size() - pos
                 : mode == 1 ? 1
                 : mode == 2 ? 1 + rng.next() % 64
                             : 1 + rng.next() % 4096;
      n = std::min(n, input.size() - pos);
      Bytes chunk(input.data() + pos, n);
      pos += n;
      bool was_closed = pipe.closed();
      auto sent = pipe.send(chunk);
      if (was_closed) {
        check(!sent && sent.error().code == ECONNRESET, "send after close did not fail");
      } else if (!resume_failed) {
        conv.sent(chunk);
      }
      if (flags & 0x40) {
        std::string extra(1 + rng.next() % 24, char('a' + rng.next() % 26));
        world.stream->append(as_bytes(extra));
      }
      if (closed() && closed_at == SIZE_MAX) {
        drain(pipe, conv);  // replies sent before the close still count
        closed_at = pipe.queued_bytes();
      }
      if (closed_at != SIZE_MAX) {
        check(pipe.queued_bytes() == closed_at, "reply after the connection was closed");
      } else if (!slow_reader || rng.next() % 4 == 0) {
        read_replies();
      }
      Session& s = pipe.session();
      check(s.fid_count() <= kLimits.max_fids, "fid table over its limit");
      check(s.parked_count() <= kLimits.max_parked, "parked-read table over its limit");
    }
    if (flags & 0x80) world.stream->close();  // wakes the reads parked on /stream: EOF
    // The client reads everything now, so a paused session must get through
    // the rest of its input (each resume consumes at least one message).
    for (size_t i = 0; i <= input.size() && closed_at == SIZE_MAX && !closed(); i++) {
      read_replies();
      if (!is_paused(pipe.session())) break;
    }
    if (closed_at == SIZE_MAX && closed()) closed_at = pipe.queued_bytes();  // resume found bad input
    if (closed_at != SIZE_MAX) {
      check(pipe.queued_bytes() == closed_at, "reply after the connection was closed");
    } else {
      drain(pipe, conv);
      check(!is_paused(pipe.session()), "session still paused after the client read every reply");
      // Only parked reads may wait for a reply; everything else is answered
      // before feed returns.
      if (pipe.session().parked_count() == 0) check(conv.unanswered() == 0, "request never answered");
    }
  }
  check(world.stats.connections_active == 0, "connection still counted as active after teardown");
  // Whatever the session left behind, the tree must still render.
  (void)world.tree.describe();
  (void)world.metrics.render();
  return 0;
}
