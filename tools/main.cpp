// The berth CLI: the one place that wires components together (DESIGN.md).
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/serve.h"
#include "version.h"

int qcow_main(int argc, char** argv);  // tools/qcow.cpp
int up_main(int argc, char** argv);    // tools/up.cpp

namespace {
void usage(FILE* to) {
  std::fprintf(to,
               "usage: berth <command> [options]\n\n"
               "commands:\n"
               "  serve   serve the control tree over 9P (default: unix:%s)\n"
               "  run     boot a Linux guest under KVM, with the translator, disks and tree in process\n"
               "  up      boot the default guest (built once, cached) and say how to reach it\n"
               "  ctl     read and write the control tree: ls, cat, write, rm, mkdir, stat, tail\n"
               "  qcow    create, inspect, check, map and compact qcow2 images\n\n"
               "Run 'berth <command> --help' for a command's options. 'berth --version' prints the version.\n",
               default_socket_path().c_str());
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  std::string cmd = argv[1];
  if (cmd == "--version" || cmd == "version") {
    std::printf("berth %s\n", BERTH_VERSION);
    return 0;
  }
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    usage(stdout);
    return 0;
  }
  if (cmd == "serve") return serve_main(argc - 1, argv + 1);
  if (cmd == "run") return run_main(argc - 1, argv + 1);
  if (cmd == "up") return up_main(argc - 1, argv + 1);
  if (cmd == "ctl") return ctl_main(argc - 1, argv + 1);
  if (cmd == "qcow") return qcow_main(argc - 1, argv + 1);
  std::fprintf(stderr, "berth: unknown command '%s'\n", cmd.c_str());
  usage(stderr);
  return 2;
}
