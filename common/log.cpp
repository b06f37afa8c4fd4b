#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

namespace berth {

Result<void> setup_logging(std::string_view level) {
  auto lvl = spdlog::level::from_str(std::string(level));
  // from_str maps unknown names to "off"; only accept "off" when asked for.
  if (lvl == spdlog::level::off && level != "off")
    return make_error(EINVAL, "unknown log level '" + std::string(level) + "' (trace, debug, info, warn, error, off)");
  auto logger = spdlog::stderr_color_mt("berth");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(lvl);
  return {};
}

}  // namespace berth
