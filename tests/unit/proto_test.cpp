// 9P codec tests from byte fixtures (STYLE.md §12).
//
// Every fixture is written by hand from the wire layouts (little-endian,
// size[4] type[1] tag[2] body). A round trip checks three things: parse gives
// the expected fields, buffer_len equals the fixture's length, and emit into
// a buffer pre-filled with 0xa5 appends exactly the fixture's bytes and
// leaves the bytes before it alone.
//
// The 9P2000.L sequences are the ones the Linux v9fs client (trans=tcp,
// default cache=none, access=client) sends for mount, `ls`, `cat` and
// `echo text > file`. Values worth knowing, from include/net/9p/9p.h and
// fs/9p/vfs_inode_dotl.c:
//   - Tversion uses tag NOTAG; later tags come from an IDR starting at 0, and
//     fids likewise, so a quiet mount uses tag 0 and fid 0 for the attach.
//   - the mount attach is uname "nobody" (V9FS_DEFUSER), aname "" and
//     n_uname INVALID_UID; access=user attaches send uname "" and the uid.
//   - Tgetattr masks: P9_STATS_BASIC 0x7ff (mount), BASIC|GEN 0x17ff
//     (lookup), P9_STATS_ALL 0x3fff (stat(2)).
//   - Tlopen flags are P9_DOTL_*: RDONLY 0, WRONLY 1, CREATE 0100, TRUNC
//     01000, NONBLOCK 04000, LARGEFILE 0100000, DIRECTORY 0200000. The
//     kernel forces O_LARGEFILE on 64-bit. v9fs_open_to_dotl_flags has no
//     entry for O_TRUNC, so `echo >` opens with WRONLY|CREATE|LARGEFILE
//     (0x8041) and truncates with Tsetattr valid SIZE|MTIME|CTIME (0x68) on
//     the opened fid. Other clients (diod's, ours) do send TRUNC (0x200).
//   - Tread/Treaddir count is msize - P9_IOHDRSZ (24).
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "server9p/proto.h"

using namespace berth;
using namespace berth::p9;

namespace {

// Hex bytes ("1d 00 ff"); whitespace and '|' separate nothing in particular.
// Text between single quotes is copied as raw ASCII, so strings stay
// readable: "06 00 'nobody'".
std::vector<uint8_t> hex(std::string_view s) {
  std::vector<uint8_t> out;
  int hi = -1;
  bool quoted = false;
  for (char c : s) {
    if (c == '\'') {
      quoted = !quoted;
      continue;
    }
    if (quoted) {
      out.push_back(uint8_t(c));
      continue;
    }
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (v < 0) continue;
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(uint8_t(hi << 4 | v));
      hi = -1;
    }
  }
  REQUIRE(hi == -1);  // an odd number of hex digits is a typo in the fixture
  REQUIRE(!quoted);
  return out;
}

std::string str(Bytes b) { return std::string(as_chars(b)); }

// Parse `wire`, hand the result to the caller, then check buffer_len and emit.
Fcall roundtrip(const std::vector<uint8_t>& wire, Dialect d) {
  Fcall f;
  ParseResult pr = parse(wire, d, f);
  INFO("parse error: " << parse_error_name(pr.error));
  REQUIRE(pr.ok);
  CHECK(buffer_len(f, d) == wire.size());
  std::vector<uint8_t> buf(16, 0xa5);
  emit(f, d, buf);
  REQUIRE(buf.size() == 16 + wire.size());
  CHECK(std::all_of(buf.begin(), buf.begin() + 16, [](uint8_t b) { return b == 0xa5; }));
  CHECK(std::vector<uint8_t>(buf.begin() + 16, buf.end()) == wire);
  CHECK(encode(f, d) == wire);
  return f;
}

ParseError parse_fails(const std::vector<uint8_t>& wire, Dialect d, Fcall& f) {
  ParseResult pr = parse(wire, d, f);
  REQUIRE_FALSE(pr.ok);
  return pr.error;
}

ParseError parse_fails(const std::vector<uint8_t>& wire, Dialect d) {
  Fcall f;
  return parse_fails(wire, d, f);
}

constexpr Dialect L = Dialect::P9_2000L;
constexpr Dialect U = Dialect::P9_2000u;
constexpr Dialect P = Dialect::P9_2000;

}  // namespace

// ---- Linux v9fs: mount -------------------------------------------------------

TEST_CASE("v9fs mount: Tversion msize 128k 9P2000.L round-trips", "[proto][v9fs]") {
  auto wire = hex("15 00 00 00 | 64 | ff ff | 00 00 02 00 | 08 00 '9P2000.L'");
  Fcall f = roundtrip(wire, L);
  CHECK(f.type == Tversion);
  CHECK(f.tag == kNoTag);
  CHECK(f.msize == 131072);
  CHECK(f.version == "9P2000.L");
}

