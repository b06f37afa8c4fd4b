// `berth up`: the embedded default. Builds the default guest once (Debian's
// kernel and a busybox initramfs, cached by scripts/guest/build-vm-guest.sh
// under ~/.cache/berth/vm-guest), boots it with `berth run`, and says how to
// reach it: its console and tree through `berth ctl`, and its web server
// through a port forward the guest itself writes into /ports/ctl.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tools/serve.h"

#ifndef BERTH_SOURCE_DIR
#define BERTH_SOURCE_DIR "."
#endif

namespace {

// Runs the guest builder; returns its output directory ("" on failure).
std::string build_default_guest() {
  const char* env = std::getenv("BERTH_GUEST_BUILDER");
  std::string script = env && *env ? env : std::string(BERTH_SOURCE_DIR) + "/scripts/guest/build-vm-guest.sh";
  if (access(script.c_str(), X_OK) != 0) {
    std::fprintf(stderr,
                 "berth up: the default guest is built by %s, which is not here.\n"
                 "Run berth up from a build of Berth's source tree, or boot your own kernel with berth run --kernel.\n",
                 script.c_str());
    return "";
  }
  std::fprintf(stderr, "berth up: preparing the default guest (built once, then cached)...\n");
  FILE* p = popen(("'" + script + "'").c_str(), "r");
  if (!p) return "";
  char buf[4096];
  std::string out;
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  int st = pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (st != 0 || out.empty()) {
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::fprintf(stderr, "berth up: building the default guest failed (%s exit %d)%s\n", script.c_str(), code,
                 code == 77 ? ": it needs network access to Debian's archive once, and root to install packages"
                            : "");
    return "";
  }
  return out;
}

}  // namespace

int up_main(int argc, char** argv) {
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: berth up [--forward-port N] [berth run/serve options]\n\n"
          "Boot the default guest (Debian's kernel, a busybox userland) under KVM with berth run:\n"
          "it takes an address by DHCP, mounts the control tree over virtio-9p, serves a page on\n"
          "its port 80 and forwards the host's 127.0.0.1:N (default 8080) to it. Stop it with\n"
          "Ctrl-C or `berth ctl write /vm/ctl stop`.\n");
      return 0;
    }
  }
  std::string port = "8080";
  std::vector<std::string> rest;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--forward-port" && i + 1 < argc) {
      port = argv[++i];
      continue;
    }
    rest.push_back(a);
  }
  std::string dir = build_default_guest();
  if (dir.empty()) return 1;
  std::vector<std::string> args = {"run",
                                   "--kernel",
                                   dir + "/vmlinuz",
                                   "--initrd",
                                   dir + "/l2-initrd.cpio.gz",
                                   "--cmdline",
                                   "loglevel=4 berth.up=1 berth.fwd=" + port,
                                   "--console",
                                   "stdout"};
  args.insert(args.end(), rest.begin(), rest.end());
  std::printf(
      "berth up: booting the default guest. Reach it with:\n"
      "  berth ctl tail /vm/console          its serial console\n"
      "  curl http://127.0.0.1:%s/          its web server, through a forward it made itself\n"
      "  berth ctl cat /dhcp/leases          its address; berth ctl cat /vm/state\n"
      "  berth ctl write /vm/ctl stop        to stop it (or Ctrl-C here)\n",
      port.c_str());
  std::fflush(stdout);
  std::vector<char*> av;
  for (auto& s : args) av.push_back(s.data());
  av.push_back(nullptr);
  return run_main(int(av.size() - 1), av.data());
}
