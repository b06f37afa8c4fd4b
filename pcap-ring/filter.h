// A compiled capture filter: tcpdump's expression syntax (pcap-filter(7)),
// compiled by libpcap for Ethernet frames and run with pcap_offline_filter.
//
// The empty expression matches every frame without running BPF. A filter
// that does not compile is an EINVAL whose message is libpcap's own.
// Move-only; owns its BPF program.
//
// Names: libpcap resolves a host name in a filter with getaddrinfo, which
// would block the loop on DNS (and send queries wherever resolv.conf
// points). Before compiling, the expression is scanned as libpcap's lexer
// would cut it, tracking which qualifier each name gets; a name is accepted
// only where libpcap looks it up in local files: a service after port or
// portrange (/etc/services), a protocol after proto or protochain
// (/etc/protocols and libpcap's own tables). Any other name is refused with
// EINVAL, asking for an address; a few exotic uses of names (802.11 types,
// networks from /etc/networks) are refused with it.
#pragma once

#include <pcap/pcap.h>

#include <string>
#include <string_view>

#include "common/bytes.h"
#include "common/result.h"

namespace berth::pcap {

class Filter {
 public:
  static constexpr size_t kMaxExpression = 1024;

  // `snaplen` is what the program is compiled for (it bounds the packet
  // offsets a filter may load, as in tcpdump -s).
  [[nodiscard]] static Result<Filter> compile(std::string_view expression, uint32_t snaplen);

  // The name check alone (see above); compile() runs it first.
  [[nodiscard]] static Result<void> check_names(std::string_view expression);

  Filter() = default;  // matches everything
  Filter(Filter&& o) noexcept;
  Filter& operator=(Filter&& o) noexcept;
  Filter(const Filter&) = delete;
  Filter& operator=(const Filter&) = delete;
  ~Filter();

  // Whether the whole frame (as the link carried it) matches.
  bool matches(Bytes frame) const {
    if (prog_.bf_insns == nullptr) return true;
    return run(frame);
  }
  const std::string& expression() const { return expr_; }

 private:
  bool run(Bytes frame) const;
  std::string expr_;
  bpf_program prog_{0, nullptr};
};

}  // namespace berth::pcap
