// Disk: one `--disk` of `berth serve`: its backend (qcow2 or raw), the I/O
// thread that owns that backend, its NBD export, and the long operations
// that /disks/<id>/ctl starts (check, compact, discard-zeroes).
//
//   --disk ID=PATH[,format=qcow2|raw][,nbd=unix:PATH|tcp:HOST:PORT]...[,ro]
//
// The format is detected from the qcow2 magic ("QFI\xfb") when omitted; a
// comma inside PATH is written twice (",,"), as QEMU does. ID is 1-64 of
// [A-Za-z0-9._-] and names the NBD export and /disks/<id>.
//
// Threading: everything here runs on the main loop except the backend
// calls, which run on the disk's IoThread. stats() reads the backend's
// thread-safe snapshot.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"
#include "storage/block_backend.h"
#include "storage/io_thread.h"
#include "storage/nbd_server.h"

namespace berth::storage {

struct DiskSpec {
  std::string id;
  std::string path;
  std::string format;  // "qcow2", "raw", or "" to detect
  std::vector<std::string> nbd;  // listen addresses
  bool read_only = false;
  std::string to_string() const;
};

[[nodiscard]] Result<DiskSpec> parse_disk_spec(std::string_view spec);
[[nodiscard]] bool valid_disk_id(std::string_view id);

// "qcow2" when the file starts with the qcow2 magic, otherwise "raw".
[[nodiscard]] Result<std::string> detect_format(const std::string& path);

// Opens PATH as FORMAT ("" detects it).
[[nodiscard]] Result<std::unique_ptr<BlockBackend>> open_backend(const std::string& path, const std::string& format,
                                                                 bool read_only);

// Builds the job for a ctl command ("check", "compact", "discard-zeroes"),
// to run on the I/O thread; EINVAL for unknown commands, ENOTSUP where the
// format has no such operation.
using JobFactory = std::function<Result<std::unique_ptr<IoJob>>(std::string_view command, BlockBackend& backend)>;
Result<std::unique_ptr<IoJob>> make_disk_job(std::string_view command, BlockBackend& backend);

class Disk {
 public:
  // Opens the image, starts the I/O thread and the NBD listeners of `spec`.
  [[nodiscard]] static Result<std::unique_ptr<Disk>> open(uv_loop_t* loop, const DiskSpec& spec);

  // An already open backend (tests; `path` is only shown in /info).
  Disk(uv_loop_t* loop, std::string id, std::string path, std::unique_ptr<BlockBackend> backend,
       JobFactory jobs = make_disk_job);
  ~Disk();
  Disk(const Disk&) = delete;
  Disk& operator=(const Disk&) = delete;

  const std::string& id() const { return id_; }
  const std::string& path() const { return path_; }
  const BlockBackend& backend() const { return *backend_; }  // size/format/stats only: I/O goes through io()
  BlockStats stats() const { return backend_->stats(); }
  IoThread& io() { return *io_; }
  NbdServer& nbd() { return *nbd_; }
  const NbdServer& nbd() const { return *nbd_; }

  // Adds an NBD listener; returns the bound address.
  [[nodiscard]] Result<std::string> listen_nbd(const std::string& addr) { return nbd_->listen(addr); }

  // Runs one ctl command line: starts a job ("started compact") or fails
  // (EINVAL unknown, EBUSY while another job runs).
  [[nodiscard]] Result<std::string> command(std::string_view line);
  // "idle", "compact 42%", "OK compact: ..." or "ERROR compact: ...", one line.
  std::string status_line() const;
  JobStatus job_status() const { return io_->job_status(); }
  // Called on the main loop when a job ends (after the status is final).
  void set_job_done_callback(std::function<void(const JobStatus&)> cb) { job_done_ = std::move(cb); }

  // Stops the NBD export, finishes queued I/O, flushes and joins the I/O
  // thread. Idempotent.
  void close();

 private:
  uv_loop_t* loop_;
  std::string id_, path_;
  std::unique_ptr<BlockBackend> backend_;
  JobFactory jobs_;
  std::unique_ptr<IoThread> io_;
  std::unique_ptr<NbdServer> nbd_;
  std::function<void(const JobStatus&)> job_done_;
  uint64_t file_before_ = 0, file_after_ = 0;  // image file size around the last job
  bool closed_ = false;
};

// Every --disk of `berth serve`, mounted under /disks and in /metrics.
class DiskSet {
 public:
  ~DiskSet() { close(); }
  const std::vector<std::unique_ptr<Disk>>& disks() const { return disks_; }
  // "berth: disk ID nbd ADDR" lines for every bound NBD address.
  std::vector<std::string> announcements() const;
  void close();

 private:
  friend Result<std::unique_ptr<DiskSet>> start_disks(uv_loop_t*, p9::Tree&, p9::MetricsRegistry&,
                                                      const std::vector<std::string>&);
  std::vector<std::unique_ptr<Disk>> disks_;
};

// Parses and opens every spec (ids must be unique), starts their exports,
// mounts /disks/<id>/{info,stats,ctl} and registers their metrics. On error
// nothing stays open; the message names the failing spec.
[[nodiscard]] Result<std::unique_ptr<DiskSet>> start_disks(uv_loop_t* loop, p9::Tree& tree,
                                                           p9::MetricsRegistry& metrics,
                                                           const std::vector<std::string>& disk_specs);

}  // namespace berth::storage
