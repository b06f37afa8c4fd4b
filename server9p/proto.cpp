// 9P codec. Theory of operation:
//
// `fields(archive, fcall, dialect)` lists, per message type, the body fields
// in wire order. It is instantiated three times: with a Reader (parse, every
// length checked against the remaining bytes), a Sizer (buffer_len) and a
// Writer (emit). Adding a message means adding one switch arm.
//
// References: the Plan 9 manual section 5 (intro, version, attach, walk, open,
// read, stat, flush), the 9P2000.u extension note, and the 9P2000.L protocol
// description from the v9fs project (diod's protocol.md).
#include "server9p/proto.h"

#include <type_traits>

namespace berth::p9 {

namespace {

class Reader {
 public:
  explicit Reader(Bytes b) : r_(b) {}
  bool u8(uint8_t& v) { return r_.u8(v); }
  bool u16(uint16_t& v) { return r_.u16(v); }
  bool u32(uint32_t& v) { return r_.u32(v); }
  bool u64(uint64_t& v) { return r_.u64(v); }
  bool str(std::string& s) {
    uint16_t n;
    Bytes b;
    if (!r_.u16(n) || !r_.bytes(n, b)) return false;
    s.assign(as_chars(b));
    return true;
  }
  bool qid(Qid& q) { return r_.u8(q.type) && r_.u32(q.version) && r_.u64(q.path); }
  bool data(Bytes& d) {  // count[4] data[count]
    uint32_t n;
    return r_.u32(n) && r_.bytes(n, d);
  }
  bool wnames(std::vector<std::string>& v) {
    uint16_t n;
    if (!r_.u16(n)) return false;
    if (n > kMaxWalkElems) return too_many = true, false;
    v.resize(n);
    for (auto& s : v)
      if (!str(s)) return false;
    return true;
  }
  bool wqids(std::vector<Qid>& v) {
    uint16_t n;
    if (!r_.u16(n)) return false;
    if (n > kMaxWalkElems) return too_many = true, false;
    v.resize(n);
    for (auto& q : v)
      if (!qid(q)) return false;
    return true;
  }
  // n[2] followed by a stat structure of exactly n bytes (Rstat, Twstat).
  bool stat_block(Stat& s, Dialect d) {
    uint16_t n;
    Bytes b;
    if (!r_.u16(n) || !r_.bytes(n, b)) return false;
    ByteReader inner(b);
    return parse_stat(inner, d, s) && inner.remaining() == 0;
  }
  bool opt_u32(uint32_t& v) { return r_.remaining() == 0 || r_.u32(v); }  // a trailing optional field
  size_t remaining() const { return r_.remaining(); }
  bool too_many = false;

 private:
  ByteReader r_;
};

class Sizer {
 public:
  bool u8(uint8_t) { return n += 1, true; }
  bool u16(uint16_t) { return n += 2, true; }
  bool u32(uint32_t) { return n += 4, true; }
  bool u64(uint64_t) { return n += 8, true; }
  bool opt_u32(uint32_t v) { return u32(v); }
  bool str(const std::string& s) { return n += 2 + std::min<size_t>(s.size(), 0xffff), true; }
  bool qid(const Qid&) { return n += 13, true; }
  bool data(Bytes d) { return n += 4 + d.size(), true; }
  bool wnames(const std::vector<std::string>& v) {
    n += 2;
    for (auto& s : v) str(s);
    return true;
  }
  bool wqids(const std::vector<Qid>& v) { return n += 2 + 13 * v.size(), true; }
  bool stat_block(const Stat& s, Dialect d) { return n += 2 + stat_len(s, d), true; }
  size_t n = 0;
};

class Writer {
 public:
  explicit Writer(std::vector<uint8_t>& out) : w_(out) {}
  bool u8(uint8_t v) { return w_.u8(v), true; }
  bool u16(uint16_t v) { return w_.u16(v), true; }
  bool u32(uint32_t v) { return w_.u32(v), true; }
  bool u64(uint64_t v) { return w_.u64(v), true; }
  bool opt_u32(uint32_t v) { return u32(v); }
  bool str(const std::string& s) {  // a string longer than the length field can say is cut
    size_t n = std::min<size_t>(s.size(), 0xffff);
    w_.u16(uint16_t(n));
    w_.bytes(as_bytes(std::string_view(s).substr(0, n)));
    return true;
  }
  bool qid(const Qid& q) { return w_.u8(q.type), w_.u32(q.version), w_.u64(q.path), true; }
  bool data(Bytes d) { return w_.u32(uint32_t(d.size())), w_.bytes(d), true; }
  bool wnames(const std::vector<std::string>& v) {
    w_.u16(uint16_t(v.size()));
    for (auto& s : v) str(s);
    return true;
  }
  bool wqids(const std::vector<Qid>& v) {
    w_.u16(uint16_t(v.size()));
    for (auto& q : v) qid(q);
    return true;
  }
  bool stat_block(const Stat& s, Dialect d) {
    w_.u16(uint16_t(stat_len(s, d)));
    emit_stat(w_, s, d);
    return true;
  }