TEST_CASE("v9fs mount: Rversion is decoded the same in every dialect", "[proto][v9fs]") {
  auto wire = hex("15 00 00 00 | 65 | ff ff | 00 00 02 00 | 08 00 '9P2000.L'");
  for (Dialect d : {L, U, P}) {
    Fcall f = roundtrip(wire, d);
    CHECK(f.type == Rversion);
    CHECK(f.msize == 131072);
    CHECK(f.version == "9P2000.L");
  }
}

TEST_CASE("v9fs mount: Tattach afid NOFID uname nobody n_uname INVALID_UID", "[proto][v9fs]") {
  auto wire = hex(
      "1d 00 00 00 | 68 | 00 00"  // size 29, Tattach, tag 0
      "00 00 00 00"               // fid 0
      "ff ff ff ff"               // afid NOFID
      "06 00 'nobody'"            // uname
      "00 00"                     // aname ""
      "ff ff ff ff");             // n_uname INVALID_UID
  Fcall f = roundtrip(wire, L);
  CHECK(f.type == Tattach);
  CHECK(f.tag == 0);
  CHECK(f.fid == 0);
  CHECK(f.afid == kNoFid);
  CHECK(f.uname == "nobody");
  CHECK(f.aname == "");
  CHECK(f.n_uname == 0xffffffff);
}

TEST_CASE("v9fs access=user: Tattach with empty uname and the caller's uid", "[proto][v9fs]") {
  auto wire = hex("17 00 00 00 | 68 | 01 00 | 01 00 00 00 | ff ff ff ff | 00 00 | 00 00 | e8 03 00 00");
  Fcall f = roundtrip(wire, L);
  CHECK(f.tag == 1);
  CHECK(f.fid == 1);
  CHECK(f.uname.empty());
  CHECK(f.aname.empty());
  CHECK(f.n_uname == 1000);
}

TEST_CASE("v9fs mount: Rattach carries the root qid", "[proto][v9fs]") {
  auto wire = hex("14 00 00 00 | 69 | 00 00 | 80 | 00 00 00 00 | 01 00 00 00 00 00 00 00");
  Fcall f = roundtrip(wire, L);
  CHECK(f.type == Rattach);
  CHECK(f.qid == Qid{kQtDir, 0, 1});
}

TEST_CASE("v9fs Tgetattr masks: mount 0x7ff, lookup 0x17ff, stat 0x3fff", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("13 00 00 00 | 18 | 00 00 | 00 00 00 00 | ff 07 00 00 00 00 00 00"), L);
  CHECK(f.type == Tgetattr);
  CHECK(f.fid == 0);
  CHECK(f.request_mask == kGetattrBasic);
  f = roundtrip(hex("13 00 00 00 | 18 | 00 00 | 02 00 00 00 | ff 17 00 00 00 00 00 00"), L);
  CHECK(f.fid == 2);
  CHECK(f.request_mask == 0x17ff);
  f = roundtrip(hex("13 00 00 00 | 18 | 00 00 | 00 00 00 00 | ff 3f 00 00 00 00 00 00"), L);
  CHECK(f.request_mask == kGetattrAll);
}

TEST_CASE("Rgetattr of a directory round-trips every field", "[proto][v9fs]") {
  auto wire = hex(
      "a0 00 00 00 | 19 | 00 00"                           // size 160, Rgetattr, tag 0
      "ff 07 00 00 00 00 00 00"                            // valid BASIC
      "80 | 00 00 00 00 | 01 00 00 00 00 00 00 00"         // qid dir, path 1
      "6d 41 00 00"                                        // mode 040555
      "e8 03 00 00 | e9 03 00 00"                          // uid 1000 gid 1001
      "02 00 00 00 00 00 00 00"                            // nlink 2
      "00 00 00 00 00 00 00 00"                            // rdev
      "00 00 00 00 00 00 00 00"                            // size
      "00 10 00 00 00 00 00 00"                            // blksize 4096
      "00 00 00 00 00 00 00 00"                            // blocks
      "00 f1 53 65 00 00 00 00 | 15 cd 5b 07 00 00 00 00"  // atime 1700000000.123456789
      "01 f1 53 65 00 00 00 00 | 00 00 00 00 00 00 00 00"  // mtime 1700000001.0
      "02 f1 53 65 00 00 00 00 | 00 00 00 00 00 00 00 00"  // ctime 1700000002.0
      "00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00"  // btime
      "07 00 00 00 00 00 00 00"                            // gen 7
      "09 00 00 00 00 00 00 00");                          // data_version 9
  Fcall f = roundtrip(wire, L);
  CHECK(f.type == Rgetattr);
  CHECK(f.valid == kGetattrBasic);
  CHECK(f.qid == Qid{kQtDir, 0, 1});
  CHECK(f.mode == 040555);
  CHECK(f.uid == 1000);
  CHECK(f.gid == 1001);
  CHECK(f.nlink == 2);
  CHECK(f.blksize == 4096);
  CHECK(f.atime_sec == 1700000000);
  CHECK(f.atime_nsec == 123456789);
  CHECK(f.mtime_sec == 1700000001);
  CHECK(f.ctime_sec == 1700000002);
  CHECK(f.gen == 7);
  CHECK(f.data_version == 9);
}

