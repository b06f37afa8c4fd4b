// 9P session. Theory of operation:
//
// `feed` cuts the byte stream into messages using the size[4] prefix. A size
// below 7 or above the negotiated msize (1 MiB before Tversion) cannot be
// resynchronised, so the connection is dropped with a counted reason. Each
// complete message is parsed into an Fcall and dispatched; replies are
// appended to `out_` and handed to the transport once per feed, so a batch of
// pipelined requests costs one write.
//
// Fids map to a path of nodes from the tree root (so ".." and Tremove know
// the parent) and, once opened, to an OpenFile. Reads that would block
// (EAGAIN from a stream) are parked by tag; the OpenFile calls back when it
// may be readable and every parked read on that fid is retried in tag order.
// Tflush drops a parked read without replying to it, then answers Rflush.
//
// Error replies follow the dialect: Rlerror(errno) for 9P2000.L, Rerror with
// the message and errno for 9P2000.u, Rerror with the message for 9P2000.
#include "server9p/session.h"

#include <fcntl.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace berth::p9 {

namespace {

constexpr uint32_t kMinMsize = 512;  // a stat of a 255-byte name must fit
constexpr uint32_t kRreadOverhead = 11;  // size[4] type[1] tag[2] count[4]
constexpr uint32_t kV9fsMagic = 0x01021997;
constexpr uint8_t kDtDir = 4, kDtReg = 8;

constexpr size_t kMaxName = 255;  // NAME_MAX

bool valid_name(std::string_view n) {
  return !n.empty() && n.size() <= kMaxName && n != "." && n != ".." && n.find('/') == std::string_view::npos &&
         n.find('\0') == std::string_view::npos;
}

const std::string& user_name() {
  static const std::string name = [] {
    struct passwd* pw = getpwuid(geteuid());
    return std::string(pw ? pw->pw_name : "berth");
  }();
  return name;
}

}  // namespace

Session::Session(Tree& tree, ServerStats& stats, const Clock& clock, SessionLimits limits, SendFn send,
                 std::string peer)
    : tree_(tree), stats_(stats), clock_(clock), limits_(limits), send_(std::move(send)), peer_(std::move(peer)),
      uid_(geteuid()), gid_(getegid()) {
  stats_.connections_total++;
  stats_.connections_active++;
}

Session::~Session() {
  dead_ = true;
  reset();
  stats_.connections_active--;
}

void Session::reset() {
  // Abort outstanding reads without answering, then clunk every fid.
  parked_.clear();
  for (auto& [id, f] : fids_) {
    if (f.file) {
      f.file->cancel_wait();
      auto r = f.file->close();
      if (!r) spdlog::debug("9p {}: implicit clunk of fid {}: {}", peer_, id, r.error().message);
    }
  }
  fids_.clear();
}

bool Session::feed(Bytes data) {
  if (dead_) return false;
  stats_.bytes_in += data.size();
  if (!in_.empty() || paused_) {
    in_.insert(in_.end(), data.begin(), data.end());
    return process_buffered();
  }
  // Nothing buffered: parse straight from the transport's buffer and keep
  // only what is left over.
  size_t used = 0;
  bool ok = process(data, used);
  if (ok && used < data.size()) in_.assign(data.begin() + long(used), data.end());
  return ok;
}

bool Session::resume() {
  if (dead_) return false;
  paused_ = false;
  return process_buffered();
}

bool Session::process_buffered() {
  size_t used = 0;
  bool ok = process(in_, used);
  if (ok) in_.erase(in_.begin(), in_.begin() + long(used));
  return ok;
}

