// /pcap: capture rules and rings as files. Theory of operation:
//
// /pcap is a directory with two static files (ctl, rules) and a generator
// that lists three files per rule. Nodes are cached per rule object, so a
// rule's files keep their qids while it exists; a replaced rule gets new
// nodes (and its old ones answer ENOENT on open, like a deleted file).
//
// Opening NAME.pcap / NAME.pcapng renders the ring into a buffer at once
// (state-file semantics: a snapshot, stable for the fid, size reported).
// NAME.live is a cursor into the ring itself: no copy is kept per reader.
// It starts at the ring's end; each read encodes whole records from the
// cursor; a cursor the writer has overtaken moves to the oldest record and
// the records it missed are counted. An empty read parks (EAGAIN) with a
// one-shot waiter on the rule, fired by CaptureSet::run_wakeups.
//
// Every open file carries an Auditor that writes the /audit lines described
// in tree.h. Opens are bounded by CaptureSet::limits().max_open, and live
// readers per rule by max_readers_per_rule.
#include "pcap-ring/tree.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <map>

namespace berth::pcap {

namespace {

constexpr int64_t kNs = 1000000000;

int64_t to_ns(WallTime t) { return t.sec * kNs + t.nsec; }

// Client text in an audit line: printable, no spaces, bounded.
std::string clean(std::string_view s, size_t max = 64) {
  std::string out;
  for (char c : s.substr(0, max)) out += (c > ' ' && c < 0x7f) ? c : '?';
  return out.empty() ? "-" : out;
}

struct Env {
  CaptureSet* set;
  std::shared_ptr<p9::AuditLog> audit;
  const Clock* clock;
};

class Auditor {
 public:
  Auditor(std::shared_ptr<Env> env, const p9::OpenContext& who)
      : env_(std::move(env)),
        tail_(fmt::format(" peer={} uname={}", clean(who.peer, 128), clean(who.uname))),
        path_(clean(who.path, 256)) {}
  Auditor(Auditor&&) = default;
  ~Auditor() { closed(); }

  void opened(uint64_t size) { line("open", "size", size); }
  void read(size_t n) {
    if (n == 0 || done_) return;
    total_ += n;
    unreported_ += n;
    int64_t now = to_ns(env_->clock->now());
    if (last_read_ns_ >= 0 && now - last_read_ns_ < kNs) return;  // coalesced into the next line
    last_read_ns_ = now;
    line("read", "bytes", unreported_);
    unreported_ = 0;
  }
  void closed() {
    if (done_ || !env_) return;
    done_ = true;
    line("close", "bytes", total_);
  }

 private:
  void line(std::string_view op, std::string_view key, uint64_t v) {
    env_->audit->record(fmt::format("{} {} {} {}={}{}", audit_time(env_->clock->now()), op, path_, key, v, tail_));
  }
  std::shared_ptr<Env> env_;
  std::string tail_, path_;
  int64_t last_read_ns_ = -1;
  uint64_t total_ = 0, unreported_ = 0;
  bool done_ = false;
};

// A capture file's snapshot, served like a state file.
class SnapshotFile final : public p9::OpenFile {
 public:
  SnapshotFile(std::shared_ptr<Env> env, std::vector<uint8_t> content, Auditor auditor)
      : env_(std::move(env)), content_(std::move(content)), auditor_(std::move(auditor)) {
    auditor_.opened(content_.size());
  }
  ~SnapshotFile() override {
    auditor_.closed();
    env_->set->release_open(content_.size());
  }
  Result<size_t> read(uint64_t offset, std::span<uint8_t> out) override {
    if (offset >= content_.size()) return size_t(0);
    size_t n = std::min<uint64_t>(out.size(), content_.size() - offset);
    std::memcpy(out.data(), content_.data() + offset, n);
    auditor_.read(n);
    return n;
  }
  uint64_t size() const override { return content_.size(); }

 private:
  std::shared_ptr<Env> env_;
  std::vector<uint8_t> content_;
  Auditor auditor_;
};

// A live cursor into a rule's ring, as a pcap stream.
class LiveFile final : public p9::OpenFile {
 public:
  LiveFile(std::shared_ptr<Env> env, std::shared_ptr<Rule> rule, Auditor auditor)
      : env_(std::move(env)), rule_(std::move(rule)), auditor_(std::move(auditor)), cursor_(rule_->ring().end()) {
    pending_.resize(kPcapHeaderLen);
    emit_pcap_header(pending_.data(), rule_->spec().snaplen);
    rule_->reader_opened();
    auditor_.opened(0);
  }
  ~LiveFile() override {
    cancel_wait();
    rule_->reader_closed();
    auditor_.closed();
    env_->set->release_open();
  }