// ---- Linux v9fs: ls ------------------------------------------------------------

TEST_CASE("v9fs ls: Twalk clone with nwname 0 and its empty Rwalk", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("11 00 00 00 | 6e | 00 00 | 00 00 00 00 | 01 00 00 00 | 00 00"), L);
  CHECK(f.type == Twalk);
  CHECK(f.fid == 0);
  CHECK(f.newfid == 1);
  CHECK(f.wnames.empty());
  Fcall r = roundtrip(hex("09 00 00 00 | 6f | 00 00 | 00 00"), L);
  CHECK(r.type == Rwalk);
  CHECK(r.wqids.empty());
}

TEST_CASE("v9fs ls: Tlopen of a directory has RDONLY|NONBLOCK|LARGEFILE|DIRECTORY", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("0f 00 00 00 | 0c | 00 00 | 01 00 00 00 | 00 88 01 00"), L);
  CHECK(f.type == Tlopen);
  CHECK(f.fid == 1);
  CHECK(f.flags == 0x18800);
  CHECK((f.flags & 3) == 0);          // P9_DOTL_RDONLY
  CHECK((f.flags & 0200000) != 0);    // P9_DOTL_DIRECTORY
  CHECK((f.flags & 0100000) != 0);    // P9_DOTL_LARGEFILE
  Fcall r = roundtrip(hex("18 00 00 00 | 0d | 00 00 | 80 00 00 00 00 01 00 00 00 00 00 00 00 | e8 ff 01 00"), L);
  CHECK(r.type == Rlopen);
  CHECK(r.qid == Qid{kQtDir, 0, 1});
  CHECK(r.iounit == 131072 - 24);
}

TEST_CASE("v9fs ls: Treaddir from offset 0, then from the last entry's cookie", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("17 00 00 00 | 28 | 00 00 | 01 00 00 00 | 00 00 00 00 00 00 00 00 | e8 ff 01 00"), L);
  CHECK(f.type == Treaddir);
  CHECK(f.fid == 1);
  CHECK(f.offset == 0);
  CHECK(f.count == 131048);
  f = roundtrip(hex("17 00 00 00 | 28 | 00 00 | 01 00 00 00 | 03 00 00 00 00 00 00 00 | e8 ff 01 00"), L);
  CHECK(f.offset == 3);
}

TEST_CASE("Rreaddir with . .. README decodes into entries", "[proto][v9fs]") {
  auto wire = hex(
      "5c 00 00 00 | 29 | 00 00 | 51 00 00 00"                                                // size 92, count 81
      "80 00 00 00 00 01 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00 | 04 | 01 00 '.'"     // 25
      "80 00 00 00 00 01 00 00 00 00 00 00 00 | 02 00 00 00 00 00 00 00 | 04 | 02 00 '..'"    // 26
      "00 00 00 00 00 02 00 00 00 00 00 00 00 | 03 00 00 00 00 00 00 00 | 08 | 06 00 'README'");  // 30
  Fcall r = roundtrip(wire, L);
  CHECK(r.type == Rreaddir);
  REQUIRE(r.data.size() == 81);
  std::vector<DirEntry> e;
  REQUIRE(parse_readdir(r.data, e));
  REQUIRE(e.size() == 3);
  CHECK(e[0].name == ".");
  CHECK(e[0].offset == 1);
  CHECK(e[0].dtype == 4);
  CHECK(e[1].name == "..");
  CHECK(e[1].offset == 2);
  CHECK(e[2].name == "README");
  CHECK(e[2].qid == Qid{kQtFile, 0, 2});
  CHECK(e[2].offset == 3);
  CHECK(e[2].dtype == 8);

  // The server-side encoder writes the same entry bytes.
  std::vector<uint8_t> buf(3, 0xa5);
  ByteWriter w(buf);
  emit_readdir_entry(w, Qid{kQtFile, 0, 2}, 3, 8, "README");
  CHECK(buf.size() == 3 + readdir_entry_len("README"));
  CHECK(std::vector<uint8_t>(buf.begin(), buf.begin() + 3) == std::vector<uint8_t>(3, 0xa5));
  CHECK(std::vector<uint8_t>(buf.begin() + 3, buf.end()) == std::vector<uint8_t>(wire.end() - 30, wire.end()));
}

