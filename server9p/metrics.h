// Counters and their Prometheus text rendering.
//
// Components keep their counters as plain structs and register a render
// function; /metrics concatenates them. ServerStats are the 9P server's own.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace berth::p9 {

// Builds Prometheus exposition text (version 0.0.4).
class PromWriter {
 public:
  // Declares a metric family once (HELP and TYPE lines).
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, uint64_t value, std::string_view labels = {});
  std::string& text() { return out_; }

 private:
  std::string out_;
};

class MetricsRegistry {
 public:
  using Source = std::function<void(PromWriter&)>;
  void add(Source s) { sources_.push_back(std::move(s)); }
  std::string render() const;

 private:
  std::vector<Source> sources_;
};

// Reasons a connection is closed for bad input (STYLE.md §9).
enum class ProtoDrop : uint8_t {
  BadSize,          // size field < 7 or > negotiated msize
  Malformed,        // a field ran past the end, or bytes were left over
  TooManyWalkElems, // nwname > 16
  TagInUse,         // a new request reused an outstanding tag
  NoVersion,        // a request before Tversion
  kCount
};
const char* proto_drop_name(ProtoDrop d);

struct ServerStats {
  uint64_t connections_total = 0;
  uint64_t connections_active = 0;
  uint64_t connections_refused = 0;  // over the server's connection limit
  uint64_t bytes_in = 0, bytes_out = 0;
  std::array<uint64_t, 256> requests{};  // by T-message type
  std::map<int, uint64_t> errors;        // by errno of the reply
  std::array<uint64_t, size_t(ProtoDrop::kCount)> dropped{};  // connections closed for bad input
  uint64_t fid_table_full = 0;
  uint64_t pending_table_full = 0;
  uint64_t flushes = 0;
  uint64_t reads_parked = 0;

  void render(PromWriter& w) const;
};

}  // namespace berth::p9