bool Session::process(Bytes src, size_t& pos) {
  in_feed_ = true;
  pos = 0;
  bool ok = true;
  while (src.size() - pos >= 4) {
    // Backpressure between messages: hand over what is ready, and stop if
    // the transport cannot take more (a client that does not read).
    if (out_.size() >= kFlushThreshold) flush_out();
    if (gate_ && gate_()) {
      paused_ = true;
      break;
    }
    uint32_t size = load_le32(&src[pos]);
    uint32_t limit = versioned_ ? msize_ : limits_.max_msize;
    if (size < kHeaderSize || size > limit) {
      drop(ProtoDrop::BadSize, fmt::format("message size {} outside [7, {}]", size, limit));
      ok = false;
      break;
    }
    if (src.size() - pos < size) break;
    if (!handle(src.subspan(pos, size))) {
      ok = false;
      break;
    }
    pos += size;
  }
  in_feed_ = false;
  flush_out();
  if (!ok) dead_ = true;
  return ok;
}

void Session::drop(ProtoDrop why, std::string_view detail) {
  stats_.dropped[size_t(why)]++;
  spdlog::warn("9p {}: closing connection: {} ({})", peer_, proto_drop_name(why), detail);
}

void Session::flush_out() {
  if (out_.empty() || dead_) return;
  stats_.bytes_out += out_.size();
  send_(std::move(out_));
  out_ = {};
}

void Session::reply(const Fcall& r) {
  size_t start = out_.size();
  emit(r, dialect_, out_);
  if (out_.size() - start > msize_ && r.type != Rversion) {
    // Never send more than the client can take (a stat of a long name in a
    // small msize): the request fails instead.
    out_.resize(start);
    return reply_error(r.tag, EMSGSIZE, "reply larger than msize");
  }
  if (!in_feed_) flush_out();
}

void Session::reply_error(uint16_t tag, int code, std::string_view msg) {
  stats_.errors[code]++;
  spdlog::debug("9p {}: tag {} -> error {} ({})", peer_, tag, code, msg);
  Fcall r;
  r.tag = tag;
  if (dialect_ == Dialect::P9_2000L) {
    r.type = Rlerror;
    r.ecode = uint32_t(code);
  } else {
    r.type = Rerror;
    r.ename = msg.empty() ? std::string(strerror(code)) : std::string(msg);
    r.ecode = uint32_t(code);
    // The message may quote client text (a walk name): keep the reply
    // within msize. Rerror is size[4] type[1] tag[2] ename[s] (errno[4]).
    size_t room = msize_ - kHeaderSize - 2 - (dialect_ == Dialect::P9_2000u ? 4 : 0);
    if (r.ename.size() > room) r.ename.resize(room);
  }
  reply(r);
}

bool Session::handle(Bytes frame) {
  Fcall req;
  ParseResult pr = parse(frame, dialect_, req);
  if (!pr.ok) {
    switch (pr.error) {
      case ParseError::UnknownType:
        // Well-framed but not a request we implement: a clean refusal,
        // unless it breaks the rules every request must keep.
        if (!versioned_) break;
        if (req.type % 2 != 0) {
          drop(ProtoDrop::Malformed, fmt::format("unexpected message type {}", req.type));
          return false;
        }
        if (parked_.count(req.tag)) {
          drop(ProtoDrop::TagInUse, fmt::format("tag {} is outstanding", req.tag));
          return false;
        }
        stats_.requests[req.type]++;
        reply_error(req.tag, EOPNOTSUPP, fmt::format("{} not supported", msg_name(req.type)));
        return true;
      case ParseError::TooManyElements:
        drop(ProtoDrop::TooManyWalkElems, "more than 16 walk elements");
        return false;
      default:
        drop(ProtoDrop::Malformed, fmt::format("{} {}", msg_name(req.type), parse_error_name(pr.error)));
        return false;
    }
  }
  if (req.type % 2 != 0 && pr.ok) {  // an R-message sent to a server
    drop(ProtoDrop::Malformed, fmt::format("unexpected {}", msg_name(req.type)));
    return false;
  }
  if (!versioned_ && req.type != Tversion) {
    drop(ProtoDrop::NoVersion, fmt::format("{} before Tversion", msg_name(req.type)));
    return false;
  }
  if (req.type != Tversion && parked_.count(req.tag)) {
    drop(ProtoDrop::TagInUse, fmt::format("tag {} is outstanding", req.tag));
    return false;
  }
  stats_.requests[req.type]++;
  dispatch(req);
  return true;
}

