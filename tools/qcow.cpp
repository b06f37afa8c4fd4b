// `berth qcow`: create, inspect, check, map and shrink qcow2 images offline,
// with the same engine `berth serve --disk` uses (storage/qcow2.h).
//
// Exit status follows qemu-img: 0 success; 1 an error (or a bad command
// line); for `check`, 1 also means the check could not complete, 2 that
// corruptions remain, 3 that only leaked clusters remain.
//
// Long operations (compact, discard-zeroes) report progress on
// stderr: a bar redrawn in place on a terminal, otherwise one "NAME N%" line
// per percent, so logs stay readable.
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cereal/archives/json.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "common/log.h"
#include "storage/check.h"
#include "storage/disk_tree.h"
#include "storage/qcow2.h"

using namespace berth;
using namespace berth::storage;

int qcow_main(int argc, char** argv);

namespace {

void qcow_usage(FILE* to) {
  std::fprintf(to,
               "usage: berth qcow COMMAND [options] FILE ...\n\n"
               "Create, inspect, check and shrink qcow2 images (v2 and v3, as QEMU writes them).\n\n"
               "  create [--cluster-size N] [--refcount-bits N] [--lazy-refcounts] [--compat 1.1|0.10]\n"
               "         [-b BACKING [-F qcow2|raw]] FILE SIZE\n"
               "                       make an empty image; SIZE takes K, M, G, T suffixes (powers of 1024)\n"
               "  info [--json] FILE   format, sizes, features (raw files too)\n"
               "  check [--repair] [--json] FILE\n"
               "                       check the metadata; --repair fixes leaks and refcount errors.\n"
               "                       Exit 0 clean, 1 check failed, 2 corruptions, 3 leaked clusters\n"
               "  map [--json] FILE    where each guest range lives in the file\n"
               "  compact FILE         move clusters into holes and truncate the file\n"
               "  discard-zeroes FILE  free allocated clusters that contain only zeros\n\n"
               "  --log-level L        trace, debug, info, warn (default), error, off\n"
               "The image must not be in use by another program (`berth serve` offers check,\n"
               "compact and discard-zeroes online through /disks/ID/ctl).\n");
}

int usage_error(const char* fmt_msg, const std::string& arg = {}) {
  std::fprintf(stderr, "berth qcow: ");
  std::fprintf(stderr, fmt_msg, arg.c_str());
  std::fprintf(stderr, "\nRun 'berth qcow --help' for usage.\n");
  return 1;
}

int fail(const std::string& what, const Error& e) {
  std::fprintf(stderr, "berth qcow: %s: %s\n", what.c_str(), e.message.c_str());
  return 1;
}

// "10G", "512M", "1048576", "64k": bytes. Binary suffixes, as qemu-img.
Result<uint64_t> parse_size(std::string_view s) {
  if (s.empty()) return make_error(EINVAL, "empty size");
  uint64_t v = 0;
  size_t i = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; i++) {
    if (v > (UINT64_MAX - 9) / 10) return make_error(EINVAL, "size too large");
    v = v * 10 + uint64_t(s[i] - '0');
  }
  if (i == 0) return make_error(EINVAL, "bad size '" + std::string(s) + "'");
  std::string_view suf = s.substr(i);
  int shift = 0;
  if (suf.empty() || suf == "b" || suf == "B") shift = 0;
  else if (suf == "k" || suf == "K" || suf == "KiB") shift = 10;
  else if (suf == "M" || suf == "m" || suf == "MiB") shift = 20;
  else if (suf == "G" || suf == "g" || suf == "GiB") shift = 30;
  else if (suf == "T" || suf == "t" || suf == "TiB") shift = 40;
  else if (suf == "P" || suf == "p" || suf == "PiB") shift = 50;
  else return make_error(EINVAL, "bad size suffix in '" + std::string(s) + "'");
  if (shift && v > (UINT64_MAX >> shift)) return make_error(EINVAL, "size too large");
  return v << shift;
}