  Result<size_t> read(uint64_t, std::span<uint8_t> out) override {
    size_t n = 0;
    if (sent_ < pending_.size()) {  // the rest of a header or of a record cut by a small read
      n = std::min(out.size(), pending_.size() - sent_);
      std::memcpy(out.data(), pending_.data() + sent_, n);
      sent_ += n;
      if (sent_ < pending_.size()) return done(n);
    }
    const Ring& ring = rule_->ring();
    for (;;) {
      catch_up();
      if (cursor_.seq >= ring.end_seq()) break;
      size_t rec = kPcapRecordHeaderLen + ring.peek_caplen(cursor_);
      size_t room = out.size() - n;
      if (rec > room && n > 0) break;  // whole records only, unless one alone is larger than the read
      Ring::View v = ring.next(cursor_);
      if (rec <= room) {
        emit_pcap_record_header(out.data() + n, v.meta, v.caplen);
        std::memcpy(out.data() + n + kPcapRecordHeaderLen, v.a.data(), v.a.size());
        if (!v.b.empty()) std::memcpy(out.data() + n + kPcapRecordHeaderLen + v.a.size(), v.b.data(), v.b.size());
        n += rec;
      } else {
        pending_.clear();
        append_pcap_record(pending_, v.meta, v.a, v.b);
        sent_ = room;
        std::memcpy(out.data() + n, pending_.data(), room);
        n += room;
        break;
      }
    }
    return done(n);
  }

  void wait_readable(std::function<void()> cb) override {
    cancel_wait();
    if (readable()) return cb();
    waiter_ = rule_->add_waiter([this, cb = std::move(cb)] {
      waiter_ = 0;
      cb();
    });
  }
  void cancel_wait() override {
    if (waiter_) rule_->remove_waiter(waiter_);
    waiter_ = 0;
  }

 private:
  // A cursor the writer has overtaken moves to the oldest record kept; what
  // it missed is counted (records dropped by `clear` are not "missed").
  void catch_up() {
    const Ring& ring = rule_->ring();
    if (cursor_.seq >= ring.first_seq()) return;
    uint64_t from = std::max(cursor_.seq, ring.cleared_seq());
    if (ring.first_seq() > from) rule_->count_skipped(ring.first_seq() - from);
    cursor_ = ring.begin();
  }
  bool readable() const {
    return sent_ < pending_.size() || cursor_.seq != rule_->ring().end_seq() || rule_->removed();
  }
  Result<size_t> done(size_t n) {
    if (n > 0) {
      auditor_.read(n);
      return n;
    }
    if (rule_->removed()) return size_t(0);
    return make_error(EAGAIN, "no new packets yet");
  }

  std::shared_ptr<Env> env_;
  std::shared_ptr<Rule> rule_;
  Auditor auditor_;
  Ring::Cursor cursor_;
  std::vector<uint8_t> pending_;
  size_t sent_ = 0;
  Rule::WaiterId waiter_ = 0;
};

enum class Kind { Pcap, Pcapng, Live };

class CaptureNode final : public p9::Node {
 public:
  CaptureNode(std::string name, std::string description, Kind kind, std::weak_ptr<Rule> rule,
              std::shared_ptr<Env> env)
      : Node(std::move(name), 0444, std::move(description), false), kind_(kind), rule_(std::move(rule)),
        env_(std::move(env)) {}

  uint64_t size() const override {
    auto r = rule_.lock();
    if (!r || kind_ == Kind::Live) return 0;
    const Ring& g = r->ring();
    if (kind_ == Kind::Pcap) return kPcapHeaderLen + g.packets() * kPcapRecordHeaderLen + g.data_bytes();
    return 0;  // pcapng: known once open (the open file reports it)
  }

  Result<std::unique_ptr<p9::OpenFile>> open(p9::Access access, bool truncate) override {
    p9::OpenContext who;
    who.path = "/pcap/" + name();
    return open_as(who, access, truncate);
  }

  Result<std::unique_ptr<p9::OpenFile>> open_as(const p9::OpenContext& who, p9::Access access, bool) override {
    if (p9::wants_write(access)) return make_error(EACCES, "captures are read-only");
    auto r = rule_.lock();
    if (!r || r->removed()) return make_error(ENOENT, "the capture rule was removed");
    CaptureSet& set = *env_->set;
    if (kind_ == Kind::Live && r->live_readers() >= set.limits().max_readers_per_rule)
      return make_error(ENFILE, fmt::format("too many live readers of {} (at most {})", r->name(),
                                            set.limits().max_readers_per_rule));
    if (kind_ == Kind::Live) {
      if (auto ok = set.acquire_open(); !ok) return ok.error();
      return std::unique_ptr<p9::OpenFile>(std::make_unique<LiveFile>(env_, r, Auditor(env_, who)));
    }
    std::vector<uint8_t> content = kind_ == Kind::Pcap ? set.snapshot_pcap(*r) : set.snapshot_pcapng(*r);
    if (auto ok = set.acquire_open(content.size()); !ok) return ok.error();
    return std::unique_ptr<p9::OpenFile>(std::make_unique<SnapshotFile>(env_, std::move(content), Auditor(env_, who)));
  }

