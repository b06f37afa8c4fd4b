// pcap and pcapng encoders for captured packets. Pure codecs: no I/O, no
// state; the rings and the tree build files out of these pieces.
//
// pcap (libpcap's savefile, nanosecond variant; see pcap-savefile(5)):
//   global header  magic 0xa1b23c4d, version 2.4, thiszone 0, sigfigs 0,
//                  snaplen, linktype 1 (Ethernet)                    24 bytes
//   each record    ts_sec, ts_nsec, incl_len, orig_len (16 bytes), then
//                  incl_len bytes of the frame
// pcapng (draft-ietf-opsawg-pcapng, "the pcapng spec" below):
//   SHB            section header, byte-order magic 0x1A2B3C4D, version 1.0,
//                  section length -1 (unknown), shb_userappl "berth"
//   IDB            one per link (interface id = link number): linktype 1,
//                  snaplen, if_name, if_tsresol 9 (nanoseconds)
//   EPB            one per record: interface id, 64-bit timestamp in ns,
//                  captured and original length, the frame padded to 32
//                  bits, and epb_flags whose direction bits say inbound
//                  (guest -> net: what the translator received) or outbound
//                  (net -> guest: what it sent).
//
// Everything is written little-endian; readers detect the byte order from
// the magic numbers. Encoders append to a vector and cannot fail; a frame
// may be given in two pieces (a ring that wraps).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "common/bytes.h"

namespace berth::pcap {

constexpr uint32_t kPcapMagicNs = 0xa1b23c4d;
constexpr uint32_t kLinktypeEthernet = 1;
constexpr size_t kPcapHeaderLen = 24;
constexpr size_t kPcapRecordHeaderLen = 16;
constexpr uint32_t kMaxSnaplen = 262144;  // libpcap's MAXIMUM_SNAPLEN

// Which way a frame went through the link.
enum class Direction : uint8_t {
  FromGuest = 1,  // guest -> net: the link delivered it to the translator (pcapng "inbound")
  ToGuest = 2,    // net -> guest: the translator sent it to the link (pcapng "outbound")
};
const char* direction_name(Direction d);

// What a ring keeps about one packet besides its captured bytes.
struct RecordMeta {
  uint64_t ts_ns = 0;     // wall time, nanoseconds since the Unix epoch
  uint32_t orig_len = 0;  // the frame's length on the link
  uint32_t link = 0;      // link number (pcapng interface id)
  Direction dir = Direction::FromGuest;
};

// pcap: the 24-byte global header, and one record (16 + a.size() + b.size()).
void append_pcap_header(std::vector<uint8_t>& out, uint32_t snaplen);
void append_pcap_record(std::vector<uint8_t>& out, const RecordMeta& m, Bytes a, Bytes b = {});
// The same into fixed buffers of exactly kPcapHeaderLen / kPcapRecordHeaderLen bytes.
void emit_pcap_header(uint8_t* out, uint32_t snaplen);
void emit_pcap_record_header(uint8_t* out, const RecordMeta& m, uint32_t caplen);

// pcapng blocks.
void append_pcapng_shb(std::vector<uint8_t>& out);
// if_name is cut to 255 bytes.
void append_pcapng_idb(std::vector<uint8_t>& out, uint32_t snaplen, std::string_view if_name);
void append_pcapng_epb(std::vector<uint8_t>& out, const RecordMeta& m, Bytes a, Bytes b = {});
// Sizes, so callers can reserve.
size_t pcapng_epb_len(size_t caplen);

}  // namespace berth::pcap
