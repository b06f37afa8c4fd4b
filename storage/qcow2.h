// Qcow2Backend: a qcow2 image (v2 and v3) as a BlockBackend.
//
// What it does:
// - Opens images written by QEMU: cluster sizes 512 B..2 MiB, refcount widths
//   1..64 bits, v2 (compat=0.10) and v3 (compat=1.1). Reads unallocated
//   clusters from the backing file (opened read-only, its name resolved
//   against the image's directory, chains at most max_backing_depth deep and
//   loop-free) or as zeros; zero clusters as zeros; zlib-compressed clusters
//   (raw deflate, as QEMU writes) are inflated.
// - Refuses, with a message naming the feature: unknown or unsupported
//   incompatible feature bits (external data file, zstd, extended L2),
//   encryption, and writing to images with internal snapshots. A
//   corrupt-marked image opens read-only only (EUCLEAN otherwise), unless
//   opened for repair. A dirty image (lazy refcounts) opened writable has its
//   refcounts rebuilt first, as QEMU does; read-only it is read as it is.
// - Writes (v3, and v2 without zero clusters): allocation, copy-on-write from
//   the backing file, from compressed clusters and from shared clusters;
//   discard (zero clusters on v3, unallocated on v2, host holes punched);
//   write-zeroes (zero clusters; a partial cluster gets real zeros); optional
//   lazy refcounts with the dirty bit; grow-only resize.
// - Keeps L2 tables and refcount blocks in two LRU caches of configurable
//   size, and counts hits and misses.
// - Check and repair (check.h), allocation map, online compaction and
//   discard-of-zero-clusters as budgeted jobs (Qcow2Job).
//
// Untrusted images: every offset read from the image is checked (alignment,
// inside the file, not overlapping other metadata) before use. A bad one is
// EIO with a message; if the image is writable it is also marked corrupt (the
// incompatible corrupt bit, as QEMU does) and further writes fail with EROFS.
// Table sizes are bounded (L1 32 MiB, refcount table 8 MiB); nothing is
// allocated in proportion to a number read from the image without that number
// first being checked against the file size.
//
// Crash ordering (what is on disk at any instant is a consistent image, with
// at worst leaked clusters, which the next writable open's check or
// check(repair) returns):
// 1. Refcount increments reach the disk before any reference to the cluster:
//    a cluster is allocated by setting its refcount in the (write-back)
//    refcount cache; refcount blocks are written before L2 tables and the L1
//    table, with an fdatasync between. A new refcount block, and the
//    refcount table entry pointing at it, are written and synced at once.
// 2. Data reaches the disk before the reference to it: guest data goes to a
//    newly allocated cluster with pwrite; the L2 entry pointing at it changes
//    in the L2 cache; the cache is written back only after an fdatasync that
//    follows the data writes (flush, or eviction, which flushes everything).
// 3. A new L2 table is written as zeros and synced before the L1 entry that
//    points at it is written, so an L1 entry never points at garbage.
// 4. Refcount decrements happen after the reference is gone from the disk:
//    clusters freed by discard, write-zeroes, copy-on-write or compaction are
//    queued, and the queue is applied (refcounts decremented, host ranges
//    punched) only after the L2/L1 writes that dropped the references have
//    been synced. Until then the clusters are not reused.
// 5. Header changes that switch a table (L1 growth, refcount table growth or
//    rebuild) write the new table, sync, then rewrite the header fields in one
//    sector-sized pwrite, sync, and only then free the old table.
// With lazy refcounts (v3, compatible bit 0) the dirty bit is set and synced
// before the first write, rule 1 is dropped (refcount blocks are written on
// eviction and close), and close() writes them and clears the bit.
// flush() makes every write that returned before it durable. A write with
// fua=true is followed by flush().
//
// Threading: one thread at a time (the disk's I/O thread). stats() and info()
// may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "storage/block_backend.h"
#include "storage/check.h"
#include "storage/qcow2_format.h"

struct z_stream_s;