 private:
  ByteWriter w_;
};

// The field table. Returns false when the message type has no table
// (unknown) or a Reader ran out of bytes.
template <class A, class F>
bool fields(A& a, F& f, Dialect d, bool& known) {
  known = true;
  const bool ext = d != Dialect::P9_2000;  // .u and .L carry n_uname
  switch (f.type) {
    case Tversion: case Rversion: return a.u32(f.msize) && a.str(f.version);
    case Tauth: return a.u32(f.afid) && a.str(f.uname) && a.str(f.aname) && (!ext || a.u32(f.n_uname));
    case Rauth: return a.qid(f.qid);
    case Tattach:
      return a.u32(f.fid) && a.u32(f.afid) && a.str(f.uname) && a.str(f.aname) && (!ext || a.u32(f.n_uname));
    case Rattach: return a.qid(f.qid);
    case Rerror: return a.str(f.ename) && (d != Dialect::P9_2000u || a.u32(f.ecode));
    case Rlerror: return a.u32(f.ecode);
    case Tflush: return a.u16(f.oldtag);
    case Rflush: return true;
    case Twalk: return a.u32(f.fid) && a.u32(f.newfid) && a.wnames(f.wnames);
    case Rwalk: return a.wqids(f.wqids);
    case Topen: return a.u32(f.fid) && a.u8(f.mode8);
    case Ropen: case Rcreate: case Rlopen: case Rlcreate: return a.qid(f.qid) && a.u32(f.iounit);
    case Tcreate:
      return a.u32(f.fid) && a.str(f.name) && a.u32(f.perm) && a.u8(f.mode8) &&
             (d != Dialect::P9_2000u || a.str(f.extension));
    case Tread: return a.u32(f.fid) && a.u64(f.offset) && a.u32(f.count);
    case Rread: case Rreaddir: return a.data(f.data);
    case Twrite: return a.u32(f.fid) && a.u64(f.offset) && a.data(f.data);
    case Rwrite: return a.u32(f.count);
    case Tclunk: case Tremove: case Tstat: case Tstatfs: return a.u32(f.fid);
    case Rclunk: case Rremove: case Rwstat: case Rsetattr: case Rfsync: case Runlinkat: return true;
    case Rstat: return a.stat_block(f.stat, d);
    case Twstat: return a.u32(f.fid) && a.stat_block(f.stat, d);
    case Rstatfs:
      return a.u32(f.fstype) && a.u32(f.bsize) && a.u64(f.blocks) && a.u64(f.bfree) && a.u64(f.bavail) &&
             a.u64(f.files) && a.u64(f.ffree) && a.u64(f.fsid) && a.u32(f.namelen);
    case Tlopen: return a.u32(f.fid) && a.u32(f.flags);
    case Tlcreate: return a.u32(f.fid) && a.str(f.name) && a.u32(f.flags) && a.u32(f.mode) && a.u32(f.gid);
    case Tgetattr: return a.u32(f.fid) && a.u64(f.request_mask);
    case Rgetattr:
      return a.u64(f.valid) && a.qid(f.qid) && a.u32(f.mode) && a.u32(f.uid) && a.u32(f.gid) && a.u64(f.nlink) &&
             a.u64(f.rdev) && a.u64(f.size) && a.u64(f.blksize) && a.u64(f.nblocks) && a.u64(f.atime_sec) &&
             a.u64(f.atime_nsec) && a.u64(f.mtime_sec) && a.u64(f.mtime_nsec) && a.u64(f.ctime_sec) &&
             a.u64(f.ctime_nsec) && a.u64(f.btime_sec) && a.u64(f.btime_nsec) && a.u64(f.gen) &&
             a.u64(f.data_version);
    case Tsetattr: {
      uint32_t valid32 = uint32_t(f.valid);
      bool ok = a.u32(f.fid) && a.u32(valid32) && a.u32(f.mode) && a.u32(f.uid) && a.u32(f.gid) &&
                a.u64(f.size) && a.u64(f.atime_sec) && a.u64(f.atime_nsec) && a.u64(f.mtime_sec) &&
                a.u64(f.mtime_nsec);
      if constexpr (!std::is_const_v<F>) f.valid = valid32;
      return ok;
    }
    case Txattrwalk: return a.u32(f.fid) && a.u32(f.newfid) && a.str(f.name);
    case Rxattrwalk: return a.u64(f.xattr_size);
    case Treaddir: return a.u32(f.fid) && a.u64(f.offset) && a.u32(f.count);
    // Linux sends fid[4] datasync[4]; older descriptions show fid[4] only.
    case Tfsync: return a.u32(f.fid) && a.opt_u32(f.datasync);
    case Tmkdir: return a.u32(f.fid) && a.str(f.name) && a.u32(f.mode) && a.u32(f.gid);
    case Rmkdir: return a.qid(f.qid);
    case Tunlinkat: return a.u32(f.fid) && a.str(f.name) && a.u32(f.flags);
    default: known = false; return false;
  }
}

}  // namespace

const char* msg_name(uint8_t t) {
  switch (t) {
#define N(x) case x: return #x;
    N(Tlerror) N(Rlerror) N(Tstatfs) N(Rstatfs) N(Tlopen) N(Rlopen) N(Tlcreate) N(Rlcreate) N(Tsymlink)
    N(Rsymlink) N(Tmknod) N(Rmknod) N(Trename) N(Rrename) N(Treadlink) N(Rreadlink) N(Tgetattr) N(Rgetattr)
    N(Tsetattr) N(Rsetattr) N(Txattrwalk) N(Rxattrwalk) N(Txattrcreate) N(Rxattrcreate) N(Treaddir)
    N(Rreaddir) N(Tfsync) N(Rfsync) N(Tlock) N(Rlock) N(Tgetlock) N(Rgetlock) N(Tlink) N(Rlink) N(Tmkdir)
    N(Rmkdir) N(Trenameat) N(Rrenameat) N(Tunlinkat) N(Runlinkat) N(Tversion) N(Rversion) N(Tauth) N(Rauth)
    N(Tattach) N(Rattach) N(Terror) N(Rerror) N(Tflush) N(Rflush) N(Twalk) N(Rwalk) N(Topen) N(Ropen)
    N(Tcreate) N(Rcreate) N(Tread) N(Rread) N(Twrite) N(Rwrite) N(Tclunk) N(Rclunk) N(Tremove) N(Rremove)
    N(Tstat) N(Rstat) N(Twstat) N(Rwstat)
#undef N
    default: return "unknown";
  }
}

const char* parse_error_name(ParseError e) {
  switch (e) {
    case ParseError::Truncated: return "truncated";
    case ParseError::TrailingBytes: return "trailing_bytes";
    case ParseError::BadSize: return "bad_size";
    case ParseError::UnknownType: return "unknown_type";
    case ParseError::TooManyElements: return "too_many_elements";
  }
  return "?";
}

ParseResult parse(Bytes frame, Dialect d, Fcall& out) {
  if (!FrameView::check(frame)) {
    if (frame.size() >= kHeaderSize) out.type = frame[4], out.tag = load_le16(&frame[5]);
    return {false, ParseError::BadSize};
  }
  FrameView v(frame);
  out.type = v.type();
  out.tag = v.tag();
  Reader r(v.body());
  bool known;
  if (!fields(r, out, d, known)) {
    if (!known) return {false, ParseError::UnknownType};
    return {false, r.too_many ? ParseError::TooManyElements : ParseError::Truncated};
  }
  if (r.remaining() != 0) return {false, ParseError::TrailingBytes};
  return {true, {}};
}

size_t buffer_len(const Fcall& f, Dialect d) {
  Sizer s;
  bool known;
  fields(s, f, d, known);
  return kHeaderSize + s.n;
}

void emit(const Fcall& f, Dialect d, std::vector<uint8_t>& out) {
  size_t start = out.size();
  ByteWriter hdr(out);
  hdr.u32(0);  // patched below
  hdr.u8(f.type);
  hdr.u16(f.tag);
  Writer w(out);
  bool known;
  fields(w, f, d, known);
  store_le32(&out[start], uint32_t(out.size() - start));
}

std::vector<uint8_t> encode(const Fcall& f, Dialect d) {
  std::vector<uint8_t> out;
  out.reserve(buffer_len(f, d));
  emit(f, d, out);
  return out;
}

size_t readdir_entry_len(std::string_view name) { return 13 + 8 + 1 + 2 + name.size(); }

void emit_readdir_entry(ByteWriter& w, const Qid& q, uint64_t next_offset, uint8_t dtype, std::string_view name) {
  w.u8(q.type);
  w.u32(q.version);
  w.u64(q.path);
  w.u64(next_offset);
  w.u8(dtype);
  w.u16(uint16_t(name.size()));
  w.bytes(as_bytes(name));
}

bool parse_readdir(Bytes data, std::vector<DirEntry>& out) {
  Reader r(data);
  while (r.remaining() > 0) {
    DirEntry e;
    if (!r.qid(e.qid) || !r.u64(e.offset) || !r.u8(e.dtype) || !r.str(e.name)) return false;
    out.push_back(std::move(e));
  }
  return true;
}

// stat: size[2] type[2] dev[4] qid[13] mode[4] atime[4] mtime[4] length[8]
//       name[s] uid[s] gid[s] muid[s]  (.u: extension[s] n_uid[4] n_gid[4] n_muid[4])
// `size` counts the bytes after itself; stat_len includes the size field.
size_t stat_len(const Stat& s, Dialect d) {
  size_t n = 2 + 2 + 4 + 13 + 4 + 4 + 4 + 8 + 2 + s.name.size() + 2 + s.uid.size() + 2 + s.gid.size() + 2 +
             s.muid.size();
  if (d == Dialect::P9_2000u) n += 2 + s.extension.size() + 12;
  return n;
}

void emit_stat(ByteWriter& w, const Stat& s, Dialect d) {
  std::vector<uint8_t>& out = w.buffer();
  Writer x(out);
  x.u16(uint16_t(stat_len(s, d) - 2));
  x.u16(s.type);
  x.u32(s.dev);
  x.qid(s.qid);
  x.u32(s.mode);
  x.u32(s.atime);
  x.u32(s.mtime);
  x.u64(s.length);
  x.str(s.name);
  x.str(s.uid);
  x.str(s.gid);
  x.str(s.muid);
  if (d == Dialect::P9_2000u) {
    x.str(s.extension);
    x.u32(s.n_uid);
    x.u32(s.n_gid);
    x.u32(s.n_muid);
  }
}

bool parse_stat(ByteReader& br, Dialect d, Stat& s) {
  uint16_t size;
  Bytes body;
  if (!br.u16(size) || !br.bytes(size, body)) return false;
  Reader r(body);
  bool ok = r.u16(s.type) && r.u32(s.dev) && r.qid(s.qid) && r.u32(s.mode) && r.u32(s.atime) &&
            r.u32(s.mtime) && r.u64(s.length) && r.str(s.name) && r.str(s.uid) && r.str(s.gid) && r.str(s.muid);
  if (ok && d == Dialect::P9_2000u)
    ok = r.str(s.extension) && r.u32(s.n_uid) && r.u32(s.n_gid) && r.u32(s.n_muid);
  return ok && r.remaining() == 0;
}

}  // namespace berth::p9
