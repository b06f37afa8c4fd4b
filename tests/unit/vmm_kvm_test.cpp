// probe_kvm() on this host, whatever it is: it must either pass (a KVM that
// runs 64-bit guests) or fail with a message that names the problem: no
// /dev/kvm (ENOENT), no permission (EACCES), or a KVM that cannot run a
// 64-bit guest (PVM: ENOTSUP). Bounded: the probe gives up after ~3 s.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "vmm/kvm.h"

using namespace berth;
using namespace berth::vmm;

TEST_CASE("probe_kvm passes or says clearly why this host cannot run the VM", "[vmm][kvm]") {
  auto t0 = std::chrono::steady_clock::now();
  auto r = probe_kvm();
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(secs < 10);
  struct stat st {};
  const bool present = stat("/dev/kvm", &st) == 0;
  if (r.ok()) {
    WARN("probe_kvm: this KVM runs 64-bit guests (" << secs << " s)");
    CHECK(present);
    return;
  }
  const std::string& msg = r.error().message;
  WARN("probe_kvm: " << msg);
  auto has = [&](const char* words) { return msg.find(words) != std::string::npos; };
  if (!present) {
    CHECK(r.error().code == ENOENT);
    CHECK(has("/dev/kvm"));
    CHECK(has("kvm-intel"));
    CHECK(has("kvm-amd"));
    CHECK(has("VT-x/AMD-V"));
  } else if (r.error().code == EACCES) {
    CHECK(has("kvm"));
    CHECK(has("group"));
  } else {
    CHECK(r.error().code == ENOTSUP);
    CHECK((has("cannot run a 64-bit guest") || has("lacks required capabilities") || has("API version")));
  }
}

TEST_CASE("KvmSystem::open passes ENOENT through for a missing device", "[vmm][kvm]") {
  auto r = KvmSystem::open("/nonexistent/kvm");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ENOENT);
}