void Session::dispatch(Fcall& req) {
  const bool dotl = dialect_ == Dialect::P9_2000L;
  switch (req.type) {
    case Tversion: return t_version(req);
    case Tauth:
      // No authentication is required: the afid is never needed (diod's tools expect ENOENT).
      return reply_error(req.tag, ENOENT, "authentication not required");
    case Tattach: return t_attach(req);
    case Tflush: return t_flush(req);
    case Twalk: return t_walk(req);
    case Tclunk: return t_clunk(req, false);
    case Tremove: return t_clunk(req, true);
    case Tread: return t_read(req.tag, req.fid, req.offset, req.count);
    case Twrite: return t_write(req);
    case Tlopen: {
      if (!dotl) break;
      uint32_t acc = req.flags & O_ACCMODE;
      Access a = acc == O_WRONLY ? Access::Write : acc == O_RDWR ? Access::ReadWrite : Access::Read;
      return t_open(req, a, (req.flags & O_TRUNC) != 0);
    }
    case Topen: {
      if (dotl) break;
      uint8_t m = req.mode8 & 3;
      Access a = m == kOwrite ? Access::Write : m == kOrdwr ? Access::ReadWrite : Access::Read;
      return t_open(req, a, (req.mode8 & kOtrunc) != 0);
    }
    case Tlcreate: {
      if (!dotl) break;
      uint32_t acc = req.flags & O_ACCMODE;
      Access a = acc == O_WRONLY ? Access::Write : acc == O_RDWR ? Access::ReadWrite : Access::Read;
      return t_create(req, req.name, req.mode & 07777, a, false);
    }
    case Tcreate: {
      if (dotl) break;
      uint8_t m = req.mode8 & 3;
      Access a = m == kOwrite ? Access::Write : m == kOrdwr ? Access::ReadWrite : Access::Read;
      return t_create(req, req.name, req.perm & 0777, a, (req.perm & kDmDir) != 0);
    }
    case Tmkdir:
      if (!dotl) break;
      return t_create(req, req.name, req.mode & 07777, Access::Read, true);
    case Tunlinkat:
      if (!dotl) break;
      return t_unlinkat(req);
    case Tgetattr:
      if (!dotl) break;
      return t_getattr(req);
    case Tsetattr:
      if (!dotl) break;
      return t_setattr(req);
    case Treaddir:
      if (!dotl) break;
      return t_readdir(req);
    case Tstatfs:
      if (!dotl) break;
      return t_statfs(req);
    case Tfsync:
      if (!dotl) break;
      return t_fsync(req);
    case Txattrwalk:
      if (!dotl) break;
      return reply_error(req.tag, ENODATA, "no extended attributes");
    case Tstat:
      if (dotl) break;
      return t_stat(req);
    case Twstat:
      if (dotl) break;
      return t_wstat(req);
    default: break;
  }
  reply_error(req.tag, EOPNOTSUPP, fmt::format("{} not supported in this dialect", msg_name(req.type)));
}

// version(5): negotiates msize and dialect and aborts everything outstanding.
void Session::t_version(Fcall& req) {
  reset();
  Fcall r;
  r.type = Rversion;
  r.tag = req.tag;
  r.msize = std::min(req.msize, limits_.max_msize);
  const std::string& v = req.version;
  versioned_ = true;
  if (r.msize < kMinMsize) {
    r.version = "unknown";
    versioned_ = false;
  } else if (v.rfind("9P2000.L", 0) == 0) {
    dialect_ = Dialect::P9_2000L, r.version = "9P2000.L";
  } else if (v.rfind("9P2000.u", 0) == 0) {
    dialect_ = Dialect::P9_2000u, r.version = "9P2000.u";
  } else if (v.rfind("9P2000", 0) == 0) {
    dialect_ = Dialect::P9_2000, r.version = "9P2000";
  } else {
    r.version = "unknown";
    versioned_ = false;
  }
  if (versioned_) msize_ = r.msize;
  reply(r);
}

