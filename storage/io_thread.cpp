// The disk's I/O thread. Theory of operation:
//
// Two queues cross the thread boundary, each under its own mutex: `queue_`
// (main loop -> I/O thread, with a condition variable) and `done_` (I/O
// thread -> main loop, announced through an eventfd that the loop polls).
// The thread takes the whole pending queue at once and runs it in order,
// handing each op back as soon as it finishes; it wakes the main loop once
// per batch (or every kWakeOps ops or kWakeMicros, for long batches), and
// only when the previous wakeup was consumed, because each wakeup costs
// syscalls on both sides. Then it runs one step of the current job, and
// loops. A plain eventfd rather than uv_async: uv_async's loop side spins
// (sched_yield) while a sender is between its two atomic steps, which on a
// busy machine burns the very CPU the I/O thread needs. Owners are plain
// pointers: an owner (an NBD connection) stays alive while it has ops in
// flight, which it counts.
//
// Backpressure is counted on the main loop only (in_flight_): an op counts
// from submit() until its owner got it back, so a client that submits
// faster than the disk finishes is refused at `capacity`.
#include "storage/io_thread.h"

#include <spdlog/spdlog.h>

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <chrono>

namespace berth::storage {

namespace {
constexpr size_t kWakeOps = 16;
constexpr auto kWakeMicros = std::chrono::microseconds(200);
}  // namespace

IoThread::IoThread(uv_loop_t* loop, BlockBackend& backend, size_t capacity)
    : loop_(loop), backend_(backend), capacity_(capacity ? capacity : 1) {
  efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  assert(efd_ >= 0);  // only fails without file descriptors or memory
  poll_ = new uv_poll_t{};
  uv_poll_init(loop_, poll_, efd_);
  poll_->data = this;
  uv_poll_start(poll_, UV_READABLE, [](uv_poll_t* p, int, int) {
    if (p->data) static_cast<IoThread*>(p->data)->deliver();
  });
  thread_ = std::thread([this] { run(); });
}

IoThread::~IoThread() { stop(); }

void IoThread::signal() {
  uint64_t one = 1;
  while (::write(efd_, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
}

uint64_t IoThread::now_ms() {
  return uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

bool IoThread::submit(std::unique_ptr<IoOp> op) {
  std::vector<std::unique_ptr<IoOp>> v;
  v.push_back(std::move(op));
  if (submit(v)) return true;
  return false;
}

bool IoThread::submit(std::vector<std::unique_ptr<IoOp>>& ops) {
  if (ops.empty()) return true;
  if (stopped_ || in_flight_ >= capacity_) {
    was_full_ = true;
    return false;
  }
  in_flight_ += ops.size();
  if (in_flight_ >= capacity_) was_full_ = true;
  {
    std::lock_guard lk(mu_);
    for (auto& op : ops) queue_.push_back(std::move(op));
  }
  ops.clear();
  cv_.notify_one();
  return true;
}

Result<void> IoThread::start_job(std::unique_ptr<IoJob> job) {
  std::lock_guard lk(mu_);
  if (stop_) return make_error(ESHUTDOWN, "the disk is shutting down");
  if (job_) return make_error(EBUSY, status_.name + " is running (" + std::to_string(status_.percent) + "%)");
  status_ = JobStatus{};
  status_.state = JobStatus::State::Running;
  status_.name = job->name();
  status_.started_ms = now_ms();
  job_ = std::move(job);
  cv_.notify_one();
  return {};
}

JobStatus IoThread::job_status() const {
  std::lock_guard lk(mu_);
  return status_;
}

void IoThread::execute(IoOp& op) {
  Result<void> r;
  switch (op.kind) {
    case IoOp::Kind::Read: r = backend_.read(op.offset, std::span<uint8_t>(op.data.get(), op.length)); break;
    case IoOp::Kind::Write: r = backend_.write(op.offset, Bytes(op.data.get(), op.length), op.fua); break;
    case IoOp::Kind::Flush: r = backend_.flush(); break;
    case IoOp::Kind::Discard:
      r = backend_.discard(op.offset, op.length);
      if (r && op.fua) r = backend_.flush();
      break;
    case IoOp::Kind::WriteZeroes: r = backend_.write_zeroes(op.offset, op.length, op.may_unmap, op.fua); break;
    case IoOp::Kind::None: break;
  }
  if (!r) {
    op.err = r.error().code ? r.error().code : EIO;
    op.message = r.error().message;
  }
  ops_total_.fetch_add(1, std::memory_order_relaxed);
}

void IoThread::run() {
  std::deque<std::unique_ptr<IoOp>> batch;
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !queue_.empty() || job_; });
    if (queue_.empty() && stop_) break;
    batch.swap(queue_);
    lk.unlock();
    // Finished ops are handed back as they finish, but the main loop is
    // woken once per batch, or sooner when the batch runs long (every
    // kWakeOps ops or kWakeMicros): each wakeup is two syscalls on each side.
    size_t unannounced = 0;
    auto first_unannounced = std::chrono::steady_clock::time_point{};
    for (size_t i = 0; i < batch.size(); i++) {
      execute(*batch[i]);
      bool wake = false;
      auto now = std::chrono::steady_clock::now();
      if (unannounced == 0) first_unannounced = now;
      unannounced++;
      bool last = i + 1 == batch.size();
      {
        std::lock_guard dl(done_mu_);
        done_.push_back(std::move(batch[i]));
        if ((last || unannounced >= kWakeOps || now - first_unannounced >= kWakeMicros) && !signaled_) {
          signaled_ = true;
          wake = true;
        }
      }
      if (last || wake || unannounced >= kWakeOps) unannounced = 0;
      if (wake) signal();
    }
    batch.clear();
    lk.lock();
    if (!job_ || stop_) continue;
    // One step of the job, with the queue open to new ops meanwhile.
    IoJob* job = job_.get();
    lk.unlock();
    auto r = job->step(backend_);
    int pct = job->percent();
    lk.lock();
    status_.percent = pct < 0 ? 0 : pct > 100 ? 100 : pct;
    if (!r || r.value()) {
      status_.finished_ms = now_ms();
      if (r) {
        status_.state = JobStatus::State::Done;
        status_.percent = 100;
        status_.text = job->summary();
      } else {
        status_.state = JobStatus::State::Failed;
        status_.text = r.error().message;
      }
      job_.reset();
      job_finished_pending_ = true;
      lk.unlock();
      signal();
      lk.lock();
    }
  }
  if (job_) {
    status_.state = JobStatus::State::Failed;
    status_.text = "interrupted by shutdown";
    status_.finished_ms = now_ms();
    job_.reset();
  }
  lk.unlock();
  if (auto r = backend_.flush(); !r) spdlog::warn("disk: flush at shutdown failed: {}", r.error().message);
}

void IoThread::deliver() {
  uint64_t n;
  while (::read(efd_, &n, sizeof(n)) < 0 && errno == EINTR) {
  }
  std::vector<std::unique_ptr<IoOp>> done;
  {
    std::lock_guard dl(done_mu_);
    done.swap(done_);
    signaled_ = false;
  }
  // Owners are told once per batch that the batch ended, in first-seen order.
  std::vector<IoOwner*> owners;
  for (auto& op : done) {
    IoOwner* o = op->owner;
    if (o && (owners.empty() || owners.back() != o) &&
        std::find(owners.begin(), owners.end(), o) == owners.end())
      owners.push_back(o);
  }
  in_flight_ -= std::min(in_flight_, done.size());
  for (auto& op : done) {
    IoOwner* o = op->owner;
    if (o) o->io_done(std::move(op));
  }
  for (IoOwner* o : owners) o->io_batch_end();
  bool job_done = false;
  JobStatus st;
  {
    std::lock_guard lk(mu_);
    if (job_finished_pending_) {
      job_finished_pending_ = false;
      job_done = true;
      st = status_;
    }
  }
  if (job_done && job_done_cb_) job_done_cb_(st);
  if (was_full_ && in_flight_ <= capacity_ / 2) {
    was_full_ = false;
    if (space_cb_) space_cb_();
  }
}

void IoThread::stop() {
  if (stopped_) return;
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  stopped_ = true;
  deliver();  // ops that finished after the last wakeup
  poll_->data = nullptr;
  uv_poll_stop(poll_);
  // The fd outlives the handle: close it in the handle's close callback.
  poll_->data = reinterpret_cast<void*>(intptr_t(efd_));
  uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) {
    ::close(int(reinterpret_cast<intptr_t>(h->data)));
    delete reinterpret_cast<uv_poll_t*>(h);
  });
  poll_ = nullptr;
  efd_ = -1;
}

}  // namespace berth::storage
