// The disks' part of the control tree (DESIGN.md "The control tree"):
//
//   /disks/<id>/info    state: format, virtual size, cluster size, file size,
//                       path, NBD addresses ("key value" lines)
//   /disks/<id>/stats   state: the backend's BlockStats, the NBD export's
//                       counters and the current job ("key value" lines)
//   /disks/<id>/ctl     ctl: write "check", "compact" or "discard-zeroes".
//                       The write starts the job and returns at once
//                       ("OK started compact"); reads show its progress
//                       ("compact 42%") and then its result ("OK compact:
//                       file 1.0 GiB -> 512 MiB" or "ERROR compact: ...").
//                       A second job while one runs is EBUSY; an unknown
//                       command EINVAL.
//
// Every read of a state file is a snapshot taken at open; the ctl file
// renders its status when read at offset 0, so each `cat` sees it fresh.
#pragma once

#include <vector>

#include "server9p/metrics.h"
#include "server9p/tree.h"
#include "storage/disk.h"

namespace berth::storage {

// Mounts /disks/<id>/{info,stats,ctl}. `disk` must outlive the tree's use.
void mount_disk_tree(p9::Tree& tree, Disk& disk);

// Registers /metrics for these disks (one source, so that each metric
// family is declared once). The disks must outlive the registry's use.
void mount_disk_metrics(p9::MetricsRegistry& metrics, std::vector<const Disk*> disks);
void render_disk_metrics(p9::PromWriter& w, const std::vector<const Disk*>& disks);

// The renderings, for tests and `berth qcow info`.
std::string render_disk_info(const Disk& disk);
std::string render_disk_stats(const Disk& disk);

// "1.0 GiB", "512 MiB", "4.0 KiB", "17 B".
std::string human_bytes(uint64_t n);

}  // namespace berth::storage