class Progress {
 public:
  explicit Progress(std::string what) : what_(std::move(what)), tty_(::isatty(STDERR_FILENO)) {}
  void update(unsigned pct) {
    if (pct > 100) pct = 100;
    if (int(pct) == last_) return;
    last_ = int(pct);
    if (tty_) {
      int fill = int(pct) * 40 / 100;
      std::fprintf(stderr, "\r%s [%s%s] %3u%%", what_.c_str(), std::string(size_t(fill), '#').c_str(),
                   std::string(size_t(40 - fill), '.').c_str(), pct);
    } else {
      std::fprintf(stderr, "%s %u%%\n", what_.c_str(), pct);
    }
    std::fflush(stderr);
  }
  void done() {
    update(100);
    if (tty_) std::fprintf(stderr, "\n");
  }

 private:
  std::string what_;
  bool tty_;
  int last_ = -1;
};

struct Args {
  std::vector<std::string> positional;
  std::vector<std::pair<std::string, std::string>> opts;  // name, value ("" for flags)
  bool has(std::string_view name) const {
    for (auto& [k, v] : opts)
      if (k == name) return true;
    return false;
  }
  std::string get(std::string_view name, std::string def = {}) const {
    for (auto& [k, v] : opts)
      if (k == name) def = v;
    return def;
  }
};

