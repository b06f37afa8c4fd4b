#include "server9p/metrics.h"

#include <fmt/format.h>

#include <cstring>

#include "server9p/proto.h"

namespace berth::p9 {

void PromWriter::family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void PromWriter::sample(std::string_view name, uint64_t value, std::string_view labels) {
  if (labels.empty())
    out_ += fmt::format("{} {}\n", name, value);
  else
    out_ += fmt::format("{}{{{}}} {}\n", name, labels, value);
}

std::string MetricsRegistry::render() const {
  PromWriter w;
  for (auto& s : sources_) s(w);
  return std::move(w.text());
}

const char* proto_drop_name(ProtoDrop d) {
  switch (d) {
    case ProtoDrop::BadSize: return "bad_size";
    case ProtoDrop::Malformed: return "malformed";
    case ProtoDrop::TooManyWalkElems: return "too_many_walk_elements";
    case ProtoDrop::TagInUse: return "tag_in_use";
    case ProtoDrop::NoVersion: return "no_version";
    case ProtoDrop::kCount: break;
  }
  return "?";
}

void ServerStats::render(PromWriter& w) const {
  w.family("berth_9p_connections_total", "counter", "9P connections accepted");
  w.sample("berth_9p_connections_total", connections_total);
  w.family("berth_9p_connections_active", "gauge", "9P connections open now");
  w.sample("berth_9p_connections_active", connections_active);
  w.family("berth_9p_connections_refused_total", "counter", "9P connections refused at the connection limit");
  w.sample("berth_9p_connections_refused_total", connections_refused);
  w.family("berth_9p_bytes_received_total", "counter", "bytes received from 9P clients");
  w.sample("berth_9p_bytes_received_total", bytes_in);
  w.family("berth_9p_bytes_sent_total", "counter", "bytes sent to 9P clients");
  w.sample("berth_9p_bytes_sent_total", bytes_out);
  w.family("berth_9p_requests_total", "counter", "9P requests by message type");
  for (size_t t = 0; t < requests.size(); t++)
    if (requests[t]) w.sample("berth_9p_requests_total", requests[t], fmt::format("type=\"{}\"", msg_name(uint8_t(t))));
  w.family("berth_9p_errors_total", "counter", "9P error replies by errno");
  for (auto& [code, n] : errors) {
    const char* name = strerrorname_np(code);
    w.sample("berth_9p_errors_total", n, fmt::format("errno=\"{}\"", name ? name : std::to_string(code)));
  }
  w.family("berth_9p_dropped_connections_total", "counter", "9P connections closed for bad input, by reason");
  for (size_t i = 0; i < dropped.size(); i++)
    w.sample("berth_9p_dropped_connections_total", dropped[i],
             fmt::format("reason=\"{}\"", proto_drop_name(ProtoDrop(i))));
  w.family("berth_9p_fid_table_full_total", "counter", "fid allocations refused because the table was full");
  w.sample("berth_9p_fid_table_full_total", fid_table_full);
  w.family("berth_9p_pending_table_full_total", "counter", "blocking reads refused because too many were parked");
  w.sample("berth_9p_pending_table_full_total", pending_table_full);
  w.family("berth_9p_flushes_total", "counter", "Tflush requests");
  w.sample("berth_9p_flushes_total", flushes);
  w.family("berth_9p_reads_parked_total", "counter", "reads that blocked waiting for stream data");
  w.sample("berth_9p_reads_parked_total", reads_parked);
}

}  // namespace berth::p9
