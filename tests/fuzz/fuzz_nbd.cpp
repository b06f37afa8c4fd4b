// libFuzzer target: the NBD server's parsers (storage/nbd_proto.h), fed the
// way the server feeds them. The input is what a client sends: its flags,
// options, then transmission requests. The first byte picks the chunk size
// the bytes arrive in, so message boundaries land everywhere.
//
// Invariants (abort on violation):
// - feed() never consumes more than it was given, and never consumes
//   nothing from a non-empty buffer without the state changing, unless it
//   waits for more bytes (less than one whole message buffered);
// - every option reply the server writes is well formed (magic, length);
// - a request that passes check_request() lies inside the export and is no
//   longer than the maximum; a write whose payload exceeds the maximum is
//   always a disconnect.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "storage/nbd_proto.h"

using namespace berth;
using namespace berth::storage;

namespace {

void check_replies(const std::vector<uint8_t>& out, size_t from, bool transmission_tail) {
  size_t p = from;
  while (p < out.size()) {
    if (out.size() - p < 20) {
      // The NBD_OPT_EXPORT_NAME reply (size, flags, optional zeros) is the
      // only non-option-reply output, and it ends negotiation.
      if (!transmission_tail) std::abort();
      return;
    }
    uint64_t magic = (uint64_t(load_be32(&out[p])) << 32) | load_be32(&out[p + 4]);
    if (magic != nbd::kOptReplyMagic) {
      if (!transmission_tail) std::abort();
      return;
    }
    uint32_t len = load_be32(&out[p + 16]);
    if (out.size() - p - 20 < len) std::abort();
    p += 20 + len;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  size_t chunk = size_t(data[0] % 32) + 1;
  Bytes in(data + 1, size - 1);

  nbd::ExportInfo e;
  e.name = "d0";
  e.description = "fuzz";
  e.size = 1 << 20;
  e.flags = nbd::transmission_flags(data[0] & 0x80);
  nbd::ExportInfo other = e;
  other.name = "d1";
  nbd::Handshake hs({e, other});

  // Negotiation: bytes arrive `chunk` at a time into a buffer, as from a socket.
  std::vector<uint8_t> buf, out;
  size_t pos = 0;
  bool failed = false;
  while (pos < in.size() && hs.state() != nbd::Handshake::State::Transmission &&
         hs.state() != nbd::Handshake::State::Closed) {
    size_t n = std::min(chunk, in.size() - pos);
    buf.insert(buf.end(), in.begin() + long(pos), in.begin() + long(pos + n));
    pos += n;
    size_t before = out.size();
    auto r = hs.feed(buf, out);
    if (!r) {
      failed = true;
      break;
    }
    if (r.value() > buf.size()) std::abort();
    buf.erase(buf.begin(), buf.begin() + long(r.value()));
    check_replies(out, before, hs.state() == nbd::Handshake::State::Transmission);
    if (buf.size() > nbd::kMaxOptionLength + 16 + 4) std::abort();  // never buffers without bound
  }
  if (failed || hs.state() != nbd::Handshake::State::Transmission) return 0;
  const nbd::ExportInfo& x = hs.chosen();

  // Transmission: headers and payloads.
  buf.insert(buf.end(), in.begin() + long(pos), in.end());
  size_t p = 0;
  while (buf.size() - p >= nbd::kRequestHeaderSize) {
    auto r = nbd::parse_request(Bytes(buf.data() + p, nbd::kRequestHeaderSize));
    if (!r) return 0;  // bad magic: disconnect
    p += nbd::kRequestHeaderSize;
    nbd::Verdict v = nbd::check_request(*r, x);
    if (r->type == nbd::kCmdWrite && r->length > nbd::kMaxRequestLength && v.kind != nbd::Verdict::Disconnect)
      std::abort();
    if (v.kind == nbd::Verdict::Disconnect) return 0;
    if (v.kind == nbd::Verdict::Run) {
      if (r->offset > x.size || r->length > x.size - r->offset) {
        if (r->type != nbd::kCmdFlush) std::abort();
      }
      if (r->length > nbd::kMaxRequestLength && r->type != nbd::kCmdFlush) std::abort();
      if ((x.flags & nbd::kFlagReadOnly) && r->type != nbd::kCmdRead && r->type != nbd::kCmdFlush) std::abort();
    } else if (v.error == 0) {
      std::abort();
    }
    std::vector<uint8_t> reply;
    nbd::encode_simple_reply(v.error, r->handle, reply);
    if (reply.size() != nbd::kReplyHeaderSize) std::abort();
    uint32_t payload = nbd::request_payload(*r);
    if (buf.size() - p < payload) return 0;
    p += payload;
  }
  return 0;
}
