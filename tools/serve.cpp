// `berth serve`: builds the tree, listens, runs the loop, cleans up.
#include <spdlog/spdlog.h>
#include <uv.h>

#include <csignal>
#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/log.h"
#include "server9p/base.h"
#include "server9p/transport.h"
#include "tools/serve.h"
#include "version.h"

using namespace berth;

std::string default_socket_path() {
  const char* rt = std::getenv("XDG_RUNTIME_DIR");
  return std::string(rt && *rt ? rt : "/run") + "/berth/berth.sock";
}

namespace {

void serve_usage(FILE* to) {
  std::fprintf(to,
               "usage: berth serve [--9p unix:PATH|tcp:HOST:PORT]... [--state-dir DIR] [--log-level L]\n\n"
               "Serve Berth's control tree over 9P2000.L (also 9P2000.u and 9P2000).\n\n"
               "  --9p ADDR        listen on ADDR; repeatable. Default: unix:%s\n"
               "                   tcp:HOST:PORT listens where told; use 127.0.0.1 to stay local.\n"
               "                   Port 0 picks a free port. Each bound address is printed as\n"
               "                   'berth: listening on ADDR'.\n"
               "  --state-dir DIR  where persistent state is kept (created if missing)\n"
               "  --log-level L    trace, debug, info (default), warn, error, off\n",
               default_socket_path().c_str());
}

}  // namespace

int serve_main(int argc, char** argv) {
  std::vector<std::string> addrs;
  std::string log_level = "info", state_dir;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto need = [&](const char* what) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "berth serve: %s needs a value\n", what);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      serve_usage(stdout);
      return 0;
    } else if (a == "--9p") {
      addrs.emplace_back(need("--9p"));
    } else if (a == "--log-level") {
      log_level = need("--log-level");
    } else if (a == "--state-dir") {
      state_dir = need("--state-dir");
    } else {
      std::fprintf(stderr, "berth serve: unknown option '%s'\n", a.c_str());
      serve_usage(stderr);
      return 2;
    }
  }
  if (auto r = setup_logging(log_level); !r) {
    std::fprintf(stderr, "berth serve: %s\n", r.error().message.c_str());
    return 2;
  }
  if (addrs.empty()) addrs.push_back("unix:" + default_socket_path());
  if (!state_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(state_dir, ec);
    if (ec) {
      std::fprintf(stderr, "berth serve: cannot create state dir %s: %s\n", state_dir.c_str(), ec.message().c_str());
      return 1;
    }
  }

  uv_loop_t* loop = uv_default_loop();
  SystemClock clock;
  p9::Tree tree;
  p9::MetricsRegistry metrics;
  p9::ServerStats stats;
  metrics.add([&stats](p9::PromWriter& w) { stats.render(w); });
  auto base = p9::mount_base_tree(tree, metrics, clock, std::string("berth ") + BERTH_VERSION);

  p9::Server server(loop, tree, stats, clock);
  for (auto& a : addrs) {
    auto bound = server.listen(a);
    if (!bound) {
      std::fprintf(stderr, "berth serve: %s\n", bound.error().message.c_str());
      server.close();
      uv_run(loop, UV_RUN_DEFAULT);
      return 1;
    }
    std::printf("berth: listening on %s\n", bound->c_str());
  }
  std::fflush(stdout);
  spdlog::info("serving the control tree ({} listener{})", addrs.size(), addrs.size() == 1 ? "" : "s");

  std::signal(SIGPIPE, SIG_IGN);
  uv_signal_t sigint, sigterm;
  struct Stop {
    p9::Server* server;
    uv_signal_t* sigs[2];
  } stop{&server, {&sigint, &sigterm}};
  auto on_signal = [](uv_signal_t* h, int signum) {
    auto* s = static_cast<Stop*>(h->data);
    spdlog::info("caught signal {}, shutting down", signum);
    s->server->close();
    for (auto* sig : s->sigs) uv_close(reinterpret_cast<uv_handle_t*>(sig), nullptr);
  };
  for (auto [h, sig] : {std::pair{&sigint, SIGINT}, std::pair{&sigterm, SIGTERM}}) {
    uv_signal_init(loop, h);
    h->data = &stop;
    uv_signal_start(h, on_signal, sig);
  }
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  spdlog::info("stopped");
  return 0;
}