TEST_CASE("an empty Rreaddir ends the listing, a torn entry is refused", "[proto][v9fs]") {
  Fcall r = roundtrip(hex("0b 00 00 00 | 29 | 00 00 | 00 00 00 00"), L);
  CHECK(r.data.empty());
  std::vector<DirEntry> e;
  CHECK(parse_readdir(r.data, e));
  CHECK(e.empty());
  // 24 bytes of a 25-byte entry.
  auto torn = hex("80 00 00 00 00 01 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00 | 04 | 01 00");
  CHECK_FALSE(parse_readdir(torn, e));
}

TEST_CASE("v9fs ls and cat: Tclunk and Rclunk", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("0b 00 00 00 | 78 | 00 00 | 01 00 00 00"), L);
  CHECK(f.type == Tclunk);
  CHECK(f.fid == 1);
  Fcall r = roundtrip(hex("07 00 00 00 | 79 | 00 00"), L);
  CHECK(r.type == Rclunk);
  CHECK(r.tag == 0);
}

// ---- Linux v9fs: cat -----------------------------------------------------------

TEST_CASE("v9fs cat: Twalk of one name and its Rwalk", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("19 00 00 00 | 6e | 00 00 | 00 00 00 00 | 02 00 00 00 | 01 00 | 06 00 'README'"), L);
  CHECK(f.fid == 0);
  CHECK(f.newfid == 2);
  REQUIRE(f.wnames.size() == 1);
  CHECK(f.wnames[0] == "README");
  Fcall r = roundtrip(hex("16 00 00 00 | 6f | 00 00 | 01 00 | 00 00 00 00 00 02 00 00 00 00 00 00 00"), L);
  REQUIRE(r.wqids.size() == 1);
  CHECK(r.wqids[0] == Qid{kQtFile, 0, 2});
}

TEST_CASE("v9fs cat: Tlopen O_RDONLY carries only LARGEFILE", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("0f 00 00 00 | 0c | 00 00 | 03 00 00 00 | 00 80 00 00"), L);
  CHECK(f.fid == 3);
  CHECK(f.flags == 0x8000);
}

TEST_CASE("v9fs cat: Tread of msize-24 bytes, Rread with data, Rread at EOF", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("17 00 00 00 | 74 | 00 00 | 03 00 00 00 | 00 00 00 00 00 00 00 00 | e8 ff 01 00"), L);
  CHECK(f.type == Tread);
  CHECK(f.fid == 3);
  CHECK(f.offset == 0);
  CHECK(f.count == 131048);
  // Keep the wire bytes alive: data is a view into them.
  auto rread = hex("11 00 00 00 | 75 | 00 00 | 06 00 00 00 | 'hello' 0a");
  Fcall r = roundtrip(rread, L);
  CHECK(r.type == Rread);
  CHECK(str(r.data) == "hello\n");
  f = roundtrip(hex("17 00 00 00 | 74 | 00 00 | 03 00 00 00 | 06 00 00 00 00 00 00 00 | e8 ff 01 00"), L);
  CHECK(f.offset == 6);
  r = roundtrip(hex("0b 00 00 00 | 75 | 00 00 | 00 00 00 00"), L);
  CHECK(r.data.empty());
}

// ---- Linux v9fs: echo text > file ------------------------------------------------

TEST_CASE("v9fs echo: Tlopen WRONLY|CREATE|LARGEFILE without TRUNC", "[proto][v9fs]") {
  Fcall f = roundtrip(hex("0f 00 00 00 | 0c | 00 00 | 05 00 00 00 | 41 80 00 00"), L);
  CHECK(f.fid == 5);
  CHECK(f.flags == 0x8041);
  CHECK((f.flags & 3) == 1);            // P9_DOTL_WRONLY
  CHECK((f.flags & 01000) == 0);        // no P9_DOTL_TRUNC from v9fs
}

TEST_CASE("other clients' Tlopen WRONLY|TRUNC|LARGEFILE keeps the TRUNC bit", "[proto]") {
  Fcall f = roundtrip(hex("0f 00 00 00 | 0c | 07 00 | 05 00 00 00 | 01 82 00 00"), L);
  CHECK(f.tag == 7);
  CHECK(f.flags == 0x8201);
}

