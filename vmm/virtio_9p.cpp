// virtio-9p. Theory of operation:
//
// A kick pops every available chain. For each, the device reads the 7-byte
// header (size, type, tag), checks the framing itself (the size must cover
// a whole message inside the readable part; a chain is one message, so the
// session's stream framing must never see a partial one), records the chain
// under its tag in pending_, and feeds the message to the session.
//
// The session answers through its send callback (on_replies), either during
// feed() or later from a stream wakeup. The callback's bytes are one or more
// whole R-messages; each is routed by its tag (byte 5) to the waiting chain,
// copied into the chain's writable part and pushed. Interrupts are decided
// once per kick, or once per callback outside a kick.
//
// Cases the session does not cover because a socket does not have them:
//  - Tversion aborts outstanding requests silently (version(5)); the chains
//    those requests came in must still go back, so they get EINTR first.
//  - Tflush drops a parked read without a reply; its chain gets EINTR just
//    before the Rflush's chain (QEMU's 9p does the same: the cancelled
//    request completes with EINTR, then the flush).
//  - feed() returning false means "close the connection"; here that is:
//    answer every waiting chain with EIO and start a fresh session.
#include "vmm/virtio_9p.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace berth::vmm {

Virtio9p::Virtio9p(p9::Tree& tree, p9::ServerStats& stats, const Clock& clock, std::string tag)
    : tree_(tree), pstats_(stats), clock_(clock), tag_(tag.substr(0, kMaxTagLen)) {
  // struct virtio_9p_config: tag_len le16, tag[tag_len] (not NUL-terminated).
  config_.resize(2 + tag_.size());
  store_le16(config_.data(), uint16_t(tag_.size()));
  std::memcpy(config_.data() + 2, tag_.data(), tag_.size());
}

Virtio9p::~Virtio9p() {
  pending_.clear();
  session_.reset();
}

void Virtio9p::read_config(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), uint8_t(0));
  if (offset >= config_.size()) return;
  size_t n = std::min<uint64_t>(data.size(), config_.size() - offset);
  std::memcpy(data.data(), config_.data() + offset, n);
}

void Virtio9p::activate(VirtioContext& ctx) {
  ctx_ = &ctx;
  new_session();
  process();
}

void Virtio9p::notify(size_t index) {
  if (index == 0) process();
}

void Virtio9p::reset() {
  // Forget the chains without writing: the driver owns that memory again.
  pending_.clear();
  // Destroying the session clunks every fid; a dying session sends nothing.
  // A reset can come from inside the session (a ctl write that stops the
  // VM): then the session is still running and dies once feed() returns.
  if (in_feed_)
    retired_ = std::move(session_);
  else
    session_.reset();
  ctx_ = nullptr;
  pushed_ = false;
}

void Virtio9p::new_session() {
  p9::SessionLimits limits;
  limits.max_msize = kMaxMsize;
  session_ = std::make_unique<p9::Session>(
      tree_, pstats_, clock_, limits, [this](std::vector<uint8_t>&& b) { on_replies(std::move(b)); }, "virtio");
}

void Virtio9p::close_session() {
  vstats_.session_closed++;
  abort_all(EIO);
  session_.reset();
  new_session();
}

void Virtio9p::process() {
  if (!ctx_ || in_process_) return;
  Virtqueue& q = ctx_->queue(0);
  if (!q.ready()) return;
  in_process_ = true;
  bool rechecked = false;
  for (;;) {
    std::optional<DescChain> c = q.pop();
    if (!c) {
      if (rechecked) break;
      q.enable_notifications(true);
      rechecked = true;
      if (!q.has_available()) break;
      continue;
    }
    handle(std::move(*c));
    if (!ctx_) break;  // a tree callback reset the device
  }
  in_process_ = false;
  signal();
}

