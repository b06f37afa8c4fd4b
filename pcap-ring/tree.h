// The capture subtree of the control tree:
//
//   /pcap/ctl            add NAME [FILTER...] [limit=SIZE] [snaplen=N] | rm NAME | clear NAME
//   /pcap/rules          one line per rule: filter, limit, snaplen, counters
//   /pcap/NAME.pcap      the ring as it was at open, as a pcap file (ns timestamps)
//   /pcap/NAME.pcapng    the same as pcapng: links as interfaces, directions as epb_flags
//   /pcap/NAME.live      a stream: the pcap global header, then every packet
//                        the rule keeps from the open on, until the reader
//                        clunks (or flushes) or the rule is removed (EOF).
//                        A reader that falls behind the ring skips ahead;
//                        skipped packets are counted (live_skipped). Reads
//                        return whole records whenever the count allows.
// plus berth_pcap_* counters in /metrics.
//
// Audit: every open of a capture file or stream appends a line to /audit
// (and the log, at info level), and so do its reads:
//   TIME open PATH size=BYTES peer=PEER uname=USER
//   TIME read PATH bytes=BYTES peer=PEER uname=USER
//   TIME close PATH bytes=TOTAL peer=PEER uname=USER
// TIME is UTC, ISO 8601 with microseconds. Read lines are coalesced to at
// most one per second per open file (the next line, or the close line,
// carries the bytes of reads in between), so a busy live stream cannot
// flood the audit; no byte read goes unreported.
#pragma once

#include <memory>

#include "common/clock.h"
#include "pcap-ring/capture.h"
#include "server9p/base.h"
#include "server9p/metrics.h"
#include "server9p/tree.h"

namespace berth::pcap {

// `set`, `clock` and `metrics` must outlive the tree's files (declare the
// CaptureSet before the 9P server so that sessions go first).
void mount_pcap_tree(p9::Tree& tree, p9::MetricsRegistry& metrics, CaptureSet& set,
                     std::shared_ptr<p9::AuditLog> audit, const Clock& clock);

// The audit line time format, exposed for tests: "2023-11-14T22:13:20.000005Z".
std::string audit_time(WallTime t);

}  // namespace berth::pcap