TEST_CASE("v9fs echo: Tsetattr valid SIZE|MTIME|CTIME size 0", "[proto][v9fs]") {
  auto wire = hex(
      "43 00 00 00 | 1a | 00 00"                            // size 67, Tsetattr
      "05 00 00 00"                                         // fid 5
      "68 00 00 00"                                         // valid 0x68
      "00 00 00 00 | 00 00 00 00 | 00 00 00 00"             // mode uid gid
      "00 00 00 00 00 00 00 00"                             // size 0
      "00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00"   // atime
      "00 f1 53 65 00 00 00 00 | 15 cd 5b 07 00 00 00 00");  // mtime 1700000000.123456789
  Fcall f = roundtrip(wire, L);
  CHECK(f.type == Tsetattr);
  CHECK(f.fid == 5);
  CHECK(f.valid == (kSetattrSize | kSetattrMtime | kSetattrCtime));
  CHECK(f.valid == 0x68);
  CHECK(f.size == 0);
  CHECK(f.mtime_sec == 1700000000);
  CHECK(f.mtime_nsec == 123456789);
  Fcall r = roundtrip(hex("07 00 00 00 | 1b | 00 00"), L);
  CHECK(r.type == Rsetattr);
}

TEST_CASE("v9fs echo: Twrite of text and the Rwrite count", "[proto][v9fs]") {
  auto wire = hex("1c 00 00 00 | 76 | 00 00 | 05 00 00 00 | 00 00 00 00 00 00 00 00 | 05 00 00 00 'text' 0a");
  Fcall f = roundtrip(wire, L);  // data views `wire`
  CHECK(f.type == Twrite);
  CHECK(f.fid == 5);
  CHECK(f.offset == 0);
  CHECK(str(f.data) == "text\n");
  Fcall r = roundtrip(hex("0b 00 00 00 | 77 | 00 00 | 05 00 00 00"), L);
  CHECK(r.type == Rwrite);
  CHECK(r.count == 5);
}

TEST_CASE("Rlerror carries only the errno", "[proto]") {
  Fcall r = roundtrip(hex("0b 00 00 00 | 07 | 03 00 | 02 00 00 00"), L);
  CHECK(r.type == Rlerror);
  CHECK(r.tag == 3);
  CHECK(r.ecode == 2);
}

// ---- other .L messages -----------------------------------------------------------

TEST_CASE("Tflush names the old tag", "[proto]") {
  Fcall f = roundtrip(hex("09 00 00 00 | 6c | 05 00 | 02 00"), L);
  CHECK(f.type == Tflush);
  CHECK(f.tag == 5);
  CHECK(f.oldtag == 2);
  roundtrip(hex("07 00 00 00 | 6d | 05 00"), L);
}

TEST_CASE("Tfsync is accepted with and without the datasync field", "[proto]") {
  Fcall f = roundtrip(hex("0f 00 00 00 | 32 | 00 00 | 04 00 00 00 | 01 00 00 00"), L);
  CHECK(f.fid == 4);
  CHECK(f.datasync == 1);
  Fcall g;
  REQUIRE(parse(hex("0b 00 00 00 | 32 | 00 00 | 04 00 00 00"), L, g).ok);
  CHECK(g.fid == 4);
  CHECK(g.datasync == 0);
}

TEST_CASE("Tmkdir and Tunlinkat name the entry in a directory fid", "[proto]") {
  Fcall f = roundtrip(hex("18 00 00 00 | 48 | 01 00 | 09 00 00 00 | 03 00 'web' | ed 01 00 00 | e8 03 00 00"), L);
  CHECK(f.type == Tmkdir);
  CHECK(f.fid == 9);
  CHECK(f.name == "web");
  CHECK(f.mode == 0755);
  CHECK(f.gid == 1000);
  f = roundtrip(hex("14 00 00 00 | 4c | 01 00 | 09 00 00 00 | 03 00 'web' | 00 02 00 00"), L);
  CHECK(f.type == Tunlinkat);
  CHECK(f.flags == 0x200);  // AT_REMOVEDIR
}

TEST_CASE("Rstatfs round-trips", "[proto]") {
  auto wire = hex(
      "43 00 00 00 | 09 | 00 00"
      "97 19 02 01 | 00 10 00 00"                    // type V9FS_MAGIC, bsize 4096
      "01 00 00 00 00 00 00 00 | 02 00 00 00 00 00 00 00 | 03 00 00 00 00 00 00 00"
      "04 00 00 00 00 00 00 00 | 05 00 00 00 00 00 00 00 | 06 00 00 00 00 00 00 00"
      "ff 00 00 00");                                // namelen 255
  Fcall f = roundtrip(wire, L);
  CHECK(f.fstype == 0x01021997);
  CHECK(f.bsize == 4096);
  CHECK(f.blocks == 1);
  CHECK(f.fsid == 6);
  CHECK(f.namelen == 255);
}

