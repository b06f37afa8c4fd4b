// Shared machinery for the guest links (tap, qemu, vfkit, vmnet): a polled
// file descriptor, the bounded queue toward the guest, and LinkBase, which
// implements FrameLink::send() and the write-side backpressure once for all.
//
// Every link is driven by one libuv loop (STYLE.md §3) and does its own
// nonblocking I/O on raw file descriptors watched by uv_poll: that gives one
// model for stream sockets, datagram sockets and the tap character device,
// and lets a link batch its writes (writev/sendmmsg) straight from its queue.
//
// Lifetime: libuv handles are heap objects freed in their close callbacks,
// so a link may be destroyed at any time outside its own callbacks; run the
// loop afterwards to let the close callbacks free them. A link must not be
// destroyed from inside its rx or on_writable callbacks (close() is fine).
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "net/link/frame_link.h"

namespace berth::net {

// One file descriptor watched by a uv_poll handle. Owns the descriptor.
class PolledFd {
 public:
  PolledFd() = default;
  ~PolledFd() { close(); }
  PolledFd(const PolledFd&) = delete;
  PolledFd& operator=(const PolledFd&) = delete;

  // Takes ownership of fd (closed on failure too). `owner` becomes the
  // handle's data, for the callback.
  [[nodiscard]] Result<void> open(uv_loop_t* loop, int fd, void* owner, uv_poll_cb cb);
  // Watch these events (UV_READABLE | UV_WRITABLE; 0 stops watching).
  void want(int events);
  int events() const { return events_; }
  // Stops watching, closes the handle (freed in its close callback) and the fd.
  void close();
  bool is_open() const { return fd_ >= 0; }
  int fd() const { return fd_; }

 private:
  uv_poll_t* poll_ = nullptr;
  uv_poll_cb cb_ = nullptr;
  int fd_ = -1;
  int events_ = 0;
};

// A one-shot libuv timer, heap-allocated like PolledFd's handle. `owner`
// becomes the handle's data, for the callback.
class OneShotTimer {
 public:
  OneShotTimer() = default;
  ~OneShotTimer() { close(); }
  OneShotTimer(const OneShotTimer&) = delete;
  OneShotTimer& operator=(const OneShotTimer&) = delete;

  void start(uv_loop_t* loop, uint64_t ms, void* owner, uv_timer_cb cb);
  void stop();
  void close();
  bool active() const;

 private:
  uv_timer_t* t_ = nullptr;
};

// A queued write toward the guest: the bytes to write (link header included)
// and, for a data frame, the frame's length (0 for handshake messages, which
// are not counted as frames).
struct QueuedWrite {
  std::unique_ptr<uint8_t[]> data;
  size_t cap = 0, len = 0;
  uint32_t frame_len = 0;
};

// Bounded FIFO of writes. Full at kMaxFrames entries or kMaxBytes bytes (an
// empty queue always takes one); "below half" when under half of both.
// Buffers are recycled, so steady traffic does not allocate.
class WriteQueue {
 public:
  static constexpr size_t kMaxFrames = 256;
  static constexpr size_t kMaxBytes = 4u << 20;

  bool has_room(size_t len) const { return q_.empty() || (q_.size() < kMaxFrames && bytes_ + len <= kMaxBytes); }
  bool below_half() const { return q_.size() < kMaxFrames / 2 && bytes_ < kMaxBytes / 2; }
  // Appends an entry of `len` bytes and returns where to write them.
  uint8_t* push(size_t len, uint32_t frame_len);
  QueuedWrite& front() { return q_.front(); }
  QueuedWrite& at(size_t i) { return q_[i]; }
  void pop();
  void clear();
  bool empty() const { return q_.empty(); }
  size_t size() const { return q_.size(); }
  size_t bytes() const { return bytes_; }

 private:
  std::deque<QueuedWrite> q_;
  std::vector<QueuedWrite> spare_;
  size_t bytes_ = 0;
};

// Creates a unix socket of `type` (SOCK_STREAM or SOCK_DGRAM), nonblocking,
// bound at `path` with mode 0600. A stale socket file there is replaced; a
// live one (something answers) is EADDRINUSE; any other file is EEXIST. A
// missing parent directory is created (0700). Streams also listen().
[[nodiscard]] Result<int> bind_unix_socket(const std::string& path, int type);
// Unlinks `path` if it is still the socket `ino` that we bound.
void unlink_unix_socket(const std::string& path, uint64_t ino);
uint64_t inode_of(const std::string& path);

class LinkBase : public FrameLink {
 public:
  ~LinkBase() override;
  size_t max_frame() const override { return max_frame_; }
  // Validates, then copies the frame (with the link's header) into the queue;
  // the write happens from the loop's next idle phase, batched with others.
  bool send(Bytes frame) final;
  // Whether a guest is attached now (frames can flow both ways).
  virtual bool has_peer() const = 0;

 protected:
  LinkBase(uv_loop_t* loop, size_t max_frame, size_t header_len);

  // The link header in front of each frame toward the guest (header_len bytes).
  virtual void write_header(uint8_t* out, size_t frame_len) const {
    (void)out;
    (void)frame_len;
  }
  // Write as much of txq_ as the descriptor takes. On EAGAIN set
  // write_blocked_ and arrange to call flush_now() when writable.
  virtual void flush() = 0;

  // Queues raw bytes (a handshake message) behind whatever is queued, without
  // the bound check; not counted as a frame.
  void enqueue_control(Bytes raw);
  void schedule_flush();
  // Runs flush() if there is something to write, then notifies on_writable_
  // if a sender was refused and the queue is now below half.
  void flush_now();
  // Counts and pops the front entry after it was written in full.
  void complete_front();
  // Drops everything queued (the peer is gone) and releases waiting senders.
  void discard_queue();
  // Checks a frame from the guest (runt, oversize), counts it and hands it to
  // rx_. The callback may close the link: compare epoch_ before and after.
  void deliver(Bytes frame);
  // Stops the idle handle; subclasses call it from close().
  void close_base();

  uv_loop_t* loop_;
  const size_t max_frame_;
  const size_t header_len_;
  Receive rx_;
  WriteQueue txq_;
  bool write_blocked_ = false;
  bool started_ = false, closed_ = false;
  // Bumped whenever the peer goes away or the link closes, so a loop that
  // called out (rx_, on_writable_) can tell its state was reset under it.
  uint64_t epoch_ = 0;

 private:
  static void on_idle(uv_idle_t* h);
  void drain_check();
  uv_idle_t* idle_ = nullptr;
  bool flush_scheduled_ = false;
  bool want_writable_ = false;  // a sender was refused: tell it when there is room
};

}  // namespace berth::net
