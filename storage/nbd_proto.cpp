// NBD codec. Theory of operation:
//
// The negotiation is a small state machine fed with raw bytes: the client's
// 32-bit flags, then a sequence of options, each a 16-byte header (IHAVEOPT,
// option, length) plus `length` bytes of data. Every option is answered with
// one or more option replies (proto.md "Fixed newstyle negotiation"), except
// NBD_OPT_EXPORT_NAME, which is answered with the export's size and flags and
// enters transmission directly. Input is untrusted: every length is checked
// before it is used, option data is bounded (kMaxOptionLength) and so is the
// number of options per connection, and anything a MUST forbids ends the
// connection through an Error rather than an assertion.
//
// Transmission is stateless here: the server reads fixed 28-byte headers
// and asks check_request() what to do with each.
#include "storage/nbd_proto.h"

#include <cerrno>
#include <cstring>

namespace berth::storage::nbd {

namespace {

uint64_t load_be64(const uint8_t* p) { return (uint64_t(load_be32(p)) << 32) | load_be32(p + 4); }

void put16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(uint8_t(v >> 8));
  out.push_back(uint8_t(v));
}
void put32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 3; i >= 0; i--) out.push_back(uint8_t(v >> (8 * i)));
}
void put64(std::vector<uint8_t>& out, uint64_t v) {
  put32(out, uint32_t(v >> 32));
  put32(out, uint32_t(v));
}

void error_reply(uint32_t opt, uint32_t type, std::string_view message, std::vector<uint8_t>& out) {
  encode_option_reply(opt, type, as_bytes(message), out);
}

}  // namespace

uint32_t errno_to_nbd(int err) {
  switch (err) {
    case 0: return 0;
    case EPERM:
    case EACCES:
    case EROFS: return kEperm;
    case ENOMEM: return kEnomem;
    case EINVAL: return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return kEnospc;
    case EOVERFLOW: return kEoverflow;
    case ENOTSUP: return kEnotsup;
    case ESHUTDOWN: return kEshutdown;
    default: return kEio;
  }
}

uint16_t transmission_flags(bool read_only) {
  uint16_t f = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagCanMultiConn;
  if (read_only) return f | kFlagReadOnly;
  return f | kFlagSendTrim | kFlagSendWriteZeroes;
}

void encode_greeting(std::vector<uint8_t>& out) {
  put64(out, kInitMagic);
  put64(out, kOptMagic);
  put16(out, kFlagFixedNewstyle | kFlagNoZeroes);
}

void encode_option_reply(uint32_t option, uint32_t type, Bytes data, std::vector<uint8_t>& out) {
  put64(out, kOptReplyMagic);
  put32(out, option);
  put32(out, type);
  put32(out, uint32_t(data.size()));
  out.insert(out.end(), data.begin(), data.end());
}

Handshake::Handshake(std::vector<ExportInfo> exports) : exports_(std::move(exports)) {}

const ExportInfo* Handshake::find(std::string_view name, size_t* index) const {
  if (exports_.empty()) return nullptr;
  if (name.empty()) {  // the default export (proto.md NBD_OPT_EXPORT_NAME)
    *index = 0;
    return &exports_[0];
  }
  for (size_t i = 0; i < exports_.size(); i++) {
    if (exports_[i].name == name) {
      *index = i;
      return &exports_[i];
    }
  }
  return nullptr;
}

Result<size_t> Handshake::feed(Bytes in, std::vector<uint8_t>& out) {
  size_t pos = 0;
  for (;;) {
    Bytes rest = in.subspan(pos);
    switch (state_) {
      case State::ClientFlags: {
        if (rest.size() < 4) return pos;
        uint32_t flags = load_be32(rest.data());
        pos += 4;
        // "the server MUST drop the TCP connection if the client sets an
        // unknown flag, or a flag that does not match something advertised"
        if (flags & ~(kClientFixedNewstyle | kClientNoZeroes))
          return make_error(EPROTO, "unknown client flags " + std::to_string(flags));
        no_zeroes_ = flags & kClientNoZeroes;
        state_ = State::Options;
        break;
      }
      case State::Options: {
        if (rest.size() < 16) return pos;
        if (load_be64(rest.data()) != kOptMagic) return make_error(EPROTO, "bad option magic");
        uint32_t opt = load_be32(rest.data() + 8);
        uint32_t len = load_be32(rest.data() + 12);
        if (len > kMaxOptionLength) return make_error(EPROTO, "option data too long (" + std::to_string(len) + ")");
        if (rest.size() - 16 < len) return pos;
        Bytes data = rest.subspan(16, len);
        pos += 16 + size_t(len);
        if (++options_ > kMaxOptions) return make_error(EPROTO, "too many options");
        std::string why;
        if (!option(opt, data, out, why)) return make_error(EPROTO, why);
        break;
      }
      case State::Transmission:
      case State::Closed: return pos;
    }
  }
}

