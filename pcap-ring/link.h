// Capture as a FrameLink decorator (STYLE.md §5): the wrapper sits between
// a link and the switch, outside the stack, and offers each frame to the
// CaptureSet: guest -> net as the inner link delivers it, net -> guest when
// the inner link accepts it for sending (a frame the link drops is not
// recorded, so the capture agrees with what the guest saw).
//
// With no rules the cost per frame is one branch. Everything else (type,
// peer, stats, writability, on_writable) passes through to the inner link.
// The CaptureSet must outlive the wrapper.
#pragma once

#include <cstdint>
#include <memory>

#include "net/link/frame_link.h"
#include "pcap-ring/capture.h"

namespace berth::pcap {

// Owns `inner`. `link_no` is the link's number in captures (pcapng
// interface id); use the switch port number it is attached as.
std::unique_ptr<net::FrameLink> wrap_link(std::unique_ptr<net::FrameLink> inner, CaptureSet& set, uint32_t link_no);
// Borrows `inner`, which must outlive the wrapper.
std::unique_ptr<net::FrameLink> wrap_link(net::FrameLink* inner, CaptureSet& set, uint32_t link_no);

}  // namespace berth::pcap
