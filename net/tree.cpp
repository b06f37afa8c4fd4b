#include "net/tree.h"

#include <fmt/format.h>

namespace berth::net {

void mount_net_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, const Stack& stack, const MonoClock& clock) {
  const Stack* s = &stack;
  const MonoClock* c = &clock;
  auto net = std::make_shared<p9::Dir>("net", "the network translator");
  tree.root()->add(net);
  net->add(std::make_shared<p9::StateFile>("config", "subnet, gateway, host alias, MTU, limits",
                                           [s] { return s->config().render(); }));
  net->add(std::make_shared<p9::StateFile>("stats", "frames, bytes, drops by reason, limit hits",
                                           [s] { return s->render_stats(); }));
  net->add(std::make_shared<p9::StateFile>(
      "flows", "one line per live flow: proto, guest end, host end, state, bytes, age",
      [s, c] { return s->render_flows(c->now()); }));

  // /links/<n>: one state file per switch port, made on demand so that
  // links added later appear; qid paths stay stable per port.
  auto links = std::make_shared<p9::Dir>("links", "guest links: type, peer, MAC, counters");
  auto nodes = std::make_shared<std::vector<p9::NodePtr>>();
  links->set_generator([s, nodes] {
    while (nodes->size() < s->port_count()) {
      uint32_t i = uint32_t(nodes->size());
      nodes->push_back(std::make_shared<p9::StateFile>(std::to_string(i), "", [s, i] { return s->render_link(i); }));
    }
    return *nodes;
  });
  tree.root()->add(links);

  metrics.add([s](p9::PromWriter& w) {
    const NetStats& st = s->stats();
    w.family("berth_net_frames_total", "counter", "Ethernet frames through the switch");
    w.sample("berth_net_frames_total", st.frames_in, "dir=\"from_guest\"");
    w.sample("berth_net_frames_total", st.frames_out, "dir=\"to_guest\"");
    w.family("berth_net_bytes_total", "counter", "bytes through the switch");
    w.sample("berth_net_bytes_total", st.bytes_in, "dir=\"from_guest\"");
    w.sample("berth_net_bytes_total", st.bytes_out, "dir=\"to_guest\"");
    w.family("berth_net_drops_total", "counter", "frames and packets dropped, by reason");
    for (size_t i = 0; i < st.drops.size(); i++)
      w.sample("berth_net_drops_total", st.drops[i], fmt::format("reason=\"{}\"", drop_name(Drop(i))));
  });
}

}  // namespace berth::net
