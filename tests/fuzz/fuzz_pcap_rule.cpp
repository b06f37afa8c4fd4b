// libFuzzer target: the capture-rule text of /pcap/ctl (pcap-ring's command
// parser, sizes, names, and the tcpdump filters libpcap compiles behind it).
//
// Input: text, one ctl command per line, run against a CaptureSet with the
// default rules and small limits. Afterwards a few canned frames go through
// every rule and each ring is rendered as pcap and pcapng. Checked:
//  - a refused command is EINVAL, ENOENT or ENOSPC with a message, and
//    leaves the rule table as it was;
//  - parse_command and CaptureSet::command agree on syntax errors;
//  - no ring exceeds its limit; the sum of limits stays within the budget;
//  - snapshots have the sizes their records imply.
#include <spdlog/spdlog.h>

#include <cassert>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/clock.h"
#include "pcap-ring/capture.h"

using namespace berth;
using namespace berth::pcap;

namespace {

std::vector<std::vector<uint8_t>> frames() {
  std::vector<uint8_t> udp53 = {2, 0, 0, 0, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 8, 0,  // Ethernet
                                0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0, 192, 168, 65, 3, 192, 168, 65, 1,
                                0x9c, 0x40, 0, 53, 0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint8_t> arp = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 8, 6,
                              0, 1, 8, 0, 6, 4, 0, 1, 0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee, 192, 168, 65, 3,
                              0, 0, 0, 0, 0, 0, 192, 168, 65, 1};
  std::vector<uint8_t> big(1514, 0x42);
  std::copy(udp53.begin(), udp53.begin() + 14, big.begin());
  std::vector<uint8_t> runt = {1, 2, 3};
  return {udp53, arp, big, runt};
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_pcap_rule: invariant broken: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto kFrames = frames();
  FakeClock clock;
  CaptureLimits lim;
  lim.max_rules = 8;
  lim.max_limit = 256 << 10;
  lim.max_total = 2 << 20;
  CaptureSet set(clock, false, lim);
  (void)set.add(RuleSpec{"all", "", 64 << 10, 256});
  (void)set.add(RuleSpec{"dns", "port 53", 64 << 10, kDefaultSnaplen});

  std::string_view text(reinterpret_cast<const char*>(data), size);
  int lines = 0;
  while (!text.empty() && lines++ < 16) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);

    size_t before = set.rules().size();
    std::string rules_before = set.render_rules();
    auto parsed = parse_command(line);
    auto r = set.command(line);
    if (!r) {
      int c = r.error().code;
      if (c != EINVAL && c != ENOENT && c != ENOSPC) fail("unexpected errno");
      if (r.error().message.empty()) fail("an error without a message");
      if (set.rules().size() != before || set.render_rules() != rules_before) fail("a failed command changed rules");
    }
    if (!parsed && r) fail("command accepted what parse_command refused");
    if (set.total_limit() > lim.max_total || set.rules().size() > lim.max_rules) fail("over the limits");

    for (auto& f : kFrames) {
      clock.t.nsec = (clock.t.nsec + 1) % 1000000000;
      set.capture(uint32_t(lines % 3), lines % 2 ? Direction::FromGuest : Direction::ToGuest, f);
    }
  }
  for (auto& rule : set.rules()) {
    const Ring& g = rule->ring();
    if (g.used() > g.limit() || g.limit() > rule->spec().limit) fail("ring over its limit");
    auto p = set.snapshot_pcap(*rule);
    if (p.size() != kPcapHeaderLen + g.packets() * kPcapRecordHeaderLen + g.data_bytes()) fail("pcap size");
    auto ng = set.snapshot_pcapng(*rule);
    if (ng.size() < g.data_bytes()) fail("pcapng size");
  }
  (void)set.render_rules();
  return 0;
}
