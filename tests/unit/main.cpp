// Catch2 runner. Bad-input warnings are expected in tests; keep output quiet
// unless BERTH_TEST_LOG names a level ("debug").
#define CATCH_CONFIG_RUNNER
#include <spdlog/spdlog.h>

#include <catch2/catch.hpp>
#include <cstdlib>

int main(int argc, char** argv) {
  const char* lvl = std::getenv("BERTH_TEST_LOG");
  spdlog::set_level(lvl ? spdlog::level::from_str(lvl) : spdlog::level::err);
  return Catch::Session().run(argc, argv);
}
