// pcap and pcapng encoding from byte fixtures (pcap-savefile(5), the pcapng
// spec), then the same bytes read back by libpcap itself as an independent
// reader. Buffers are pre-filled with 0xa5 so that bytes never written show.
#include <catch2/catch.hpp>

#include <pcap/pcap.h>

#include <cstdio>
#include <vector>

#include "pcap-ring/format.h"

using namespace berth;
using namespace berth::pcap;

namespace {

using V = std::vector<uint8_t>;

const uint8_t kData[] = {0xde, 0xad, 0xbe, 0xef};

RecordMeta meta(uint64_t ts_ns, uint32_t orig, uint32_t link = 0, Direction d = Direction::FromGuest) {
  RecordMeta m;
  m.ts_ns = ts_ns;
  m.orig_len = orig;
  m.link = link;
  m.dir = d;
  return m;
}

struct Packet {
  uint64_t ts_ns;
  uint32_t caplen, len;
  V data;
};

// Read a capture with libpcap, nanosecond timestamps.
std::vector<Packet> libpcap_read(const V& file, int* linktype = nullptr, int* snaplen = nullptr) {
  FILE* f = fmemopen(const_cast<uint8_t*>(file.data()), file.size(), "rb");
  REQUIRE(f);
  char err[PCAP_ERRBUF_SIZE] = {};
  pcap_t* p = pcap_fopen_offline_with_tstamp_precision(f, PCAP_TSTAMP_PRECISION_NANO, err);
  INFO("libpcap: " << err);
  REQUIRE(p);
  if (linktype) *linktype = pcap_datalink(p);
  if (snaplen) *snaplen = pcap_snapshot(p);
  std::vector<Packet> out;
  pcap_pkthdr* h;
  const u_char* d;
  int rc;
  while ((rc = pcap_next_ex(p, &h, &d)) == 1)
    out.push_back({uint64_t(h->ts.tv_sec) * 1000000000ull + uint64_t(h->ts.tv_usec), h->caplen, h->len,
                   V(d, d + h->caplen)});
  INFO("pcap_next_ex: " << pcap_geterr(p));
  CHECK(rc == PCAP_ERROR_BREAK);  // clean end of file, not a truncated record
  pcap_close(p);                  // closes f
  return out;
}

}  // namespace

TEST_CASE("the pcap global header is the nanosecond variant, Ethernet, little-endian", "[pcap][format]") {
  V buf(kPcapHeaderLen + 4, 0xa5);
  emit_pcap_header(buf.data(), 256);
  const V want = {0x4d, 0x3c, 0xb2, 0xa1, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00,
                  0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
                  0xa5, 0xa5, 0xa5, 0xa5};
  CHECK(buf == want);
}

TEST_CASE("a pcap record keeps seconds, nanoseconds, captured and original length", "[pcap][format]") {
  V out;
  append_pcap_record(out, meta(1700000000ull * 1000000000 + 123456789, 60), Bytes(kData, 2), Bytes(kData + 2, 2));
  const V want = {0x00, 0xf1, 0x53, 0x65,   // 1700000000
                  0x15, 0xcd, 0x5b, 0x07,   // 123456789 ns
                  0x04, 0x00, 0x00, 0x00,   // incl_len
                  0x3c, 0x00, 0x00, 0x00,   // orig_len 60
                  0xde, 0xad, 0xbe, 0xef};  // the two pieces, joined
  CHECK(out == want);
}

