#include "net/link/links.h"

namespace berth::net {

Result<std::unique_ptr<FrameLink>> make_link(uv_loop_t* loop, const LinkSpec& spec, size_t max_frame) {
  if (max_frame < 14 + 68 || max_frame > 14 + 65520)
    return make_error(EINVAL, "link frame size " + std::to_string(max_frame) + " is out of range (MTU 68..65520)");
  std::unique_ptr<FrameLink> link;
  if (spec.kind == "tap")
    link = std::make_unique<TapLink>(loop, spec.name, spec.netns, max_frame);
  else if (spec.kind == "qemu")
    link = std::make_unique<QemuLink>(loop, spec.name, max_frame);
  else if (spec.kind == "vmnet")
    link = std::make_unique<VmnetLink>(loop, spec.name, max_frame);
  else if (spec.kind == "vfkit")
    link = std::make_unique<VfkitLink>(loop, spec.name, max_frame);
  else
    return make_error(EINVAL, "unknown link kind '" + spec.kind + "' (tap, qemu, vfkit or vmnet)");
  return link;
}

}  // namespace berth::net
