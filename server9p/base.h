// The tree every Berth process serves before components add theirs:
//   /README  /metrics  /audit  /debug/{version,date,zero,null}
#pragma once

#include <memory>
#include <string>

#include "common/clock.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

namespace berth::p9 {

struct BaseTree {
  std::shared_ptr<ByteStream> audit;  // capture readers append lines here
};

BaseTree mount_base_tree(Tree& tree, MetricsRegistry& metrics, const Clock& clock, const std::string& version);

}  // namespace berth::p9