// ---- 9P2000 and 9P2000.u -----------------------------------------------------------

TEST_CASE("9P2000 Rerror is a message only, 9P2000.u adds the errno", "[proto][dialect]") {
  auto plain = hex("17 00 00 00 | 6b | 01 00 | 0e 00 'file not found'");
  Fcall f = roundtrip(plain, P);
  CHECK(f.type == Rerror);
  CHECK(f.ename == "file not found");
  CHECK(f.ecode == 0);

  auto dotu = hex("1b 00 00 00 | 6b | 01 00 | 0e 00 'file not found' | 02 00 00 00");
  f = roundtrip(dotu, U);
  CHECK(f.ename == "file not found");
  CHECK(f.ecode == 2);

  // Read in the wrong dialect, each is malformed.
  CHECK(parse_fails(dotu, P) == ParseError::TrailingBytes);
  CHECK(parse_fails(plain, U) == ParseError::Truncated);
}

TEST_CASE("9P2000 Tattach has no n_uname, .u and .L require it", "[proto][dialect]") {
  auto plain = hex("19 00 00 00 | 68 | 01 00 | 00 00 00 00 | ff ff ff ff | 06 00 'glenda' | 00 00");
  Fcall f = roundtrip(plain, P);
  CHECK(f.uname == "glenda");
  CHECK(f.n_uname == kNoFid);
  CHECK(parse_fails(plain, U) == ParseError::Truncated);
  CHECK(parse_fails(plain, L) == ParseError::Truncated);

  auto dotu = hex("1d 00 00 00 | 68 | 01 00 | 00 00 00 00 | ff ff ff ff | 06 00 'glenda' | 00 00 | e8 03 00 00");
  f = roundtrip(dotu, U);
  CHECK(f.n_uname == 1000);
  CHECK(parse_fails(dotu, P) == ParseError::TrailingBytes);
}

TEST_CASE("9P2000 Rstat carries one size-prefixed stat block", "[proto][dialect]") {
  auto wire = hex(
      "50 00 00 00 | 7d | 01 00"               // size 80, Rstat, tag 1
      "47 00"                                  // n = 71
      "45 00"                                  // stat size 69
      "00 00 | 00 00 00 00"                    // type dev
      "00 | 00 00 00 00 | 07 00 00 00 00 00 00 00"  // qid file path 7
      "24 01 00 00"                            // mode 0444
      "00 f1 53 65 | 00 f1 53 65"              // atime mtime
      "06 00 00 00 00 00 00 00"                // length 6
      "07 00 'version' | 05 00 'berth' | 05 00 'berth' | 05 00 'berth'");
  Fcall f = roundtrip(wire, P);
  CHECK(f.type == Rstat);
  CHECK(f.stat.qid == Qid{kQtFile, 0, 7});
  CHECK(f.stat.mode == 0444);
  CHECK(f.stat.atime == 1700000000);
  CHECK(f.stat.length == 6);
  CHECK(f.stat.name == "version");
  CHECK(f.stat.uid == "berth");
  CHECK(f.stat.muid == "berth");
  CHECK(stat_len(f.stat, P) == 71);
  // The same bytes lack the .u fields.
  CHECK(parse_fails(wire, U) == ParseError::Truncated);
}

TEST_CASE("9P2000.u Rstat adds extension and numeric ids", "[proto][dialect]") {
  auto wire = hex(
      "5c 00 00 00 | 7d | 01 00 | 53 00 | 51 00"
      "00 00 | 00 00 00 00 | 80 | 00 00 00 00 | 01 00 00 00 00 00 00 00"
      "6d 01 00 80"                            // DMDIR|0555
      "00 f1 53 65 | 00 f1 53 65 | 00 00 00 00 00 00 00 00"
      "05 00 'debug' | 05 00 'berth' | 05 00 'berth' | 05 00 'berth'"
      "00 00 | e8 03 00 00 | e9 03 00 00 | ea 03 00 00");
  Fcall f = roundtrip(wire, U);
  CHECK(f.stat.mode == (kDmDir | 0555));
  CHECK(f.stat.name == "debug");
  CHECK(f.stat.extension.empty());
  CHECK(f.stat.n_uid == 1000);
  CHECK(f.stat.n_gid == 1001);
  CHECK(f.stat.n_muid == 1002);
  CHECK(stat_len(f.stat, U) == 83);
}

