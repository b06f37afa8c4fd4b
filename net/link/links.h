// The guest links, and make_link(), which builds one from a --link spec.
//
//   tap:IFNAME[@NETNS]  TapLink    (tap_link.h)
//   qemu:PATH           QemuLink   (stream_links.h)
//   vmnet:PATH          VmnetLink  (stream_links.h)
//   vfkit:PATH          VfkitLink  (vfkit_link.h)
//
// Every link runs on the given libuv loop, carries frames of at most
// max_frame bytes (MTU + 14) both ways, and is idle until start().
#pragma once

#include <memory>

#include "net/link/frame_link.h"
#include "net/link/link_base.h"
#include "net/link/stream_links.h"
#include "net/link/tap_link.h"
#include "net/link/vfkit_link.h"

namespace berth::net {

// max_frame must be 82..65534 (an MTU of 68..65520). Errors: EINVAL for an
// unknown kind or a bad size. Nothing is opened until start().
[[nodiscard]] Result<std::unique_ptr<FrameLink>> make_link(uv_loop_t* loop, const LinkSpec& spec, size_t max_frame);

}  // namespace berth::net
