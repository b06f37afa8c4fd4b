// Disks: spec parsing, opening, ctl jobs, and `berth serve --disk`.
// Theory of operation:
//
// A Disk owns its backend, the IoThread that alone calls it, and the
// NbdServer that feeds that thread. Ctl commands become IoJobs: the qcow2
// engine's jobs (Qcow2Job: compaction, discard of zero clusters) do a budget
// of clusters per step; the budget adapts so that one step takes about
// kStepTarget, which bounds how long a guest request waits behind the job.
// Check has no steps in the engine: it runs as one step.
//
// Shutdown order matters: the NBD export closes first (no new requests),
// then the I/O thread finishes what is queued, flushes and exits, and only
// then is the backend closed (its destructor writes everything back).
#include "storage/disk.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <set>

#include "storage/disk_tree.h"
#include "storage/qcow2.h"

namespace berth::storage {

namespace {

constexpr auto kStepTarget = std::chrono::milliseconds(20);

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::strchr(" \t\r\n", s.front())) s.remove_prefix(1);
  while (!s.empty() && std::strchr(" \t\r\n", s.back())) s.remove_suffix(1);
  return s;
}

// Adapts a Qcow2Job to the I/O thread's IoJob, tuning its budget. The
// engine's job is created in the first step, on the I/O thread, because
// creating it registers it with the backend the thread is using.
class Qcow2JobAdapter final : public IoJob {
 public:
  using Start = Result<std::unique_ptr<Qcow2Job>> (Qcow2Backend::*)();
  Qcow2JobAdapter(std::string name, Qcow2Backend& b, Start start) : name_(std::move(name)), b_(b), start_(start) {}
  std::string name() const override { return name_; }
  Result<bool> step(BlockBackend&) override {
    if (!job_) {
      auto j = (b_.*start_)();
      if (!j) return j.error();
      job_ = std::move(j.value());
    }
    auto t0 = std::chrono::steady_clock::now();
    auto r = job_->step(budget_);
    auto took = std::chrono::steady_clock::now() - t0;
    if (took < kStepTarget / 2 && budget_ < (1u << 20))
      budget_ *= 2;
    else if (took > kStepTarget * 2 && budget_ > 1)
      budget_ /= 2;
    return r;
  }
  int percent() const override { return job_ ? int(job_->percent()) : 0; }
  std::string summary() const override { return job_ ? job_->summary() : std::string(); }

 private:
  std::string name_;
  Qcow2Backend& b_;
  Start start_;
  std::unique_ptr<Qcow2Job> job_;
  uint64_t budget_ = 16;
};

class CheckJob final : public IoJob {
 public:
  CheckJob(Qcow2Backend& b, bool repair) : b_(b), repair_(repair) {}
  std::string name() const override { return repair_ ? "check repair" : "check"; }
  Result<bool> step(BlockBackend&) override {
    auto r = b_.check(repair_);
    if (!r) return r.error();
    result_ = r.value();
    done_ = true;
    return true;
  }
  int percent() const override { return done_ ? 100 : 0; }
  std::string summary() const override { return result_.summary(); }

 private:
  Qcow2Backend& b_;
  bool repair_;
  bool done_ = false;
  CheckResult result_;
};

}  // namespace