Session::Fid* Session::find(uint32_t fid) {
  auto it = fids_.find(fid);
  return it == fids_.end() ? nullptr : &it->second;
}

bool Session::fid_table_full(uint16_t tag) {
  if (fids_.size() < limits_.max_fids) return false;
  stats_.fid_table_full++;
  reply_error(tag, EMFILE, fmt::format("fid table full ({} fids)", limits_.max_fids));
  return true;
}

void Session::t_attach(Fcall& req) {
  if (req.afid != kNoFid) return reply_error(req.tag, EINVAL, "authentication not required; use NOFID");
  if (find(req.fid)) return reply_error(req.tag, EBADF, "fid already in use");
  if (fid_table_full(req.tag)) return;
  Fid f;
  f.path.push_back(tree_.root());
  std::vector<std::string> parts = req.aname == "ctl" ? std::vector<std::string>{"debug"} : split_path(req.aname);
  for (auto& p : parts) {
    NodePtr n = f.path.back()->lookup(p);
    if (!n) return reply_error(req.tag, ENOENT, "no such aname: " + req.aname);
    f.path.push_back(n);
  }
  if (!f.path.back()->is_dir()) return reply_error(req.tag, ENOTDIR, "aname is not a directory");
  f.root_depth = f.path.size();
  // Kept for OpenContext (audit lines); bounded, since it is client text.
  f.uname = req.uname.substr(0, kMaxName);
  if (f.uname.empty() && dialect_ != Dialect::P9_2000 && req.n_uname != kNoFid)
    f.uname = fmt::format("uid {}", req.n_uname);
  Fcall r;
  r.type = Rattach;
  r.tag = req.tag;
  r.qid = f.node()->qid();
  fids_.emplace(req.fid, std::move(f));
  reply(r);
}

// flush(5): the flushed request gets no reply once Rflush is sent.
void Session::t_flush(Fcall& req) {
  stats_.flushes++;
  auto it = parked_.find(req.oldtag);
  if (it != parked_.end()) {
    uint32_t fid = it->second.fid;
    parked_.erase(it);
    bool more = std::any_of(parked_.begin(), parked_.end(), [&](auto& p) { return p.second.fid == fid; });
    Fid* f = find(fid);
    if (!more && f && f->waiting) {
      f->file->cancel_wait();
      f->waiting = false;
    }
  }
  Fcall r;
  r.type = Rflush;
  r.tag = req.tag;
  reply(r);
}

// walk(5): a walk that fails at the first element is an error; one that
// fails later returns the qids walked so far and leaves newfid unassigned.
void Session::t_walk(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  if (req.newfid != req.fid) {
    if (find(req.newfid)) return reply_error(req.tag, EBADF, "newfid already in use");
    if (fid_table_full(req.tag)) return;
  }
  std::vector<NodePtr> path = f->path;
  Fcall r;
  r.type = Rwalk;
  r.tag = req.tag;
  int first_error = ENOENT;
  for (auto& name : req.wnames) {
    if (name == "..") {
      if (path.size() > f->root_depth) path.pop_back();
    } else if (name == "." && path.back()->is_dir()) {
      // Readdir lists "." (as real file systems do); clients such as
      // diodls -l walk every listed name, so "." stays in place.
    } else {
      if (!path.back()->is_dir()) {
        first_error = ENOTDIR;
        break;
      }
      NodePtr child = valid_name(name) ? path.back()->lookup(name) : nullptr;
      if (!child) break;
      path.push_back(std::move(child));
    }
    r.wqids.push_back(path.back()->qid());
  }
  if (r.wqids.size() < req.wnames.size()) {
    if (r.wqids.empty()) return reply_error(req.tag, first_error, "no such file or directory: " + req.wnames[0]);
    return reply(r);  // partial walk
  }
  Fid nf;
  nf.path = std::move(path);
  nf.root_depth = f->root_depth;
  nf.uname = f->uname;
  if (req.newfid == req.fid) {
    cancel_parked_for_fid(req.fid, true);
    if (f->file) (void)f->file->close();
    *f = std::move(nf);
  } else {
    fids_.emplace(req.newfid, std::move(nf));
  }
  reply(r);
}

