// Persistent state under --state-dir: one JSON document per component,
// serialised with cereal.
//
//  - save_state() writes DIR/NAME.json.tmp, fsyncs it, then renames it over
//    DIR/NAME.json, so a crash leaves either the old or the new file whole.
//  - load_state() reads DIR/NAME.json. A missing file is "nothing saved yet"
//    (nullopt). A file that does not parse is moved aside to
//    DIR/NAME.json.damaged-<unix seconds>, a warning says so, and nullopt
//    comes back: the start goes on with empty state.
//
// T is any cereal-serialisable type; the document is {"NAME": T}.
#pragma once

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cereal/archives/json.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "common/result.h"

namespace berth {

// Serialise `value` as the JSON document {"name": value}.
template <class T>
std::string to_json(const std::string& name, const T& value) {
  std::ostringstream os;
  {
    cereal::JSONOutputArchive ar(os);
    ar(cereal::make_nvp(name.c_str(), value));
  }
  os << "\n";
  return os.str();
}

template <class T>
Result<void> save_state(const std::string& dir, const std::string& name, const T& value) {
  if (dir.empty()) return {};
  std::string path = dir + "/" + name + ".json", tmp = path + ".tmp";
  std::string text = to_json(name, value);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(errno, "cannot write " + tmp + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      ::close(fd);
      ::unlink(tmp.c_str());
      return make_error(e, "cannot write " + tmp + ": " + std::strerror(e));
    }
    off += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return make_error(e, "cannot sync " + tmp + ": " + std::strerror(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    return make_error(e, "cannot rename " + tmp + ": " + std::strerror(e));
  }
  return {};
}

template <class T>
std::optional<T> load_state(const std::string& dir, const std::string& name) {
  if (dir.empty()) return std::nullopt;
  std::string path = dir + "/" + name + ".json";
  std::ifstream in(path);
  if (!in) return std::nullopt;
  try {
    T value{};
    cereal::JSONInputArchive ar(in);
    ar(cereal::make_nvp(name.c_str(), value));
    return value;
  } catch (const std::exception& e) {
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
    std::string aside = path + ".damaged-" + std::to_string(secs);
    std::error_code ec;
    std::filesystem::rename(path, aside, ec);
    spdlog::warn("state file {} is damaged ({}); moved it to {} and starting without it", path, e.what(),
                 ec ? std::string("(move failed: ") + ec.message() + ")" : aside);
    return std::nullopt;
  }
}

}  // namespace berth
