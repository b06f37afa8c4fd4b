// The libuv side of CaptureSet's deferred wakeups: when live readers wait
// for new packets, an idle handle runs CaptureSet::run_wakeups() on the next
// loop iteration, outside the data path that recorded the packets. The idle
// handle is active only while wakeups are pending, so it costs nothing
// otherwise (and no syscall either way).
//
// Declare it after the CaptureSet it serves; close() (or the destructor)
// detaches it. Loop thread only.
#pragma once

#include <uv.h>

#include "pcap-ring/capture.h"

namespace berth::pcap {

class UvWakeups {
 public:
  UvWakeups(uv_loop_t* loop, CaptureSet& set);
  ~UvWakeups();
  UvWakeups(const UvWakeups&) = delete;
  UvWakeups& operator=(const UvWakeups&) = delete;
  void close();

 private:
  static void on_idle(uv_idle_t* h);
  CaptureSet& set_;
  uv_idle_t* idle_;
};

}  // namespace berth::pcap