void Session::t_open(Fcall& req, Access access, bool truncate) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  if (f->file) return reply_error(req.tag, EBADF, "fid already open");
  NodePtr n = f->node();
  if (n->is_dir() && wants_write(access)) return reply_error(req.tag, EISDIR, "is a directory");
  if ((wants_read(access) && !(n->perm() & 0400)) || (wants_write(access) && !(n->perm() & 0200)))
    return reply_error(req.tag, EACCES, "permission denied: " + n->name());
  OpenContext client{peer_, f->uname, {}};
  for (size_t i = 1; i < f->path.size(); i++) client.path += "/" + f->path[i]->name();
  if (client.path.empty()) client.path = "/";
  auto file = n->open_as(client, access, truncate && wants_write(access));
  if (!file) return reply_error(req.tag, file.error());
  f->file = std::move(file.value());
  f->access = access;
  f->dir_snapshot.clear();
  Fcall r;
  r.type = dialect_ == Dialect::P9_2000L ? Rlopen : Ropen;
  r.tag = req.tag;
  r.qid = n->qid();
  r.iounit = msize_ - kIoHeaderSize;
  reply(r);
}

void Session::t_create(Fcall& req, std::string_view name, uint32_t perm, Access access, bool mkdir) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  NodePtr dir = f->node();
  if (!dir->is_dir()) return reply_error(req.tag, ENOTDIR, "not a directory");
  if (name.size() > kMaxName) return reply_error(req.tag, ENAMETOOLONG, "name longer than 255 bytes");
  if (!valid_name(name)) return reply_error(req.tag, EINVAL, "invalid name");
  if (!(dir->perm() & 0200)) return reply_error(req.tag, EACCES, "directory is read-only: " + dir->name());
  if (req.type != Tmkdir && f->file) return reply_error(req.tag, EBADF, "fid already open");
  auto made = mkdir ? dir->mkdir(name, perm) : dir->create(name, perm);
  if (!made) return reply_error(req.tag, made.error());
  NodePtr n = made.value();
  Fcall r;
  r.tag = req.tag;
  r.qid = n->qid();
  if (req.type == Tmkdir) {
    r.type = Rmkdir;
    return reply(r);
  }
  // Tcreate/Tlcreate: the fid now stands for the new file, opened.
  auto file = n->open(access, false);
  if (!file) return reply_error(req.tag, file.error());
  f->path.push_back(n);
  f->file = std::move(file.value());
  f->access = access;
  r.type = req.type == Tlcreate ? Rlcreate : Rcreate;
  r.iounit = msize_ - kIoHeaderSize;
  reply(r);
}

