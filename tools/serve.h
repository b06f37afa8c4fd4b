// `berth serve`: the control tree over 9P, until SIGINT or SIGTERM.
// `berth run` is `berth serve` plus a VM: it plugs into serve_with() as a
// ServeExtension, which sees every part serve builds.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "common/clock.h"
#include "common/result.h"

namespace berth {
namespace p9 {
class Tree;
class MetricsRegistry;
struct ServerStats;
}  // namespace p9
namespace net {
class FrameLink;
class NetDriver;
struct NetConfig;
}  // namespace net
namespace storage {
class DiskSet;
}
}  // namespace berth

// What an extension gets once the tree, the translator, the links and the
// disks are up (before the 9P listeners open).
struct ServeContext {
  uv_loop_t* loop = nullptr;
  berth::p9::Tree* tree = nullptr;
  berth::p9::MetricsRegistry* metrics = nullptr;
  berth::p9::ServerStats* stats = nullptr;
  const berth::Clock* clock = nullptr;
  const berth::net::NetConfig* net = nullptr;
  berth::storage::DiskSet* disks = nullptr;  // null without --disk
  // Attaches a guest link to the switch (wrapped for packet capture) and
  // returns its port. The caller keeps the link alive until stop().
  std::function<berth::Result<uint32_t>(berth::net::FrameLink*)> attach_link;
  // Ends serving as a signal would, with this exit status.
  std::function<void(int status)> shutdown;
};

class ServeExtension {
 public:
  virtual ~ServeExtension() = default;
  virtual const char* command() const = 0;  // "run", for messages
  // Parses argv[i] (and its value) when it is the extension's option:
  // returns 1 and advances i past what it used, 0 when the option is not
  // its own, -1 after printing an error (exit status 2).
  virtual int parse_option(int argc, char** argv, int& i) = 0;
  virtual void usage(FILE* to) const = 0;
  // Checks what can be checked before anything starts (KVM, kernel file);
  // an Error exits with status 1 before the tree is built.
  [[nodiscard]] virtual berth::Result<void> prepare() = 0;
  [[nodiscard]] virtual berth::Result<void> start(ServeContext& ctx) = 0;
  // Called once at shutdown, before serve closes its own parts: stop and
  // release everything that refers to them.
  virtual void stop() = 0;
};

int serve_main(int argc, char** argv);
int serve_with(int argc, char** argv, ServeExtension* ext);
int ctl_main(int argc, char** argv);
int run_main(int argc, char** argv);
std::string default_socket_path();
