// The translator's subtree of the control tree:
//   /net/config  /net/stats  /net/flows  /links/<n>
// and its counters in /metrics.
#pragma once

#include "common/clock.h"
#include "net/stack.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

namespace berth::net {

void mount_net_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, const Stack& stack, const MonoClock& clock);

}  // namespace berth::net
