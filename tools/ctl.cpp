// `berth ctl`: a thin command line over the 9P client library.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "server9p/client.h"
#include "tools/serve.h"

using namespace berth;

namespace {

void ctl_usage(FILE* to) {
  std::fprintf(to,
               "usage: berth ctl [--9p ADDR] COMMAND PATH [TEXT]\n\n"
               "Read and write Berth's control tree.\n\n"
               "  ls PATH           list a directory (directories end in '/')\n"
               "  cat PATH          print a file\n"
               "  write PATH TEXT   write TEXT to a file and print what the same fid reads back;\n"
               "                    on failure print the server's ERROR text and exit 1\n"
               "  rm PATH           remove a file or directory\n"
               "  mkdir PATH        make a directory\n"
               "  stat PATH         print type, mode, size and qid\n"
               "  tail PATH         follow a stream until end of file or Ctrl-C\n\n"
               "  --9p ADDR         unix:PATH or tcp:HOST:PORT (default: unix:%s,\n"
               "                    or $BERTH_9P when set)\n",
               default_socket_path().c_str());
}

int fail(const std::string& what, const Error& e) {
  std::fprintf(stderr, "berth ctl: %s: %s\n", what.c_str(), e.message.c_str());
  return 1;
}

}  // namespace

int ctl_main(int argc, char** argv) {
  const char* env = std::getenv("BERTH_9P");
  std::string addr = env && *env ? env : "unix:" + default_socket_path();
  std::vector<std::string> args;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      ctl_usage(stdout);
      return 0;
    }
    if (a == "--9p") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "berth ctl: --9p needs a value\n");
        return 2;
      }
      addr = argv[++i];
      continue;
    }
    args.push_back(a);
  }
  if (args.size() < 2) {
    ctl_usage(stderr);
    return 2;
  }
  const std::string& cmd = args[0];
  const std::string& path = args[1];
  bool known = cmd == "ls" || cmd == "cat" || cmd == "write" || cmd == "rm" || cmd == "mkdir" || cmd == "stat" ||
               cmd == "tail";
  if (!known) {
    std::fprintf(stderr, "berth ctl: unknown command '%s'\n", cmd.c_str());
    ctl_usage(stderr);
    return 2;
  }
  if ((cmd == "write") != (args.size() == 3) || args.size() > 3) {
    ctl_usage(stderr);
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);

  auto t = p9::dial(addr);
  if (!t) return fail("connect", t.error());
  p9::Client c(std::move(t.value()));
  if (auto r = c.version(); !r) return fail("version", r.error());
  if (auto r = c.attach(""); !r) return fail("attach", r.error());

  if (cmd == "ls") {
    auto entries = c.ls(path);
    if (!entries) return fail(path, entries.error());
    for (auto& e : *entries) {
      if (e.name == "." || e.name == "..") continue;
      std::printf("%s%s\n", e.name.c_str(), (e.qid.type & p9::kQtDir) ? "/" : "");
    }
  } else if (cmd == "cat") {
    auto s = c.cat(path);
    if (!s) return fail(path, s.error());
    std::fwrite(s->data(), 1, s->size(), stdout);
  } else if (cmd == "write") {
    auto s = c.ctl(path, args[2]);
    if (!s) return fail(path, s.error());
    std::fwrite(s->data(), 1, s->size(), stdout);
  } else if (cmd == "rm") {
    if (auto r = c.remove(path); !r) return fail(path, r.error());
  } else if (cmd == "mkdir") {
    if (auto r = c.mkdir(path); !r) return fail(path, r.error());
  } else if (cmd == "stat") {
    auto a = c.stat(path);
    if (!a) return fail(path, a.error());
    std::printf("path: %s\ntype: %s\nmode: %04o\nsize: %llu\nqid: %llu\n", path.c_str(),
                S_ISDIR(a->mode) ? "directory" : "file", a->mode & 07777, (unsigned long long)a->size,
                (unsigned long long)a->qid.path);
  } else if (cmd == "tail") {
    // Stop (and clunk) when stdout goes away: `berth ctl tail X | tshark -c N` ends.
    auto r = c.tail(path, [](Bytes b) {
      return std::fwrite(b.data(), 1, b.size(), stdout) == b.size() && std::fflush(stdout) == 0;
    });
    if (!r) return fail(path, r.error());
  }
  return 0;
}
