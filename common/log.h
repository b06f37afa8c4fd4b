// Logging setup. Components log through spdlog's default logger; this picks
// the level from a name ("trace".."off") and sends output to stderr so that
// stdout stays for the program's own results.
#pragma once

#include <string_view>

#include "common/result.h"

namespace berth {

[[nodiscard]] Result<void> setup_logging(std::string_view level);

}  // namespace berth