void Virtio9p::handle(DescChain&& c) {
  Virtqueue& q = ctx_->queue(0);
  uint8_t h[p9::kHeaderSize];
  if (c.writable_len == 0 || c.readable_len < p9::kHeaderSize) {
    // No room for any reply, or not even a tag to answer.
    vstats_.bad_frames++;
    spdlog::debug("virtio-9p: chain with {} readable / {} writable bytes refused", c.readable_len, c.writable_len);
    q.push(c.head, 0);
    pushed_ = true;
    return;
  }
  q.read_from(c, 0, h);
  const uint32_t size = load_le32(h);
  const uint8_t type = h[4];
  const uint16_t tag = load_le16(h + 5);
  if (size < p9::kHeaderSize || size > c.readable_len || size > kMaxMsize) {
    vstats_.bad_frames++;
    spdlog::debug("virtio-9p: message size {} in a {}-byte chain", size, c.readable_len);
    return answer_error(c, tag, EMSGSIZE);
  }
  if (pending_.count(tag)) {
    // Answering would be read as the reply to the outstanding request.
    vstats_.tag_in_use++;
    spdlog::debug("virtio-9p: tag {} is outstanding", tag);
    q.push(c.head, 0);
    pushed_ = true;
    return;
  }
  msg_.resize(size);
  q.read_from(c, 0, msg_);
  // version(5): a Tversion aborts every outstanding request.
  if (type == p9::Tversion) abort_all(EINTR);
  Pending p;
  if (type == p9::Tflush && size >= p9::kHeaderSize + 2) p.flush_oldtag = load_le16(&msg_[p9::kHeaderSize]);
  p.chain = std::move(c);
  pending_.emplace(tag, std::move(p));
  vstats_.requests++;
  if (!session_) new_session();
  in_feed_ = true;
  bool ok = session_->feed(msg_);
  in_feed_ = false;
  if (retired_) {  // reset() ran inside feed()
    retired_.reset();
    return;
  }
  if (!ok) close_session();
}

void Virtio9p::on_replies(std::vector<uint8_t>&& bytes) {
  if (!ctx_) return;
  size_t pos = 0;
  while (bytes.size() - pos >= p9::kHeaderSize) {
    uint32_t size = load_le32(&bytes[pos]);
    if (size < p9::kHeaderSize || size > bytes.size() - pos) break;  // the session emits whole messages
    Bytes msg(&bytes[pos], size);
    pos += size;
    uint16_t tag = load_le16(&msg[5]);
    auto it = pending_.find(tag);
    if (it == pending_.end()) {
      vstats_.orphan_replies++;
      spdlog::debug("virtio-9p: reply for tag {} with no waiting chain", tag);
      continue;
    }
    Pending p = std::move(it->second);
    pending_.erase(it);
    if (msg[4] == p9::Rflush && p.flush_oldtag != tag) {
      auto old = pending_.find(p.flush_oldtag);
      if (old != pending_.end()) {
        DescChain oc = std::move(old->second.chain);
        uint16_t otag = old->first;
        pending_.erase(old);
        vstats_.aborted++;
        answer_error(oc, otag, EINTR);
      }
    }
    answer(p.chain, msg);
  }
  if (!in_process_) signal();
}

void Virtio9p::answer(const DescChain& c, Bytes msg) {
  if (msg.size() > c.writable_len) {
    vstats_.reply_too_big++;
    spdlog::debug("virtio-9p: {}-byte {} does not fit a {}-byte buffer", msg.size(), p9::msg_name(msg[4]),
                  c.writable_len);
    return answer_error(c, load_le16(&msg[5]), EMSGSIZE);
  }
  Virtqueue& q = ctx_->queue(0);
  q.write_to(c, 0, msg);
  q.push(c.head, uint32_t(msg.size()));
  pushed_ = true;
  vstats_.replies++;
}

void Virtio9p::answer_error(const DescChain& c, uint16_t tag, int code) {
  p9::Dialect d = session_ ? session_->dialect() : p9::Dialect::P9_2000L;
  p9::Fcall r;
  r.tag = tag;
  r.ecode = uint32_t(code);
  if (d == p9::Dialect::P9_2000L) {
    r.type = p9::Rlerror;
  } else {
    r.type = p9::Rerror;
    r.ename = std::strerror(code);
  }
  std::vector<uint8_t> out = p9::encode(r, d);
  Virtqueue& q = ctx_->queue(0);
  if (out.size() <= c.writable_len) {
    q.write_to(c, 0, out);
    q.push(c.head, uint32_t(out.size()));
  } else {
    q.push(c.head, 0);
  }
  pushed_ = true;
}

void Virtio9p::abort_all(int code) {
  auto waiting = std::move(pending_);
  pending_.clear();
  for (auto& [tag, p] : waiting) {
    vstats_.aborted++;
    answer_error(p.chain, tag, code);
  }
}

void Virtio9p::signal() {
  if (pushed_ && ctx_) {
    pushed_ = false;
    ctx_->signal_used(0);
  }
}

}  // namespace berth::vmm