TEST_CASE("9P2000 Twstat with don't-touch values except length 0", "[proto][dialect]") {
  auto wire = hex(
      "3e 00 00 00 | 7e | 02 00 | 03 00 00 00"  // size 62, Twstat, tag 2, fid 3
      "31 00 | 2f 00"                           // n 49, stat size 47
      "ff ff | ff ff ff ff | ff ff ff ff ff ff ff ff ff ff ff ff ff"
      "ff ff ff ff | ff ff ff ff | ff ff ff ff"
      "00 00 00 00 00 00 00 00"                 // length 0
      "00 00 | 00 00 | 00 00 | 00 00");
  Fcall f = roundtrip(wire, P);
  CHECK(f.type == Twstat);
  CHECK(f.fid == 3);
  CHECK(f.stat.type == 0xffff);
  CHECK(f.stat.mode == 0xffffffff);
  CHECK(f.stat.length == 0);
  CHECK(f.stat.name.empty());
}

TEST_CASE("a stat block whose inner size disagrees with n is refused", "[proto][dialect][negative]") {
  // n says 49 but the stat's own size field claims 48 bytes follow.
  auto wire = hex(
      "3e 00 00 00 | 7e | 02 00 | 03 00 00 00 | 31 00 | 30 00"
      "ff ff | ff ff ff ff | ff ff ff ff ff ff ff ff ff ff ff ff ff"
      "ff ff ff ff | ff ff ff ff | ff ff ff ff | 00 00 00 00 00 00 00 00 | 00 00 | 00 00 | 00 00 | 00 00");
  CHECK(parse_fails(wire, P) == ParseError::Truncated);
}

TEST_CASE("9P2000 Topen and Ropen", "[proto][dialect]") {
  Fcall f = roundtrip(hex("0c 00 00 00 | 70 | 01 00 | 02 00 00 00 | 10"), P);
  CHECK(f.type == Topen);
  CHECK(f.mode8 == (kOread | kOtrunc));
  Fcall r = roundtrip(hex("18 00 00 00 | 71 | 01 00 | 00 00 00 00 00 05 00 00 00 00 00 00 00 | 00 00 00 00"), P);
  CHECK(r.qid.path == 5);
  CHECK(r.iounit == 0);
}

TEST_CASE("9P2000.u Tcreate carries an extension string", "[proto][dialect]") {
  auto dotu = hex("15 00 00 00 | 72 | 01 00 | 02 00 00 00 | 01 00 'x' | a4 01 00 00 | 01 | 00 00");
  Fcall f = roundtrip(dotu, U);
  CHECK(f.name == "x");
  CHECK(f.perm == 0644);
  CHECK(f.mode8 == kOwrite);
  CHECK(parse_fails(dotu, P) == ParseError::TrailingBytes);
}

// ---- negative cases ------------------------------------------------------------------

TEST_CASE("a body that ends early is Truncated", "[proto][negative]") {
  // Tattach missing the last byte of n_uname; the size field matches the buffer.
  auto wire = hex("1c 00 00 00 | 68 | 00 00 | 00 00 00 00 | ff ff ff ff | 06 00 'nobody' | 00 00 | ff ff ff");
  Fcall f;
  CHECK(parse_fails(wire, L, f) == ParseError::Truncated);
  CHECK(f.type == Tattach);
  CHECK(f.tag == 0);
  // Tread with no count at all.
  CHECK(parse_fails(hex("13 00 00 00 | 74 | 00 00 | 03 00 00 00 | 00 00 00 00 00 00 00 00"), L) ==
        ParseError::Truncated);
}

TEST_CASE("bytes after the last field are TrailingBytes", "[proto][negative]") {
  CHECK(parse_fails(hex("0c 00 00 00 | 78 | 00 00 | 01 00 00 00 | 00"), L) == ParseError::TrailingBytes);
  CHECK(parse_fails(hex("08 00 00 00 | 79 | 00 00 | 00"), L) == ParseError::TrailingBytes);
}

TEST_CASE("nwname 17 is TooManyElements, 16 is fine", "[proto][negative]") {
  auto walk = [](int n) {
    std::vector<uint8_t> w = hex("00 00 00 00 | 6e | 01 00 | 00 00 00 00 | 01 00 00 00");
    w.push_back(uint8_t(n));
    w.push_back(0);
    for (int i = 0; i < n; i++) {
      w.insert(w.end(), {0x01, 0x00, 'a'});
    }
    store_le32(w.data(), uint32_t(w.size()));
    return w;
  };
  auto w17 = walk(17);
  CHECK(w17.size() == 68);
  Fcall f;
  CHECK(parse_fails(w17, L, f) == ParseError::TooManyElements);
  CHECK(f.tag == 1);
  Fcall g = roundtrip(walk(16), L);
  CHECK(g.wnames.size() == 16);
  // Rwalk with 17 qids likewise.
  std::vector<uint8_t> r = hex("00 00 00 00 | 6f | 01 00 | 11 00");
  for (int i = 0; i < 17; i++) r.insert(r.end(), 13, 0);
  store_le32(r.data(), uint32_t(r.size()));
  CHECK(parse_fails(r, L) == ParseError::TooManyElements);
}

