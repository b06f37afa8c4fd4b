// Helpers shared by the storage unit tests: a scratch directory, byte
// patterns, file editing, and running qemu-img/qemu-io when installed.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "storage/qcow2.h"
#include "storage/qcow2_format.h"

namespace storage_test {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/berth-storage-XXXXXX";
    const char* d = mkdtemp(tmpl);
    path_ = d ? d : "/tmp";
  }
  ~TempDir() {
    if (path_ != "/tmp") (void)std::system(("rm -rf '" + path_ + "'").c_str());
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = uint8_t(rng());
  return v;
}

inline std::vector<uint8_t> read_file(const std::string& path) {
  std::vector<uint8_t> out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return out;
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
  std::fclose(f);
  return out;
}

inline bool write_file(const std::string& path, const std::vector<uint8_t>& data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  const bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size();
  std::fclose(f);
  return ok;
}

inline uint64_t file_size(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? uint64_t(st.st_size) : 0;
}

inline uint64_t file_blocks_bytes(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? uint64_t(st.st_blocks) * 512 : 0;
}

inline void poke_be64(const std::string& path, uint64_t off, uint64_t v) {
  const int fd = ::open(path.c_str(), O_WRONLY);
  uint8_t b[8];
  berth::storage::qcow2::store_be64(b, v);
  (void)!::pwrite(fd, b, 8, off_t(off));
  ::close(fd);
}

inline void poke_be32(const std::string& path, uint64_t off, uint32_t v) {
  const int fd = ::open(path.c_str(), O_WRONLY);
  uint8_t b[4];
  berth::store_be32(b, v);
  (void)!::pwrite(fd, b, 4, off_t(off));
  ::close(fd);
}

inline uint64_t peek_be64(const std::string& path, uint64_t off) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  uint8_t b[8] = {};
  (void)!::pread(fd, b, 8, off_t(off));
  ::close(fd);
  return berth::storage::qcow2::load_be64(b);
}

// Open options, spelled out (designated initializers trip -Wmissing-field-initializers).
inline berth::storage::Qcow2OpenOptions ro_opts(bool read_only = true) {
  berth::storage::Qcow2OpenOptions o;
  o.read_only = read_only;
  return o;
}
inline berth::storage::Qcow2OpenOptions cache_opts(uint64_t l2, uint64_t rc) {
  berth::storage::Qcow2OpenOptions o;
  o.l2_cache_bytes = l2;
  o.refcount_cache_bytes = rc;
  return o;
}

inline bool have_tool(const char* name) {
  return std::system((std::string("command -v ") + name + " >/dev/null 2>&1").c_str()) == 0;
}

// Runs a shell command; returns its exit status (-1 if it did not exit).
inline int sh(const std::string& cmd) {
  const int r = std::system(cmd.c_str());
  return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

inline std::string sh_out(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

}  // namespace storage_test
