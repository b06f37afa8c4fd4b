// Capture rules. Theory of operation:
//
// capture() is called by the link wrappers for every frame, both ways. With
// no rules it returns after one test. Otherwise each rule's filter runs on
// the whole frame; a match takes the time once per frame (the clock is the
// owner's: a fake in tests) and pushes min(len, snaplen) bytes into the
// rule's ring, which evicts its oldest records to make room. Counters say
// what matched, what was kept, and what was evicted.
//
// Live readers (tree.cpp) park with a one-shot waiter on the rule. A push
// into a rule with waiters queues the rule in pending_ and asks the
// scheduler once; run_wakeups() later fires the waiters. Waking is deferred
// because a reader's 9P reply may travel over the translator itself (the
// gateway's 9P service on TCP 564): replying from inside a link's send
// would re-enter the TCP code that is sending.
//
// Rules are shared_ptrs: a removed or replaced rule lives on while readers
// drain it, marked removed so that they end with EOF.
#include "pcap-ring/capture.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cassert>

namespace berth::pcap {

namespace {

std::vector<std::string_view> split_words(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) i++;
    size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != '\t') j++;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

bool parse_u64(std::string_view s, uint64_t& v) {
  if (s.empty() || s.size() > 19) return false;
  v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint64_t(c - '0');
  }
  return true;
}

constexpr const char* kUsage = "add NAME [FILTER...] [limit=SIZE] [snaplen=N], rm NAME, clear NAME";

std::string human_size(uint64_t n) {
  if (n % (1 << 20) == 0) return fmt::format("{}M", n >> 20);
  if (n % 1024 == 0) return fmt::format("{}k", n >> 10);
  return std::to_string(n);
}

}  // namespace

bool valid_rule_name(std::string_view n) {
  if (n.empty() || n.size() > 32) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
  if (!alnum(n[0])) return false;
  return std::all_of(n.begin(), n.end(), [&](char c) { return alnum(c) || c == '-' || c == '_'; });
}

Result<uint64_t> parse_size(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') digits++;
  uint64_t v = 0;
  if (!parse_u64(text.substr(0, digits), v)) return make_error(EINVAL, "bad size '" + std::string(text) + "'");
  std::string suffix;
  for (char c : text.substr(digits)) suffix += char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  int shift = 0;
  if (suffix.empty() || suffix == "b") shift = 0;
  else if (suffix == "k" || suffix == "kb" || suffix == "kib") shift = 10;
  else if (suffix == "m" || suffix == "mb" || suffix == "mib") shift = 20;
  else if (suffix == "g" || suffix == "gb" || suffix == "gib") shift = 30;
  else return make_error(EINVAL, "bad size '" + std::string(text) + "' (a number with k, m or g)");
  if (v > (UINT64_MAX >> 30)) return make_error(EINVAL, "size '" + std::string(text) + "' is too large");
  return v << shift;
}