bool Handshake::option(uint32_t opt, Bytes data, std::vector<uint8_t>& out, std::string& why) {
  switch (opt) {
    case kOptExportName: {
      // No error reply is possible: an unknown export MUST end the session.
      size_t index = 0;
      const ExportInfo* e = data.size() <= kMaxStringLength ? find(as_chars(data), &index) : nullptr;
      if (!e) {
        why = "NBD_OPT_EXPORT_NAME names no export";
        return false;
      }
      put64(out, e->size);
      put16(out, e->flags);
      if (!no_zeroes_) out.insert(out.end(), 124, 0);
      chosen_ = index;
      state_ = State::Transmission;
      return true;
    }
    case kOptAbort:
      // "The server MUST reply with NBD_REP_ACK", then the client drops.
      encode_option_reply(opt, kRepAck, {}, out);
      state_ = State::Closed;
      return true;
    case kOptList: {
      if (!data.empty()) {
        error_reply(opt, kRepErrInvalid, "NBD_OPT_LIST takes no data", out);
        return true;
      }
      for (auto& e : exports_) {
        std::vector<uint8_t> d;
        put32(d, uint32_t(e.name.size()));
        d.insert(d.end(), e.name.begin(), e.name.end());
        encode_option_reply(opt, kRepServer, d, out);
      }
      encode_option_reply(opt, kRepAck, {}, out);
      return true;
    }
    case kOptInfo:
    case kOptGo: return info_or_go(opt, data, out);
    case kOptStartTls: error_reply(opt, kRepErrPolicy, "TLS is not offered", out); return true;
    case kOptStructuredReply:
      // Clients "SHOULD be prepared to also handle NBD_REP_ERR_UNSUP": no
      // structured replies are sent, so reads get simple replies.
      error_reply(opt, kRepErrUnsup, "structured replies are not supported", out);
      return true;
    default: error_reply(opt, kRepErrUnsup, "unsupported option", out); return true;
  }
}

bool Handshake::info_or_go(uint32_t opt, Bytes data, std::vector<uint8_t>& out) {
  // Data: u32 name length, name, u16 count, count * u16 info types.
  if (data.size() < 6) {
    error_reply(opt, kRepErrInvalid, "option data too short", out);
    return true;
  }
  uint32_t name_len = load_be32(data.data());
  if (name_len > data.size() - 6) {
    error_reply(opt, kRepErrInvalid, "export name runs past the option", out);
    return true;
  }
  std::string_view name = as_chars(data.subspan(4, name_len));
  uint16_t n = load_be16(data.data() + 4 + name_len);
  if (data.size() != 6 + size_t(name_len) + 2 * size_t(n)) {
    error_reply(opt, kRepErrInvalid, "information request count does not match the option length", out);
    return true;
  }
  if (name.size() > kMaxStringLength) {
    error_reply(opt, kRepErrInvalid, "export name too long", out);
    return true;
  }
  size_t index = 0;
  const ExportInfo* e = find(name, &index);
  if (!e) {
    error_reply(opt, kRepErrUnknown, "no such export", out);
    return true;
  }
  bool want_name = false, want_desc = false;
  for (uint16_t i = 0; i < n; i++) {
    uint16_t t = load_be16(data.data() + 6 + name_len + 2 * size_t(i));
    want_name = want_name || t == kInfoName;
    want_desc = want_desc || t == kInfoDescription;
  }
  // NBD_INFO_EXPORT is mandatory; NAME and DESCRIPTION only when asked;
  // BLOCK_SIZE always, so the client never sends more than max_block.
  std::vector<uint8_t> d;
  put16(d, kInfoExport);
  put64(d, e->size);
  put16(d, e->flags);
  encode_option_reply(opt, kRepInfo, d, out);
  if (want_name) {
    d.clear();
    put16(d, kInfoName);
    d.insert(d.end(), e->name.begin(), e->name.end());
    encode_option_reply(opt, kRepInfo, d, out);
  }
  if (want_desc && !e->description.empty()) {
    d.clear();
    put16(d, kInfoDescription);
    d.insert(d.end(), e->description.begin(), e->description.end());
    encode_option_reply(opt, kRepInfo, d, out);
  }
  d.clear();
  put16(d, kInfoBlockSize);
  put32(d, e->min_block);
  put32(d, e->preferred_block);
  put32(d, e->max_block);
  encode_option_reply(opt, kRepInfo, d, out);
  encode_option_reply(opt, kRepAck, {}, out);
  if (opt == kOptGo) {
    chosen_ = index;
    state_ = State::Transmission;
  }
  return true;
}

