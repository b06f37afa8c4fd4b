// 9P codec: 9P2000, 9P2000.u and 9P2000.L messages as plain representations.
//
// A message on the wire is size[4] type[1] tag[2] body. `FrameView` checks the
// header once (size field matches the buffer, at least 7 bytes); `Fcall` is
// the validated representation of any message with `parse`, `emit` and
// `buffer_len` (STYLE.md §2). One field table per message drives all three,
// so the reader and the writer cannot disagree.
//
// Dialect matters for a few messages: Tattach/Tauth carry n_uname in .u and
// .L, Rerror carries an errno in .u, Stat carries extension fields in .u.
//
// Byte fields (`data`) are views into the parsed buffer: valid only while it
// lives. Strings are copied. The codec never does I/O.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"

namespace berth::p9 {

enum class Dialect : uint8_t { P9_2000, P9_2000u, P9_2000L };

inline constexpr uint32_t kHeaderSize = 7;       // size[4] type[1] tag[2]
inline constexpr uint32_t kIoHeaderSize = 24;    // header + Rread/Twrite overhead, as in Linux's P9_IOHDRSZ
inline constexpr uint32_t kMaxMsize = 1u << 20;  // 1 MiB, the largest msize we negotiate
inline constexpr uint16_t kNoTag = 0xffff;
inline constexpr uint32_t kNoFid = 0xffffffff;
inline constexpr uint16_t kMaxWalkElems = 16;    // MAXWELEM

// Message types (9P2000 core 100..127, 9P2000.L additions below 100).
enum MsgType : uint8_t {
  Tlerror = 6, Rlerror = 7,
  Tstatfs = 8, Rstatfs = 9,
  Tlopen = 12, Rlopen = 13,
  Tlcreate = 14, Rlcreate = 15,
  Tsymlink = 16, Rsymlink = 17,
  Tmknod = 18, Rmknod = 19,
  Trename = 20, Rrename = 21,
  Treadlink = 22, Rreadlink = 23,
  Tgetattr = 24, Rgetattr = 25,
  Tsetattr = 26, Rsetattr = 27,
  Txattrwalk = 30, Rxattrwalk = 31,
  Txattrcreate = 32, Rxattrcreate = 33,
  Treaddir = 40, Rreaddir = 41,
  Tfsync = 50, Rfsync = 51,
  Tlock = 52, Rlock = 53,
  Tgetlock = 54, Rgetlock = 55,
  Tlink = 70, Rlink = 71,
  Tmkdir = 72, Rmkdir = 73,
  Trenameat = 74, Rrenameat = 75,
  Tunlinkat = 76, Runlinkat = 77,
  Tversion = 100, Rversion = 101,
  Tauth = 102, Rauth = 103,
  Tattach = 104, Rattach = 105,
  Terror = 106, Rerror = 107,
  Tflush = 108, Rflush = 109,
  Twalk = 110, Rwalk = 111,
  Topen = 112, Ropen = 113,
  Tcreate = 114, Rcreate = 115,
  Tread = 116, Rread = 117,
  Twrite = 118, Rwrite = 119,
  Tclunk = 120, Rclunk = 121,
  Tremove = 122, Rremove = 123,
  Tstat = 124, Rstat = 125,
  Twstat = 126, Rwstat = 127,
};

const char* msg_name(uint8_t type);  // "Twalk", or "unknown"

// Qid types and open modes.
inline constexpr uint8_t kQtDir = 0x80;
inline constexpr uint8_t kQtFile = 0x00;
inline constexpr uint32_t kDmDir = 0x80000000;  // 9P2000 stat mode bit

// 9P2000 Topen modes
inline constexpr uint8_t kOread = 0, kOwrite = 1, kOrdwr = 2, kOexec = 3, kOtrunc = 0x10, kOrclose = 0x40;

// Tgetattr request/valid mask bits (9P2000.L)
inline constexpr uint64_t kGetattrBasic = 0x000007ff;
inline constexpr uint64_t kGetattrAll = 0x00003fff;
// Tsetattr valid bits
inline constexpr uint32_t kSetattrMode = 0x1, kSetattrUid = 0x2, kSetattrGid = 0x4, kSetattrSize = 0x8,
                          kSetattrAtime = 0x10, kSetattrMtime = 0x20, kSetattrCtime = 0x40,
                          kSetattrAtimeSet = 0x80, kSetattrMtimeSet = 0x100;

struct Qid {
  uint8_t type = 0;
  uint32_t version = 0;
  uint64_t path = 0;
  bool operator==(const Qid&) const = default;
};

// 9P2000 / 9P2000.u stat structure (the .u fields are on the wire only in .u).
struct Stat {
  uint16_t type = 0;
  uint32_t dev = 0;
  Qid qid;
  uint32_t mode = 0;
  uint32_t atime = 0, mtime = 0;
  uint64_t length = 0;
  std::string name, uid, gid, muid;
  std::string extension;                                   // .u
  uint32_t n_uid = kNoFid, n_gid = kNoFid, n_muid = kNoFid;  // .u
  bool operator==(const Stat&) const = default;
};

// One representation for every message. Only the fields of `type` are used;
// the rest keep their defaults. Field names follow the 9P manual pages.
struct Fcall {
  uint8_t type = 0;
  uint16_t tag = kNoTag;