namespace berth::storage {

struct Qcow2OpenOptions {
  bool read_only = false;
  // L2 table cache. 0: enough tables to map the whole disk, at most 32 MiB.
  uint64_t l2_cache_bytes = 0;
  // Refcount block cache. 0: 1 MiB. Both caches hold at least 4 clusters.
  uint64_t refcount_cache_bytes = 0;
  // nullopt: use lazy refcounts if the image's compatible bit says so.
  // true: use them (v3; sets the bit). false: never.
  std::optional<bool> lazy_refcounts;
  unsigned max_backing_depth = 16;
  // false: do not open the backing file (for looking at untrusted images);
  // unallocated clusters then read as zeros.
  bool open_backing = true;
  // For `check --repair`: open a corrupt-marked or dirty image writable
  // without the automatic repair; guest writes stay refused until
  // check(true) leaves it clean.
  bool for_repair = false;
};

struct Qcow2CreateOptions {
  uint64_t cluster_size = 65536;  // power of two, 512..2 MiB
  uint32_t refcount_bits = 16;    // 1, 2, 4, 8, 16, 32 or 64
  bool lazy_refcounts = false;    // v3 only
  std::string backing_file;       // stored as given; relative names are resolved against the image's directory
  std::string backing_format;     // "qcow2" or "raw"; "" probes the backing file
  uint32_t version = 3;           // 2 writes a compat=0.10 image
};

struct Qcow2Info {
  std::string filename;
  uint32_t version = 0;
  std::string compat;  // "0.10" or "1.1"
  uint64_t virtual_size = 0, file_size = 0, cluster_size = 0;
  uint32_t refcount_bits = 0;
  bool lazy_refcounts = false, dirty = false, corrupt = false, read_only = false;
  std::string backing_file, backing_format;
  uint32_t nb_snapshots = 0;
  bool has_bitmaps = false;
  uint64_t incompatible_features = 0, compatible_features = 0, autoclear_features = 0;
  std::string to_json() const;  // qemu-img info --output=json's main keys
};

// One extent of the allocation map, as `qemu-img map --output=json` shows it.
struct MapExtent {
  uint64_t start = 0, length = 0;
  uint32_t depth = 0;     // 0: this image; n: the n-th backing file
  bool present = false;   // allocated in this image or a backing file (zero clusters too)
  bool zero = false;      // reads as zeros
  bool data = false;      // has data in a file
  bool compressed = false;
  std::optional<uint64_t> offset;  // host offset, for uncompressed data (depth 0 only)
};
std::string map_to_json(const std::vector<MapExtent>& extents);

// A long operation run in slices between requests on the I/O thread.
class Qcow2Job {
 public:
  virtual ~Qcow2Job() = default;
  // Does about `budget` clusters of work. Returns true when finished. An
  // error ends the job; the image stays consistent.
  [[nodiscard]] virtual Result<bool> step(uint64_t budget) = 0;
  virtual bool done() const = 0;
  virtual unsigned percent() const = 0;    // 0..100
  virtual std::string summary() const = 0;  // progress or result, one line
};

class Qcow2Compactor;
class Qcow2ZeroDiscarder;

class Qcow2Backend final : public BlockBackend {
 public:
  using OpenOptions = Qcow2OpenOptions;
  using CreateOptions = Qcow2CreateOptions;

  [[nodiscard]] static Result<std::unique_ptr<Qcow2Backend>> open(const std::string& path, const OpenOptions& opts = {});
  // Creates (truncating any existing file) and opens it writable.
  [[nodiscard]] static Result<std::unique_ptr<Qcow2Backend>> create(const std::string& path, uint64_t virtual_size,
                                                                    const CreateOptions& opts = {});
  // Opens (writable for repair), checks, optionally repairs, closes.
  [[nodiscard]] static Result<CheckResult> check_file(const std::string& path, bool repair);

  ~Qcow2Backend() override;  // close(); errors are logged

