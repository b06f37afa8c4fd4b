// libFuzzer target: the port-forward spec parser (net/forward_spec.h).
// Invariants: never crashes; every failure is EINVAL with the grammar in the
// message; every success prints back to a spec that parses to the same value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "net/forward_spec.h"

using namespace berth::net;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto r = parse_forward_spec(text);
  if (!r) {
    if (r.error().code != EINVAL) std::abort();
    if (r.error().message.find(kForwardGrammar) == std::string::npos) std::abort();
    return 0;
  }
  if (r->guest_port == 0) std::abort();
  auto again = parse_forward_spec(r->to_string());
  if (!again || !(*again == *r)) std::abort();
  return 0;
}