void Session::t_read(uint16_t tag, uint32_t fid, uint64_t offset, uint32_t count) {
  Fid* f = find(fid);
  if (!f) return reply_error(tag, EBADF, "unknown fid");
  if (!f->file || !wants_read(f->access)) return reply_error(tag, EBADF, "fid not open for reading");
  count = std::min(count, msize_ - kRreadOverhead);
  if (f->node()->is_dir()) {
    if (dialect_ == Dialect::P9_2000L) return reply_error(tag, EISDIR, "use Treaddir on directories");
    dir_read_9p2000(tag, *f, offset, count);
    return;
  }
  // Build Rread in place: the file copies straight into the reply buffer.
  size_t start = out_.size();
  out_.resize(start + kRreadOverhead + count);
  auto got = f->file->read(offset, std::span<uint8_t>(out_.data() + start + kRreadOverhead, count));
  if (!got) {
    out_.resize(start);
    if (got.error().code == EAGAIN) return park(tag, fid, offset, count);
    return reply_error(tag, got.error());
  }
  size_t n = std::min<size_t>(got.value(), count);
  out_.resize(start + kRreadOverhead + n);
  store_le32(&out_[start], uint32_t(kRreadOverhead + n));
  out_[start + 4] = Rread;
  store_le16(&out_[start + 5], tag);
  store_le32(&out_[start + 7], uint32_t(n));
  if (!in_feed_) flush_out();
}

void Session::park(uint16_t tag, uint32_t fid, uint64_t offset, uint32_t count) {
  if (parked_.size() >= limits_.max_parked) {
    stats_.pending_table_full++;
    return reply_error(tag, EAGAIN, "too many blocked reads on this connection");
  }
  Fid* f = find(fid);
  if (!f->waiting) {
    // OpenFile's default wait_readable calls back at once. A file that says
    // EAGAIN but cannot wait would then recurse (park -> callback -> wake_fid
    // -> t_read -> park) until the stack overflows; its EAGAIN goes to the
    // client instead. (Found by session_test "a file that says EAGAIN...".)
    auto state = std::make_shared<int>(0);  // 0 registering, 1 waiting, 2 called back while registering
    std::weak_ptr<bool> alive = alive_;
    f->file->wait_readable([this, alive, fid, state] {
      if (*state == 0) return void(*state = 2);
      if (alive.expired()) return;
      wake_fid(fid);
    });
    if (*state == 2) return reply_error(tag, EAGAIN, "file would block but cannot wait");
    *state = 1;
    f->waiting = true;
  }
  stats_.reads_parked++;
  parked_[tag] = Parked{fid, offset, count};
}

void Session::wake_fid(uint32_t fid) {
  Fid* f = find(fid);
  if (!f) return;
  f->waiting = false;
  std::vector<std::pair<uint16_t, Parked>> retry;
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (it->second.fid == fid) {
      retry.emplace_back(*it);
      it = parked_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [tag, p] : retry) t_read(tag, p.fid, p.offset, p.count);
  if (!in_feed_) flush_out();
}

void Session::cancel_parked_for_fid(uint32_t fid, bool answer) {
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (it->second.fid == fid) {
      uint16_t tag = it->first;
      it = parked_.erase(it);
      if (answer) reply_error(tag, EINTR, "fid clunked while a read was blocked");
    } else {
      ++it;
    }
  }
  if (Fid* f = find(fid); f && f->waiting) {
    f->file->cancel_wait();
    f->waiting = false;
  }
}

void Session::t_write(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  if (!f->file || !wants_write(f->access)) return reply_error(req.tag, EBADF, "fid not open for writing");
  auto n = f->file->write(req.offset, req.data);
  if (!n) return reply_error(req.tag, n.error());
  Fcall r;
  r.type = Rwrite;
  r.tag = req.tag;
  r.count = uint32_t(n.value());
  reply(r);
}

void Session::t_clunk(Fcall& req, bool remove) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  cancel_parked_for_fid(req.fid, true);
  Result<void> res;
  if (f->file) res = f->file->close();
  if (remove && res) {
    if (f->path.size() <= f->root_depth) {
      res = make_error(EBUSY, "cannot remove the attach point");
    } else {
      NodePtr parent = f->path[f->path.size() - 2];
      if (!(parent->perm() & 0200))
        res = make_error(EACCES, "directory is read-only: " + parent->name());
      else
        res = parent->unlink(f->node()->name());
    }
  }
  fids_.erase(req.fid);  // the fid is gone even when the operation failed
  if (!res) return reply_error(req.tag, res.error());
  Fcall r;
  r.type = remove ? Rremove : Rclunk;
  r.tag = req.tag;
  reply(r);
}

