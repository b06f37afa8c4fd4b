#include "server9p/base.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstring>

namespace berth::p9 {

void AuditLog::record(std::string line) {
  spdlog::info("audit: {}", line);
  if (lines_.size() == max_) {
    lines_.pop_front();
    dropped_++;
  }
  lines_.push_back(std::move(line));
}

std::string AuditLog::render() const {
  std::string out;
  if (dropped_) out += fmt::format("# {} older entries dropped\n", dropped_);
  for (auto& l : lines_) out += l + "\n";
  return out;
}

BaseTree mount_base_tree(Tree& tree, MetricsRegistry& metrics, const Clock& clock, const std::string& version) {
  BaseTree b;
  auto* t = &tree;
  tree.root()->add(std::make_shared<StateFile>(
      "README", "what is here and how to use it", [t] {
        return "Berth control tree. Every file below is state you can read, or a ctl\n"
               "file you write commands to (read the same fid for OK/ERROR).\n\n" +
               t->describe();
      }));
  auto* m = &metrics;
  tree.root()->add(std::make_shared<StateFile>("metrics", "every counter in Prometheus text format",
                                               [m] { return m->render(); }));
  b.audit = std::make_shared<AuditLog>();
  tree.root()->add(std::make_shared<StateFile>("audit", "who read which capture, when, and how many bytes",
                                               [a = b.audit] { return a->render(); }));

  auto debug = std::make_shared<Dir>("debug", "diod-compatible files; attach with aname \"ctl\" to land here");
  tree.root()->add(debug);
  debug->add(std::make_shared<StateFile>("version", "server version", [version] { return version + "\n"; }));
  const Clock* c = &clock;
  // dioddate parses "SEC.USEC MINUTESWEST.DSTTIME".
  debug->add(std::make_shared<StateFile>("date", "server time, as dioddate reads it", [c] {
    WallTime now = c->now();
    return fmt::format("{}.{:06} 0.0\n", now.sec, now.nsec / 1000);
  }));
  debug->add(std::make_shared<FuncFile>(
      "zero", "endless zero bytes (load testing)", 0444,
      [](uint64_t, std::span<uint8_t> out) -> Result<size_t> {
        std::memset(out.data(), 0, out.size());
        return out.size();
      }));
  debug->add(std::make_shared<FuncFile>(
      "null", "discards writes (load testing)", 0666, [](uint64_t, std::span<uint8_t>) -> Result<size_t> { return 0; },
      [](uint64_t, Bytes data) -> Result<size_t> { return data.size(); }));
  return b;
}

}  // namespace berth::p9