Result<Command> parse_command(std::string_view line) {
  auto words = split_words(line);
  if (words.empty()) return make_error(EINVAL, std::string("empty command; use ") + kUsage);
  Command cmd;
  std::string_view op = words[0];
  if (op == "add") cmd.op = Command::Op::Add;
  else if (op == "rm") cmd.op = Command::Op::Rm;
  else if (op == "clear") cmd.op = Command::Op::Clear;
  else return make_error(EINVAL, "unknown command '" + std::string(op.substr(0, 64)) + "'; use " + kUsage);
  if (words.size() < 2) return make_error(EINVAL, std::string(op) + " needs a rule name; use " + kUsage);
  std::string_view name = words[1];
  if (!valid_rule_name(name))
    return make_error(EINVAL, "bad rule name '" + std::string(name.substr(0, 64)) +
                                  "' (1 to 32 letters, digits, '-' or '_', starting with a letter or digit)");
  cmd.spec.name = std::string(name);
  if (cmd.op != Command::Op::Add) {
    if (words.size() != 2) return make_error(EINVAL, std::string(op) + " takes one rule name");
    return cmd;
  }
  // Options are the words that start with "limit=" or "snaplen="; no
  // tcpdump primitive does. Everything else, in order, is the filter.
  bool have_limit = false, have_snaplen = false;
  std::string filter;
  for (size_t i = 2; i < words.size(); i++) {
    std::string_view w = words[i];
    if (w.starts_with("limit=")) {
      if (have_limit) return make_error(EINVAL, "limit= given twice");
      auto v = parse_size(w.substr(6));
      if (!v) return make_error(EINVAL, "limit: " + v.error().message);
      cmd.spec.limit = *v;
      have_limit = true;
    } else if (w.starts_with("snaplen=")) {
      if (have_snaplen) return make_error(EINVAL, "snaplen= given twice");
      uint64_t v = 0;
      if (!parse_u64(w.substr(8), v) || v < 1 || v > kMaxSnaplen)
        return make_error(EINVAL, "bad snaplen '" + std::string(w.substr(8, 32)) + "' (1 to " +
                                      std::to_string(kMaxSnaplen) + ")");
      cmd.spec.snaplen = uint32_t(v);
      have_snaplen = true;
    } else {
      if (!filter.empty()) filter += ' ';
      filter += w;
      if (filter.size() > Filter::kMaxExpression)
        return make_error(EINVAL, "filter longer than " + std::to_string(Filter::kMaxExpression) + " bytes");
    }
  }
  cmd.spec.filter = std::move(filter);
  return cmd;
}

// ---- Rule -------------------------------------------------------------------

Rule::Rule(RuleSpec spec, Filter filter)
    : spec_(std::move(spec)), filter_(std::move(filter)), ring_(size_t(spec_.limit)) {}

Rule::WaiterId Rule::add_waiter(std::function<void()> cb) {
  WaiterId id = next_waiter_++;
  waiters_.emplace(id, std::move(cb));
  return id;
}

void Rule::remove_waiter(WaiterId id) { waiters_.erase(id); }

// ---- CaptureSet -------------------------------------------------------------

CaptureSet::CaptureSet(const Clock& clock, bool with_defaults, CaptureLimits limits)
    : clock_(clock), limits_(limits) {
  if (!with_defaults) return;
  for (RuleSpec s : {RuleSpec{"all", "", 1 << 20, 256}, RuleSpec{"dns", "port 53", 256 << 10, kDefaultSnaplen},
                     RuleSpec{"dhcp", "port 67 or port 68", 64 << 10, 1514},
                     RuleSpec{"icmp", "icmp", 64 << 10, 1514}}) {
    auto r = add(std::move(s));
    assert(r);
    (void)r;
  }
}

uint64_t CaptureSet::total_limit() const {
  uint64_t t = 0;
  for (auto& r : rules_) t += r->spec().limit;
  return t;
}

std::shared_ptr<Rule> CaptureSet::find(std::string_view name) const {
  for (auto& r : rules_)
    if (r->name() == name) return r;
  return nullptr;
}