  uint64_t size() const override { return virtual_size_.load(std::memory_order_relaxed); }
  bool read_only() const override { return read_only_; }
  std::string format() const override { return "qcow2"; }
  [[nodiscard]] Result<void> read(uint64_t offset, std::span<uint8_t> out) override;
  [[nodiscard]] Result<void> write(uint64_t offset, Bytes data, bool fua = false) override;
  [[nodiscard]] Result<void> flush() override;
  [[nodiscard]] Result<void> discard(uint64_t offset, uint64_t len) override;
  [[nodiscard]] Result<void> write_zeroes(uint64_t offset, uint64_t len, bool may_unmap, bool fua = false) override;
  BlockStats stats() const override;

  // Writes everything back, clears the dirty bit, closes the file. Later
  // calls fail with EBADF.
  [[nodiscard]] Result<void> close();

  Qcow2Info info() const;
  const qcow2::Header& header() const { return hdr_; }
  const std::string& path() const { return path_; }
  uint64_t file_size() const { return physical_size_.load(std::memory_order_relaxed); }

  // Check (and with repair=true, repair) the image. Flushes first.
  [[nodiscard]] Result<CheckResult> check(bool repair);
  [[nodiscard]] Result<std::vector<MapExtent>> map(uint64_t offset = 0, uint64_t length = UINT64_MAX);
  // Grow only: EINVAL for a smaller size.
  [[nodiscard]] Result<void> resize(uint64_t new_size);

  // Jobs. One at a time (EBUSY); the job must not outlive the backend.
  // Compaction moves clusters from the end of the file into holes, updates
  // the references, and truncates the file. Discard-zeroes turns allocated
  // clusters that contain only zeros into zero clusters and frees them.
  [[nodiscard]] Result<std::unique_ptr<Qcow2Job>> start_compaction();
  [[nodiscard]] Result<std::unique_ptr<Qcow2Job>> start_discard_zeroes();

 private:
  friend class Qcow2Compactor;
  friend class Qcow2ZeroDiscarder;

  struct Slot {
    uint64_t offset = 0;  // 0: empty
    uint64_t lru = 0;
    uint32_t pins = 0;
    bool dirty = false;
    bool fresh = false;  // a new L2 table: zeros must reach the disk before the L1 entry
  };
  struct Cache {
    size_t cluster_size = 0;
    std::vector<Slot> slots;
    std::unique_ptr<uint8_t[]> mem;
    std::unordered_map<uint64_t, uint32_t> index;
    uint64_t tick = 0;
    std::atomic<uint64_t> hits{0}, misses{0};
    uint8_t* data(uint32_t s) { return mem.get() + size_t(s) * cluster_size; }
  };
  enum class MetaKind : uint8_t { L2 = 1, RefBlock = 2 };
  struct PendingUpdate {
    uint64_t l2_index;
    uint64_t new_raw;
    uint64_t old_raw;
    uint64_t new_cluster;  // cluster allocated for it, 0 if none
  };
  struct Run {
    uint64_t host = 0;
    const uint8_t* src = nullptr;
    uint64_t len = 0;
  };

  Qcow2Backend() = default;
  [[nodiscard]] Result<void> init(const std::string& path, const OpenOptions& opts, unsigned depth,
                                  std::vector<std::pair<uint64_t, uint64_t>>& chain);

  // File I/O.
  [[nodiscard]] Result<void> pread_exact(void* buf, size_t len, uint64_t off, bool zero_fill_past_eof);
  [[nodiscard]] Result<void> pwrite_all(const void* buf, size_t len, uint64_t off);
  [[nodiscard]] Result<void> sync();
  void punch(uint64_t off, uint64_t len);
  [[nodiscard]] Result<void> write_header_bytes(size_t at, const uint8_t* bytes, size_t len);
  [[nodiscard]] Result<void> set_incompatible_bits(uint64_t bits);

  // Corruption: logs, marks the image corrupt if writable, blocks writes.
  Error corruption(const std::string& msg);
  Result<void> writable() const;

  // Metadata overlap (QEMU's "overlap-check").
  bool overlaps_fixed(uint64_t cluster) const;
  bool overlaps_metadata(uint64_t cluster) const;