void Session::t_unlinkat(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  NodePtr dir = f->node();
  if (!dir->is_dir()) return reply_error(req.tag, ENOTDIR, "not a directory");
  if (!valid_name(req.name)) return reply_error(req.tag, EINVAL, "invalid name");
  if (!(dir->perm() & 0200)) return reply_error(req.tag, EACCES, "directory is read-only: " + dir->name());
  auto res = dir->unlink(req.name);
  if (!res) return reply_error(req.tag, res.error());
  Fcall r;
  r.type = Runlinkat;
  r.tag = req.tag;
  reply(r);
}

void Session::t_getattr(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  const Node& n = *f->node();
  WallTime now = clock_.now();
  Fcall r;
  r.type = Rgetattr;
  r.tag = req.tag;
  r.valid = kGetattrBasic;
  r.qid = n.qid();
  r.mode = (n.is_dir() ? S_IFDIR : S_IFREG) | n.perm();
  r.uid = uid_;
  r.gid = gid_;
  r.nlink = n.is_dir() ? 2 : 1;
  r.size = n.is_dir() ? 0 : f->file ? f->file->size() : n.size();
  r.blksize = 4096;
  r.nblocks = (r.size + 511) / 512;
  r.atime_sec = r.mtime_sec = r.ctime_sec = uint64_t(now.sec);
  r.atime_nsec = r.mtime_nsec = r.ctime_nsec = uint64_t(now.nsec);
  reply(r);
}

void Session::t_setattr(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  const Node& n = *f->node();
  if (req.valid & (kSetattrMode | kSetattrUid | kSetattrGid))
    return reply_error(req.tag, EPERM, "mode and ownership are fixed");
  if (req.valid & kSetattrSize) {
    if (n.is_dir()) return reply_error(req.tag, EISDIR, "is a directory");
    if (!(n.perm() & 0200)) return reply_error(req.tag, EACCES, "permission denied: " + n.name());
    if (f->file && wants_write(f->access)) {
      auto r = f->file->truncate(req.size);
      if (!r) return reply_error(req.tag, r.error());
    } else if (req.size != 0) {
      return reply_error(req.tag, EINVAL, "only truncation to size 0 is supported");
    }
    // `echo >` truncates a path before writing; the open with O_TRUNC does the work.
  }
  // Time updates (touch) are accepted and ignored: times are synthetic.
  Fcall r;
  r.type = Rsetattr;
  r.tag = req.tag;
  reply(r);
}

Stat Session::make_stat(const Node& n, const OpenFile* file) const {
  Stat s;
  WallTime now = clock_.now();
  s.qid = n.qid();
  s.mode = (n.is_dir() ? kDmDir : 0) | n.perm();
  s.atime = s.mtime = uint32_t(now.sec);
  s.length = n.is_dir() ? 0 : file ? file->size() : n.size();
  s.name = n.name();
  s.uid = s.gid = s.muid = user_name();
  s.n_uid = uid_;
  s.n_gid = gid_;
  s.n_muid = uid_;
  return s;
}

void Session::t_stat(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  Fcall r;
  r.type = Rstat;
  r.tag = req.tag;
  r.stat = make_stat(*f->node(), f->file.get());
  reply(r);
}

// wstat(5): a stat full of "don't touch" values is a sync; truncation to 0 of
// a writable file is accepted; anything else would change fixed attributes.
void Session::t_wstat(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  const Stat& s = req.stat;
  bool keep_mode = s.mode == 0xffffffff, keep_len = s.length == ~0ull;
  bool keep_names = s.name.empty() && s.uid.empty() && s.gid.empty();
  if (!keep_mode || !keep_names) return reply_error(req.tag, EPERM, "attributes are fixed");
  if (!keep_len) {
    const Node& n = *f->node();
    if (!(n.perm() & 0200)) return reply_error(req.tag, EACCES, "permission denied: " + n.name());
    if (s.length != 0) return reply_error(req.tag, EINVAL, "only truncation to size 0 is supported");
    if (f->file && wants_write(f->access)) {
      auto r = f->file->truncate(0);
      if (!r) return reply_error(req.tag, r.error());
    }
  }
  Fcall r;
  r.type = Rwstat;
  r.tag = req.tag;
  reply(r);
}