// Splits argv into options (those in `with_value` take the next argument)
// and positional arguments; unknown options are an error.
Result<Args> parse_args(int argc, char** argv, std::initializer_list<const char*> flags,
                        std::initializer_list<const char*> with_value) {
  Args a;
  for (int i = 0; i < argc; i++) {
    std::string s = argv[i];
    if (s.size() > 1 && s[0] == '-') {
      bool known = false;
      for (const char* f : flags)
        if (s == f) {
          a.opts.emplace_back(s, "");
          known = true;
        }
      for (const char* f : with_value)
        if (s == f) {
          if (i + 1 >= argc) return make_error(EINVAL, s + " needs a value");
          a.opts.emplace_back(s, argv[++i]);
          known = true;
        }
      if (!known) return make_error(EINVAL, "unknown option " + s);
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

// ---- JSON (cereal) ----------------------------------------------------------

struct FormatSpecificData {
  std::string compat;
  bool lazy_refcounts = false, corrupt = false;
  uint32_t refcount_bits = 0;
  template <class A>
  void serialize(A& ar) {
    ar(cereal::make_nvp("compat", compat), cereal::make_nvp("compression-type", std::string("zlib")),
       cereal::make_nvp("lazy-refcounts", lazy_refcounts), cereal::make_nvp("refcount-bits", refcount_bits),
       cereal::make_nvp("corrupt", corrupt), cereal::make_nvp("extended-l2", false));
  }
};
struct FormatSpecific {
  FormatSpecificData data;
  template <class A>
  void serialize(A& ar) {
    ar(cereal::make_nvp("type", std::string("qcow2")), cereal::make_nvp("data", data));
  }
};

std::string info_json(const std::string& path, const std::string& format, uint64_t virtual_size, uint64_t actual_size,
                      const Qcow2Info* q) {
  std::ostringstream os;
  {
    cereal::JSONOutputArchive ar(os);
    ar(cereal::make_nvp("filename", path), cereal::make_nvp("format", format),
       cereal::make_nvp("virtual-size", virtual_size), cereal::make_nvp("actual-size", actual_size));
    if (q) {
      ar(cereal::make_nvp("cluster-size", q->cluster_size));
      if (!q->backing_file.empty()) {
        ar(cereal::make_nvp("backing-filename", q->backing_file));
        if (!q->backing_format.empty()) ar(cereal::make_nvp("backing-filename-format", q->backing_format));
      }
      ar(cereal::make_nvp("dirty-flag", q->dirty));
      FormatSpecific fs;
      fs.data.compat = q->compat;
      fs.data.lazy_refcounts = q->lazy_refcounts;
      fs.data.corrupt = q->corrupt;
      fs.data.refcount_bits = q->refcount_bits;
      ar(cereal::make_nvp("format-specific", fs));
    }
  }
  os << "\n";
  return os.str();
}

std::string check_json(const std::string& path, const CheckResult& r) {
  std::ostringstream os;
  {
    cereal::JSONOutputArchive ar(os);
    ar(cereal::make_nvp("image-end-offset", r.image_end_offset), cereal::make_nvp("total-clusters", r.total_clusters),
       cereal::make_nvp("check-errors", r.check_errors), cereal::make_nvp("allocated-clusters", r.allocated_clusters),
       cereal::make_nvp("filename", path), cereal::make_nvp("format", std::string("qcow2")));
    if (r.corruptions) ar(cereal::make_nvp("corruptions", r.corruptions));
    if (r.leaks) ar(cereal::make_nvp("leaks", r.leaks));
    if (r.corruptions_fixed) ar(cereal::make_nvp("corruptions-fixed", r.corruptions_fixed));
    if (r.leaks_fixed) ar(cereal::make_nvp("leaks-fixed", r.leaks_fixed));
    ar(cereal::make_nvp("fragmented-clusters", r.fragmented_clusters),
       cereal::make_nvp("compressed-clusters", r.compressed_clusters), cereal::make_nvp("messages", r.messages));
  }
  os << "\n";
  return os.str();
}

// ---- commands -----------------------------------------------------------------

int cmd_create(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--lazy-refcounts"},
                      {"--cluster-size", "--refcount-bits", "--compat", "-b", "--backing", "-F", "--backing-format"});
  if (!a) return usage_error("create: %s", a.error().message);
  if (a->positional.size() != 2) return usage_error("create needs FILE and SIZE");
  Qcow2CreateOptions o;
  if (a->has("--cluster-size")) {
    auto cs = parse_size(a->get("--cluster-size"));
    if (!cs) return usage_error("--cluster-size: %s", cs.error().message);
    o.cluster_size = cs.value();
  }
  if (a->has("--refcount-bits")) {
    auto rb = parse_size(a->get("--refcount-bits"));
    if (!rb || rb.value() > 64) return usage_error("--refcount-bits: bad value '%s'", a->get("--refcount-bits"));
    o.refcount_bits = uint32_t(rb.value());
  }
  std::string compat = a->get("--compat", "1.1");
  if (compat == "1.1" || compat == "v3")
    o.version = 3;
  else if (compat == "0.10" || compat == "v2")
    o.version = 2;
  else
    return usage_error("--compat must be 1.1 or 0.10, not '%s'", compat);
  o.lazy_refcounts = a->has("--lazy-refcounts");
  o.backing_file = a->get("--backing", a->get("-b"));
  o.backing_format = a->get("--backing-format", a->get("-F"));
  const std::string& path = a->positional[0];
  auto size = parse_size(a->positional[1]);
  if (!size) return usage_error("create: %s", size.error().message);
  auto img = Qcow2Backend::create(path, size.value(), o);
  if (!img) return fail(path, img.error());
  auto info = img.value()->info();
  if (auto r = img.value()->close(); !r) return fail(path, r.error());
  std::printf("Formatting '%s', fmt=qcow2 cluster_size=%llu compat=%s size=%llu%s%s\n", path.c_str(),
              (unsigned long long)o.cluster_size, o.version == 3 ? "1.1" : "0.10",
              (unsigned long long)size.value(), o.lazy_refcounts ? " lazy_refcounts=on" : "",
              o.backing_file.empty() ? "" : (" backing_file=" + o.backing_file).c_str());
  (void)info;
  return 0;
}

int cmd_info(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--json"}, {});
  if (!a) return usage_error("info: %s", a.error().message);
  if (a->positional.size() != 1) return usage_error("info needs FILE");
  const std::string& path = a->positional[0];
  auto fmt = probe_format(path);
  if (!fmt) return fail(path, fmt.error());
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return fail(path, Error{errno, std::strerror(errno)});
  uint64_t actual = uint64_t(st.st_blocks) * 512;
  if (fmt.value() != "qcow2") {
    if (a->has("--json")) {
      std::fputs(info_json(path, "raw", uint64_t(st.st_size), actual, nullptr).c_str(), stdout);
    } else {
      std::printf("image: %s\nfile format: raw\nvirtual size: %s (%llu bytes)\ndisk size: %s\n", path.c_str(),
                  human_bytes(uint64_t(st.st_size)).c_str(), (unsigned long long)st.st_size, human_bytes(actual).c_str());
    }
    return 0;
  }
  Qcow2OpenOptions oo;
  oo.read_only = true;
  auto img = Qcow2Backend::open(path, oo);
  if (!img) return fail(path, img.error());
  Qcow2Info q = img.value()->info();
  if (a->has("--json")) {
    std::fputs(info_json(path, "qcow2", q.virtual_size, actual, &q).c_str(), stdout);
    return 0;
  }
  std::printf("image: %s\n", path.c_str());
  std::printf("file format: qcow2\n");
  std::printf("virtual size: %s (%llu bytes)\n", human_bytes(q.virtual_size).c_str(), (unsigned long long)q.virtual_size);
  std::printf("disk size: %s\n", human_bytes(actual).c_str());
  std::printf("file size: %s (%llu bytes)\n", human_bytes(q.file_size).c_str(), (unsigned long long)q.file_size);
  std::printf("cluster_size: %llu\n", (unsigned long long)q.cluster_size);
  if (!q.backing_file.empty()) {
    std::printf("backing file: %s\n", q.backing_file.c_str());
    if (!q.backing_format.empty()) std::printf("backing file format: %s\n", q.backing_format.c_str());
  }
  std::printf("Format specific information:\n");
  std::printf("    compat: %s\n", q.compat.c_str());
  std::printf("    compression type: zlib\n");
  std::printf("    lazy refcounts: %s\n", q.lazy_refcounts ? "true" : "false");
  std::printf("    refcount bits: %u\n", q.refcount_bits);
  std::printf("    corrupt: %s\n", q.corrupt ? "true" : "false");
  if (q.dirty) std::printf("    dirty: true\n");
  if (q.nb_snapshots) std::printf("    snapshots: %u\n", q.nb_snapshots);
  return 0;
}

int cmd_check(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--repair", "-r", "--json"}, {});
  if (!a) return usage_error("check: %s", a.error().message);
  if (a->positional.size() != 1) return usage_error("check needs FILE");
  const std::string& path = a->positional[0];
  bool repair = a->has("--repair") || a->has("-r");
  auto fmt = probe_format(path);
  if (!fmt) return fail(path, fmt.error());
  if (fmt.value() != "qcow2") {
    std::fprintf(stderr, "berth qcow: %s: a raw image has no metadata to check\n", path.c_str());
    return 1;
  }
  // The engine checks in one pass: no progress to show.
  auto r = Qcow2Backend::check_file(path, repair);
  if (!r) return fail(path, r.error());
  const CheckResult& c = r.value();
  if (a->has("--json")) {
    std::fputs(check_json(path, c).c_str(), stdout);
  } else {
    for (auto& m : c.messages) std::printf("%s\n", m.c_str());
    if (c.messages_dropped) std::printf("(%llu more findings)\n", (unsigned long long)c.messages_dropped);
    if (c.corruptions_fixed || c.leaks_fixed)
      std::printf("The following inconsistencies were found and repaired:\n\n    %llu leaked clusters\n    %llu "
                  "corruptions\n\nDouble checking the fixed image now...\n",
                  (unsigned long long)c.leaks_fixed, (unsigned long long)c.corruptions_fixed);
    if (c.clean()) {
      std::printf("No errors were found on the image.\n");
    } else {
      if (c.corruptions)
        std::printf("\n%llu errors were found on the image.\nData may be corrupted, or further writes to the image "
                    "may corrupt it.\n",
                    (unsigned long long)c.corruptions);
      if (c.leaks)
        std::printf("\n%llu leaked clusters were found on the image.\nThis means waste of disk space, but no harm to "
                    "data.\n",
                    (unsigned long long)c.leaks);
      if (c.check_errors)
        std::printf("\n%llu internal errors have occurred during the check.\n", (unsigned long long)c.check_errors);
    }
    if (c.total_clusters)
      std::printf("%llu/%llu = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed clusters\n",
                  (unsigned long long)c.allocated_clusters, (unsigned long long)c.total_clusters,
                  100.0 * double(c.allocated_clusters) / double(c.total_clusters),
                  c.allocated_clusters ? 100.0 * double(c.fragmented_clusters) / double(c.allocated_clusters) : 0.0,
                  c.allocated_clusters ? 100.0 * double(c.compressed_clusters) / double(c.allocated_clusters) : 0.0);
    std::printf("Image end offset: %llu\n", (unsigned long long)c.image_end_offset);
  }
  // qemu-img check's exit codes.
  if (c.check_errors) return 1;
  if (c.corruptions) return 2;
  if (c.leaks) return 3;
  return 0;
}

int cmd_map(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--json"}, {});
  if (!a) return usage_error("map: %s", a.error().message);
  if (a->positional.size() != 1) return usage_error("map needs FILE");
  const std::string& path = a->positional[0];
  Qcow2OpenOptions oo;
  oo.read_only = true;
  auto img = Qcow2Backend::open(path, oo);
  if (!img) return fail(path, img.error());
  auto m = img.value()->map();
  if (!m) return fail(path, m.error());
  if (a->has("--json")) {
    std::fputs(map_to_json(m.value()).c_str(), stdout);
    return 0;
  }
  // qemu-img map's human format: only ranges with data, and where.
  std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  for (auto& e : m.value()) {
    if (!e.data) continue;
    std::string file = e.depth == 0 ? path : "(backing depth " + std::to_string(e.depth) + ")";
    std::string mapped = e.offset ? fmt::format("{:#x}", *e.offset) : (e.compressed ? "compressed" : "-");
    std::printf("%-16s%-16s%-16s%s\n", fmt::format("{:#x}", e.start).c_str(), fmt::format("{:#x}", e.length).c_str(),
                mapped.c_str(), file.c_str());
  }
  return 0;
}

int cmd_job(const char* name, int argc, char** argv) {
  auto a = parse_args(argc, argv, {}, {});
  if (!a) return usage_error("%s", a.error().message);
  if (a->positional.size() != 1) return usage_error("%s needs FILE", name);
  const std::string& path = a->positional[0];
  auto img = Qcow2Backend::open(path, {});
  if (!img) return fail(path, img.error());
  Qcow2Backend& b = *img.value();
  uint64_t before = b.file_size();
  auto job = std::strcmp(name, "compact") == 0 ? b.start_compaction() : b.start_discard_zeroes();
  if (!job) return fail(path, job.error());
  Progress p(name);
  auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    auto r = job.value()->step(1024);
    if (!r) {
      std::fprintf(stderr, "\n");
      return fail(path, r.error());
    }
    p.update(job.value()->percent());
    if (r.value()) break;
  }
  p.done();
  std::string summary = job.value()->summary();
  if (summary.starts_with(std::string(name) + ": ")) summary.erase(0, std::strlen(name) + 2);
  job.value().reset();
  if (auto r = b.close(); !r) return fail(path, r.error());
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  struct stat st {};
  uint64_t after = ::stat(path.c_str(), &st) == 0 ? uint64_t(st.st_size) : 0;
  std::printf("%s: %s (file %s -> %s, %.1f s)\n", name, summary.c_str(), human_bytes(before).c_str(),
              human_bytes(after).c_str(), took);
  return 0;
}

}  // namespace

int qcow_main(int argc, char** argv) {
  // argv[0] is "qcow".
  std::vector<char*> rest;
  std::string level = "warn";
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      qcow_usage(stdout);
      return 0;
    }
    if (a == "--log-level") {
      if (i + 1 >= argc) return usage_error("--log-level needs a value");
      level = argv[++i];
      continue;
    }
    rest.push_back(argv[i]);
  }
  if (auto r = setup_logging(level); !r) return usage_error("%s", r.error().message);
  if (rest.empty()) {
    qcow_usage(stderr);
    return 1;
  }
  std::string cmd = rest[0];
  int n = int(rest.size()) - 1;
  char** args = rest.data() + 1;
  if (cmd == "create") return cmd_create(n, args);
  if (cmd == "info") return cmd_info(n, args);
  if (cmd == "check") return cmd_check(n, args);
  if (cmd == "map") return cmd_map(n, args);
  if (cmd == "compact") return cmd_job("compact", n, args);
  if (cmd == "discard-zeroes") return cmd_job("discard-zeroes", n, args);
  return usage_error("unknown command '%s'", cmd);
}