  // Caches.
  void cache_init(Cache& c, uint64_t bytes, uint64_t default_bytes);
  [[nodiscard]] Result<uint32_t> l2_load(uint64_t offset);
  [[nodiscard]] Result<uint32_t> l2_insert_fresh(uint64_t offset);
  [[nodiscard]] Result<uint32_t> l2_victim();
  [[nodiscard]] Result<uint32_t> rc_load(uint64_t offset);
  [[nodiscard]] Result<uint32_t> rc_victim();
  [[nodiscard]] Result<void> rc_write_slot(uint32_t s);
  [[nodiscard]] Result<void> l2_write_slot(uint32_t s);
  void cache_drop(Cache& c);
  void rekey(Cache& c, uint32_t slot, uint64_t new_offset);

  // L1/L2.
  [[nodiscard]] Result<uint64_t> l2_offset_checked(uint64_t l1_index);  // 0: none
  [[nodiscard]] Result<int64_t> l2_for_read(uint64_t l1_index);         // slot or -1
  [[nodiscard]] Result<uint32_t> l2_for_write(uint64_t l1_index);
  void set_l1(uint64_t l1_index, uint64_t raw);
  void set_l2(uint32_t slot, uint64_t l1_index, uint64_t l2_index, uint64_t raw);
  uint64_t l2_raw(uint32_t slot, uint64_t l2_index) { return qcow2::load_be64(l2_cache_.data(slot) + 8 * l2_index); }

  // Refcounts and allocation.
  [[nodiscard]] Result<uint64_t> get_refcount(uint64_t cluster);
  [[nodiscard]] Result<void> set_refcount(uint64_t cluster, uint64_t value);
  [[nodiscard]] Result<uint64_t> alloc_cluster();
  [[nodiscard]] Result<bool> alloc_specific(uint64_t cluster);  // false: the cluster went to a new refcount block
  [[nodiscard]] Result<uint64_t> alloc_contiguous(uint64_t n);
  [[nodiscard]] Result<void> create_refblock(uint64_t group, uint64_t at_cluster);
  [[nodiscard]] Result<void> grow_reftable(uint64_t need_group);
  [[nodiscard]] Result<void> release_now(uint64_t cluster);  // decrement an unreferenced cluster
  // Frees after the next sync of the references (rule 4). punch_hole=false
  // for clusters a truncation will drop anyway (compaction).
  static constexpr uint64_t kNoPunch = 1ull << 63;
  void queue_free(uint64_t cluster, bool punch_hole = true);
  void queue_free_entry(uint64_t raw);
  [[nodiscard]] Result<void> apply_pending_frees();
  [[nodiscard]] Result<void> scan_refcounts();

  // Flushing.
  [[nodiscard]] Result<void> flush_metadata();
  [[nodiscard]] Result<void> flush_all();  // also writes refcount blocks (lazy too)
  [[nodiscard]] Result<void> ensure_dirty_bit();
  [[nodiscard]] Result<void> maybe_flush_frees();

  // Data paths.
  [[nodiscard]] Result<void> check_request(uint64_t offset, uint64_t len) const;
  [[nodiscard]] Result<void> read_backing(uint64_t guest_offset, uint8_t* out, uint64_t len);
  [[nodiscard]] Result<void> read_compressed(const qcow2::L2Entry& e, uint64_t raw, uint8_t* cluster_out);
  [[nodiscard]] Result<void> read_cluster_source(uint64_t guest_cluster, uint64_t raw, uint8_t* out);
  [[nodiscard]] Result<void> validate_data_entry(const qcow2::L2Entry& e, uint64_t raw, uint64_t guest_offset, bool for_write);
  [[nodiscard]] Result<void> write_in_table(uint64_t l1_index, uint64_t offset, Bytes data);
  [[nodiscard]] Result<void> flush_run(Run& run);
  [[nodiscard]] Result<void> zero_in_table(uint64_t l1_index, uint64_t offset, uint64_t len, bool discard, bool may_unmap);
  [[nodiscard]] Result<void> zero_range(uint64_t offset, uint64_t len, bool discard, bool may_unmap);
  [[nodiscard]] Result<bool> reads_as_zero(uint64_t guest_cluster);

