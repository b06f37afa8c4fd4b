// The NBD protocol, server side, as a pure codec: no sockets, no threads.
// Spec: NetworkBlockDevice/nbd doc/proto.md ("fixed newstyle" negotiation,
// the INFO extension's NBD_OPT_INFO/NBD_OPT_GO, simple replies only).
//
// Handshake is a byte-fed state machine for the negotiation phase: feed it
// whatever arrived, it consumes complete messages and appends the server's
// replies. When it reaches Transmission, the export was chosen and the bytes
// it did not consume are the first requests. An Error from feed() means
// "hard disconnect" (a MUST was broken, or the client is abusive); it never
// asserts on input.
//
// In transmission, parse_request() reads a 28-byte request header (a bad
// magic is a hard disconnect) and check_request() decides, against the
// export, whether the server runs the command, answers with an NBD error, or
// disconnects (a write payload too large to take in).
//
// All integers on the wire are big-endian.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/result.h"

namespace berth::storage::nbd {

// Magic numbers (proto.md "Handshake", "Transmission").
inline constexpr uint64_t kInitMagic = 0x4e42444d41474943ull;       // "NBDMAGIC"
inline constexpr uint64_t kOptMagic = 0x49484156454f5054ull;        // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9ull;   // option replies
inline constexpr uint32_t kRequestMagic = 0x25609513u;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698u;

// Handshake flags (server) and client flags.
inline constexpr uint16_t kFlagFixedNewstyle = 1u << 0;
inline constexpr uint16_t kFlagNoZeroes = 1u << 1;
inline constexpr uint32_t kClientFixedNewstyle = 1u << 0;
inline constexpr uint32_t kClientNoZeroes = 1u << 1;

// Options.
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;

// Option reply types; errors have bit 31 set.
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepErrUnsup = 0x80000001u;
inline constexpr uint32_t kRepErrPolicy = 0x80000002u;
inline constexpr uint32_t kRepErrInvalid = 0x80000003u;
inline constexpr uint32_t kRepErrUnknown = 0x80000006u;
inline constexpr uint32_t kRepErrTooBig = 0x80000009u;

// NBD_REP_INFO types.
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// Transmission flags.
inline constexpr uint16_t kFlagHasFlags = 1u << 0;
inline constexpr uint16_t kFlagReadOnly = 1u << 1;
inline constexpr uint16_t kFlagSendFlush = 1u << 2;
inline constexpr uint16_t kFlagSendFua = 1u << 3;
inline constexpr uint16_t kFlagRotational = 1u << 4;
inline constexpr uint16_t kFlagSendTrim = 1u << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1u << 6;
inline constexpr uint16_t kFlagCanMultiConn = 1u << 8;

// Commands and command flags.
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;
inline constexpr uint16_t kCmdFlagFua = 1u << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1u << 1;

// Error values in replies (proto.md "Error values"; not the host's errno).
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;

inline constexpr size_t kGreetingSize = 18;      // NBDMAGIC, IHAVEOPT, flags
inline constexpr size_t kRequestHeaderSize = 28;
inline constexpr size_t kReplyHeaderSize = 16;
inline constexpr uint32_t kMaxRequestLength = 32u << 20;  // the largest read or write payload
inline constexpr uint32_t kMaxOptionLength = 64u << 10;   // larger option data: hard disconnect
inline constexpr size_t kMaxStringLength = 4096;          // export names (proto.md "Conventions")
inline constexpr uint32_t kMaxOptions = 1024;             // options per connection before a disconnect

// Maps a host errno to the NBD error sent in a reply.
uint32_t errno_to_nbd(int err);

// One export as the negotiation describes it.
struct ExportInfo {
  std::string name;         // also reachable as "" (the default export) when it is the first
  std::string description;  // NBD_INFO_DESCRIPTION
  uint64_t size = 0;
  uint16_t flags = kFlagHasFlags;  // transmission flags
  uint32_t min_block = 1, preferred_block = 4096, max_block = kMaxRequestLength;
};

// The usual transmission flags for a disk: flush, FUA, trim and
// write-zeroes, and multi-conn (one backend and cache behind every
// connection, so a flush on one covers writes replied on another).
uint16_t transmission_flags(bool read_only);

// The 18 bytes the server sends on accept.
void encode_greeting(std::vector<uint8_t>& out);

class Handshake {
 public:
  enum class State : uint8_t {
    ClientFlags,   // waiting for the client's 32-bit flags
    Options,       // option haggling
    Transmission,  // an export was chosen (NBD_OPT_GO or NBD_OPT_EXPORT_NAME)
    Closed,        // the client sent NBD_OPT_ABORT (and got its ACK)
  };

  // `exports` must not be empty; the first one is the default export.
  explicit Handshake(std::vector<ExportInfo> exports);

  // Consumes complete messages from the front of `in`, appending replies
  // to `out`; returns the bytes consumed (the rest waits for more input).
  // Stops consuming at Transmission or Closed. An Error means: reply with
  // what is in `out`, then hard-disconnect.
  [[nodiscard]] Result<size_t> feed(Bytes in, std::vector<uint8_t>& out);

  State state() const { return state_; }
  // Valid in Transmission.
  const ExportInfo& chosen() const { return exports_[chosen_]; }
  size_t chosen_index() const { return chosen_; }
  uint32_t options_seen() const { return options_; }

 private:
  // Returns false for "disconnect" with `why` set.
  bool option(uint32_t opt, Bytes data, std::vector<uint8_t>& out, std::string& why);
  bool info_or_go(uint32_t opt, Bytes data, std::vector<uint8_t>& out);
  const ExportInfo* find(std::string_view name, size_t* index) const;

  std::vector<ExportInfo> exports_;
  State state_ = State::ClientFlags;
  bool no_zeroes_ = false;
  size_t chosen_ = 0;
  uint32_t options_ = 0;
};

// Appends an option reply (header plus data).
void encode_option_reply(uint32_t option, uint32_t type, Bytes data, std::vector<uint8_t>& out);

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Parses a 28-byte request header (`header` must hold at least that many
// bytes). A bad magic is an Error: hard disconnect.
[[nodiscard]] Result<Request> parse_request(Bytes header);
void encode_request(const Request& r, std::vector<uint8_t>& out);  // clients and tests

// Bytes of payload that follow this request's header on the wire.
inline uint32_t request_payload(const Request& r) { return r.type == kCmdWrite ? r.length : 0; }

// What to do with a parsed request.
struct Verdict {
  enum Kind : uint8_t {
    Run,         // run the command
    Fail,        // reply with `error` (after taking in the payload, if any)
    Disconnect,  // NBD_CMD_DISC, or a payload too large to take in: close
  } kind = Run;
  uint32_t error = 0;  // NBD error for Fail
};
// Checks flags, bounds and permissions (proto.md "Request types"): reads
// and trims past the end are EINVAL, writes and write-zeroes past the end
// ENOSPC, anything that writes to a read-only export EPERM, unknown
// commands and flags EINVAL.
Verdict check_request(const Request& r, const ExportInfo& e);

// Appends a simple reply header (the read data, if any, follows it).
void encode_simple_reply(uint32_t error, uint64_t handle, std::vector<uint8_t>& out);
void encode_simple_reply(uint32_t error, uint64_t handle, uint8_t out[kReplyHeaderSize]);

// Human-readable names for logs.
const char* command_name(uint16_t type);
const char* option_name(uint32_t opt);

}  // namespace berth::storage::nbd
