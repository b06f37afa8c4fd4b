// /disks/<id>/{info,stats,ctl} and the disks' metrics. Theory of operation:
//
// info and stats are StateFiles over the backend's thread-safe stats
// snapshot and the NBD counters, both readable on the main loop.
//
// ctl cannot be a plain CtlFile: the result of a job arrives long after the
// write. Its open file renders the disk's job status when read at offset 0
// (and keeps that text for reads further in, so one `cat` sees one
// consistent snapshot). The fid that started a job first shows "OK started
// ...", then the live status line; a write that failed shows "ERROR ..." and
// the write itself fails with the error's errno, as DESIGN.md requires.
#include "storage/disk_tree.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace berth::storage {

std::string human_bytes(uint64_t n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (n < 1024) return fmt::format("{} B", n);
  double v = double(n);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    u++;
  }
  if (v >= 100 || v == double(uint64_t(v))) return fmt::format("{:.0f} {}", v, units[u]);
  return fmt::format("{:.1f} {}", v, units[u]);
}

std::string render_disk_info(const Disk& d) {
  BlockStats s = d.stats();
  std::string out;
  out += fmt::format("id {}\n", d.id());
  out += fmt::format("path {}\n", d.path());
  out += fmt::format("format {}\n", d.backend().format());
  out += fmt::format("virtual_size {}\n", d.backend().size());
  out += fmt::format("cluster_size {}\n", s.cluster_size);
  out += fmt::format("file_size {}\n", s.file_size);
  out += fmt::format("read_only {}\n", d.backend().read_only() ? "true" : "false");
  for (auto& a : d.nbd().addresses()) out += fmt::format("nbd {}\n", a);
  return out;
}

std::string render_disk_stats(const Disk& d) {
  BlockStats s = d.stats();
  const NbdStats& n = d.nbd().stats();
  JobStatus j = d.job_status();
  std::string out;
  auto line = [&out](std::string_view k, uint64_t v) { out += fmt::format("{} {}\n", k, v); };
  line("reads", s.reads);
  line("writes", s.writes);
  line("flushes", s.flushes);
  line("discards", s.discards);
  line("write_zeroes", s.write_zeroes);
  line("bytes_read", s.bytes_read);
  line("bytes_written", s.bytes_written);
  line("bytes_discarded", s.bytes_discarded);
  line("bytes_zeroed", s.bytes_zeroed);
  line("errors", s.errors);
  line("cluster_size", s.cluster_size);
  line("allocated_clusters", s.allocated_clusters);
  line("free_clusters", s.free_clusters);
  line("file_size", s.file_size);
  line("virtual_size", s.virtual_size);
  line("l2_cache_hits", s.l2_hits);
  line("l2_cache_misses", s.l2_misses);
  line("refcount_cache_hits", s.refcount_hits);
  line("refcount_cache_misses", s.refcount_misses);
  out += fmt::format("last_check {}\n", s.last_check.empty() ? "never" : s.last_check);
  line("nbd_connections", n.connections_active);
  line("nbd_connections_total", n.connections_total);
  line("nbd_protocol_errors", n.protocol_errors);
  line("nbd_error_replies", n.error_replies);
  out += fmt::format("job {}\n", d.status_line());
  return out;
}

namespace {

Result<size_t> copy_window(const std::string& s, uint64_t offset, std::span<uint8_t> out) {
  if (offset >= s.size()) return size_t(0);
  size_t n = std::min(out.size(), s.size() - size_t(offset));
  std::memcpy(out.data(), s.data() + offset, n);
  return n;
}

class DiskCtlHandle final : public p9::OpenFile {
 public:
  explicit DiskCtlHandle(Disk* d) : d_(d) {}

  Result<size_t> read(uint64_t offset, std::span<uint8_t> out) override {
    if (offset == 0 || snapshot_.empty()) snapshot_ = render();
    return copy_window(snapshot_, offset, out);
  }