// readdir (9P2000.L): the offset is a cookie, the index of the next entry in
// the listing taken when the client read from offset 0.
void Session::t_readdir(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  if (!f->node()->is_dir()) return reply_error(req.tag, ENOTDIR, "not a directory");
  if (!f->file) return reply_error(req.tag, EBADF, "directory not open");
  if (req.offset == 0 || f->dir_snapshot.empty()) {
    f->dir_snapshot.clear();
    f->dir_snapshot.push_back(f->node());  // "."
    f->dir_snapshot.push_back(f->path.size() > 1 ? f->path[f->path.size() - 2] : f->node());  // ".."
    for (auto& c : f->node()->list()) f->dir_snapshot.push_back(std::move(c));
  }
  uint32_t count = std::min(req.count, msize_ - kRreadOverhead);
  size_t start = out_.size();
  out_.resize(start + kRreadOverhead);
  ByteWriter w(out_);
  uint32_t used = 0;
  for (uint64_t i = req.offset; i < f->dir_snapshot.size(); i++) {
    const Node& c = *f->dir_snapshot[i];
    std::string_view name = i == 0 ? "." : i == 1 ? ".." : std::string_view(c.name());
    size_t len = readdir_entry_len(name);
    if (used + len > count) break;
    emit_readdir_entry(w, c.qid(), i + 1, c.is_dir() ? kDtDir : kDtReg, name);
    used += uint32_t(len);
  }
  store_le32(&out_[start], uint32_t(kRreadOverhead + used));
  out_[start + 4] = Rreaddir;
  store_le16(&out_[start + 5], req.tag);
  store_le32(&out_[start + 7], used);
  if (!in_feed_) flush_out();
}

// read(5) on a directory: whole stat entries; the offset must be 0 or the
// end of the previous read.
bool Session::dir_read_9p2000(uint16_t tag, Fid& f, uint64_t offset, uint32_t count) {
  if (offset == 0) {
    f.dir_snapshot = f.node()->list();
    f.dir_offset = 0;
    f.dir_index = 0;
  } else if (offset != f.dir_offset) {
    reply_error(tag, EINVAL, "directory read at a bad offset");
    return false;
  }
  std::vector<uint8_t> data;
  ByteWriter w(data);
  size_t i = f.dir_index;
  for (; i < f.dir_snapshot.size(); i++) {
    Stat s = make_stat(*f.dir_snapshot[i], nullptr);
    size_t len = stat_len(s, dialect_);
    if (data.size() + len > count) break;
    emit_stat(w, s, dialect_);
  }
  f.dir_index = i;
  f.dir_offset += data.size();
  Fcall r;
  r.type = Rread;
  r.tag = tag;
  r.data = data;
  reply(r);
  return true;
}

void Session::t_statfs(Fcall& req) {
  if (!find(req.fid)) return reply_error(req.tag, EBADF, "unknown fid");
  Fcall r;
  r.type = Rstatfs;
  r.tag = req.tag;
  r.fstype = kV9fsMagic;
  r.bsize = 4096;
  r.namelen = 255;
  reply(r);
}

void Session::t_fsync(Fcall& req) {
  Fid* f = find(req.fid);
  if (!f) return reply_error(req.tag, EBADF, "unknown fid");
  if (f->file) {
    auto r = f->file->sync();
    if (!r) return reply_error(req.tag, r.error());
  }
  Fcall r;
  r.type = Rfsync;
  r.tag = req.tag;
  reply(r);
}

}  // namespace berth::p9
