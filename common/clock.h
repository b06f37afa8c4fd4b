// Time is passed in (STYLE.md §4): the core asks a Clock, tests supply a fake.
#pragma once

#include <chrono>
#include <cstdint>

namespace berth {

struct WallTime {
  int64_t sec = 0;
  int64_t nsec = 0;
};

class Clock {
 public:
  virtual ~Clock() = default;
  virtual WallTime now() const = 0;  // realtime, for dates shown to users
};

class SystemClock final : public Clock {
 public:
  WallTime now() const override {
    auto d = std::chrono::system_clock::now().time_since_epoch();
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
    return {ns / 1000000000, ns % 1000000000};
  }
};

class FakeClock final : public Clock {
 public:
  WallTime now() const override { return t; }
  WallTime t{1700000000, 0};
};

}  // namespace berth

namespace berth {

// Monotonic time for protocol timers: nanoseconds since an arbitrary origin.
using Instant = std::chrono::nanoseconds;

class MonoClock {
 public:
  virtual ~MonoClock() = default;
  virtual Instant now() const = 0;
};

class SystemMonoClock final : public MonoClock {
 public:
  Instant now() const override {
    return std::chrono::duration_cast<Instant>(std::chrono::steady_clock::now().time_since_epoch());
  }
};

class FakeMonoClock final : public MonoClock {
 public:
  Instant now() const override { return t; }
  void advance(Instant d) { t += d; }
  Instant t{1'000'000'000};
};

}  // namespace berth