  Result<size_t> write(uint64_t, Bytes data) override {
    // One command per line; stop at the first failure.
    std::string_view text = as_chars(data);
    std::string ok;
    size_t ran = 0;
    while (!text.empty()) {
      size_t nl = text.find('\n');
      std::string_view line = text.substr(0, nl);
      text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
      while (!line.empty() && std::strchr(" \t\r", line.back())) line.remove_suffix(1);
      while (!line.empty() && std::strchr(" \t", line.front())) line.remove_prefix(1);
      if (line.empty()) continue;
      ran++;
      auto r = d_->command(line);
      if (!r) {
        result_ = "ERROR " + r.error().message + "\n";
        snapshot_.clear();
        return r.error();
      }
      ok += "OK " + r.value() + "\n";
    }
    if (ran == 0) {
      result_ = "ERROR empty command\n";
      snapshot_.clear();
      return make_error(EINVAL, "empty command");
    }
    result_ = std::move(ok);
    started_ = true;
    snapshot_.clear();
    return data.size();
  }

  Result<void> truncate(uint64_t) override { return {}; }  // "echo >" truncates
  uint64_t size() const override { return render().size(); }

 private:
  std::string render() const {
    if (!result_.empty() && !started_) return result_;  // a failed write
    return result_ + d_->status_line() + "\n";
  }

  Disk* d_;
  std::string result_;   // what this fid's write said
  bool started_ = false;
  std::string snapshot_;
};

class DiskCtlFile final : public p9::Node {
 public:
  explicit DiskCtlFile(Disk* d)
      : Node("ctl", 0644,
             "write check, compact or discard-zeroes; reads show the job's progress, then OK ... or ERROR ...",
             false),
        d_(d) {}
  uint64_t size() const override { return d_->status_line().size() + 1; }
  Result<std::unique_ptr<p9::OpenFile>> open(p9::Access, bool) override {
    return std::unique_ptr<p9::OpenFile>(std::make_unique<DiskCtlHandle>(d_));
  }

 private:
  Disk* d_;
};

}  // namespace

void mount_disk_tree(p9::Tree& tree, Disk& disk) {
  Disk* d = &disk;
  if (!tree.root()->lookup("disks"))
    tree.root()->add(std::make_shared<p9::Dir>("disks", "one directory per --disk: info, stats, ctl", 0555));
  auto dir = std::make_shared<p9::Dir>(disk.id(), "one disk: info, stats, ctl", 0555);
  tree.mount("/disks", dir);
  dir->add(std::make_shared<p9::StateFile>(
      "info", "format, virtual size, cluster size, file size, path and NBD addresses", [d] { return render_disk_info(*d); }));
  dir->add(std::make_shared<p9::StateFile>(
      "stats", "reads, writes, discards, bytes, allocated and free clusters, cache hits, last check, job",
      [d] { return render_disk_stats(*d); }));
  dir->add(std::make_shared<DiskCtlFile>(d));
}

