// FrameLink: one switch port, carrying Ethernet frames (without FCS) between
// a guest and the translator. Implementations: tap, qemu (4-byte BE length
// framing over a unix stream), vfkit (unix datagrams), vmnet (VPNKit's
// protocol), and in-process virtio-net.
//
// Contract:
//  - start(rx): frames from the guest are delivered to rx, one call per
//    frame; the span is valid only during the call (STYLE.md §6).
//  - send(frame): copies the frame into the link's bounded queue toward the
//    guest. Returns false (and counts tx_dropped) when the queue is full or
//    no guest is attached. `on_writable` is called when a full queue drains,
//    so senders with backpressure (TCP) can resume.
//  - Frames the guest sends that are malformed at the link layer (oversized,
//    truncated, bad framing) are dropped and counted; a link whose framing is
//    lost (a stream with an impossible length) disconnects its peer.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/bytes.h"
#include "common/result.h"

namespace berth::net {

struct LinkStats {
  uint64_t rx_frames = 0, rx_bytes = 0;  // guest -> translator
  uint64_t tx_frames = 0, tx_bytes = 0;  // translator -> guest
  uint64_t rx_dropped_oversize = 0;      // longer than the link's maximum frame
  uint64_t rx_dropped_runt = 0;          // shorter than an Ethernet header
  uint64_t tx_dropped_full = 0;          // queue toward the guest full
  uint64_t tx_dropped_no_peer = 0;       // no guest attached
  uint64_t disconnects = 0;              // peers dropped (framing lost, EOF, errors)
  uint64_t peers_refused = 0;            // connections or senders refused: a guest is already attached
  uint64_t tx_dropped_invalid = 0;       // frames from the translator that are empty or > max_frame (a bug above)
};

class FrameLink {
 public:
  using Receive = std::function<void(Bytes frame)>;

  virtual ~FrameLink() = default;
  virtual std::string type() const = 0;  // "tap", "qemu", "vfkit", "vmnet", "virtio"
  virtual std::string peer() const = 0;  // what it is attached to, for /links
  [[nodiscard]] virtual Result<void> start(Receive rx) = 0;
  virtual bool send(Bytes frame) = 0;
  virtual void close() = 0;
  // The largest frame either way (MTU + 14, or the link's own limit).
  virtual size_t max_frame() const = 0;
  // Whether send() would queue a frame now (false while the queue is full
  // or no guest is attached). Lets senders with backpressure wait.
  virtual bool writable() const { return true; }

  // Virtual so that a decorator (pcap-ring's capture wrapper) can pass both
  // through to the link it wraps.
  virtual const LinkStats& stats() const { return stats_; }
  virtual void set_on_writable(std::function<void()> cb) { on_writable_ = std::move(cb); }

 protected:
  LinkStats stats_;
  std::function<void()> on_writable_;
};

// Parse a --link SPEC: "tap:IFNAME[@NETNS]", "qemu:PATH", "vfkit:PATH", "vmnet:PATH".
struct LinkSpec {
  std::string kind, name, netns;  // name: interface or socket path
};
[[nodiscard]] Result<LinkSpec> parse_link_spec(std::string_view spec);

}  // namespace berth::net