Result<std::shared_ptr<Rule>> CaptureSet::add(RuleSpec spec) {
  if (!valid_rule_name(spec.name)) return make_error(EINVAL, "bad rule name '" + spec.name.substr(0, 64) + "'");
  if (spec.snaplen < 1 || spec.snaplen > kMaxSnaplen)
    return make_error(EINVAL, "snaplen must be 1 to " + std::to_string(kMaxSnaplen));
  if (spec.limit < limits_.min_limit || spec.limit > limits_.max_limit)
    return make_error(EINVAL, fmt::format("limit {} is outside {}..{}", spec.limit, human_size(limits_.min_limit),
                                          human_size(limits_.max_limit)));
  // A ring must hold at least one packet of the largest size it keeps.
  uint64_t largest = Ring::record_size(std::min<uint32_t>(spec.snaplen, 65535));
  if (spec.limit < largest)
    return make_error(EINVAL, fmt::format("limit {} cannot hold one packet of snaplen {} ({} bytes with its header)",
                                          spec.limit, spec.snaplen, largest));
  std::shared_ptr<Rule> old = find(spec.name);
  if (!old && rules_.size() >= limits_.max_rules)
    return make_error(ENOSPC, fmt::format("too many capture rules (at most {})", limits_.max_rules));
  uint64_t total = total_limit() - (old ? old->spec().limit : 0) + spec.limit;
  if (total > limits_.max_total)
    return make_error(ENOSPC, fmt::format("capture rings would take {} bytes, more than the budget of {}", total,
                                          human_size(limits_.max_total)));
  auto filter = Filter::compile(spec.filter, spec.snaplen);
  if (!filter) return filter.error();
  spec.filter = filter->expression();
  auto rule = std::make_shared<Rule>(std::move(spec), std::move(filter.value()));
  if (old) {
    retire(old);
    *std::find(rules_.begin(), rules_.end(), old) = rule;
  } else {
    rules_.push_back(rule);
  }
  return rule;
}

void CaptureSet::retire(const std::shared_ptr<Rule>& r) {
  r->removed_ = true;
  if (!r->waiters_.empty()) wake_later(r);
}

Result<void> CaptureSet::remove(std::string_view name) {
  auto r = find(name);
  if (!r) return make_error(ENOENT, "no capture rule '" + std::string(name) + "'");
  retire(r);
  std::erase(rules_, r);
  return {};
}

Result<uint64_t> CaptureSet::clear(std::string_view name) {
  auto r = find(name);
  if (!r) return make_error(ENOENT, "no capture rule '" + std::string(name) + "'");
  uint64_t n = r->ring_.packets();
  r->ring_.clear();
  r->counters_.cleared += n;
  return n;
}

Result<std::string> CaptureSet::command(std::string_view line) {
  auto done = run_command(line);
  if (done) spdlog::info("pcap: {}", *done);
  return done;
}

Result<std::string> CaptureSet::run_command(std::string_view line) {
  auto cmd = parse_command(line);
  if (!cmd) return cmd.error();
  switch (cmd->op) {
    case Command::Op::Add: {
      bool existed = find(cmd->spec.name) != nullptr;
      auto r = add(std::move(cmd->spec));
      if (!r) return r.error();
      const RuleSpec& s = (*r)->spec();
      return fmt::format("{} {} limit={} snaplen={} filter={}", existed ? "replaced" : "added", s.name, s.limit,
                         s.snaplen, s.filter);
    }
    case Command::Op::Rm: {
      auto r = remove(cmd->spec.name);
      if (!r) return r.error();
      return "removed " + cmd->spec.name;
    }
    case Command::Op::Clear: {
      auto r = clear(cmd->spec.name);
      if (!r) return r.error();
      return fmt::format("cleared {} ({} packets)", cmd->spec.name, *r);
    }
  }
  return make_error(EINVAL, "unreachable");
}

void CaptureSet::record(uint32_t link, Direction dir, Bytes frame) {
  frames_seen_++;
  bool timed = false;
  RecordMeta meta;
  meta.orig_len = uint32_t(frame.size());
  meta.link = link;
  meta.dir = dir;
  for (auto& r : rules_) {
    if (!r->filter_.matches(frame)) continue;
    if (!timed) {
      WallTime now = clock_.now();
      meta.ts_ns = uint64_t(now.sec) * 1000000000ull + uint64_t(now.nsec);
      timed = true;
    }
    Bytes kept = frame.first(std::min<size_t>(frame.size(), r->spec_.snaplen));
    RuleCounters& c = r->counters_;
    c.matched_packets++;
    c.matched_bytes += frame.size();
    if (r->ring_.push(meta, kept)) {
      c.kept_packets++;
      c.kept_bytes += kept.size();
    }
    if (!r->waiters_.empty()) wake_later(r);
  }
}

