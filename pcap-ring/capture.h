// Capture rules and their rings: what /pcap/ctl changes and /pcap/ shows.
//
// A rule has a name, a filter (tcpdump syntax, see filter.h), a byte limit
// (the size of its ring; the oldest packets go first) and a snaplen (how
// many bytes of each frame are kept). Every frame that a wrapped link (see
// link.h) carries, either way, is offered to every rule; each rule that
// matches stores a record with a nanosecond timestamp, the original length,
// the link and the direction.
//
// Rules from the start (they can be removed or replaced like any other):
//   all   (every frame)            limit 1 MiB    snaplen 256
//   dns   port 53                  limit 256 KiB  snaplen 65535
//   dhcp  port 67 or port 68       limit 64 KiB   snaplen 1514
//   icmp  icmp                     limit 64 KiB   snaplen 1514
// (1514: whole frames at the default MTU; a 64 KiB ring could not hold one
// frame of the largest MTU whole.)
//
// Commands (one per line, as /pcap/ctl takes them):
//   add NAME [FILTER...] [limit=SIZE] [snaplen=N]
//        a new rule, or a replacement for the rule of that name (its ring
//        starts empty and its live readers reach end of file); SIZE takes
//        k/m/g suffixes (powers of 1024); defaults 1 MiB and 65535
//   rm NAME       remove a rule (live readers reach end of file)
//   clear NAME    empty a rule's ring
// Errors: EINVAL for bad syntax, names, sizes and filters (the message is
// libpcap's), ENOENT for an unknown rule, ENOSPC when the rule table or the
// capture memory budget is full.
//
// Guarantees: bounded everything (rules, ring bytes, total ring bytes, open
// captures, live readers); with no rules the data path costs one branch
// (active()); recording never blocks and never fails the frame. Live readers
// are woken later, never from inside capture(): the owner installs a
// scheduler (uv_wakeups.h) that calls run_wakeups() from the loop.
// Single-threaded: the loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/bytes.h"
#include "common/clock.h"
#include "common/result.h"
#include "pcap-ring/filter.h"
#include "pcap-ring/format.h"
#include "pcap-ring/ring.h"

namespace berth::pcap {

constexpr uint64_t kDefaultLimit = 1 << 20;
constexpr uint32_t kDefaultSnaplen = 65535;

struct RuleSpec {
  std::string name;
  std::string filter;  // tcpdump syntax; empty matches everything
  uint64_t limit = kDefaultLimit;
  uint32_t snaplen = kDefaultSnaplen;
};

struct Command {
  enum class Op { Add, Rm, Clear };
  Op op = Op::Add;
  RuleSpec spec;  // Rm and Clear use only the name
};

// Syntax only (names, sizes, snaplen range); limits that depend on the
// current rules, and the filter itself, are checked by CaptureSet::add.
[[nodiscard]] Result<Command> parse_command(std::string_view line);
// "1048576", "256k", "1M", "1MiB", "2g" (powers of 1024).
[[nodiscard]] Result<uint64_t> parse_size(std::string_view text);
// 1..32 of [A-Za-z0-9_-], starting with a letter or digit.
bool valid_rule_name(std::string_view name);

struct RuleCounters {
  uint64_t matched_packets = 0, matched_bytes = 0;  // bytes: original lengths
  uint64_t kept_packets = 0, kept_bytes = 0;        // bytes: captured (after snaplen)
  uint64_t live_skipped = 0;                         // records live readers missed by falling behind
  uint64_t cleared = 0;                              // records dropped by `clear`
};

class Rule {
 public:
  Rule(RuleSpec spec, Filter filter);
  const std::string& name() const { return spec_.name; }
  const RuleSpec& spec() const { return spec_; }
  const Ring& ring() const { return ring_; }
  const RuleCounters& counters() const { return counters_; }
  // Removed (or replaced): readers drain what the ring holds, then see EOF.
  bool removed() const { return removed_; }
  size_t live_readers() const { return readers_; }

  // Live readers: a one-shot callback run (from run_wakeups) after new
  // records arrive or the rule goes away.
  using WaiterId = uint64_t;
  WaiterId add_waiter(std::function<void()> cb);
  void remove_waiter(WaiterId id);
  void count_skipped(uint64_t n) { counters_.live_skipped += n; }
  void reader_opened() { readers_++; }
  void reader_closed() { readers_--; }

