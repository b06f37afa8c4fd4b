// IoThread: the one thread per disk that runs its BlockBackend (DESIGN.md
// "One process, few threads").
//
// The main loop submits IoOps (read, write, flush, discard, write-zeroes);
// the thread runs them in submission order and hands each finished op back
// to the main loop through an eventfd the loop polls, where its owner's
// io_done() runs.
// The queue is bounded: submit() refuses ops while `capacity` are in flight
// (queued, running or not yet handed back), and the space callback fires on
// the main loop once the backlog has drained to half, so callers stop
// reading from their clients instead of queueing without bound.
//
// A long operation (check, compact, discard-zeroes) is an IoJob: the thread
// runs one bounded step() of it, then every op that arrived meanwhile, then
// the next step, so a guest keeps its disk while the job runs. One job at a
// time; its progress and result are published as a JobStatus snapshot.
//
// Ordering: ops run one at a time in FIFO order, so a flush covers every
// write that was submitted before it (and so every write already replied).
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "storage/block_backend.h"

namespace berth::storage {

class IoOwner;

struct IoOp {
  enum class Kind : uint8_t { Read, Write, Flush, Discard, WriteZeroes, None };
  Kind kind = Kind::None;
  bool fua = false;
  bool may_unmap = true;  // write-zeroes: may deallocate
  uint64_t offset = 0;
  uint64_t length = 0;
  // Write payload in, read data out (`length` bytes, allocated by the submitter).
  std::unique_ptr<uint8_t[]> data;
  size_t data_capacity = 0;  // bytes allocated at `data` (>= length), for buffer reuse
  // Result, set on the I/O thread.
  int err = 0;  // errno, 0 for success
  std::string message;
  // Completion: io_done() on the main loop.
  IoOwner* owner = nullptr;
  uint64_t tag = 0;  // the owner's (the NBD handle)
  // Free room for the owner (the NBD reply header).
  uint8_t header[16] = {};
  uint32_t header_len = 0;
  uint32_t extra = 0;  // the owner's (the NBD command)
};

class IoOwner {
 public:
  virtual ~IoOwner() = default;
  virtual void io_done(std::unique_ptr<IoOp> op) = 0;
  // After a batch of io_done calls (to coalesce replies into one write).
  virtual void io_batch_end() {}
};

// A long operation run in steps on the I/O thread.
class IoJob {
 public:
  virtual ~IoJob() = default;
  virtual std::string name() const = 0;  // "compact"
  // One bounded slice of the work (tens of milliseconds at most); true when
  // the job is finished. An Error ends the job.
  [[nodiscard]] virtual Result<bool> step(BlockBackend& backend) = 0;
  // 0..100, asked after each step.
  virtual int percent() const = 0;
  // The result text after the last step ("file 1.0 GiB -> 512 MiB").
  virtual std::string summary() const = 0;
};

struct JobStatus {
  enum class State : uint8_t { Idle, Running, Done, Failed } state = State::Idle;
  std::string name;
  int percent = 0;
  std::string text;  // summary (Done) or error message (Failed)
  uint64_t started_ms = 0, finished_ms = 0;  // steady clock, for "took"
};

class IoThread {
 public:
  IoThread(uv_loop_t* loop, BlockBackend& backend, size_t capacity = 1024);
  ~IoThread();  // calls stop()
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;

  // Main loop: true when submit() would refuse.
  bool full() const { return in_flight_ >= capacity_; }
  size_t in_flight() const { return in_flight_; }
  size_t capacity() const { return capacity_; }
  // Queues ops (moved from `ops`, which is left empty). Refuses all of them
  // (returns false, `ops` untouched) when the queue is at capacity.
  bool submit(std::vector<std::unique_ptr<IoOp>>& ops);
  bool submit(std::unique_ptr<IoOp> op);
  // Called on the main loop when a full queue has drained to half.
  void set_space_callback(std::function<void()> cb) { space_cb_ = std::move(cb); }

  // Starts a job; EBUSY while another runs, ESHUTDOWN after stop().
  [[nodiscard]] Result<void> start_job(std::unique_ptr<IoJob> job);
  JobStatus job_status() const;
  // Called on the main loop when a job finishes (successfully or not).
  void set_job_done_callback(std::function<void(const JobStatus&)> cb) { job_done_cb_ = std::move(cb); }

  // Finishes queued ops, abandons a running job between steps, flushes the
  // backend, joins the thread and hands the remaining ops back to their
  // owners. Blocks the caller until then: for shutdown only.
  void stop();

  uint64_t ops_total() const { return ops_total_.load(std::memory_order_relaxed); }

 private:
  void run();
  void execute(IoOp& op);
  void deliver();  // main loop: hand finished ops back
  static uint64_t now_ms();

  uv_loop_t* loop_;
  BlockBackend& backend_;
  size_t capacity_;
  size_t in_flight_ = 0;  // main loop only
  bool was_full_ = false;
  std::function<void()> space_cb_;
  std::function<void(const JobStatus&)> job_done_cb_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<IoOp>> queue_;
  std::unique_ptr<IoJob> job_;
  JobStatus status_;
  bool job_finished_pending_ = false;  // a job ended; tell the main loop
  bool stop_ = false;
  bool stopped_ = false;

  std::mutex done_mu_;
  std::vector<std::unique_ptr<IoOp>> done_;
  bool signaled_ = false;  // under done_mu_: the eventfd was written since the last deliver()

  void signal();           // I/O thread: wake the main loop
  int efd_ = -1;           // eventfd, I/O thread -> main loop
  uv_poll_t* poll_ = nullptr;  // freed in its close callback
  std::atomic<uint64_t> ops_total_{0};
  std::thread thread_;
};

}  // namespace berth::storage