void CaptureSet::wake_later(const std::shared_ptr<Rule>& r) {
  if (r->wake_pending_) return;
  r->wake_pending_ = true;
  bool first = pending_.empty();
  pending_.push_back(r);
  if (first && schedule_) schedule_();
}

void CaptureSet::run_wakeups() {
  auto rules = std::move(pending_);
  pending_.clear();
  for (auto& r : rules) {
    r->wake_pending_ = false;
    // One-shot: a callback may add a waiter again (a reader that parks).
    auto fire = std::move(r->waiters_);
    r->waiters_.clear();
    for (auto& [id, cb] : fire) cb();
  }
}

Result<void> CaptureSet::acquire_open(uint64_t snapshot_bytes) {
  if (open_ >= limits_.max_open)
    return make_error(ENFILE, fmt::format("too many capture files open (at most {})", limits_.max_open));
  if (snapshot_bytes > limits_.max_snapshot_bytes - snapshot_bytes_)
    return make_error(ENFILE, fmt::format("open capture files already hold {} bytes (at most {})", snapshot_bytes_,
                                          limits_.max_snapshot_bytes));
  open_++;
  snapshot_bytes_ += snapshot_bytes;
  return {};
}

void CaptureSet::register_link(uint32_t link, std::string description) { links_[link] = std::move(description); }

std::string CaptureSet::link_name(uint32_t link) const {
  auto it = links_.find(link);
  return it != links_.end() ? it->second : fmt::format("link {}", link);
}

std::vector<uint8_t> CaptureSet::snapshot_pcap(const Rule& r) const {
  const Ring& ring = r.ring();
  std::vector<uint8_t> out;
  out.reserve(kPcapHeaderLen + ring.packets() * kPcapRecordHeaderLen + ring.data_bytes());
  append_pcap_header(out, r.spec().snaplen);
  for (Ring::Cursor c = ring.begin(); c.seq < ring.end_seq();) {
    Ring::View v = ring.next(c);
    append_pcap_record(out, v.meta, v.a, v.b);
  }
  return out;
}

std::vector<uint8_t> CaptureSet::snapshot_pcapng(const Rule& r) const {
  const Ring& ring = r.ring();
  // One interface per link number, 0..highest seen or registered, so that
  // an EPB's interface id is its link number.
  uint32_t links = links_.empty() ? 0 : links_.rbegin()->first + 1;
  for (Ring::Cursor c = ring.begin(); c.seq < ring.end_seq();) links = std::max(links, ring.next(c).meta.link + 1);
  links = std::max<uint32_t>(links, 1);
  std::vector<uint8_t> out;
  out.reserve(64 + links * 64 + ring.packets() * pcapng_epb_len(0) + ring.data_bytes() + ring.packets() * 3);
  append_pcapng_shb(out);
  for (uint32_t i = 0; i < links; i++) append_pcapng_idb(out, r.spec().snaplen, link_name(i));
  for (Ring::Cursor c = ring.begin(); c.seq < ring.end_seq();) {
    Ring::View v = ring.next(c);
    append_pcapng_epb(out, v.meta, v.a, v.b);
  }
  return out;
}

std::string CaptureSet::render_rules() const {
  std::string out;
  for (auto& r : rules_) {
    const RuleSpec& s = r->spec();
    const RuleCounters& c = r->counters();
    const Ring& g = r->ring();
    out += fmt::format(
        "{} limit={} snaplen={} matched_packets={} matched_bytes={} kept_packets={} kept_bytes={} "
        "evicted_packets={} evicted_bytes={} ring_packets={} ring_bytes={} live_readers={} live_skipped={} "
        "cleared={} filter={}\n",
        s.name, s.limit, s.snaplen, c.matched_packets, c.matched_bytes, c.kept_packets, c.kept_bytes,
        g.evicted_packets(), g.evicted_bytes(), g.packets(), g.used(), r->live_readers(), c.live_skipped, c.cleared,
        s.filter);
  }
  return out;
}

}  // namespace berth::pcap
