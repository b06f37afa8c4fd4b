// A test-only stand-in for `berth serve --disk ...` (until tools/serve.cpp
// wires --disk): the control tree over 9P plus the disks, exactly as
// start_disks() mounts them. Usage:
//   disk_serve serve [--9p unix:PATH|tcp:HOST:PORT]... [--disk SPEC]... [--log-level L]
// It prints the same "berth: ..." lines as berth serve and stops on SIGINT or
// SIGTERM (flushing and closing every disk).
#include <spdlog/spdlog.h>
#include <uv.h>

#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/log.h"
#include "server9p/base.h"
#include "server9p/transport.h"
#include "storage/disk.h"

using namespace berth;

int main(int argc, char** argv) {
  std::vector<std::string> addrs, disks;
  std::string level = "info";
  int i = 1;
  if (i < argc && std::string(argv[i]) == "serve") i++;
  for (; i < argc; i++) {
    std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "disk_serve: %s needs a value\n", a.c_str());
      return 2;
    }
    if (a == "--9p")
      addrs.push_back(argv[++i]);
    else if (a == "--disk")
      disks.push_back(argv[++i]);
    else if (a == "--log-level")
      level = argv[++i];
    else {
      std::fprintf(stderr, "disk_serve: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (auto r = setup_logging(level); !r) return 2;
  uv_loop_t* loop = uv_default_loop();
  SystemClock clock;
  p9::Tree tree;
  p9::MetricsRegistry metrics;
  p9::ServerStats stats;
  metrics.add([&stats](p9::PromWriter& w) { stats.render(w); });
  auto base = p9::mount_base_tree(tree, metrics, clock, "berth disk_serve");

  auto set = storage::start_disks(loop, tree, metrics, disks);
  if (!set) {
    std::fprintf(stderr, "berth serve: %s\n", set.error().message.c_str());
    return 1;
  }
  for (auto& line : set.value()->announcements()) std::printf("%s\n", line.c_str());

  p9::Server server(loop, tree, stats, clock);
  for (auto& a : addrs) {
    auto bound = server.listen(a);
    if (!bound) {
      std::fprintf(stderr, "berth serve: %s\n", bound.error().message.c_str());
      return 1;
    }
    std::printf("berth: listening on %s\n", bound->c_str());
  }
  std::fflush(stdout);
  std::signal(SIGPIPE, SIG_IGN);
  struct Stop {
    p9::Server* server;
    storage::DiskSet* disks;
    uv_signal_t sigs[2];
  } stop{&server, set.value().get(), {}};
  for (int k = 0; k < 2; k++) {
    uv_signal_init(loop, &stop.sigs[k]);
    stop.sigs[k].data = &stop;
    uv_signal_start(&stop.sigs[k], [](uv_signal_t* h, int) {
      auto* s = static_cast<Stop*>(h->data);
      s->server->close();
      s->disks->close();
      for (auto& sig : s->sigs) uv_close(reinterpret_cast<uv_handle_t*>(&sig), nullptr);
    }, k == 0 ? SIGINT : SIGTERM);
  }
  uv_run(loop, UV_RUN_DEFAULT);
  spdlog::info("stopped");
  return 0;
}
