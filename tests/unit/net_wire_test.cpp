// Unit tests for the packet codecs in net/wire/.
//
// Fixtures are whole Ethernet frames, assembled byte by byte as Linux sends
// them, with checksums computed independently of this code (and checked with
// `tcpdump -vvv`, which reported every checksum correct). Round trips emit
// into buffers pre-filled with 0xa5 (STYLE.md §12), so a byte emit forgot to
// write, or one it wrote past buffer_len(), shows up.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "net/wire/addr.h"
#include "net/wire/arp.h"
#include "net/wire/checksum.h"
#include "net/wire/ethernet.h"
#include "net/wire/icmpv4.h"
#include "net/wire/ip.h"
#include "net/wire/ipv4.h"
#include "net/wire/ipv6.h"
#include "net/wire/tcp.h"
#include "net/wire/udp.h"

using namespace berth;
using namespace berth::net::wire;

namespace Catch {
template <>
struct StringMaker<WireError> {
  static std::string convert(WireError e) { return wire_error_name(e); }
};
}  // namespace Catch

namespace {

// ARP who-has 192.168.65.1 tell 192.168.65.3, as a Linux guest sends it (padded to 60 bytes).
const uint8_t kArpRequest[] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06, 0x00, 0x01,
    0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0xc0, 0xa8, 0x41, 0x03,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x41, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

// ping -c1 192.168.65.2 from the guest: echo request id 0x0b1f seq 1, 56 bytes of data.
const uint8_t kIcmpEcho[] = {
    0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x54, 0x5a, 0x3c, 0x40, 0x00, 0x40, 0x01, 0xdd, 0x16, 0xc0, 0xa8, 0x41, 0x03, 0xc0, 0xa8,
    0x41, 0x02, 0x08, 0x00, 0x2d, 0xca, 0x0b, 0x1f, 0x00, 0x01, 0xb3, 0xa2, 0xf1, 0x65, 0x00, 0x00,
    0x00, 0x00, 0x4f, 0x3a, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
    0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
    0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35,
    0x36, 0x37,
};

// Linux SYN 192.168.65.3:51234 -> 192.168.65.2:80: MSS 1460, SACK-permitted, TS, NOP, WS 7.
const uint8_t kLinuxSyn[] = {
    0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x1b, 0x20, 0xc0, 0xa8, 0x41, 0x03, 0xc0, 0xa8,
    0x41, 0x02, 0xc8, 0x22, 0x00, 0x50, 0x6a, 0x3b, 0x9c, 0x01, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02,
    0xfa, 0xf0, 0x2d, 0x4f, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x2c,
    0x4d, 0x8e, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
};

// The same flow's first data segment: PSH|ACK, NOP NOP TS, an HTTP request.
const uint8_t kTcpData[] = {
    0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x46, 0x1c, 0x47, 0x40, 0x00, 0x40, 0x06, 0x1b, 0x15, 0xc0, 0xa8, 0x41, 0x03, 0xc0, 0xa8,
    0x41, 0x02, 0xc8, 0x22, 0x00, 0x50, 0x6a, 0x3b, 0x9c, 0x02, 0x11, 0xd8, 0x0a, 0x2f, 0x80, 0x18,
    0x01, 0xf6, 0x40, 0x13, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x00, 0x2c, 0x4d, 0xa1, 0x7b, 0x1e,
    0x9f, 0x00, 0x47, 0x45, 0x54, 0x20, 0x2f, 0x20, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e, 0x30,
    0x0d, 0x0a, 0x0d, 0x0a,
};

// A duplicate ACK with NOP NOP TS NOP NOP SACK (one block), as Linux sends after a loss.
const uint8_t kTcpSackAck[] = {
    0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x40, 0x1c, 0x48, 0x40, 0x00, 0x40, 0x06, 0x1b, 0x1a, 0xc0, 0xa8, 0x41, 0x03, 0xc0, 0xa8,
    0x41, 0x02, 0xc8, 0x22, 0x00, 0x50, 0x6a, 0x3b, 0x9c, 0x14, 0x11, 0xd8, 0x0a, 0x2f, 0xb0, 0x10,
    0x01, 0xf5, 0x9d, 0xdd, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x00, 0x2c, 0x4e, 0x10, 0x7b, 0x1e,
    0xa0, 0x00, 0x01, 0x01, 0x05, 0x0a, 0x11, 0xd8, 0x10, 0x00, 0x11, 0xd8, 0x15, 0xa8,
};

// DNS query "example.com A" from 192.168.65.3:40000 to the gateway's resolver.
const uint8_t kDnsQuery[] = {
    0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x39, 0x8f, 0x21, 0x00, 0x00, 0x40, 0x11, 0xe8, 0x3d, 0xc0, 0xa8, 0x41, 0x03, 0xc0, 0xa8,
    0x41, 0x01, 0x9c, 0x40, 0x00, 0x35, 0x00, 0x25, 0x7e, 0x37, 0x12, 0x34, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63,
    0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
};

// ICMP port unreachable from the gateway quoting the whole DNS query datagram (tos 0xc0, as Linux sends).
const uint8_t kPortUnreachable[] = {
    0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0x08, 0x00, 0x45, 0xc0,
    0x00, 0x55, 0x00, 0x00, 0x00, 0x00, 0x40, 0x01, 0x76, 0x93, 0xc0, 0xa8, 0x41, 0x01, 0xc0, 0xa8,
    0x41, 0x03, 0x03, 0x03, 0x00, 0x89, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x39, 0x8f, 0x21,
    0x00, 0x00, 0x40, 0x11, 0xe8, 0x3d, 0xc0, 0xa8, 0x41, 0x03, 0xc0, 0xa8, 0x41, 0x01, 0x9c, 0x40,
    0x00, 0x35, 0x00, 0x25, 0x7e, 0x37, 0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d, 0x00, 0x00,
    0x01, 0x00, 0x01,
};

// UDP "hi" 192.168.65.3:5000 -> 192.168.65.2:6000, Ethernet-padded to 60 bytes.
const uint8_t kUdpPadded[] = {
    0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00, 0x45, 0x00,
    0x00, 0x1e, 0x42, 0x42, 0x40, 0x00, 0x40, 0x11, 0xf5, 0x36, 0xc0, 0xa8, 0x41, 0x03, 0xc0, 0xa8,
    0x41, 0x02, 0x13, 0x88, 0x17, 0x70, 0x00, 0x0a, 0x69, 0x22, 0x68, 0x69, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

// ICMPv6 echo request fe80::5054:ff:fe12:3456 -> fe80::1, flow label 0x8a1f3.
const uint8_t kIcmpv6Echo[] = {
    0x33, 0x33, 0x00, 0x00, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x86, 0xdd, 0x60, 0x08,
    0xa1, 0xf3, 0x00, 0x10, 0x3a, 0x40, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x50, 0x54,
    0x00, 0xff, 0xfe, 0x12, 0x34, 0x56, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x80, 0x00, 0x3f, 0x88, 0x0c, 0x2d, 0x00, 0x03, 0x62, 0x65,
    0x72, 0x74, 0x68, 0x2d, 0x76, 0x36,
};

// UDP over IPv6 fd00::3:33000 -> fd00::1:7 (echo), traffic class 0xb8, hop limit 255.
const uint8_t kUdp6[] = {
    0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x86, 0xdd, 0x6b, 0x80,
    0x00, 0x00, 0x00, 0x0d, 0x11, 0xff, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x80, 0xe8, 0x00, 0x07, 0x00, 0x0d, 0x70, 0x0e, 0x70, 0x69,
    0x6e, 0x67, 0x36,
};

// IGMPv2 report for 224.0.0.251 with the Router Alert option (IHL 6), as Linux sends it.
const uint8_t kIgmpReport[] = {
    0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00, 0x46, 0xc0,
    0x00, 0x20, 0x00, 0x00, 0x40, 0x00, 0x01, 0x02, 0x01, 0x71, 0xc0, 0xa8, 0x41, 0x03, 0xe0, 0x00,
    0x00, 0xfb, 0x94, 0x04, 0x00, 0x00, 0x16, 0x00, 0x09, 0x04, 0xe0, 0x00, 0x00, 0xfb,
};


template <size_t N>
Bytes B(const uint8_t (&a)[N]) { return Bytes(a, N); }
std::vector<uint8_t> copy_of(Bytes b) { return {b.begin(), b.end()}; }

constexpr uint8_t kFill = 0xa5;
constexpr size_t kSlack = 16;

// A buffer for emit(): n bytes plus some slack, all 0xa5.
std::vector<uint8_t> fresh(size_t n) { return std::vector<uint8_t>(n + kSlack, kFill); }

// emit() wrote exactly `expected` and nothing after it.
void check_emitted(const std::vector<uint8_t>& out, Bytes expected) {
  REQUIRE(out.size() == expected.size() + kSlack);
  CHECK(std::vector<uint8_t>(out.begin(), out.begin() + long(expected.size())) == copy_of(expected));
  CHECK(std::all_of(out.begin() + long(expected.size()), out.end(), [](uint8_t b) { return b == kFill; }));
}

template <class T>
WireError error_of(const Parsed<T>& p) {
  REQUIRE_FALSE(p.ok());
  return p.error();
}

Ipv4Packet ipv4_of(Bytes frame) {
  auto eth = EthernetFrame::check(frame);
  REQUIRE(eth.ok());
  REQUIRE(eth->ethertype() == EtherType::Ipv4);
  auto ip = Ipv4Packet::check(eth->payload());
  REQUIRE(ip.ok());
  return *ip;
}

Ipv6Packet ipv6_of(Bytes frame) {
  auto eth = EthernetFrame::check(frame);
  REQUIRE(eth.ok());
  REQUIRE(eth->ethertype() == EtherType::Ipv6);
  auto ip = Ipv6Packet::check(eth->payload());
  REQUIRE(ip.ok());
  return *ip;
}

PseudoHeader pseudo_of(const Ipv4Packet& ip) { return PseudoHeader::v4(ip.src(), ip.dst()); }

// RFC 1071 §4.1 word by word, folding as it goes: the reference for the wide
// implementation.
uint16_t reference_sum(Bytes b) {
  uint32_t sum = 0;
  size_t i = 0;
  for (; i + 1 < b.size(); i += 2) {
    sum += uint32_t(b[i] << 8 | b[i + 1]);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  }
  if (i < b.size()) {
    sum += uint32_t(b[i] << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  }
  return uint16_t(sum);
}

// A TCP segment (20-byte header + options, no payload) for option tests;
// checksums are ignored by the caller.
std::vector<uint8_t> tcp_with_options(std::vector<uint8_t> options) {
  REQUIRE(options.size() % 4 == 0);
  std::vector<uint8_t> s(20 + options.size(), 0);
  store_be16(&s[0], 1234);
  store_be16(&s[2], 80);
  s[12] = uint8_t((20 + options.size()) / 4 << 4);
  s[13] = uint8_t(kTcpSyn);
  std::copy(options.begin(), options.end(), s.begin() + 20);
  return s;
}

const Ipv4Addr kGuest(192, 168, 65, 3), kGateway(192, 168, 65, 1), kHostAlias(192, 168, 65, 2);
const MacAddr kGuestMac{{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};

}  // namespace

// ---------------------------------------------------------------- checksum

TEST_CASE("checksum: the RFC 1071 §3 example sums to 0xddf2") {
  const uint8_t data[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
  CHECK(ones_sum(B(data)) == 0xddf2);
  CHECK(internet_checksum(B(data)) == 0x220d);
}

TEST_CASE("checksum: an odd final byte is summed as the high byte of a zero-padded word") {
  const uint8_t odd[] = {0x12, 0x34, 0xab};
  CHECK(ones_sum(B(odd)) == 0x1234 + 0xab00);
  const uint8_t one[] = {0x01};
  CHECK(ones_sum(B(one)) == 0x0100);
  CHECK(internet_checksum(B(one)) == 0xfeff);
}

TEST_CASE("checksum: zero data gives checksum 0xffff, data summing to 0xffff gives 0x0000") {
  CHECK(ones_sum(Bytes()) == 0);
  CHECK(internet_checksum(Bytes()) == 0xffff);
  const uint8_t zeros[6] = {};
  CHECK(internet_checksum(B(zeros)) == 0xffff);
  const uint8_t ones[] = {0xff, 0xff};
  CHECK(ones_sum(B(ones)) == 0xffff);
  CHECK(internet_checksum(B(ones)) == 0x0000);
  // 0x8000 + 0x7fff = 0xffff: negative zero, not folded to +0.
  const uint8_t halves[] = {0x80, 0x00, 0x7f, 0xff};
  CHECK(ones_sum(B(halves)) == 0xffff);
  CHECK(internet_checksum(B(halves)) == 0x0000);
}

TEST_CASE("checksum: end-around carries are folded back in") {
  const uint8_t carry[] = {0xff, 0xff, 0x00, 0x01};  // 0xffff + 1 = 0x1_0000 -> 0x0001
  CHECK(ones_sum(B(carry)) == 0x0001);
  CHECK(internet_checksum(B(carry)) == 0xfffe);
  const uint8_t two[] = {0xff, 0xfe, 0x00, 0x03};  // 0x1_0001 -> 0x0002
  CHECK(ones_sum(B(two)) == 0x0002);
  // 64 KiB of 0xff: every word carries; the sum stays 0xffff.
  std::vector<uint8_t> all_ff(65536, 0xff);
  CHECK(ones_sum(all_ff) == 0xffff);
  // 0xfffe repeated: n words sum to n * 0xfffe, i.e. 0xfffe - (n-1) mod 0xffff.
  std::vector<uint8_t> fe(2 * 1000);
  for (size_t i = 0; i < fe.size(); i += 2) { fe[i] = 0xff; fe[i + 1] = 0xfe; }
  CHECK(ones_sum(fe) == reference_sum(fe));
  CHECK(ones_sum(Bytes(fe).first(2)) == 0xfffe);
}

TEST_CASE("checksum: the wide sum agrees with the word-by-word RFC 1071 sum at every length and alignment") {
  std::mt19937 rng(1071);
  std::vector<uint8_t> buf(300 + 8);
  for (int round = 0; round < 4; round++) {
    for (auto& b : buf) b = uint8_t(round == 3 ? 0xf0 | (rng() & 0x0f) : rng());  // last round: carry-heavy
    for (size_t off = 0; off < 8; off++)
      for (size_t len = 0; len + off <= buf.size(); len++) {
        Bytes piece(buf.data() + off, len);
        INFO("round " << round << " offset " << off << " length " << len);
        REQUIRE(ones_sum(piece) == reference_sum(piece));
      }
  }
}

TEST_CASE("checksum: sums chain across pieces of even length") {
  std::vector<uint8_t> data(101);
  std::mt19937 rng(7);
  for (auto& b : data) b = uint8_t(rng());
  Bytes all(data);
  for (size_t cut = 0; cut <= data.size(); cut += 2)
    CHECK(ones_sum(all.subspan(cut), ones_sum(all.first(cut))) == ones_sum(all));
}

TEST_CASE("checksum: RFC 1624 eqn. 3 update gives 0x0000 where eqn. 2 gave 0xffff (RFC 1624 §4)") {
  CHECK(checksum_update16(0xdd2f, 0x5555, 0x3285) == 0x0000);
}

TEST_CASE("checksum: incremental updates match recomputing the whole checksum") {
  std::mt19937 rng(1624);
  for (int i = 0; i < 2000; i++) {
    uint8_t data[20];
    for (auto& b : data) b = uint8_t(rng());
    if (i % 4 == 0) std::memset(data, 0xff, 12);  // carry-heavy
    store_be16(&data[10], 0);
    uint16_t before = internet_checksum(B(data));
    size_t word = 2 * (rng() % 5);  // words 0..4, never the checksum word
    uint16_t old16 = load_be16(&data[word]);
    uint16_t new16 = uint16_t(i % 7 == 0 ? 0 : rng());
    store_be16(&data[word], new16);
    INFO("round " << i);
    REQUIRE(checksum_update16(before, old16, new16) == internet_checksum(B(data)));
    uint16_t mid = internet_checksum(B(data));
    uint32_t old32 = load_be32(&data[12]);
    uint32_t new32 = uint32_t(rng());
    store_be32(&data[12], new32);
    REQUIRE(checksum_update32(mid, old32, new32) == internet_checksum(B(data)));
  }
}

TEST_CASE("checksum: decrementing the TTL updates the IPv4 header checksum incrementally") {
  auto frame = copy_of(B(kIcmpEcho));
  uint8_t* h = &frame[14];
  uint16_t old_word = load_be16(&h[8]);  // ttl, protocol
  h[8]--;
  store_be16(&h[10], checksum_update16(load_be16(&h[10]), old_word, load_be16(&h[8])));
  auto ip = ipv4_of(frame);
  CHECK(ip.ttl() == 63);
  CHECK(ip.verify_checksum());
}

TEST_CASE("checksum: rewriting the destination address (NAT) updates the TCP checksum incrementally") {
  auto frame = copy_of(B(kLinuxSyn));
  uint8_t* h = &frame[14];
  uint8_t* t = &frame[34];
  Ipv4Addr loopback(127, 0, 0, 1);
  uint32_t old_dst = load_be32(&h[16]);
  store_be32(&h[16], loopback.v);
  store_be16(&h[10], checksum_update32(load_be16(&h[10]), old_dst, loopback.v));
  store_be16(&t[16], checksum_update32(load_be16(&t[16]), old_dst, loopback.v));
  auto ip = ipv4_of(frame);
  CHECK(ip.verify_checksum());
  CHECK(ip.dst() == loopback);
  auto tcp = TcpPacket::check(ip.payload());
  REQUIRE(tcp.ok());
  CHECK(tcp->verify_checksum(PseudoHeader::v4(kGuest, loopback)));
  CHECK_FALSE(tcp->verify_checksum(PseudoHeader::v4(kGuest, kHostAlias)));
}

TEST_CASE("checksum: the IPv4 pseudo-header sums addresses, protocol and length") {
  // 192.168.65.3 -> 192.168.65.2, TCP, 40 bytes, summed by hand.
  uint32_t manual = 0xc0a8 + 0x4103 + 0xc0a8 + 0x4102 + 6 + 40;
  while (manual >> 16) manual = (manual & 0xffff) + (manual >> 16);
  CHECK(PseudoHeader::v4(kGuest, kHostAlias).sum(IpProtocol::Tcp, 40) == manual);
  CHECK_FALSE(PseudoHeader::v4(kGuest, kHostAlias).is_v6());
}

// ---------------------------------------------------------------- addresses

TEST_CASE("MacAddr formats lower-case colon hex and parses ':' or '-' forms") {
  CHECK(kGuestMac.to_string() == "52:54:00:12:34:56");
  CHECK(MacAddr::parse("52:54:00:12:34:56") == kGuestMac);
  CHECK(MacAddr::parse("52-54-00-12-34-56") == kGuestMac);
  CHECK(MacAddr::parse("FF:ff:FF:ff:FF:ff") == MacAddr::broadcast());
  for (const char* bad : {"", "52:54:00:12:34", "52:54:00:12:34:5g", "52:54-00:12:34:56", "52:54:00:12:34:56:",
                          "5254.0012.3456", "52:54:00:12:34:567"})
    CHECK_FALSE(MacAddr::parse(bad).has_value());
}

TEST_CASE("MacAddr classifies broadcast, multicast and locally administered addresses") {
  CHECK(MacAddr::broadcast().is_broadcast());
  CHECK(MacAddr::broadcast().is_multicast());
  CHECK(MacAddr{{0x01, 0x00, 0x5e, 0, 0, 0xfb}}.is_multicast());
  CHECK(kGuestMac.is_unicast());
  CHECK(kGuestMac.is_local());  // QEMU's 52:54:00 prefix is locally administered
  CHECK_FALSE(MacAddr{{0x00, 0x1b, 0x21, 0x0a, 0x0b, 0x0c}}.is_local());  // an Intel OUI
  CHECK(MacAddr{{0x00, 0x1b, 0x21, 0x0a, 0x0b, 0x0c}}.is_unicast());
  CHECK(MacAddr{}.is_zero());
}

TEST_CASE("Ipv4Addr parses only strict dotted quads") {
  CHECK(Ipv4Addr::parse("192.168.65.1") == kGateway);
  CHECK(Ipv4Addr::parse("0.0.0.0") == Ipv4Addr::unspecified());
  CHECK(Ipv4Addr::parse("255.255.255.255") == Ipv4Addr::broadcast());
  CHECK(kGateway.to_string() == "192.168.65.1");
  CHECK(Ipv4Addr(10, 0, 0, 255).to_string() == "10.0.0.255");
  for (const char* bad : {"", "1.2.3", "1.2.3.4.", ".1.2.3.4", "1..2.3", "256.1.1.1", "01.2.3.4", "1.2.3.04",
                          " 1.2.3.4", "1.2.3.4\n", "1.2.3.4/24", "1.2.3.-4", "1.2.3.4444", "0x1.2.3.4"})
    CHECK_FALSE(Ipv4Addr::parse(bad).has_value());
}

TEST_CASE("Ipv4Addr classifies special ranges") {
  CHECK(Ipv4Addr(127, 0, 0, 1).is_loopback());
  CHECK(Ipv4Addr(224, 0, 0, 251).is_multicast());
  CHECK(Ipv4Addr(239, 255, 255, 250).is_multicast());
  CHECK_FALSE(Ipv4Addr(240, 0, 0, 1).is_multicast());
  CHECK(Ipv4Addr(169, 254, 1, 1).is_link_local());
  CHECK(kGuest.is_unicast());
  CHECK_FALSE(Ipv4Addr::broadcast().is_unicast());
}

TEST_CASE("Ipv4Cidr computes network, netmask and broadcast, and tests membership") {
  auto c = Ipv4Cidr::parse("192.168.65.1/24");
  REQUIRE(c.has_value());
  CHECK(c->addr == kGateway);
  CHECK(c->netmask() == Ipv4Addr(255, 255, 255, 0));
  CHECK(c->network() == Ipv4Addr(192, 168, 65, 0));
  CHECK(c->broadcast() == Ipv4Addr(192, 168, 65, 255));
  CHECK(c->size() == 256);
  CHECK(c->contains(kGuest));
  CHECK(c->contains(Ipv4Addr(192, 168, 65, 255)));
  CHECK_FALSE(c->contains(Ipv4Addr(192, 168, 66, 1)));
  CHECK(c->to_string() == "192.168.65.1/24");

  Ipv4Cidr all{Ipv4Addr(10, 1, 2, 3), 0};
  CHECK(all.netmask() == Ipv4Addr(0u));
  CHECK(all.contains(Ipv4Addr(8, 8, 8, 8)));
  CHECK(all.size() == (uint64_t(1) << 32));
  Ipv4Cidr host{kGuest, 32};
  CHECK(host.contains(kGuest));
  CHECK_FALSE(host.contains(kGateway));
  CHECK(host.broadcast() == kGuest);
  Ipv4Cidr odd{Ipv4Addr(10, 0, 0, 77), 27};
  CHECK(odd.network() == Ipv4Addr(10, 0, 0, 64));
  CHECK(odd.broadcast() == Ipv4Addr(10, 0, 0, 95));

  for (const char* bad : {"192.168.65.0", "192.168.65.0/", "192.168.65.0/33", "192.168.65.0/024", "/24",
                          "192.168.65.0/24 ", "192.168.65/24"})
    CHECK_FALSE(Ipv4Cidr::parse(bad).has_value());
}

TEST_CASE("Ipv6Addr formats per RFC 5952 and parses RFC 4291 text") {
  auto a = Ipv6Addr::parse("fe80:0:0:0:5054:00ff:fe12:3456");
  REQUIRE(a.has_value());
  CHECK(a->to_string() == "fe80::5054:ff:fe12:3456");
  CHECK(a->is_link_local());
  CHECK(Ipv6Addr::parse("2001:db8:0:1:1:1:1:1")->to_string() == "2001:db8:0:1:1:1:1:1");  // one zero group stays
  CHECK(Ipv6Addr::parse("::1")->is_loopback());
  CHECK(Ipv6Addr::parse("::")->is_unspecified());
  CHECK(Ipv6Addr::parse("ff02::1")->is_multicast());
  Ipv6Addr mapped = Ipv6Addr::v4_mapped(kGuest);
  CHECK(mapped.to_string() == "::ffff:192.168.65.3");
  CHECK(mapped.to_v4() == kGuest);
  CHECK_FALSE(a->to_v4().has_value());
  for (const char* bad : {"", ":::", "fe80::1%eth0", "[::1]", "1:2:3:4:5:6:7:8:9", "g::1"})
    CHECK_FALSE(Ipv6Addr::parse(bad).has_value());
  CHECK_FALSE(Ipv6Addr::parse(std::string_view("::1\0x", 5)).has_value());
}

// ---------------------------------------------------------------- ethernet

TEST_CASE("ethernet: a broadcast ARP frame's header parses and re-emits byte for byte") {
  auto f = EthernetFrame::check(B(kArpRequest));
  REQUIRE(f.ok());
  CHECK(f->dst().is_broadcast());
  CHECK(f->src() == kGuestMac);
  CHECK(f->ethertype() == EtherType::Arp);
  CHECK(f->payload().size() == 60 - 14);
  auto r = EthernetRepr::parse(*f);
  REQUIRE(r.ok());
  CHECK(r->buffer_len() == 14);
  auto out = fresh(r->buffer_len());
  r->emit(out);
  check_emitted(out, B(kArpRequest).first(14));
}

TEST_CASE("ethernet: a frame shorter than 14 bytes is truncated") {
  CHECK(error_of(EthernetFrame::check(B(kArpRequest).first(13))) == WireError::Truncated);
  CHECK(EthernetFrame::check(B(kArpRequest).first(14))->payload().empty());
}

TEST_CASE("ethernet: 802.1Q and 802.1ad tagged frames are recognised and refused as vlan_tagged") {
  // VLAN 100 carrying the ARP request: the tag sits where the type was.
  std::vector<uint8_t> tagged(B(kArpRequest).begin(), B(kArpRequest).begin() + 12);
  for (uint8_t b : {0x81, 0x00, 0x00, 0x64}) tagged.push_back(b);
  tagged.insert(tagged.end(), B(kArpRequest).begin() + 12, B(kArpRequest).end());
  auto f = EthernetFrame::check(tagged);
  REQUIRE(f.ok());
  CHECK(f->is_vlan_tagged());
  CHECK(error_of(EthernetRepr::parse(*f)) == WireError::VlanTagged);
  tagged[12] = 0x88;
  tagged[13] = 0xa8;
  CHECK(EthernetFrame::check(tagged)->is_vlan_tagged());
  CHECK(error_of(EthernetRepr::parse(*EthernetFrame::check(tagged))) == WireError::VlanTagged);
  CHECK_FALSE(EthernetFrame::check(B(kArpRequest))->is_vlan_tagged());
}

TEST_CASE("ethernet: an 802.3 length field instead of a type is unsupported") {
  auto frame = copy_of(B(kArpRequest));
  store_be16(&frame[12], 46);  // LLC frame: a length
  CHECK(error_of(EthernetRepr::parse(*EthernetFrame::check(frame))) == WireError::Unsupported);
  store_be16(&frame[12], 0x0600);
  CHECK(EthernetRepr::parse(*EthernetFrame::check(frame)).ok());
}

// ---------------------------------------------------------------- ARP

TEST_CASE("arp: a Linux who-has request parses and re-emits byte for byte, padding ignored") {
  Bytes payload = EthernetFrame::check(B(kArpRequest))->payload();
  auto p = ArpPacket::check(payload);
  REQUIRE(p.ok());
  CHECK(p->len() == 28);
  auto r = ArpRepr::parse(*p);
  REQUIRE(r.ok());
  CHECK(r->op == ArpOperation::Request);
  CHECK(r->sender_mac == kGuestMac);
  CHECK(r->sender_ip == kGuest);
  CHECK(r->target_mac.is_zero());
  CHECK(r->target_ip == kGateway);
  auto out = fresh(r->buffer_len());
  r->emit(out);
  check_emitted(out, payload.first(28));
}

TEST_CASE("arp: a reply to the request emits the expected bytes") {
  MacAddr gw{{0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee}};
  ArpRepr reply{ArpOperation::Reply, gw, kGateway, kGuestMac, kGuest};
  const uint8_t expected[] = {0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
                              0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 0xc0, 0xa8, 0x41, 0x01,
                              0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0xc0, 0xa8, 0x41, 0x03};
  auto out = fresh(reply.buffer_len());
  reply.emit(out);
  check_emitted(out, B(expected));
  CHECK(*ArpRepr::parse(*ArpPacket::check(B(expected))) == reply);
}

TEST_CASE("arp: truncated packets and other hardware, protocols or operations are refused") {
  Bytes payload = EthernetFrame::check(B(kArpRequest))->payload();
  CHECK(error_of(ArpPacket::check(payload.first(7))) == WireError::Truncated);
  CHECK(error_of(ArpPacket::check(payload.first(27))) == WireError::Truncated);
  CHECK(ArpPacket::check(payload.first(28)).ok());

  auto p = copy_of(payload);
  p[4] = 200;  // hlen: the address pairs run far past the buffer
  CHECK(error_of(ArpPacket::check(p)) == WireError::Truncated);

  auto unsupported = [&](size_t at, uint8_t value) {
    auto q = copy_of(payload);
    q[at] = value;
    auto view = ArpPacket::check(q);
    REQUIRE(view.ok());
    return error_of(ArpRepr::parse(*view));
  };
  CHECK(unsupported(1, 6) == WireError::Unsupported);     // hardware type IEEE 802
  CHECK(unsupported(2, 0x86) == WireError::Unsupported);  // protocol 0x8600
  CHECK(unsupported(5, 3) == WireError::Unsupported);     // plen 3
  CHECK(unsupported(7, 3) == WireError::Unsupported);     // RARP request
  CHECK(unsupported(7, 0) == WireError::Unsupported);
}

// ---------------------------------------------------------------- IPv4

TEST_CASE("ipv4: the echo request's header fields parse and re-emit byte for byte") {
  auto ip = ipv4_of(B(kIcmpEcho));
  CHECK(ip.version() == 4);
  CHECK(ip.header_len() == 20);
  CHECK(ip.total_len() == 84);
  CHECK(ip.ident() == 0x5a3c);
  CHECK(ip.dont_frag());
  CHECK_FALSE(ip.more_frags());
  CHECK(ip.frag_offset() == 0);
  CHECK(ip.ttl() == 64);
  CHECK(ip.protocol() == IpProtocol::Icmp);
  CHECK(ip.src() == kGuest);
  CHECK(ip.dst() == kHostAlias);
  CHECK(ip.verify_checksum());
  CHECK(ip.payload().size() == 64);
  auto r = Ipv4Repr::parse(ip);
  REQUIRE(r.ok());
  CHECK(r->payload_len == 64);
  CHECK_FALSE(r->is_fragment());
  auto out = fresh(r->buffer_len());
  r->emit(out);
  check_emitted(out, ip.header());
}

TEST_CASE("ipv4: Ethernet padding after the total length is not payload") {
  auto ip = ipv4_of(B(kUdpPadded));
  CHECK(ip.total_len() == 30);
  CHECK(ip.packet().size() == 30);
  CHECK(ip.payload().size() == 10);
  auto udp = UdpPacket::check(ip.payload());
  REQUIRE(udp.ok());
  CHECK(as_chars(udp->payload()) == "hi");
  CHECK(udp->verify_checksum(pseudo_of(ip)));
}

TEST_CASE("ipv4: malformed headers are refused with their reason") {
  Bytes packet = EthernetFrame::check(B(kIcmpEcho))->payload();
  auto mutated = [&](size_t at, uint8_t value) {
    auto p = copy_of(packet);
    p[at] = value;
    return p;
  };
  CHECK(error_of(Ipv4Packet::check(packet.first(19))) == WireError::Truncated);
  CHECK(error_of(Ipv4Packet::check(Bytes())) == WireError::Truncated);
  CHECK(error_of(Ipv4Packet::check(mutated(0, 0x65))) == WireError::BadVersion);
  CHECK(error_of(Ipv4Packet::check(mutated(0, 0x44))) == WireError::BadHeaderLength);  // IHL 4
  CHECK(error_of(Ipv4Packet::check(mutated(0, 0x40))) == WireError::BadHeaderLength);  // IHL 0
  // IHL 15: a 60-byte header fits the 84-byte packet; within a 40-byte
  // buffer it is truncated; with a total length of 40 it is a bad length.
  CHECK(Ipv4Packet::check(mutated(0, 0x4f))->payload().size() == 84 - 60);
  CHECK(error_of(Ipv4Packet::check(Bytes(mutated(0, 0x4f)).first(40))) == WireError::Truncated);
  auto long_header = mutated(0, 0x4f);
  long_header[3] = 40;
  CHECK(error_of(Ipv4Packet::check(long_header)) == WireError::BadLength);
  // Total length one byte beyond the buffer, and below the header length.
  CHECK(error_of(Ipv4Packet::check(packet.first(83))) == WireError::Truncated);
  CHECK(error_of(Ipv4Packet::check(mutated(3, 19))) == WireError::BadLength);
  // Total length == header length is a valid empty packet.
  auto header_only = mutated(3, 20);
  auto empty = Ipv4Packet::check(header_only);
  REQUIRE(empty.ok());
  CHECK(empty->payload().empty());
}

TEST_CASE("ipv4: a bad header checksum is reported, and ignored only when asked") {
  auto frame = copy_of(B(kIcmpEcho));
  frame[14 + 8] = 63;  // TTL changed without fixing the checksum
  auto ip = ipv4_of(frame);
  CHECK_FALSE(ip.verify_checksum());
  CHECK(error_of(Ipv4Repr::parse(ip)) == WireError::BadChecksum);
  auto r = Ipv4Repr::parse(ip, ChecksumPolicy::Ignore);
  REQUIRE(r.ok());
  CHECK(r->ttl == 63);
  // Re-emitting repairs it.
  auto out = fresh(r->buffer_len());
  r->emit(out);
  CHECK(checksum_verifies(Bytes(out).first(20)));
}

TEST_CASE("ipv4: the reserved flag bit is refused") {
  auto frame = copy_of(B(kIcmpEcho));
  uint8_t* h = &frame[14];
  uint16_t old = load_be16(&h[6]);
  h[6] |= 0x80;
  store_be16(&h[10], checksum_update16(load_be16(&h[10]), old, load_be16(&h[6])));
  auto ip = ipv4_of(frame);
  CHECK(ip.verify_checksum());
  CHECK(ip.reserved_flag());
  CHECK(error_of(Ipv4Repr::parse(ip)) == WireError::BadField);
}

TEST_CASE("ipv4: header options (Router Alert) are carried through a round trip") {
  auto ip = ipv4_of(B(kIgmpReport));
  CHECK(ip.header_len() == 24);
  const uint8_t router_alert[] = {0x94, 0x04, 0x00, 0x00};
  CHECK(copy_of(ip.options()) == copy_of(B(router_alert)));
  CHECK(ip.protocol() == IpProtocol::Igmp);
  CHECK(ip.payload().size() == 8);
  auto r = Ipv4Repr::parse(ip);
  REQUIRE(r.ok());
  CHECK(r->dscp == 0x30);  // tos 0xc0: CS6
  CHECK(r->ecn == 0);
  CHECK(r->ttl == 1);
  CHECK(r->header_len() == 24);
  auto out = fresh(r->buffer_len());
  r->emit(out);
  check_emitted(out, ip.header());
}

TEST_CASE("ipv4: fragment flags and offset are written in 8-byte units") {
  Ipv4Repr r;
  r.src = kGuest;
  r.dst = kHostAlias;
  r.protocol = IpProtocol::Udp;
  r.payload_len = 1480;
  r.ident = 0xbeef;
  r.more_frags = true;
  r.frag_offset = 1480;
  r.ecn = 2;
  CHECK(r.is_fragment());
  std::vector<uint8_t> out(r.total_len(), kFill);
  r.emit(out);
  CHECK(out[1] == 0x02);
  CHECK(load_be16(&out[2]) == 1500);
  CHECK(load_be16(&out[6]) == (0x2000 | 185));
  auto ip = Ipv4Packet::check(out);
  REQUIRE(ip.ok());
  CHECK(ip->more_frags());
  CHECK(ip->frag_offset() == 1480);
  auto back = Ipv4Repr::parse(*ip);
  REQUIRE(back.ok());
  CHECK(*back == r);
}

// ---------------------------------------------------------------- ICMPv4

TEST_CASE("icmpv4: ping's echo request parses and re-emits byte for byte") {
  auto ip = ipv4_of(B(kIcmpEcho));
  auto p = Icmpv4Packet::check(ip.payload());
  REQUIRE(p.ok());
  CHECK(p->verify_checksum());
  auto r = Icmpv4Repr::parse(*p);
  REQUIRE(r.ok());
  CHECK(r->type == Icmpv4Type::EchoRequest);
  CHECK(r->code == 0);
  CHECK(r->ident == 0x0b1f);
  CHECK(r->seq == 1);
  CHECK(r->data.size() == 56);
  CHECK(r->data[16] == 0x10);
  auto out = fresh(r->buffer_len());
  r->emit(out);
  check_emitted(out, ip.payload());
}

TEST_CASE("icmpv4: an echo reply differs from its request only by type and an RFC 1624 checksum update") {
  auto ip = ipv4_of(B(kIcmpEcho));
  auto request = *Icmpv4Repr::parse(*Icmpv4Packet::check(ip.payload()));
  Icmpv4Repr reply = request;
  reply.type = Icmpv4Type::EchoReply;
  auto out = fresh(reply.buffer_len());
  reply.emit(out);
  auto expected = copy_of(ip.payload());
  expected[0] = 0;
  store_be16(&expected[2], checksum_update16(load_be16(&ip.payload()[2]), 0x0800, 0x0000));
  check_emitted(out, expected);
  auto back = Icmpv4Repr::parse(*Icmpv4Packet::check(Bytes(out).first(reply.buffer_len())));
  REQUIRE(back.ok());
  CHECK(*back == reply);
}

TEST_CASE("icmpv4: a port unreachable quotes the DNS query's header and ports") {
  auto ip = ipv4_of(B(kPortUnreachable));
  CHECK(ip.dscp() == 0x30);
  auto p = Icmpv4Packet::check(ip.payload());
  REQUIRE(p.ok());
  auto r = Icmpv4Repr::parse(*p);
  REQUIRE(r.ok());
  CHECK(r->type == Icmpv4Type::DstUnreachable);
  CHECK(r->code == uint8_t(Icmpv4Unreachable::Port));
  CHECK(r->is_error());
  CHECK(r->quoted.src == kGuest);
  CHECK(r->quoted.dst == kGateway);
  CHECK(r->quoted.protocol == IpProtocol::Udp);
  CHECK(r->quoted.payload_len == 37);
  REQUIRE(r->quoted_data.size() >= 8);
  CHECK(load_be16(&r->quoted_data[0]) == 40000);
  CHECK(load_be16(&r->quoted_data[2]) == 53);
  auto out = fresh(r->buffer_len());
  r->emit(out);
  check_emitted(out, ip.payload());
}

TEST_CASE("icmpv4: an error quoting only the header and 8 bytes, from a longer datagram, round-trips") {
  // The RFC 792 minimum: the quoted total length (57) exceeds what is quoted.
  auto dns_ip = ipv4_of(B(kDnsQuery));
  Icmpv4Repr r;
  r.type = Icmpv4Type::TimeExceeded;
  r.code = uint8_t(Icmpv4TimeExceeded::TtlExpired);
  r.quoted = *Ipv4Repr::parse(dns_ip);
  r.quoted_data = dns_ip.payload().first(8);
  CHECK(r.buffer_len() == 8 + 20 + 8);
  auto out = fresh(r.buffer_len());
  r.emit(out);
  CHECK(out[0] == 11);
  CHECK(load_be32(&out[4]) == 0);
  CHECK(std::equal(dns_ip.packet().begin(), dns_ip.packet().begin() + 28, out.begin() + 8));
  auto back = Icmpv4Repr::parse(*Icmpv4Packet::check(Bytes(out).first(r.buffer_len())));
  REQUIRE(back.ok());
  CHECK(*back == r);
  CHECK(back->quoted.total_len() == 57);
}

TEST_CASE("icmpv4: fragmentation-needed carries the next-hop MTU (RFC 1191)") {
  auto syn_ip = ipv4_of(B(kLinuxSyn));
  Icmpv4Repr r;
  r.type = Icmpv4Type::DstUnreachable;
  r.code = uint8_t(Icmpv4Unreachable::FragNeeded);
  r.next_hop_mtu = 1400;
  r.quoted = *Ipv4Repr::parse(syn_ip);
  r.quoted_data = syn_ip.payload().first(8);
  auto out = fresh(r.buffer_len());
  r.emit(out);
  CHECK(load_be32(&out[4]) == 1400);
  auto back = Icmpv4Repr::parse(*Icmpv4Packet::check(Bytes(out).first(r.buffer_len())));
  REQUIRE(back.ok());
  CHECK(back->next_hop_mtu == 1400);
  CHECK(*back == r);
  // Other codes do not carry it: the bytes are written as zero.
  r.code = uint8_t(Icmpv4Unreachable::Host);
  auto out2 = fresh(r.buffer_len());
  r.emit(out2);
  CHECK(load_be32(&out2[4]) == 0);
  CHECK(Icmpv4Repr::parse(*Icmpv4Packet::check(Bytes(out2).first(r.buffer_len())))->next_hop_mtu == 0);
}

TEST_CASE("icmpv4: truncated, corrupt and unsupported messages are refused") {
  Bytes msg = ipv4_of(B(kPortUnreachable)).payload();
  CHECK(error_of(Icmpv4Packet::check(msg.first(7))) == WireError::Truncated);

  auto corrupt = copy_of(msg);
  corrupt[8 + 20] ^= 0x01;  // a quoted port byte
  CHECK_FALSE(Icmpv4Packet::check(corrupt)->verify_checksum());
  CHECK(error_of(Icmpv4Repr::parse(*Icmpv4Packet::check(corrupt))) == WireError::BadChecksum);
  CHECK(Icmpv4Repr::parse(*Icmpv4Packet::check(corrupt), ChecksumPolicy::Ignore).ok());

  // Fewer than 8 bytes after the quoted header.
  CHECK(error_of(Icmpv4Repr::parse(*Icmpv4Packet::check(msg.first(8 + 20 + 7)), ChecksumPolicy::Ignore)) ==
        WireError::Truncated);
  CHECK(Icmpv4Repr::parse(*Icmpv4Packet::check(msg.first(8 + 20 + 8)), ChecksumPolicy::Ignore).ok());
  // No room for the quoted header at all, or not an IPv4 header.
  CHECK(error_of(Icmpv4Repr::parse(*Icmpv4Packet::check(msg.first(8 + 19)), ChecksumPolicy::Ignore)) ==
        WireError::Truncated);
  auto v6 = copy_of(msg);
  v6[8] = 0x60;
  CHECK(error_of(Icmpv4Repr::parse(*Icmpv4Packet::check(v6), ChecksumPolicy::Ignore)) == WireError::BadVersion);
  v6[8] = 0x43;
  CHECK(error_of(Icmpv4Repr::parse(*Icmpv4Packet::check(v6), ChecksumPolicy::Ignore)) == WireError::BadHeaderLength);

  for (uint8_t type : {5, 12, 13, 14, 9, 10, 42}) {
    auto other = copy_of(msg);
    other[0] = type;
    INFO("type " << int(type));
    CHECK(error_of(Icmpv4Repr::parse(*Icmpv4Packet::check(other), ChecksumPolicy::Ignore)) == WireError::Unsupported);
  }
}

// ---------------------------------------------------------------- UDP

TEST_CASE("udp: a DNS query parses with a verified checksum and re-emits byte for byte") {
  auto ip = ipv4_of(B(kDnsQuery));
  CHECK_FALSE(ip.dont_frag());
  auto p = UdpPacket::check(ip.payload());
  REQUIRE(p.ok());
  CHECK(p->src_port() == 40000);
  CHECK(p->dst_port() == 53);
  CHECK(p->len() == 37);
  auto r = UdpRepr::parse(*p, pseudo_of(ip));
  REQUIRE(r.ok());
  REQUIRE(r->payload.size() == 29);
  CHECK(load_be16(&r->payload[0]) == 0x1234);
  CHECK(as_chars(r->payload.subspan(12, 13)) == std::string_view("\x07" "example" "\x03" "com\0", 13));
  auto out = fresh(r->buffer_len());
  r->emit(out, pseudo_of(ip));
  check_emitted(out, ip.payload());
}

TEST_CASE("udp: a checksum of 0 means none over IPv4 but is refused over IPv6") {
  auto ip = ipv4_of(B(kDnsQuery));
  auto d = copy_of(ip.payload());
  store_be16(&d[6], 0);
  auto p = UdpPacket::check(d);
  REQUIRE(p.ok());
  CHECK(p->verify_checksum(pseudo_of(ip)));
  CHECK(UdpRepr::parse(*p, pseudo_of(ip)).ok());
  auto v6 = PseudoHeader::v6(Ipv6Addr::v4_mapped(kGuest), Ipv6Addr::v4_mapped(kGateway));
  CHECK_FALSE(p->verify_checksum(v6));
  CHECK(error_of(UdpRepr::parse(*p, v6)) == WireError::BadChecksum);
}

TEST_CASE("udp: a computed checksum of 0 is sent as 0xffff") {
  // Choose the last payload word so that everything covered sums to 0xffff.
  UdpRepr r{4000, 5000, {}};
  uint8_t payload[4] = {0x12, 0x34, 0, 0};
  r.payload = B(payload);
  auto ph = PseudoHeader::v4(kGuest, kHostAlias);
  uint8_t header[8];
  store_be16(&header[0], 4000);
  store_be16(&header[2], 5000);
  store_be16(&header[4], 12);
  store_be16(&header[6], 0);
  uint16_t partial = ones_sum(B(payload), ones_sum(B(header), ph.sum(IpProtocol::Udp, 12)));
  store_be16(&payload[2], uint16_t(~partial));
  auto out = fresh(r.buffer_len());
  r.emit(out, ph);
  CHECK(load_be16(&out[6]) == 0xffff);
  auto p = UdpPacket::check(Bytes(out).first(r.buffer_len()));
  REQUIRE(p.ok());
  CHECK(p->verify_checksum(ph));
  // Over IPv4, a receiver sees 0xffff (not 0): a real checksum that verifies.
  CHECK(*UdpRepr::parse(*p, ph) == r);
}

TEST_CASE("udp: bad lengths and a bad checksum are refused") {
  auto ip = ipv4_of(B(kDnsQuery));
  Bytes d = ip.payload();
  CHECK(error_of(UdpPacket::check(d.first(7))) == WireError::Truncated);
  CHECK(error_of(UdpPacket::check(d.first(36))) == WireError::Truncated);  // length field 37
  auto short_len = copy_of(d);
  store_be16(&short_len[4], 7);
  CHECK(error_of(UdpPacket::check(short_len)) == WireError::BadLength);
  auto corrupt = copy_of(d);
  corrupt[20] ^= 0x20;  // a letter of the name
  CHECK(error_of(UdpRepr::parse(*UdpPacket::check(corrupt), pseudo_of(ip))) == WireError::BadChecksum);
  CHECK(UdpRepr::parse(*UdpPacket::check(corrupt), pseudo_of(ip), ChecksumPolicy::Ignore).ok());
  // The wrong pseudo-header (another destination) fails too.
  CHECK(error_of(UdpRepr::parse(*UdpPacket::check(d), PseudoHeader::v4(kGuest, kHostAlias))) ==
        WireError::BadChecksum);
}

TEST_CASE("udp: the length field, not the buffer, ends the payload") {
  auto ip = ipv4_of(B(kDnsQuery));
  auto d = copy_of(ip.payload());
  d.push_back(0xee);
  d.push_back(0xee);
  auto p = UdpPacket::check(d);
  REQUIRE(p.ok());
  CHECK(p->payload().size() == 29);
  CHECK(UdpRepr::parse(*p, pseudo_of(ip)).ok());
}

// ---------------------------------------------------------------- TCP

TEST_CASE("tcp: a Linux SYN's options decode to MSS 1460, SACK-permitted, timestamps, WS 7, and re-emit byte for byte") {
  auto ip = ipv4_of(B(kLinuxSyn));
  auto p = TcpPacket::check(ip.payload());
  REQUIRE(p.ok());
  CHECK(p->header_len() == 40);
  CHECK(p->flags() == kTcpSyn);
  CHECK(p->has(kTcpSyn));
  CHECK_FALSE(p->has(kTcpAck));
  CHECK(p->window() == 64240);
  CHECK(p->payload().empty());
  CHECK(p->verify_checksum(pseudo_of(ip)));
  auto r = TcpRepr::parse(*p, pseudo_of(ip));
  REQUIRE(r.ok());
  CHECK(r->src_port == 51234);
  CHECK(r->dst_port == 80);
  CHECK(r->seq == 0x6a3b9c01);
  CHECK(r->ack == 0);
  CHECK(r->mss == 1460);
  CHECK(r->sack_permitted);
  REQUIRE(r->timestamps.has_value());
  CHECK(r->timestamps->tsval == 0x002c4d8e);
  CHECK(r->timestamps->tsecr == 0);
  CHECK(r->window_scale == 7);
  CHECK(r->sack_count == 0);
  CHECK(r->segment_len() == 1);
  CHECK(r->options_len() == 20);
  auto out = fresh(r->buffer_len());
  r->emit(out, pseudo_of(ip));
  check_emitted(out, ip.payload());
}

TEST_CASE("tcp: a data segment with NOP NOP timestamps round-trips with its payload") {
  auto ip = ipv4_of(B(kTcpData));
  auto r = TcpRepr::parse(*TcpPacket::check(ip.payload()), pseudo_of(ip));
  REQUIRE(r.ok());
  CHECK(r->flags == (kTcpPsh | kTcpAck));
  CHECK(r->ack == 0x11d80a2f);
  CHECK(r->window == 502);
  CHECK_FALSE(r->mss.has_value());
  CHECK_FALSE(r->sack_permitted);
  CHECK(r->timestamps == TcpTimestamps{0x002c4da1, 0x7b1e9f00});
  CHECK(as_chars(r->payload) == "GET / HTTP/1.0\r\n\r\n");
  CHECK(r->segment_len() == 18);
  auto out = fresh(r->buffer_len());
  r->emit(out, pseudo_of(ip));
  check_emitted(out, ip.payload());
}

TEST_CASE("tcp: a duplicate ACK with a SACK block round-trips") {
  auto ip = ipv4_of(B(kTcpSackAck));
  auto r = TcpRepr::parse(*TcpPacket::check(ip.payload()), pseudo_of(ip));
  REQUIRE(r.ok());
  REQUIRE(r->sack_count == 1);
  CHECK(r->sack_blocks[0] == TcpSackBlock{0x11d81000, 0x11d815a8});
  auto out = fresh(r->buffer_len());
  r->emit(out, pseudo_of(ip));
  check_emitted(out, ip.payload());
}

TEST_CASE("tcp: a hand-built SYN-ACK emits Linux's option layout") {
  TcpRepr r;
  r.src_port = 80;
  r.dst_port = 51234;
  r.seq = 1000;
  r.ack = 0x6a3b9c02;
  r.flags = kTcpSyn | kTcpAck;
  r.window = 65160;
  r.mss = 1460;
  r.sack_permitted = true;
  r.timestamps = TcpTimestamps{0x11223344, 0x002c4d8e};
  r.window_scale = 7;
  auto ph = PseudoHeader::v4(kHostAlias, kGuest);
  auto out = fresh(r.buffer_len());
  r.emit(out, ph);
  const uint8_t options[] = {0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x11, 0x22,
                             0x33, 0x44, 0x00, 0x2c, 0x4d, 0x8e, 0x01, 0x03, 0x03, 0x07};
  CHECK(std::vector<uint8_t>(out.begin() + 20, out.begin() + 40) == copy_of(B(options)));
  CHECK(out[12] == 0xa0);
  CHECK(out[13] == 0x12);
  auto p = TcpPacket::check(Bytes(out).first(r.buffer_len()));
  REQUIRE(p.ok());
  CHECK(p->verify_checksum(ph));
  CHECK(*TcpRepr::parse(*p, ph) == r);
  // Without timestamps, SACK-permitted gets its own NOP NOP word.
  r.timestamps.reset();
  r.window_scale.reset();
  auto out2 = fresh(r.buffer_len());
  r.emit(out2, ph);
  const uint8_t options2[] = {0x02, 0x04, 0x05, 0xb4, 0x01, 0x01, 0x04, 0x02};
  CHECK(r.options_len() == 8);
  CHECK(std::vector<uint8_t>(out2.begin() + 20, out2.begin() + 28) == copy_of(B(options2)));
}

TEST_CASE("tcp: options that overflow the aligned layout are packed and still round-trip") {
  TcpRepr r;
  r.flags = kTcpAck;
  r.mss = 536;
  r.timestamps = TcpTimestamps{1, 2};
  r.sack_count = 3;
  r.sack_blocks[0] = {10, 20};
  r.sack_blocks[1] = {30, 40};
  r.sack_blocks[2] = {50, 60};
  CHECK(r.options_len() == 40);  // 4 + 10 + 26, no NOPs
  auto ph = PseudoHeader::v4(kGuest, kHostAlias);
  auto out = fresh(r.buffer_len());
  r.emit(out, ph);
  CHECK(out[12] >> 4 == 15);
  auto back = TcpRepr::parse(*TcpPacket::check(Bytes(out).first(r.buffer_len())), ph);
  REQUIRE(back.ok());
  CHECK(*back == r);
  // Four SACK blocks alone fit the aligned layout: NOP NOP SACK(34).
  TcpRepr four;
  four.flags = kTcpAck;
  four.sack_count = 4;
  for (uint32_t i = 0; i < 4; i++) four.sack_blocks[i] = {100 * i, 100 * i + 50};
  CHECK(four.options_len() == 36);
  auto out4 = fresh(four.buffer_len());
  four.emit(out4, ph);
  CHECK(*TcpRepr::parse(*TcpPacket::check(Bytes(out4).first(four.buffer_len())), ph) == four);
}

TEST_CASE("tcp: a data offset below 5 or beyond the segment is refused") {
  Bytes seg = ipv4_of(B(kLinuxSyn)).payload();
  CHECK(error_of(TcpPacket::check(seg.first(19))) == WireError::Truncated);
  auto low = copy_of(seg);
  low[12] = 0x40;
  CHECK(error_of(TcpPacket::check(low)) == WireError::BadHeaderLength);
  low[12] = 0x00;
  CHECK(error_of(TcpPacket::check(low)) == WireError::BadHeaderLength);
  CHECK(error_of(TcpPacket::check(seg.first(39))) == WireError::Truncated);  // offset 10 words
  auto high = copy_of(seg);
  high[12] = 0xb0;  // 44 bytes of header in a 40-byte segment
  CHECK(error_of(TcpPacket::check(high)) == WireError::Truncated);
  CHECK(TcpPacket::check(seg.first(40)).ok());
}

TEST_CASE("tcp: a bad checksum is reported, and ignored only when asked (checksum offload)") {
  auto ip = ipv4_of(B(kTcpData));
  auto seg = copy_of(ip.payload());
  seg.back() ^= 0x01;
  auto p = TcpPacket::check(seg);
  REQUIRE(p.ok());
  CHECK_FALSE(p->verify_checksum(pseudo_of(ip)));
  CHECK(error_of(TcpRepr::parse(*p, pseudo_of(ip))) == WireError::BadChecksum);
  CHECK(TcpRepr::parse(*p, pseudo_of(ip), ChecksumPolicy::Ignore).ok());
}

TEST_CASE("tcp: malformed options are refused as bad_option") {
  auto ph = PseudoHeader::v4(kGuest, kHostAlias);
  struct Case {
    const char* what;
    std::vector<uint8_t> options;
  };
  const Case cases[] = {
      {"length 0", {0x1e, 0x00, 0x01, 0x01}},
      {"length 1", {0x1e, 0x01, 0x01, 0x01}},
      {"MSS length 0", {0x02, 0x00, 0x05, 0xb4}},
      {"runs past the header", {0x01, 0x01, 0x1e, 0x04}},
      {"runs past the header by far", {0x08, 0x0a, 0x00, 0x00}},
      {"no room for the length byte", {0x01, 0x01, 0x01, 0x02}},
      {"MSS length 3", {0x02, 0x03, 0x05, 0x00}},
      {"MSS length 6", {0x02, 0x06, 0x05, 0xb4, 0x00, 0x00, 0x01, 0x01}},
      {"window scale length 4", {0x03, 0x04, 0x07, 0x00}},
      {"window scale length 2", {0x03, 0x02, 0x01, 0x01}},
      {"SACK-permitted length 3", {0x04, 0x03, 0x00, 0x01}},
      {"SACK with no blocks", {0x01, 0x01, 0x05, 0x02}},
      {"SACK length 11", {0x05, 0x0b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x00}},
      {"timestamps length 9", {0x08, 0x09, 1, 2, 3, 4, 5, 6, 7, 0x00, 0x00, 0x00}},
      {"timestamps length 12", {0x08, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    auto seg = tcp_with_options(c.options);
    auto p = TcpPacket::check(seg);
    REQUIRE(p.ok());
    CHECK(error_of(TcpRepr::parse(*p, ph, ChecksumPolicy::Ignore)) == WireError::BadOption);
  }
  // Five SACK blocks need 42 bytes: they can never fit the 40-byte area.
}

TEST_CASE("tcp: unknown options are skipped and End-of-list ends the list") {
  auto ph = PseudoHeader::v4(kGuest, kHostAlias);
  // TFO cookie option (34, length 10), then MSS; then EOL followed by junk.
  auto seg = tcp_with_options({0x22, 0x0a, 1, 2, 3, 4, 5, 6, 7, 8, 0x02, 0x04, 0x05, 0xb4, 0x00, 0x02, 0x00, 0x99, 0x99, 0x99});
  auto r = TcpRepr::parse(*TcpPacket::check(seg), ph, ChecksumPolicy::Ignore);
  REQUIRE(r.ok());
  CHECK(r->mss == 1460);
  CHECK_FALSE(r->window_scale.has_value());
  CHECK(r->options_len() == 4);  // the unknown option is not kept

  TcpOptionReader reader(TcpPacket::check(seg)->options());
  TcpOption o;
  REQUIRE(reader.next(o));
  CHECK(o.kind == 0x22);
  CHECK(o.data.size() == 8);
  REQUIRE(reader.next(o));
  CHECK(o.kind == uint8_t(TcpOptionKind::Mss));
  CHECK_FALSE(reader.next(o));
  CHECK_FALSE(reader.failed());

  const uint8_t bad[] = {0x01, 0x02, 0x01};
  TcpOptionReader bad_reader{B(bad)};
  CHECK_FALSE(bad_reader.next(o));
  CHECK(bad_reader.failed());
}

TEST_CASE("tcp: flags keep the reserved and AE bits across a round trip") {
  auto ip = ipv4_of(B(kTcpData));
  auto seg = copy_of(ip.payload());
  seg[12] |= 0x0f;  // 3 reserved bits + AE
  auto r = TcpRepr::parse(*TcpPacket::check(seg), pseudo_of(ip), ChecksumPolicy::Ignore);
  REQUIRE(r.ok());
  CHECK(r->flags == (0xe00 | kTcpAe | kTcpPsh | kTcpAck));
  auto out = fresh(r->buffer_len());
  r->emit(out, pseudo_of(ip));
  CHECK(out[12] == seg[12]);
  CHECK(out[13] == seg[13]);
}

TEST_CASE("tcp: segment length counts SYN and FIN as one each") {
  TcpRepr r;
  r.flags = kTcpSyn | kTcpFin;
  CHECK(r.segment_len() == 2);
  const uint8_t data[5] = {};
  r.payload = B(data);
  r.flags = kTcpFin | kTcpAck;
  CHECK(r.segment_len() == 6);
}

TEST_CASE("tcp: a payload already in place is emitted without disturbing it") {
  auto ip = ipv4_of(B(kTcpData));
  auto r = *TcpRepr::parse(*TcpPacket::check(ip.payload()), pseudo_of(ip));
  std::vector<uint8_t> out(r.buffer_len(), kFill);
  std::memcpy(&out[r.header_len()], r.payload.data(), r.payload.size());
  TcpRepr in_place = r;
  in_place.payload = Bytes(out).subspan(r.header_len());
  in_place.emit(out, pseudo_of(ip));
  CHECK(out == copy_of(ip.payload()));
}

// ---------------------------------------------------------------- IPv6

TEST_CASE("ipv6: an ICMPv6 echo request's fixed header parses and re-emits byte for byte") {
  auto ip = ipv6_of(B(kIcmpv6Echo));
  CHECK(ip.version() == 6);
  CHECK(ip.traffic_class() == 0);
  CHECK(ip.flow_label() == 0x8a1f3);
  CHECK(ip.payload_len() == 16);
  CHECK(ip.next_header() == IpProtocol::Icmpv6);
  CHECK(ip.hop_limit() == 64);
  CHECK(ip.src().to_string() == "fe80::5054:ff:fe12:3456");
  CHECK(ip.dst().to_string() == "fe80::1");
  auto r = Ipv6Repr::parse(ip);
  REQUIRE(r.ok());
  auto out = fresh(r->buffer_len());
  r->emit(out);
  check_emitted(out, ip.packet().first(40));
}

TEST_CASE("ipv6: the ICMPv6 checksum covers the pseudo-header") {
  auto ip = ipv6_of(B(kIcmpv6Echo));
  auto m = Icmpv6Packet::check(ip.payload());
  REQUIRE(m.ok());
  CHECK(m->msg_type() == uint8_t(Icmpv6Type::EchoRequest));
  CHECK(m->code() == 0);
  CHECK(m->verify_checksum(ip.src(), ip.dst()));
  CHECK_FALSE(m->verify_checksum(ip.src(), *Ipv6Addr::parse("fe80::2")));
  auto copy = copy_of(ip.payload());
  store_be16(&copy[2], 0xdead);
  fill_icmpv6_checksum(copy, ip.src(), ip.dst());
  CHECK(copy == copy_of(ip.payload()));
  CHECK(error_of(Icmpv6Packet::check(ip.payload().first(3))) == WireError::Truncated);
}

TEST_CASE("ipv6: UDP over IPv6 verifies with the IPv6 pseudo-header and round-trips") {
  auto ip = ipv6_of(B(kUdp6));
  CHECK(ip.traffic_class() == 0xb8);
  CHECK(ip.hop_limit() == 255);
  auto ph = PseudoHeader::v6(ip.src(), ip.dst());
  CHECK(ph.is_v6());
  auto p = UdpPacket::check(ip.payload());
  REQUIRE(p.ok());
  auto r = UdpRepr::parse(*p, ph);
  REQUIRE(r.ok());
  CHECK(r->dst_port == 7);
  CHECK(as_chars(r->payload) == "ping6");
  auto out = fresh(r->buffer_len());
  r->emit(out, ph);
  check_emitted(out, ip.payload());
  auto hdr = fresh(40);
  Ipv6Repr::parse(ip)->emit(hdr);
  check_emitted(hdr, ip.packet().first(40));
}

TEST_CASE("ipv6: short buffers, another version and a payload length beyond the buffer are refused") {
  Bytes packet = EthernetFrame::check(B(kUdp6))->payload();
  CHECK(error_of(Ipv6Packet::check(packet.first(39))) == WireError::Truncated);
  CHECK(error_of(Ipv6Packet::check(packet.first(packet.size() - 1))) == WireError::Truncated);
  auto v4 = copy_of(packet);
  v4[0] = 0x4b;
  CHECK(error_of(Ipv6Packet::check(v4)) == WireError::BadVersion);
  auto padded = copy_of(packet);
  padded.resize(padded.size() + 6, 0);
  CHECK(Ipv6Packet::check(padded)->payload().size() == 13);
}

TEST_CASE("ipv6: extension headers are recognised, upper layers are not") {
  for (auto p : {IpProtocol::HopByHop, IpProtocol::Ipv6Route, IpProtocol::Ipv6Frag, IpProtocol::Ipv6Opts,
                 IpProtocol::Esp, IpProtocol::Ah})
    CHECK(is_ipv6_extension_header(p));
  CHECK(is_ipv6_extension_header(IpProtocol(135)));  // Mobility
  for (auto p : {IpProtocol::Tcp, IpProtocol::Udp, IpProtocol::Icmpv6, IpProtocol::Ipv6NoNext})
    CHECK_FALSE(is_ipv6_extension_header(p));
}

// ---------------------------------------------------------------- whole frames

TEST_CASE("every fixture frame survives a full rebuild from its representations") {
  for (Bytes frame : {B(kIcmpEcho), B(kLinuxSyn), B(kTcpData), B(kTcpSackAck), B(kDnsQuery), B(kPortUnreachable)}) {
    auto ip = ipv4_of(frame);
    auto eth = *EthernetRepr::parse(*EthernetFrame::check(frame));
    auto ipr = *Ipv4Repr::parse(ip);
    std::vector<uint8_t> out(14 + ip.total_len(), kFill);
    eth.emit(out);
    std::span<uint8_t> l3 = std::span<uint8_t>(out).subspan(14);
    ipr.emit(l3);
    std::span<uint8_t> l4 = l3.subspan(ipr.header_len());
    auto ph = pseudo_of(ip);
    switch (ip.protocol()) {
      case IpProtocol::Tcp: TcpRepr::parse(*TcpPacket::check(ip.payload()), ph)->emit(l4, ph); break;
      case IpProtocol::Udp: UdpRepr::parse(*UdpPacket::check(ip.payload()), ph)->emit(l4, ph); break;
      case IpProtocol::Icmp: Icmpv4Repr::parse(*Icmpv4Packet::check(ip.payload()))->emit(l4); break;
      default: FAIL("unexpected protocol");
    }
    CHECK(out == copy_of(frame));
  }
}

TEST_CASE("wire_error_name gives a stable counter label for every reason") {
  CHECK(std::string(wire_error_name(WireError::Truncated)) == "truncated");
  CHECK(std::string(wire_error_name(WireError::BadChecksum)) == "bad_checksum");
  CHECK(std::string(wire_error_name(WireError::BadOption)) == "bad_option");
  CHECK(std::string(wire_error_name(WireError::VlanTagged)) == "vlan_tagged");
  CHECK(std::string(wire_error_name(WireError(200))) == "unknown");
}