  // Check (qcow2_check.cpp).
  struct CheckPass;
  [[nodiscard]] Result<void> check_pass(CheckPass& p, bool count_refcount_structures);
  [[nodiscard]] Result<void> check_compare(CheckPass& p, CheckResult& res);
  [[nodiscard]] Result<void> check_copied(CheckPass& p, CheckResult& res);
  [[nodiscard]] Result<void> apply_entry_fixes(CheckPass& p);
  [[nodiscard]] Result<void> rebuild_refcounts(std::vector<uint32_t>& refs);
  [[nodiscard]] Result<CheckResult> run_check(bool repair);
  [[nodiscard]] Result<void> reload_after_repair();

  // State.
  int fd_ = -1;
  std::string path_;
  qcow2::Header hdr_;
  bool read_only_ = true;
  bool for_repair_ = false;
  std::string write_block_;  // non-empty: why writes are refused
  std::atomic<bool> corrupt_marked_{false};
  bool lazy_ = false;
  bool dirty_set_ = false;
  bool unsynced_ = false;
  bool closed_ = false;
  uint32_t cb_ = 16;       // cluster bits
  uint64_t cs_ = 65536;    // cluster size
  uint32_t l2_bits_ = 13;  // log2(entries per L2 table)
  uint32_t rb_bits_ = 15;  // log2(entries per refcount block)
  uint32_t rc_order_ = 4;
  std::atomic<uint64_t> virtual_size_{0};
  std::atomic<uint64_t> physical_size_{0};
  uint64_t alloc_end_ = 0;   // cluster index: no cluster at or past it is in use
  uint64_t free_hint_ = 0;   // cluster index: no free cluster below it
  std::vector<uint64_t> l1_;
  std::vector<uint64_t> l1_dirty_;
  std::vector<uint8_t> l1_dirty_flag_;
  std::vector<uint64_t> reftable_;
  std::unordered_map<uint64_t, MetaKind> meta_;  // cluster index -> L2 table / refcount block
  Cache l2_cache_, rc_cache_;
  uint64_t last_l2_offset_ = 0;
  uint32_t last_l2_slot_ = 0;
  std::unique_ptr<BlockBackend> backing_;
  uint64_t backing_size_ = 0;
  std::vector<uint64_t> pending_free_;
  std::vector<PendingUpdate> updates_;
  std::vector<uint8_t> bounce_;      // one cluster
  std::vector<uint8_t> zeros_;       // one cluster of zeros
  std::vector<uint8_t> cbuf_;        // compressed input, up to 2 clusters
  std::vector<uint8_t> dbuf_;        // last inflated cluster
  uint64_t dbuf_key_ = 0;            // raw L2 entry of dbuf_ (0: none)
  z_stream_s* zs_ = nullptr;
  Qcow2Job* job_ = nullptr;
  Qcow2Compactor* compactor_ = nullptr;

  struct Counters {
    std::atomic<uint64_t> reads{0}, writes{0}, flushes{0}, discards{0}, write_zeroes{0};
    std::atomic<uint64_t> bytes_read{0}, bytes_written{0}, bytes_discarded{0}, bytes_zeroed{0};
    std::atomic<uint64_t> errors{0};
    std::atomic<uint64_t> allocated{0};
  } ctr_;
  mutable std::mutex info_mu_;
  std::string last_check_ = "never";
};

// Opens any image: "qcow2", "raw", or "" to probe the magic.
struct ImageOptions {
  std::string format;
  bool read_only = false;
  Qcow2OpenOptions qcow2;
};
[[nodiscard]] Result<std::unique_ptr<BlockBackend>> open_image(const std::string& path, const ImageOptions& opts = {});
// "qcow2" if the file starts with the qcow2 magic, else "raw".
[[nodiscard]] Result<std::string> probe_format(const std::string& path);

}  // namespace berth::storage