 private:
  friend class CaptureSet;
  RuleSpec spec_;
  Filter filter_;
  Ring ring_;
  RuleCounters counters_;
  bool removed_ = false;
  bool wake_pending_ = false;
  size_t readers_ = 0;
  WaiterId next_waiter_ = 1;
  std::map<WaiterId, std::function<void()>> waiters_;
};

struct CaptureLimits {
  size_t max_rules = 32;
  uint64_t min_limit = 4096;
  uint64_t max_limit = 64ull << 20;
  uint64_t max_total = 256ull << 20;  // the sum of all rules' limits
  size_t max_open = 64;               // capture files and streams open at once
  uint64_t max_snapshot_bytes = 512ull << 20;  // held by open .pcap/.pcapng files together
  size_t max_readers_per_rule = 16;
};

class CaptureSet {
 public:
  explicit CaptureSet(const Clock& clock, bool with_defaults = true, CaptureLimits limits = {});
  CaptureSet(const CaptureSet&) = delete;
  CaptureSet& operator=(const CaptureSet&) = delete;

  // The data path. Inline so that a link with no rules pays one branch.
  bool active() const { return !rules_.empty(); }
  void capture(uint32_t link, Direction dir, Bytes frame) {
    if (active()) record(link, dir, frame);
  }

  // One ctl line; the text follows "OK". Changes are logged at info level.
  [[nodiscard]] Result<std::string> command(std::string_view line);
  [[nodiscard]] Result<std::shared_ptr<Rule>> add(RuleSpec spec);
  [[nodiscard]] Result<void> remove(std::string_view name);
  [[nodiscard]] Result<uint64_t> clear(std::string_view name);  // records dropped

  std::shared_ptr<Rule> find(std::string_view name) const;
  const std::vector<std::shared_ptr<Rule>>& rules() const { return rules_; }
  const CaptureLimits& limits() const { return limits_; }

  // Links, for pcapng interface descriptions ("tap bt0@ns").
  void register_link(uint32_t link, std::string description);
  std::string link_name(uint32_t link) const;

  // Files: the ring as it is now.
  std::vector<uint8_t> snapshot_pcap(const Rule& r) const;
  std::vector<uint8_t> snapshot_pcapng(const Rule& r) const;
  std::string render_rules() const;

  // Open capture files and streams, bounded by limits().max_open, and the
  // bytes their snapshots hold, bounded by limits().max_snapshot_bytes.
  [[nodiscard]] Result<void> acquire_open(uint64_t snapshot_bytes = 0);
  void release_open(uint64_t snapshot_bytes = 0) {
    open_--;
    snapshot_bytes_ -= snapshot_bytes;
  }
  size_t open_count() const { return open_; }
  uint64_t snapshot_bytes() const { return snapshot_bytes_; }

  // Wakeups of live readers: `schedule` is called (at most once until the
  // next run_wakeups) when readers are waiting for new records; it must
  // arrange for run_wakeups() to run soon, outside the data path. Without a
  // scheduler, wakeups wait for an explicit run_wakeups() (tests).
  void set_wake_scheduler(std::function<void()> schedule) { schedule_ = std::move(schedule); }
  void run_wakeups();
  bool wakeups_pending() const { return !pending_.empty(); }

  // Set-wide counters.
  uint64_t frames_seen() const { return frames_seen_; }
  uint64_t total_limit() const;

 private:
  void record(uint32_t link, Direction dir, Bytes frame);
  Result<std::string> run_command(std::string_view line);
  void wake_later(const std::shared_ptr<Rule>& r);
  void retire(const std::shared_ptr<Rule>& r);

  const Clock& clock_;
  CaptureLimits limits_;
  std::vector<std::shared_ptr<Rule>> rules_;
  std::map<uint32_t, std::string> links_;
  std::vector<std::shared_ptr<Rule>> pending_;  // rules with readers to wake
  std::function<void()> schedule_;
  size_t open_ = 0;
  uint64_t snapshot_bytes_ = 0;
  uint64_t frames_seen_ = 0;
};

}  // namespace berth::pcap