TEST_CASE("an unknown type is UnknownType with type and tag still set", "[proto][negative]") {
  Fcall f;
  CHECK(parse_fails(hex("07 00 00 00 | c8 | 34 12"), L, f) == ParseError::UnknownType);
  CHECK(f.type == 200);
  CHECK(f.tag == 0x1234);
  // Tsymlink is a real 9P2000.L message that this codec does not implement.
  Fcall s;
  CHECK(parse_fails(hex("15 00 00 00 | 10 | 09 00 | 01 00 00 00 | 01 00 'a' | 01 00 'b' | 00 00 00 00"), L, s) ==
        ParseError::UnknownType);
  CHECK(s.type == Tsymlink);
  CHECK(s.tag == 9);
}

TEST_CASE("a size field that disagrees with the buffer is BadSize", "[proto][negative]") {
  Fcall f;
  // Claims 12 bytes, has 11.
  CHECK(parse_fails(hex("0c 00 00 00 | 78 | 05 00 | 01 00 00 00"), L, f) == ParseError::BadSize);
  CHECK(f.type == Tclunk);  // the header was readable
  CHECK(f.tag == 5);
  // Claims 10 bytes, has 11.
  CHECK(parse_fails(hex("0a 00 00 00 | 78 | 05 00 | 01 00 00 00"), L) == ParseError::BadSize);
  // Size below the 7-byte header, and a buffer shorter than a header.
  CHECK(parse_fails(hex("05 00 00 00 | 78 | 05 00"), L) == ParseError::BadSize);
  CHECK(parse_fails(hex("04 00 00 00"), L) == ParseError::BadSize);
  CHECK(parse_fails({}, L) == ParseError::BadSize);
  CHECK_FALSE(FrameView::check(hex("05 00 00 00 | 78 | 05 00")));
  CHECK(FrameView::check(hex("07 00 00 00 | 79 | 05 00")));
}

TEST_CASE("a string or data length running past the end is Truncated", "[proto][negative]") {
  // Twalk: one name whose length says 255 with 3 bytes present.
  CHECK(parse_fails(hex("16 00 00 00 | 6e | 00 00 | 00 00 00 00 | 01 00 00 00 | 01 00 | ff 00 'abc'"), L) ==
        ParseError::Truncated);
  // Tversion: version length 9 with 8 bytes.
  CHECK(parse_fails(hex("15 00 00 00 | 64 | ff ff | 00 20 00 00 | 09 00 '9P2000.L'"), L) == ParseError::Truncated);
  // Twrite: count 100 with 5 bytes of data.
  CHECK(parse_fails(hex("1c 00 00 00 | 76 | 00 00 | 05 00 00 00 | 00 00 00 00 00 00 00 00 | 64 00 00 00 'text' 0a"),
                    L) == ParseError::Truncated);
  // Twrite: count 0xffffffff must not wrap anything.
  CHECK(parse_fails(hex("17 00 00 00 | 76 | 00 00 | 05 00 00 00 | 00 00 00 00 00 00 00 00 | ff ff ff ff"), L) ==
        ParseError::Truncated);
}

TEST_CASE("msg_name and parse_error_name give stable names", "[proto]") {
  CHECK(std::string(msg_name(Twalk)) == "Twalk");
  CHECK(std::string(msg_name(Rlerror)) == "Rlerror");
  CHECK(std::string(msg_name(200)) == "unknown");
  CHECK(std::string(parse_error_name(ParseError::TooManyElements)) == "too_many_elements");
  CHECK(std::string(parse_error_name(ParseError::BadSize)) == "bad_size");
}

TEST_CASE("stat entries emitted for a 9P2000 directory read parse back", "[proto][dialect]") {
  Stat s;
  s.qid = Qid{kQtFile, 0, 42};
  s.mode = 0644;
  s.length = 12;
  s.name = "leases";
  s.uid = s.gid = s.muid = "berth";
  for (Dialect d : {P, U}) {
    std::vector<uint8_t> buf(4, 0xa5);
    ByteWriter w(buf);
    emit_stat(w, s, d);
    REQUIRE(buf.size() == 4 + stat_len(s, d));
    CHECK(std::vector<uint8_t>(buf.begin(), buf.begin() + 4) == std::vector<uint8_t>(4, 0xa5));
    CHECK(load_le16(&buf[4]) == stat_len(s, d) - 2);
    ByteReader r(Bytes(buf).subspan(4));
    Stat back;
    REQUIRE(parse_stat(r, d, back));
    CHECK(r.remaining() == 0);
    CHECK(back == s);
  }
}
