// virtio-9p (the "9P over virtio" transport Linux's 9pnet_virtio speaks):
// the control tree mounted inside the guest with
//     mount -t 9p -o trans=virtio,version=9p2000.L berth /mnt/berth
//
// One request queue. Each chain carries one T-message in its readable part;
// the R-message goes into the writable part of the same chain. Config space:
// tag_len u16, then the mount tag (feature MOUNT_TAG, bit 0).
//
// The protocol is served by one p9::Session (server9p/session.h), as for a
// socket client. Replies may come later than the request (a read parked on a
// stream, answered when data arrives), so chains wait in a table keyed by
// the 9P tag until the session answers that tag.
//
// Guarantees:
//  - A chain whose message is not well framed (shorter than 7 bytes, a size
//    field beyond the readable part or the msize limit) or reuses a tag that
//    is still outstanding is answered with an error reply (or length 0 when
//    not even that fits) and counted; the session does not see it.
//  - A message the session rejects (malformed fields, a request before
//    Tversion) closes that session as it would close a socket: every waiting
//    chain gets an error reply, and a fresh session takes the next message
//    (so a new mount's Tversion works without a device reset). Counted.
//  - A reply larger than its chain's writable part becomes an error reply
//    (EMSGSIZE) when that fits, else the chain is returned with length 0;
//    counted. (msize is capped at kMaxMsize; Linux sizes each reply buffer
//    for the reply it expects, so this is a guard, not the normal path.)
//  - A Tflush that cancels a parked read: the read's chain is answered
//    (EINTR) before the Rflush's chain, as the driver must get every chain
//    back and the old tag must be free once Rflush arrives.
//  - reset() destroys the session (clunking its fids) and forgets every
//    waiting chain without touching guest memory.
//
// Threading: read_config on any thread (the config is immutable); the rest
// on the main loop.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "server9p/metrics.h"
#include "server9p/proto.h"
#include "server9p/session.h"
#include "server9p/tree.h"
#include "vmm/virtio.h"

namespace berth::vmm {

constexpr uint64_t k9pFMountTag = 1ull << 0;

struct Virtio9pStats {
  uint64_t requests = 0;         // messages handed to the session
  uint64_t replies = 0;          // replies written into chains
  uint64_t bad_frames = 0;       // chains refused before the session (framing, no writable part)
  uint64_t tag_in_use = 0;       // a chain reused an outstanding tag
  uint64_t session_closed = 0;   // the session rejected input and was replaced
  uint64_t reply_too_big = 0;    // a reply did not fit its chain
  uint64_t orphan_replies = 0;   // a reply for a tag with no waiting chain (dropped)
  uint64_t aborted = 0;          // waiting chains answered with an error (flush, version, closed session)
};

class Virtio9p final : public VirtioDevice {
 public:
  static constexpr uint32_t kMaxMsize = p9::kMaxMsize;
  static constexpr size_t kMaxTagLen = 254;  // the config fits the 256-byte window

  // `tree`, `stats` and `clock` must outlive the device. A longer tag is
  // truncated to kMaxTagLen bytes.
  Virtio9p(p9::Tree& tree, p9::ServerStats& stats, const Clock& clock, std::string tag = "berth");
  ~Virtio9p() override;
  Virtio9p(const Virtio9p&) = delete;
  Virtio9p& operator=(const Virtio9p&) = delete;

  uint32_t device_type() const override { return kVirtio9p; }
  uint64_t device_features() const override { return k9pFMountTag; }
  size_t num_queues() const override { return 1; }
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void activate(VirtioContext& ctx) override;
  void notify(size_t index) override;
  void reset() override;

  const std::string& tag() const { return tag_; }
  const Virtio9pStats& stats() const { return vstats_; }
  size_t waiting() const { return pending_.size(); }
  // The current session (null before activation and after reset).
  const p9::Session* session() const { return session_.get(); }

 private:
  struct Pending {
    DescChain chain;
    uint16_t flush_oldtag = p9::kNoTag;  // for a Tflush: the tag it cancels
  };

  void process();
  void handle(DescChain&& c);
  void on_replies(std::vector<uint8_t>&& bytes);
  // Writes `msg` (one whole reply) into the chain, or an error reply if it
  // does not fit, and pushes it.
  void answer(const DescChain& c, Bytes msg);
  // Answers the chain with an error reply for `tag` (length 0 if it does not fit).
  void answer_error(const DescChain& c, uint16_t tag, int code);
  void abort_all(int code);
  void new_session();
  void close_session();
  void signal();

  p9::Tree& tree_;
  p9::ServerStats& pstats_;
  const Clock& clock_;
  const std::string tag_;
  std::vector<uint8_t> config_;

  VirtioContext* ctx_ = nullptr;
  std::unique_ptr<p9::Session> session_;
  std::map<uint16_t, Pending> pending_;  // by 9P tag
  std::vector<uint8_t> msg_;             // the message being fed
  bool in_process_ = false;
  bool in_feed_ = false;
  std::unique_ptr<p9::Session> retired_;  // reset() during feed(): destroyed after it
  bool pushed_ = false;
  Virtio9pStats vstats_;
};

}  // namespace berth::vmm