 private:
  Kind kind_;
  std::weak_ptr<Rule> rule_;
  std::shared_ptr<Env> env_;
};

constexpr const char* kCtlUsage =
    "commands, one per line:\n"
    "  add NAME [FILTER...] [limit=SIZE] [snaplen=N]   tcpdump filter syntax; SIZE like 256k, 1M\n"
    "  rm NAME\n"
    "  clear NAME\n";

}  // namespace

std::string audit_time(WallTime t) {
  time_t sec = time_t(t.sec);
  struct tm tm {};
  gmtime_r(&sec, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:06}Z", buf, t.nsec / 1000);
}

void mount_pcap_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, CaptureSet& set,
                     std::shared_ptr<p9::AuditLog> audit, const Clock& clock) {
  auto env = std::make_shared<Env>(Env{&set, std::move(audit), &clock});
  CaptureSet* s = &set;
  auto dir = std::make_shared<p9::Dir>("pcap", "packet capture: rules, rings as pcap files, live streams");
  tree.root()->add(dir);
  dir->add(std::make_shared<p9::CtlFile>(
      "ctl", "add NAME [FILTER...] [limit=SIZE] [snaplen=N], rm NAME, clear NAME",
      [s](std::string_view line) { return s->command(line); }, kCtlUsage));
  dir->add(std::make_shared<p9::StateFile>("rules", "capture rules: filter, limit, snaplen, counters",
                                           [s] { return s->render_rules(); }));

  // Three nodes per rule object, made once (stable qids while it exists).
  struct Cached {
    std::weak_ptr<Rule> rule;
    std::vector<p9::NodePtr> nodes;
  };
  auto cache = std::make_shared<std::map<const Rule*, Cached>>();
  dir->set_generator([s, env, cache] {
    std::vector<p9::NodePtr> out;
    std::map<const Rule*, Cached> keep;
    for (auto& r : s->rules()) {
      auto it = cache->find(r.get());
      Cached c;
      if (it != cache->end() && it->second.rule.lock() == r) {
        c = std::move(it->second);
      } else {
        c.rule = r;
        c.nodes = {
            std::make_shared<CaptureNode>(r->name() + ".pcap", "", Kind::Pcap, r, env),
            std::make_shared<CaptureNode>(r->name() + ".pcapng", "", Kind::Pcapng, r, env),
            std::make_shared<CaptureNode>(r->name() + ".live", "", Kind::Live, r, env),
        };
      }
      out.insert(out.end(), c.nodes.begin(), c.nodes.end());
      keep.emplace(r.get(), std::move(c));
    }
    *cache = std::move(keep);
    return out;
  });

  metrics.add([s](p9::PromWriter& w) {
    w.family("berth_pcap_rules", "gauge", "capture rules");
    w.sample("berth_pcap_rules", s->rules().size());
    auto label = [](const Rule& r, std::string_view what) {
      return what.empty() ? fmt::format("rule=\"{}\"", r.name()) : fmt::format("rule=\"{}\",what=\"{}\"", r.name(), what);
    };
    w.family("berth_pcap_packets_total", "counter", "packets per capture rule: matched, kept, evicted, live_skipped");
    for (auto& r : s->rules()) {
      const RuleCounters& c = r->counters();
      w.sample("berth_pcap_packets_total", c.matched_packets, label(*r, "matched"));
      w.sample("berth_pcap_packets_total", c.kept_packets, label(*r, "kept"));
      w.sample("berth_pcap_packets_total", r->ring().evicted_packets(), label(*r, "evicted"));
      w.sample("berth_pcap_packets_total", c.live_skipped, label(*r, "live_skipped"));
    }
    w.family("berth_pcap_bytes_total", "counter", "bytes per capture rule: matched (original), kept (captured)");
    for (auto& r : s->rules()) {
      w.sample("berth_pcap_bytes_total", r->counters().matched_bytes, label(*r, "matched"));
      w.sample("berth_pcap_bytes_total", r->counters().kept_bytes, label(*r, "kept"));
    }
    w.family("berth_pcap_ring_bytes", "gauge", "bytes in use in each capture ring");
    for (auto& r : s->rules()) w.sample("berth_pcap_ring_bytes", r->ring().used(), label(*r, ""));
  });
}

}  // namespace berth::pcap