void render_disk_metrics(p9::PromWriter& w, const std::vector<const Disk*>& disks) {
  if (disks.empty()) return;
  struct Counter {
    const char* name;
    const char* type;
    const char* help;
    uint64_t (*get)(const BlockStats&);
  };
  static const Counter counters[] = {
      {"berth_disk_reads_total", "counter", "disk read requests", [](const BlockStats& s) { return s.reads; }},
      {"berth_disk_writes_total", "counter", "disk write requests", [](const BlockStats& s) { return s.writes; }},
      {"berth_disk_flushes_total", "counter", "disk flushes", [](const BlockStats& s) { return s.flushes; }},
      {"berth_disk_discards_total", "counter", "disk discard requests", [](const BlockStats& s) { return s.discards; }},
      {"berth_disk_write_zeroes_total", "counter", "disk write-zeroes requests",
       [](const BlockStats& s) { return s.write_zeroes; }},
      {"berth_disk_read_bytes_total", "counter", "bytes read from the disk",
       [](const BlockStats& s) { return s.bytes_read; }},
      {"berth_disk_written_bytes_total", "counter", "bytes written to the disk",
       [](const BlockStats& s) { return s.bytes_written; }},
      {"berth_disk_discarded_bytes_total", "counter", "bytes discarded",
       [](const BlockStats& s) { return s.bytes_discarded; }},
      {"berth_disk_zeroed_bytes_total", "counter", "bytes zeroed", [](const BlockStats& s) { return s.bytes_zeroed; }},
      {"berth_disk_errors_total", "counter", "failed disk requests", [](const BlockStats& s) { return s.errors; }},
      {"berth_disk_allocated_clusters", "gauge", "clusters in use", [](const BlockStats& s) { return s.allocated_clusters; }},
      {"berth_disk_free_clusters", "gauge", "unused clusters inside the image file",
       [](const BlockStats& s) { return s.free_clusters; }},
      {"berth_disk_file_size_bytes", "gauge", "size of the image file", [](const BlockStats& s) { return s.file_size; }},
      {"berth_disk_virtual_size_bytes", "gauge", "size of the virtual disk",
       [](const BlockStats& s) { return s.virtual_size; }},
      {"berth_disk_l2_cache_hits_total", "counter", "qcow2 L2 cache hits", [](const BlockStats& s) { return s.l2_hits; }},
      {"berth_disk_l2_cache_misses_total", "counter", "qcow2 L2 cache misses",
       [](const BlockStats& s) { return s.l2_misses; }},
      {"berth_disk_refcount_cache_hits_total", "counter", "qcow2 refcount cache hits",
       [](const BlockStats& s) { return s.refcount_hits; }},
      {"berth_disk_refcount_cache_misses_total", "counter", "qcow2 refcount cache misses",
       [](const BlockStats& s) { return s.refcount_misses; }},
  };
  std::vector<BlockStats> stats;
  for (auto* d : disks) stats.push_back(d->stats());
  for (auto& c : counters) {
    w.family(c.name, c.type, c.help);
    for (size_t i = 0; i < disks.size(); i++)
      w.sample(c.name, c.get(stats[i]), fmt::format("disk=\"{}\"", disks[i]->id()));
  }
  w.family("berth_disk_job_running", "gauge", "1 while a check, compact or discard-zeroes runs");
  for (auto* d : disks)
    w.sample("berth_disk_job_running", d->job_status().state == JobStatus::State::Running ? 1 : 0,
             fmt::format("disk=\"{}\"", d->id()));
  // NBD export counters, one family at a time.
  struct NbdCounter {
    const char* name;
    const char* type;
    const char* help;
    uint64_t (*get)(const NbdStats&);
  };
  static const NbdCounter nbd[] = {
      {"berth_nbd_connections_total", "counter", "NBD connections accepted",
       [](const NbdStats& s) { return s.connections_total; }},
      {"berth_nbd_connections_active", "gauge", "NBD connections open now",
       [](const NbdStats& s) { return s.connections_active; }},
      {"berth_nbd_connections_refused_total", "counter", "NBD connections refused at the limit",
       [](const NbdStats& s) { return s.connections_refused; }},
      {"berth_nbd_protocol_errors_total", "counter", "NBD connections closed for bad input",
       [](const NbdStats& s) { return s.protocol_errors; }},
      {"berth_nbd_error_replies_total", "counter", "NBD replies carrying an error",
       [](const NbdStats& s) { return s.error_replies; }},
      {"berth_nbd_read_bytes_total", "counter", "bytes sent in NBD read replies",
       [](const NbdStats& s) { return s.bytes_read; }},
      {"berth_nbd_written_bytes_total", "counter", "bytes received in NBD writes",
       [](const NbdStats& s) { return s.bytes_written; }},
      {"berth_nbd_read_pauses_total", "counter", "times an NBD connection stopped reading for backpressure",
       [](const NbdStats& s) { return s.read_pauses; }},
  };
  for (auto& c : nbd) {
    w.family(c.name, c.type, c.help);
    for (auto* d : disks) w.sample(c.name, c.get(d->nbd().stats()), fmt::format("disk=\"{}\"", d->id()));
  }
  w.family("berth_nbd_requests_total", "counter", "NBD requests by command");
  for (auto* d : disks) {
    const NbdStats& s = d->nbd().stats();
    for (uint16_t t = 0; t < s.requests.size(); t++)
      if (s.requests[t])
        w.sample("berth_nbd_requests_total", s.requests[t],
                 fmt::format("disk=\"{}\",command=\"{}\"", d->id(), nbd::command_name(t)));
    if (s.requests_other)
      w.sample("berth_nbd_requests_total", s.requests_other, fmt::format("disk=\"{}\",command=\"other\"", d->id()));
  }
}

void mount_disk_metrics(p9::MetricsRegistry& metrics, std::vector<const Disk*> disks) {
  metrics.add([disks = std::move(disks)](p9::PromWriter& w) { render_disk_metrics(w, disks); });
}

}  // namespace berth::storage