  uint32_t msize = 0;       // version
  std::string version;      // version
  uint32_t fid = kNoFid;    // most T-messages; dfid/dirfd for mkdir/unlinkat
  uint32_t afid = kNoFid;   // auth, attach
  uint32_t newfid = kNoFid; // walk, xattrwalk
  std::string uname, aname;
  uint32_t n_uname = kNoFid;
  std::string ename;        // Rerror
  uint32_t ecode = 0;       // Rlerror, Rerror(.u errno)
  uint16_t oldtag = kNoTag; // flush
  std::vector<std::string> wnames;  // walk
  std::vector<Qid> wqids;           // Rwalk
  Qid qid;                  // Rattach, Rauth, Ropen, Rlopen, Rcreate, Rlcreate, Rmkdir, Rgetattr
  uint32_t iounit = 0;
  uint8_t mode8 = 0;        // Topen, Tcreate
  uint32_t perm = 0;        // Tcreate
  std::string extension;    // Tcreate (.u)
  std::string name;         // create, lcreate, mkdir, unlinkat, xattrwalk
  uint32_t flags = 0;       // lopen, lcreate, unlinkat
  uint32_t mode = 0;        // lcreate, mkdir, getattr, setattr
  uint32_t gid = 0;         // lcreate, mkdir
  uint64_t offset = 0;      // read, write, readdir
  uint32_t count = 0;       // read, write, readdir (Rwrite)
  Bytes data;               // Rread, Twrite, Rreaddir: view into the buffer
  Stat stat;                // Rstat, Twstat
  // statfs
  uint32_t fstype = 0, bsize = 0, namelen = 0;
  uint64_t blocks = 0, bfree = 0, bavail = 0, files = 0, ffree = 0, fsid = 0;
  // getattr / setattr
  uint64_t request_mask = 0, valid = 0;
  uint32_t uid = 0;
  uint64_t nlink = 0, rdev = 0, size = 0, blksize = 0, nblocks = 0;
  uint64_t atime_sec = 0, atime_nsec = 0, mtime_sec = 0, mtime_nsec = 0;
  uint64_t ctime_sec = 0, ctime_nsec = 0, btime_sec = 0, btime_nsec = 0, gen = 0, data_version = 0;
  uint32_t datasync = 0;    // fsync
  uint64_t xattr_size = 0;  // Rxattrwalk
};

enum class ParseError {
  Truncated,       // a field runs past the end of the message
  TrailingBytes,   // bytes left after the last field
  BadSize,         // size field < 7 or not equal to the buffer
  UnknownType,     // no table for this type (the tag is still known)
  TooManyElements, // nwname/nwqid > 16
};
const char* parse_error_name(ParseError e);

// The fixed header of one complete message, checked once.
class FrameView {
 public:
  // `frame` must be exactly one message: size[4] equal to frame.size().
  static bool check(Bytes frame) { return frame.size() >= kHeaderSize && load_le32(frame.data()) == frame.size(); }
  explicit FrameView(Bytes frame) : f_(frame) {}  // precondition: check(frame)
  uint32_t size() const { return load_le32(f_.data()); }
  uint8_t type() const { return f_[4]; }
  uint16_t tag() const { return load_le16(&f_[5]); }
  Bytes body() const { return f_.subspan(kHeaderSize); }

 private:
  Bytes f_;
};

struct ParseResult {
  bool ok = false;
  ParseError error = ParseError::Truncated;
};

// Parse one complete message. On failure `out.type` and `out.tag` are still
// set when the header was readable, so the caller can answer with an error.
ParseResult parse(Bytes frame, Dialect d, Fcall& out);

// Number of bytes `emit` will append.
size_t buffer_len(const Fcall& f, Dialect d);
// Append the encoded message to `out`.
void emit(const Fcall& f, Dialect d, std::vector<uint8_t>& out);
std::vector<uint8_t> encode(const Fcall& f, Dialect d);

// Helpers for directory contents, which are not whole messages.
// 9P2000.L Rreaddir entry: qid[13] offset[8] type[1] name[s]
size_t readdir_entry_len(std::string_view name);
void emit_readdir_entry(ByteWriter& w, const Qid& q, uint64_t next_offset, uint8_t dtype, std::string_view name);
// 9P2000/.u directory read entry: a stat structure with its size[2] prefix.
size_t stat_len(const Stat& s, Dialect d);
void emit_stat(ByteWriter& w, const Stat& s, Dialect d);
bool parse_stat(ByteReader& r, Dialect d, Stat& out);
// Parse Rreaddir data into entries (client side).
struct DirEntry {
  Qid qid;
  uint64_t offset = 0;
  uint8_t dtype = 0;
  std::string name;
};
bool parse_readdir(Bytes data, std::vector<DirEntry>& out);

}  // namespace berth::p9
