#include "net/link/frame_link.h"

#include <net/if.h>
#include <sys/un.h>

namespace berth::net {

namespace {
// As the kernel's dev_valid_name(): 1..15 bytes, not "." or "..", no '/',
// ':' or whitespace.
bool valid_ifname(std::string_view n) {
  if (n.empty() || n.size() >= IFNAMSIZ || n == "." || n == "..") return false;
  for (char c : n)
    if (c == '/' || c == ':' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == '\0')
      return false;
  return true;
}
// A name under /run/netns: no path separators, not "." or "..".
bool valid_netns(std::string_view n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string_view::npos &&
         n.find('\0') == std::string_view::npos;
}
}  // namespace

Result<LinkSpec> parse_link_spec(std::string_view spec) {
  size_t colon = spec.find(':');
  if (colon == std::string_view::npos)
    return make_error(EINVAL, "link '" + std::string(spec) +
                                  "' must be tap:IFNAME[@NETNS], qemu:PATH, vfkit:PATH or vmnet:PATH");
  LinkSpec s;
  s.kind = std::string(spec.substr(0, colon));
  std::string_view arg = spec.substr(colon + 1);
  if (s.kind == "tap") {
    size_t at = arg.find('@');
    std::string_view ifname = arg.substr(0, at);
    if (!valid_ifname(ifname))
      return make_error(EINVAL, "bad interface name '" + std::string(ifname) +
                                    "' in link '" + std::string(spec) + "' (1..15 characters, no '/', ':' or spaces)");
    s.name = std::string(ifname);
    if (at != std::string_view::npos) {
      std::string_view ns = arg.substr(at + 1);
      if (!valid_netns(ns))
        return make_error(EINVAL, "bad network namespace name '" + std::string(ns) + "' in link '" +
                                      std::string(spec) + "'");
      s.netns = std::string(ns);
    }
    return s;
  }
  if (s.kind == "qemu" || s.kind == "vfkit" || s.kind == "vmnet") {
    if (arg.empty()) return make_error(EINVAL, "link '" + std::string(spec) + "' needs a socket path");
    if (arg.find('\0') != std::string_view::npos) return make_error(EINVAL, "bad socket path in link");
    if (arg.size() >= sizeof(sockaddr_un::sun_path))
      return make_error(ENAMETOOLONG, "socket path in link '" + std::string(spec) + "' is too long (max " +
                                          std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes)");
    s.name = std::string(arg);
    return s;
  }
  return make_error(EINVAL, "unknown link kind '" + s.kind + "' (tap, qemu, vfkit or vmnet)");
}

}  // namespace berth::net