bool valid_disk_id(std::string_view id) {
  if (id.empty() || id.size() > 64 || id == "." || id == "..") return false;
  for (char c : id)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

std::string DiskSpec::to_string() const {
  std::string p;
  for (char c : path) p += c == ',' ? std::string(",,") : std::string(1, c);
  std::string s = id + "=" + p;
  if (!format.empty()) s += ",format=" + format;
  for (auto& a : nbd) s += ",nbd=" + a;
  if (read_only) s += ",ro";
  return s;
}

Result<DiskSpec> parse_disk_spec(std::string_view spec) {
  static const char* grammar = "ID=PATH[,format=qcow2|raw][,nbd=unix:PATH|tcp:HOST:PORT]...[,ro]";
  DiskSpec d;
  size_t eq = spec.find('=');
  if (eq == std::string_view::npos) return make_error(EINVAL, fmt::format("disk spec needs ID=PATH: {}", grammar));
  d.id = std::string(spec.substr(0, eq));
  if (!valid_disk_id(d.id))
    return make_error(EINVAL, fmt::format("bad disk id '{}' (1-64 of A-Z a-z 0-9 . _ -)", d.id));
  // Split the rest at single commas; ",," is a literal comma.
  std::vector<std::string> parts(1);
  std::string_view rest = spec.substr(eq + 1);
  for (size_t i = 0; i < rest.size(); i++) {
    if (rest[i] == ',') {
      if (i + 1 < rest.size() && rest[i + 1] == ',') {
        parts.back() += ',';
        i++;
      } else {
        parts.emplace_back();
      }
    } else {
      parts.back() += rest[i];
    }
  }
  d.path = parts[0];
  if (d.path.empty()) return make_error(EINVAL, fmt::format("disk {}: empty path ({})", d.id, grammar));
  for (size_t i = 1; i < parts.size(); i++) {
    std::string_view p = parts[i];
    if (p == "ro" || p == "readonly" || p == "read-only") {
      d.read_only = true;
    } else if (p.starts_with("format=")) {
      d.format = std::string(p.substr(7));
      if (d.format != "qcow2" && d.format != "raw")
        return make_error(EINVAL, fmt::format("disk {}: format must be qcow2 or raw, not '{}'", d.id, d.format));
    } else if (p.starts_with("nbd=")) {
      std::string a(p.substr(4));
      if (a.empty()) return make_error(EINVAL, fmt::format("disk {}: nbd= needs unix:PATH or tcp:HOST:PORT", d.id));
      d.nbd.push_back(a);
    } else {
      return make_error(EINVAL, fmt::format("disk {}: unknown option '{}' ({})", d.id, p, grammar));
    }
  }
  return d;
}

Result<std::string> detect_format(const std::string& path) { return probe_format(path); }

Result<std::unique_ptr<BlockBackend>> open_backend(const std::string& path, const std::string& format, bool read_only) {
  ImageOptions o;
  o.format = format;
  o.read_only = read_only;
  o.qcow2.read_only = read_only;
  return open_image(path, o);
}

Result<std::unique_ptr<IoJob>> make_disk_job(std::string_view command, BlockBackend& backend) {
  std::string_view c = trim(command);
  std::string_view verb = c.substr(0, c.find_first_of(" \t"));
  std::string_view args = trim(c.substr(verb.size()));
  auto* q = dynamic_cast<Qcow2Backend*>(&backend);
  auto no_args = [&]() -> Result<void> {
    if (!args.empty()) return make_error(EINVAL, fmt::format("{} takes no arguments", verb));
    return {};
  };
  if (verb == "check") {
    bool repair = false;
    if (args == "repair" || args == "--repair")
      repair = true;
    else if (!args.empty())
      return make_error(EINVAL, "usage: check [repair]");
    if (!q) return make_error(ENOTSUP, fmt::format("check: a {} disk has no metadata to check", backend.format()));
    if (repair && backend.read_only()) return make_error(EROFS, "check repair: the disk is read-only");
    return std::unique_ptr<IoJob>(std::make_unique<CheckJob>(*q, repair));
  }
  if (verb == "compact" || verb == "discard-zeroes") {
    if (auto r = no_args(); !r) return r.error();
    if (!q) return make_error(ENOTSUP, fmt::format("{}: not supported for a {} disk", verb, backend.format()));
    if (backend.read_only()) return make_error(EROFS, fmt::format("{}: the disk is read-only", verb));
    auto start = verb == "compact" ? &Qcow2Backend::start_compaction : &Qcow2Backend::start_discard_zeroes;
    return std::unique_ptr<IoJob>(std::make_unique<Qcow2JobAdapter>(std::string(verb), *q, start));
  }
  return make_error(EINVAL, fmt::format("unknown command '{}' (check [repair], compact, discard-zeroes)", c));
}

// ---- Disk ------------------------------------------------------------------

Disk::Disk(uv_loop_t* loop, std::string id, std::string path, std::unique_ptr<BlockBackend> backend, JobFactory jobs)
    : loop_(loop), id_(std::move(id)), path_(std::move(path)), backend_(std::move(backend)), jobs_(std::move(jobs)) {
  io_ = std::make_unique<IoThread>(loop_, *backend_);
  nbd::ExportInfo e;
  e.name = id_;
  e.description = fmt::format("berth disk {} ({}, {})", id_, backend_->format(), path_);
  e.size = backend_->size();
  e.flags = nbd::transmission_flags(backend_->read_only());
  nbd_ = std::make_unique<NbdServer>(loop_, *io_, std::move(e));
  io_->set_job_done_callback([this](const JobStatus& st) {
    file_after_ = backend_->stats().file_size;
    if (st.state == JobStatus::State::Done)
      spdlog::info("disk {}: {} finished: {}", id_, st.name, st.text);
    else
      spdlog::warn("disk {}: {} failed: {}", id_, st.name, st.text);
    if (job_done_) job_done_(st);
  });
}

Disk::~Disk() { close(); }

Result<std::unique_ptr<Disk>> Disk::open(uv_loop_t* loop, const DiskSpec& spec) {
  auto b = open_backend(spec.path, spec.format, spec.read_only);
  if (!b) return make_error(b.error().code, fmt::format("disk {}: {}: {}", spec.id, spec.path, b.error().message));
  auto d = std::make_unique<Disk>(loop, spec.id, spec.path, std::move(b.value()));
  for (auto& a : spec.nbd) {
    auto bound = d->listen_nbd(a);
    if (!bound) {
      Error e = bound.error();
      d->close();
      return make_error(e.code, fmt::format("disk {}: nbd={}: {}", spec.id, a, e.message));
    }
  }
  return d;
}

Result<std::string> Disk::command(std::string_view line) {
  if (closed_) return make_error(ESHUTDOWN, "the disk is closed");
  std::string_view c = trim(line);
  if (c.empty()) return make_error(EINVAL, "empty command");
  // Refuse a second job before building it (building may touch the backend).
  if (io_->job_status().state == JobStatus::State::Running) {
    auto st = io_->job_status();
    return make_error(EBUSY, fmt::format("{} is running ({}%)", st.name, st.percent));
  }
  auto job = jobs_(c, *backend_);
  if (!job) return job.error();
  std::string name = job.value()->name();
  uint64_t before = backend_->stats().file_size;
  if (auto r = io_->start_job(std::move(job.value())); !r) return r.error();
  file_before_ = before;
  file_after_ = 0;
  spdlog::info("disk {}: started {}", id_, name);
  return "started " + name;
}

std::string Disk::status_line() const {
  JobStatus st = io_->job_status();
  double took = st.finished_ms >= st.started_ms ? double(st.finished_ms - st.started_ms) / 1000.0 : 0;
  switch (st.state) {
    case JobStatus::State::Idle: return "idle";
    case JobStatus::State::Running: return fmt::format("{} {}%", st.name, st.percent);
    case JobStatus::State::Done: {
      // "OK compact: file 256 MiB -> 128 MiB; moved 1024 clusters (2.1 s)"
      std::string text = st.text;
      if (text.starts_with(st.name + ": ")) text.erase(0, st.name.size() + 2);
      std::string file;
      // (The status turns Done on the I/O thread a moment before the main
      // loop hears of it and records the size: until then, ask the backend.)
      uint64_t after = file_after_ ? file_after_ : backend_->stats().file_size;
      if (st.name == "compact" && file_before_ && after)
        file = fmt::format("file {} -> {}; ", human_bytes(file_before_), human_bytes(after));
      return fmt::format("OK {}: {}{} ({:.1f} s)", st.name, file, text, took);
    }
    case JobStatus::State::Failed: return fmt::format("ERROR {}: {}", st.name, st.text);
  }
  return "idle";
}

void Disk::close() {
  if (closed_) return;
  closed_ = true;
  nbd_->close();
  io_->stop();
  if (auto* q = dynamic_cast<Qcow2Backend*>(backend_.get())) {
    if (auto r = q->close(); !r) spdlog::warn("disk {}: close: {}", id_, r.error().message);
  }
}

// ---- DiskSet ---------------------------------------------------------------

std::vector<std::string> DiskSet::announcements() const {
  std::vector<std::string> out;
  for (auto& d : disks_) {
    out.push_back(fmt::format("berth: disk {} is {} {} ({} bytes)", d->id(), d->backend().format(), d->path(),
                              d->backend().size()));
    for (auto& a : d->nbd().addresses()) out.push_back(fmt::format("berth: disk {} nbd on {}", d->id(), a));
  }
  return out;
}

void DiskSet::close() {
  for (auto& d : disks_) d->close();
}

Result<std::unique_ptr<DiskSet>> start_disks(uv_loop_t* loop, p9::Tree& tree, p9::MetricsRegistry& metrics,
                                             const std::vector<std::string>& disk_specs) {
  auto set = std::make_unique<DiskSet>();
  std::set<std::string> ids;
  for (auto& text : disk_specs) {
    auto spec = parse_disk_spec(text);
    if (!spec) return make_error(spec.error().code, fmt::format("--disk {}: {}", text, spec.error().message));
    if (!ids.insert(spec->id).second) return make_error(EEXIST, fmt::format("--disk {}: duplicate disk id", text));
    auto d = Disk::open(loop, spec.value());
    if (!d) return d.error();  // `set` closes the disks opened so far
    set->disks_.push_back(std::move(d.value()));
  }
  std::vector<const Disk*> all;
  for (auto& d : set->disks_) {
    mount_disk_tree(tree, *d);
    all.push_back(d.get());
  }
  if (!all.empty()) mount_disk_metrics(metrics, std::move(all));
  return set;
}

}  // namespace berth::storage