Result<Request> parse_request(Bytes header) {
  if (header.size() < kRequestHeaderSize) return make_error(EPROTO, "short request header");
  const uint8_t* p = header.data();
  if (load_be32(p) != kRequestMagic) return make_error(EPROTO, "bad request magic");
  Request r;
  r.flags = load_be16(p + 4);
  r.type = load_be16(p + 6);
  r.handle = load_be64(p + 8);
  r.offset = load_be64(p + 16);
  r.length = load_be32(p + 24);
  return r;
}

void encode_request(const Request& r, std::vector<uint8_t>& out) {
  put32(out, kRequestMagic);
  put16(out, r.flags);
  put16(out, r.type);
  put64(out, r.handle);
  put64(out, r.offset);
  put32(out, r.length);
}

Verdict check_request(const Request& r, const ExportInfo& e) {
  auto fail = [](uint32_t err) { return Verdict{Verdict::Fail, err}; };
  bool in_range = r.offset <= e.size && r.length <= e.size - r.offset;
  bool ro = e.flags & kFlagReadOnly;
  uint16_t allowed = kCmdFlagFua | (r.type == kCmdWriteZeroes ? kCmdFlagNoHole : 0);
  switch (r.type) {
    case kCmdRead:
      if (r.flags & ~allowed) return fail(kEinval);
      if (r.length > e.max_block) return fail(kEinval);
      if (!in_range) return fail(kEinval);
      return {};
    case kCmdWrite:
      // The payload follows the header: one larger than we take in leaves
      // the stream unparseable, so the connection ends.
      if (r.length > kMaxRequestLength) return {Verdict::Disconnect, 0};
      if (r.flags & ~allowed) return fail(kEinval);
      if (ro) return fail(kEperm);
      if (!in_range) return fail(kEnospc);  // "SHOULD return NBD_ENOSPC ... beyond the size"
      return {};
    case kCmdDisc: return {Verdict::Disconnect, 0};
    case kCmdFlush:
      if (!(e.flags & kFlagSendFlush) || (r.flags & ~allowed)) return fail(kEinval);
      return {};
    case kCmdTrim:
      if (!(e.flags & kFlagSendTrim) || (r.flags & ~allowed)) return fail(kEinval);
      if (ro) return fail(kEperm);
      if (!in_range) return fail(kEinval);
      return {};
    case kCmdWriteZeroes:
      if (!(e.flags & kFlagSendWriteZeroes) || (r.flags & ~allowed)) return fail(kEinval);
      if (ro) return fail(kEperm);
      if (!in_range) return fail(kEnospc);
      return {};
    default: return fail(kEinval);  // CACHE, BLOCK_STATUS (needs structured replies), unknown
  }
}

void encode_simple_reply(uint32_t error, uint64_t handle, uint8_t out[kReplyHeaderSize]) {
  store_be32(out, kSimpleReplyMagic);
  store_be32(out + 4, error);
  store_be32(out + 8, uint32_t(handle >> 32));
  store_be32(out + 12, uint32_t(handle));
}

void encode_simple_reply(uint32_t error, uint64_t handle, std::vector<uint8_t>& out) {
  uint8_t b[kReplyHeaderSize];
  encode_simple_reply(error, handle, b);
  out.insert(out.end(), b, b + kReplyHeaderSize);
}

const char* command_name(uint16_t type) {
  switch (type) {
    case kCmdRead: return "read";
    case kCmdWrite: return "write";
    case kCmdDisc: return "disc";
    case kCmdFlush: return "flush";
    case kCmdTrim: return "trim";
    case kCmdCache: return "cache";
    case kCmdWriteZeroes: return "write-zeroes";
    case kCmdBlockStatus: return "block-status";
    default: return "unknown";
  }
}

const char* option_name(uint32_t opt) {
  switch (opt) {
    case kOptExportName: return "NBD_OPT_EXPORT_NAME";
    case kOptAbort: return "NBD_OPT_ABORT";
    case kOptList: return "NBD_OPT_LIST";
    case kOptStartTls: return "NBD_OPT_STARTTLS";
    case kOptInfo: return "NBD_OPT_INFO";
    case kOptGo: return "NBD_OPT_GO";
    case kOptStructuredReply: return "NBD_OPT_STRUCTURED_REPLY";
    default: return "unknown";
  }
}

}  // namespace berth::storage::nbd
