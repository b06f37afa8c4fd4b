// The tree every Berth process serves before components add theirs:
//   /README  /metrics  /audit  /debug/{version,date,zero,null}
#pragma once

#include <deque>
#include <memory>
#include <string>

#include "common/clock.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

namespace berth::p9 {

// The audit trail: who read which capture, when, and how many bytes. A
// bounded list of lines (the oldest go first), shown by /audit and logged.
class AuditLog {
 public:
  explicit AuditLog(size_t max_lines = 1024) : max_(max_lines) {}
  void record(std::string line);
  std::string render() const;
  uint64_t dropped() const { return dropped_; }

 private:
  size_t max_;
  std::deque<std::string> lines_;
  uint64_t dropped_ = 0;
};

struct BaseTree {
  std::shared_ptr<AuditLog> audit;
};

BaseTree mount_base_tree(Tree& tree, MetricsRegistry& metrics, const Clock& clock, const std::string& version);

}  // namespace berth::p9