TEST_CASE("pcapng blocks: SHB, IDB with if_name and if_tsresol, EPB with direction flags", "[pcap][format]") {
  V shb;
  append_pcapng_shb(shb);
  const V want_shb = {0x0a, 0x0d, 0x0d, 0x0a, 44, 0, 0, 0,  // type, length
                      0x4d, 0x3c, 0x2b, 0x1a,               // byte-order magic
                      0x01, 0x00, 0x00, 0x00,               // version 1.0
                      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                      0x04, 0x00, 0x05, 0x00, 'b', 'e', 'r', 't', 'h', 0, 0, 0,  // shb_userappl
                      0x00, 0x00, 0x00, 0x00,                                    // opt_endofopt
                      44, 0, 0, 0};
  CHECK(shb == want_shb);

  V idb;
  append_pcapng_idb(idb, 1500, "tap bt0");
  const V want_idb = {0x01, 0x00, 0x00, 0x00, 44, 0, 0, 0,  // type, length
                      0x01, 0x00, 0x00, 0x00,               // LINKTYPE_ETHERNET, reserved
                      0xdc, 0x05, 0x00, 0x00,               // snaplen 1500
                      0x02, 0x00, 0x07, 0x00, 't', 'a', 'p', ' ', 'b', 't', '0', 0,  // if_name
                      0x09, 0x00, 0x01, 0x00, 9, 0, 0, 0,                           // if_tsresol: ns
                      0x00, 0x00, 0x00, 0x00, 44, 0, 0, 0};
  CHECK(idb == want_idb);

  V epb;
  append_pcapng_epb(epb, meta(0x0000000102030405ull, 60, 1, Direction::ToGuest), Bytes(kData, 3), Bytes(kData + 3, 1));
  const V want_epb = {0x06, 0x00, 0x00, 0x00, 48, 0, 0, 0,  // type, length
                      0x01, 0x00, 0x00, 0x00,               // interface 1
                      0x01, 0x00, 0x00, 0x00,               // timestamp, upper 32 bits
                      0x05, 0x04, 0x03, 0x02,               // lower 32 bits
                      0x04, 0x00, 0x00, 0x00,               // captured length
                      0x3c, 0x00, 0x00, 0x00,               // original length
                      0xde, 0xad, 0xbe, 0xef,
                      0x02, 0x00, 0x04, 0x00, 0x02, 0x00, 0x00, 0x00,  // epb_flags: outbound
                      0x00, 0x00, 0x00, 0x00, 48, 0, 0, 0};
  CHECK(epb == want_epb);
  CHECK(pcapng_epb_len(4) == 48);

  V odd;
  append_pcapng_epb(odd, meta(1, 1, 0, Direction::FromGuest), Bytes(kData, 1));
  CHECK(odd.size() == pcapng_epb_len(1));
  CHECK(odd.size() == 48);                            // 1 byte of data padded to 4
  CHECK(odd[28 + 4 + 4] == 1);                        // epb_flags: inbound
  CHECK(load_le32(odd.data() + odd.size() - 4) == 48);
}

TEST_CASE("libpcap reads our pcap files with nanosecond timestamps", "[pcap][format][libpcap]") {
  V file;
  append_pcap_header(file, 256);
  V frame(300);
  for (size_t i = 0; i < frame.size(); i++) frame[i] = uint8_t(i);
  append_pcap_record(file, meta(1700000000ull * 1000000000 + 1, 300), Bytes(frame).first(256));
  append_pcap_record(file, meta(1700000001ull * 1000000000 + 999999999, 4), Bytes(kData, 4));
  int linktype = 0, snaplen = 0;
  auto pkts = libpcap_read(file, &linktype, &snaplen);
  CHECK(linktype == DLT_EN10MB);
  CHECK(snaplen == 256);
  REQUIRE(pkts.size() == 2);
  CHECK(pkts[0].ts_ns == 1700000000ull * 1000000000 + 1);
  CHECK(pkts[0].caplen == 256);
  CHECK(pkts[0].len == 300);
  CHECK(pkts[0].data == V(frame.begin(), frame.begin() + 256));
  CHECK(pkts[1].ts_ns == 1700000001ull * 1000000000 + 999999999);
  CHECK(pkts[1].data == V(kData, kData + 4));
}

TEST_CASE("libpcap reads our pcapng files: two interfaces, ns resolution", "[pcap][format][libpcap]") {
  V file;
  append_pcapng_shb(file);
  append_pcapng_idb(file, 65535, "tap bt0@ns");
  append_pcapng_idb(file, 65535, "qemu /tmp/q.sock");
  append_pcapng_epb(file, meta(1700000000ull * 1000000000 + 42, 5, 0, Direction::FromGuest), Bytes(kData, 3));
  append_pcapng_epb(file, meta(1700000000ull * 1000000000 + 43, 4, 1, Direction::ToGuest), Bytes(kData, 4));
  int linktype = 0;
  auto pkts = libpcap_read(file, &linktype);
  CHECK(linktype == DLT_EN10MB);
  REQUIRE(pkts.size() == 2);
  CHECK(pkts[0].ts_ns == 1700000000ull * 1000000000 + 42);
  CHECK(pkts[0].caplen == 3);
  CHECK(pkts[0].len == 5);
  CHECK(pkts[0].data == V(kData, kData + 3));
  CHECK(pkts[1].ts_ns == 1700000000ull * 1000000000 + 43);
  CHECK(pkts[1].data == V(kData, kData + 4));
}
