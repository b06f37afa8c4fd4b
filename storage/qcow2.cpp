// Qcow2Backend: opening, the read and write paths, caches, allocation and
// flushing. Theory of operation (the crash-ordering contract is in qcow2.h):
//
// Metadata lives in memory as: the whole L1 table (l1_, with a list of dirty
// entries), the whole refcount table (reftable_, always written through), and
// two LRU caches of cluster-sized tables, L2 tables and refcount blocks, which
// are write-back. A request walks the guest range one L2 table at a time. A
// read coalesces clusters that are contiguous on the host into one pread, and
// runs of zeros or backing data into one memset or backing read. A write to
// clusters that are allocated with refcount 1 goes straight to pwrite; any
// other cluster gets a new host cluster (its refcount set first, in the
// cache), the data (merged with the old content for a partial cluster) is
// written there, and only after all the request's pwrites succeed are the L2
// entries changed in the cache. What the new entries replace is queued for
// freeing. flush_metadata() then orders the disk writes: refcount blocks and
// zeroed new L2 tables, fdatasync, L2 tables and L1 entries, fdatasync, and
// only then the queued frees. Nothing is allocated per request: scratch
// buffers are sized at open.
//
// Allocation takes the lowest free cluster (refcount 0) at or after a hint,
// or extends the file. A refcount block for a group that has none is placed
// inside the group it covers, so it counts itself; when the refcount table is
// full it is grown into a new area at the end of the file, holding its own
// refcount blocks. Every cluster chosen for data or metadata is checked
// against the known metadata (header, L1, refcount table, L2 tables, refcount
// blocks) first, like QEMU's overlap checks.
#include "storage/qcow2.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "storage/qcow2_jobs.h"
#include "storage/raw.h"

namespace berth::storage {

using namespace qcow2;

namespace {

Error sys_error(const std::string& what) {
  const int e = errno;
  return make_error(e, what + ": " + std::strerror(e));
}

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

constexpr size_t kFreeBatch = 16384;  // queued frees before a flush applies them
constexpr uint64_t kMaxHostOffset = 1ull << 56;  // L1/L2 entries hold offsets below 64 PiB

uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

// --- open / create / close ----------------------------------------------------

Result<std::unique_ptr<Qcow2Backend>> Qcow2Backend::open(const std::string& path, const OpenOptions& opts) {
  std::vector<std::pair<uint64_t, uint64_t>> chain;
  std::unique_ptr<Qcow2Backend> b(new Qcow2Backend());
  if (auto r = b->init(path, opts, 0, chain); !r) {
    b->closed_ = true;  // half-open: nothing to write back
    return r.error();
  }
  return b;
}

Qcow2Backend::~Qcow2Backend() {
  if (job_) spdlog::warn("qcow2: {}: closed with a job still attached", path_);
  if (!closed_) {
    if (auto r = close(); !r) spdlog::error("qcow2: {}: close: {}", path_, r.error().message);
  }
  if (fd_ >= 0) ::close(fd_);
  if (zs_) {
    inflateEnd(zs_);
    delete zs_;
  }
}

Result<void> Qcow2Backend::close() {
  if (closed_) return {};
  Result<void> r;
  if (!read_only_) {
    r = flush_all();
    if (r && dirty_set_) {
      r = set_incompatible_bits(hdr_.incompatible_features & ~kIncompatDirty);
      if (r) dirty_set_ = false;
    }
  }
  closed_ = true;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  return r;
}

Result<void> Qcow2Backend::init(const std::string& path, const OpenOptions& opts, unsigned depth,
                                std::vector<std::pair<uint64_t, uint64_t>>& chain) {
  path_ = path;
  read_only_ = opts.read_only;
  for_repair_ = opts.for_repair && !opts.read_only;
  fd_ = ::open(path.c_str(), (read_only_ ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd_ < 0) return sys_error("qcow2: open " + path);
  struct stat st{};
  if (fstat(fd_, &st) != 0) return sys_error("qcow2: stat " + path);
  uint64_t fsize = 0;
  if (S_ISREG(st.st_mode)) {
    fsize = uint64_t(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd_, BLKGETSIZE64, &fsize) != 0) return sys_error("qcow2: size of " + path);
  } else {
    return make_error(EINVAL, "qcow2: " + path + " is not a regular file or block device");
  }
  for (const auto& [dev, ino] : chain)
    if (dev == uint64_t(st.st_dev) && ino == uint64_t(st.st_ino))
      return make_error(ELOOP, "qcow2: backing chain loops back to " + path);
  chain.emplace_back(uint64_t(st.st_dev), uint64_t(st.st_ino));
  physical_size_ = fsize;

  // Header: the prefix says the cluster size, the first cluster holds the rest.
  uint8_t prefix[Header::header_prefix_length()] = {};
  const size_t plen = std::min<uint64_t>(sizeof prefix, fsize);
  if (auto r = pread_exact(prefix, plen, 0, false); !r) return r.error();
  auto want = Header::wanted_length(Bytes(prefix, plen));
  if (!want) return make_error(want.error().code, want.error().message + " (" + path + ")");
  std::vector<uint8_t> first(std::min<uint64_t>(*want, fsize));
  if (auto r = pread_exact(first.data(), first.size(), 0, false); !r) return r.error();
  auto h = Header::parse(first);
  if (!h) return make_error(h.error().code, h.error().message + " (" + path + ")");
  hdr_ = std::move(*h);
  if (auto r = check_open_features(hdr_); !r) return make_error(r.error().code, r.error().message + " (" + path + ")");

  cb_ = hdr_.cluster_bits;
  cs_ = hdr_.cluster_size();
  l2_bits_ = cb_ - 3;
  rc_order_ = hdr_.refcount_order;
  rb_bits_ = cb_ + 3 - rc_order_;
  virtual_size_ = hdr_.size;

  const bool corrupt = hdr_.incompatible_features & kIncompatCorrupt;
  const bool dirty = hdr_.incompatible_features & kIncompatDirty;
  corrupt_marked_ = corrupt;
  if (corrupt && !read_only_ && !for_repair_)
    return make_error(EUCLEAN, "qcow2: " + path + " is marked corrupt; open it read-only, or repair it (check --repair)");
  if (hdr_.nb_snapshots > 0 && !read_only_)
    return make_error(ENOTSUP, "qcow2: " + path + " has internal snapshots; writing to it is not supported, open it read-only");
  if (for_repair_) write_block_ = "opened for repair";

  // L1 and refcount tables: bounded by the header checks, and by the file.
  if (hdr_.l1_size > 0) {
    const uint64_t bytes = uint64_t(hdr_.l1_size) * 8;
    if (hdr_.l1_table_offset >= fsize || bytes > fsize - hdr_.l1_table_offset)
      return make_error(EINVAL, "qcow2: " + path + ": L1 table (" + hex(hdr_.l1_table_offset) + ", " +
                                    std::to_string(bytes) + " bytes) runs past the end of the file");
    std::vector<uint8_t> buf(bytes);
    if (auto r = pread_exact(buf.data(), bytes, hdr_.l1_table_offset, false); !r) return r.error();
    l1_.resize(hdr_.l1_size);
    for (uint64_t i = 0; i < hdr_.l1_size; i++) l1_[i] = load_be64(&buf[i * 8]);
  }
  l1_dirty_flag_.assign(l1_.size(), 0);
  {
    const uint64_t bytes = uint64_t(hdr_.refcount_table_clusters) * cs_;
    if (bytes > 0) {
      if (hdr_.refcount_table_offset >= fsize || bytes > fsize - hdr_.refcount_table_offset)
        return make_error(EINVAL, "qcow2: " + path + ": refcount table (" + hex(hdr_.refcount_table_offset) + ", " +
                                      std::to_string(bytes) + " bytes) runs past the end of the file");
      std::vector<uint8_t> buf(bytes);
      if (auto r = pread_exact(buf.data(), bytes, hdr_.refcount_table_offset, false); !r) return r.error();
      reftable_.resize(bytes / 8);
      for (uint64_t i = 0; i < reftable_.size(); i++) reftable_[i] = load_be64(&buf[i * 8]);
    }
  }

  // Known metadata clusters, for the overlap checks.
  bool overlap = false;
  for (uint64_t i = 0; i < l1_.size(); i++) {
    const uint64_t off = l1_[i] & kL1OffsetMask;
    if (off && off % cs_ == 0 && off < fsize) meta_[off >> cb_] = MetaKind::L2;
  }
  for (uint64_t i = 0; i < reftable_.size(); i++) {
    const uint64_t off = reftable_[i] & kRefTableOffsetMask;
    if (off && off % cs_ == 0 && off < fsize) {
      auto [it, fresh] = meta_.emplace(off >> cb_, MetaKind::RefBlock);
      if (!fresh && it->second != MetaKind::RefBlock) overlap = true;
    }
  }
  if (overlap && !read_only_ && !for_repair_)
    return make_error(EUCLEAN, "qcow2: " + path + ": a refcount block overlaps an L2 table; repair it (check --repair)");

  // Caches and scratch buffers.
  const uint64_t l2_default = std::min<uint64_t>(32ull << 20, std::max<uint64_t>(1, l1_.size()) * cs_);
  cache_init(l2_cache_, opts.l2_cache_bytes, l2_default);
  cache_init(rc_cache_, opts.refcount_cache_bytes, 1ull << 20);
  bounce_.resize(cs_);
  zeros_.assign(cs_, 0);
  cbuf_.resize(2 * cs_ + 512);
  dbuf_.resize(cs_);
  updates_.reserve(size_t(1) << l2_bits_);
  zs_ = new z_stream_s{};
  if (inflateInit2(zs_, -15) != Z_OK) {
    delete zs_;
    zs_ = nullptr;
    return make_error(ENOMEM, "qcow2: zlib init failed");
  }

  // Backing file.
  if (!hdr_.backing_file.empty() && opts.open_backing) {
    if (depth + 1 > opts.max_backing_depth)
      return make_error(ELOOP, "qcow2: backing chain deeper than " + std::to_string(opts.max_backing_depth) + " at " + path);
    std::string bpath = hdr_.backing_file;
    if (bpath.rfind("json:", 0) == 0)
      return make_error(ENOTSUP, "qcow2: " + path + ": json: backing file names are not supported");
    if (bpath[0] != '/') {
      const auto slash = path.rfind('/');
      if (slash != std::string::npos) bpath = path.substr(0, slash + 1) + bpath;
    }
    std::string fmt = hdr_.backing_format.value_or("");
    if (fmt.empty()) {
      auto p = probe_format(bpath);
      if (!p) return make_error(p.error().code, "qcow2: backing file of " + path + ": " + p.error().message);
      fmt = *p;
    }
    if (fmt == "qcow2") {
      std::unique_ptr<Qcow2Backend> sub(new Qcow2Backend());
      OpenOptions bo;
      bo.read_only = true;
      bo.max_backing_depth = opts.max_backing_depth;
      if (auto r = sub->init(bpath, bo, depth + 1, chain); !r) {
        sub->closed_ = true;
        return make_error(r.error().code, "qcow2: backing file of " + path + ": " + r.error().message);
      }
      backing_ = std::move(sub);
    } else if (fmt == "raw") {
      auto raw = RawBackend::open(bpath, true);
      if (!raw) return make_error(raw.error().code, "qcow2: backing file of " + path + ": " + raw.error().message);
      backing_ = std::move(*raw);
    } else {
      return make_error(ENOTSUP, "qcow2: " + path + ": backing format '" + fmt + "' is not supported");
    }
    backing_size_ = backing_->size();
  }

  if (!hdr_.backing_file.empty() && !opts.open_backing && !read_only_) write_block_ = "backing file not opened";
  if (auto r = scan_refcounts(); !r) return r.error();
  closed_ = false;

  if (!read_only_) {
    // Unknown autoclear bits must be cleared before writing; this engine
    // maintains none of them (bitmaps become inconsistent, as the spec says).
    if (hdr_.version >= 3 && hdr_.autoclear_features != 0) {
      uint8_t b[8];
      store_be64(b, 0);
      if (auto r = write_header_bytes(88, b, 8); !r) return r.error();
      if (auto r = sync(); !r) return r.error();
      hdr_.autoclear_features = 0;
    }
    const bool image_lazy = hdr_.compatible_features & kCompatLazyRefcounts;
    lazy_ = hdr_.version >= 3 && opts.lazy_refcounts.value_or(image_lazy);
    if (lazy_ && !image_lazy) {
      uint8_t b[8];
      store_be64(b, hdr_.compatible_features | kCompatLazyRefcounts);
      if (auto r = write_header_bytes(80, b, 8); !r) return r.error();
      if (auto r = sync(); !r) return r.error();
      hdr_.compatible_features |= kCompatLazyRefcounts;
    }
    dirty_set_ = dirty;
    if (dirty && !for_repair_) {
      spdlog::info("qcow2: {} was not closed cleanly; rebuilding refcounts", path_);
      auto res = run_check(true);
      if (!res) return make_error(res.error().code, "qcow2: repairing dirty image " + path + ": " + res.error().message);
      if (res->corruptions > 0)
        spdlog::warn("qcow2: {}: {} corruption(s) remain after repair", path_, res->corruptions);
      if (dirty_set_) {
        if (auto r = set_incompatible_bits(hdr_.incompatible_features & ~kIncompatDirty); !r) return r.error();
        dirty_set_ = false;
      }
    }
  } else if (dirty) {
    spdlog::info("qcow2: {} was not closed cleanly; reading it as it is (refcounts may be stale)", path_);
  }
  return {};
}

Result<std::unique_ptr<Qcow2Backend>> Qcow2Backend::create(const std::string& path, uint64_t vsize,
                                                           const CreateOptions& o) {
  const uint64_t cs = o.cluster_size;
  if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
    return make_error(EINVAL, "qcow2: cluster size must be a power of two from 512 to 2M");
  if (o.refcount_bits == 0 || o.refcount_bits > 64 || (o.refcount_bits & (o.refcount_bits - 1)))
    return make_error(EINVAL, "qcow2: refcount bits must be a power of two from 1 to 64");
  if (o.version != 2 && o.version != 3) return make_error(EINVAL, "qcow2: version must be 2 or 3");
  if (o.version == 2 && o.refcount_bits != 16) return make_error(EINVAL, "qcow2: version 2 images have 16-bit refcounts");
  if (o.version == 2 && o.lazy_refcounts) return make_error(EINVAL, "qcow2: lazy refcounts need version 3");
  if (vsize > kMaxVirtualSize) return make_error(EFBIG, "qcow2: virtual size too large");

  Header h;
  h.version = o.version;
  h.cluster_bits = uint32_t(__builtin_ctzll(cs));
  h.size = vsize;
  h.refcount_order = uint32_t(__builtin_ctz(o.refcount_bits));
  if (o.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
  if (!o.backing_file.empty()) {
    h.backing_file = o.backing_file;
    std::string fmt = o.backing_format;
    if (fmt.empty()) {
      std::string bpath = o.backing_file;
      if (bpath[0] != '/') {
        const auto slash = path.rfind('/');
        if (slash != std::string::npos) bpath = path.substr(0, slash + 1) + bpath;
      }
      auto p = probe_format(bpath);
      if (!p) return make_error(p.error().code, "qcow2: backing file: " + p.error().message);
      fmt = *p;
    }
    if (fmt != "qcow2" && fmt != "raw") return make_error(EINVAL, "qcow2: backing format must be qcow2 or raw");
    h.backing_format = fmt;
  }
  const uint64_t l1_entries = Header::l1_entries_for(vsize, h.cluster_bits);
  if (l1_entries * 8 > kMaxL1Bytes) return make_error(EFBIG, "qcow2: virtual size needs an L1 table over 32 MiB");
  h.l1_size = uint32_t(l1_entries);
  const uint64_t l1_clusters = std::max<uint64_t>(1, (l1_entries * 8 + cs - 1) / cs);
  const uint64_t E = h.refblock_entries();
  // Layout: header, refcount table (T), refcount blocks (k), L1 table.
  uint64_t T = 1, k = 1;
  for (int i = 0; i < 64; i++) {
    const uint64_t total = 1 + T + k + l1_clusters;
    const uint64_t nk = (total + E - 1) / E;
    const uint64_t nT = std::max<uint64_t>(1, (nk * 8 + cs - 1) / cs);
    if (nk == k && nT == T) break;
    k = nk;
    T = nT;
  }
  const uint64_t total = 1 + T + k + l1_clusters;
  h.refcount_table_offset = cs;
  h.refcount_table_clusters = uint32_t(T);
  h.l1_table_offset = (1 + T + k) * cs;
  auto first = h.emit();
  if (!first) return first.error();

  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return sys_error("qcow2: create " + path);
  std::vector<uint8_t> img(total * cs, 0);
  std::memcpy(img.data(), first->data(), first->size());
  for (uint64_t i = 0; i < k; i++) store_be64(&img[cs + i * 8], (1 + T + i) * cs);
  for (uint64_t c = 0; c < total; c++) refcount_set(&img[(1 + T + c / E) * cs], c % E, h.refcount_order, 1);
  size_t done = 0;
  while (done < img.size()) {
    const ssize_t n = ::pwrite(fd, img.data() + done, img.size() - done, off_t(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      auto e = sys_error("qcow2: write " + path);
      ::close(fd);
      return e;
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0) {
    auto e = sys_error("qcow2: fsync " + path);
    ::close(fd);
    return e;
  }
  ::close(fd);
  return open(path, {});
}

Result<CheckResult> Qcow2Backend::check_file(const std::string& path, bool repair) {
  OpenOptions o;
  o.read_only = !repair;
  o.for_repair = repair;
  auto b = open(path, o);
  if (!b) return b.error();
  auto res = (*b)->check(repair);
  if (!res) return res.error();
  if (auto r = (*b)->close(); !r) return r.error();
  return res;
}

// --- file I/O -------------------------------------------------------------------

Result<void> Qcow2Backend::pread_exact(void* buf, size_t len, uint64_t off, bool zero_fill) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n = ::pread(fd_, static_cast<uint8_t*>(buf) + done, len - done, off_t(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("qcow2: read " + path_);
    }
    if (n == 0) {
      if (!zero_fill)
        return make_error(EIO, "qcow2: " + path_ + ": unexpected end of file at " + hex(off + done));
      std::memset(static_cast<uint8_t*>(buf) + done, 0, len - done);
      return {};
    }
    done += size_t(n);
  }
  return {};
}

Result<void> Qcow2Backend::pwrite_all(const void* buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n = ::pwrite(fd_, static_cast<const uint8_t*>(buf) + done, len - done, off_t(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("qcow2: write " + path_);
    }
    if (n == 0) return make_error(EIO, "qcow2: write " + path_ + ": no progress");
    done += size_t(n);
  }
  unsynced_ = true;
  if (off + len > physical_size_) physical_size_ = off + len;
  return {};
}

Result<void> Qcow2Backend::sync() {
  while (::fdatasync(fd_) != 0) {
    if (errno == EINTR) continue;
    return sys_error("qcow2: fdatasync " + path_);
  }
  unsynced_ = false;
  return {};
}

void Qcow2Backend::punch(uint64_t off, uint64_t len) {
  if (off >= physical_size_) return;
  len = std::min(len, physical_size_ - off);
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(off), off_t(len)) != 0)
    spdlog::debug("qcow2: {}: punch hole at {}: {}", path_, hex(off), std::strerror(errno));
}

Result<void> Qcow2Backend::write_header_bytes(size_t at, const uint8_t* bytes, size_t len) {
  return pwrite_all(bytes, len, at);
}

Result<void> Qcow2Backend::set_incompatible_bits(uint64_t bits) {
  if (hdr_.version < 3) return {};
  uint8_t b[8];
  store_be64(b, bits);
  if (auto r = write_header_bytes(72, b, 8); !r) return r;
  if (auto r = sync(); !r) return r;
  std::lock_guard<std::mutex> lock(info_mu_);  // info() reads it from other threads
  hdr_.incompatible_features = bits;
  return {};
}

Error Qcow2Backend::corruption(const std::string& msg) {
  const std::string m = "qcow2: " + path_ + ": " + msg;
  if (!read_only_ && write_block_.empty()) {
    spdlog::error("{} (marking the image corrupt; writes are refused from now on)", m);
    write_block_ = "image marked corrupt: " + msg;
    if (!for_repair_ && !corrupt_marked_ && hdr_.version >= 3) {
      if (auto r = set_incompatible_bits(hdr_.incompatible_features | kIncompatCorrupt); !r)
        spdlog::error("qcow2: {}: could not set the corrupt bit: {}", path_, r.error().message);
    }
    corrupt_marked_ = true;
  } else {
    spdlog::warn("{}", m);
  }
  return make_error(EIO, m);
}

Result<void> Qcow2Backend::writable() const {
  if (closed_) return make_error(EBADF, "qcow2: " + path_ + " is closed");
  if (read_only_) return make_error(EROFS, "qcow2: " + path_ + " is open read-only");
  if (!write_block_.empty()) return make_error(EROFS, "qcow2: " + path_ + ": " + write_block_);
  return {};
}

bool Qcow2Backend::overlaps_fixed(uint64_t c) const {
  if (c == 0) return true;
  if (!l1_.empty()) {
    const uint64_t a = hdr_.l1_table_offset >> cb_;
    const uint64_t n = (uint64_t(l1_.size()) * 8 + cs_ - 1) >> cb_;
    if (c >= a && c < a + n) return true;
  }
  if (hdr_.refcount_table_clusters) {
    const uint64_t a = hdr_.refcount_table_offset >> cb_;
    if (c >= a && c < a + hdr_.refcount_table_clusters) return true;
  }
  return false;
}

bool Qcow2Backend::overlaps_metadata(uint64_t c) const { return overlaps_fixed(c) || meta_.count(c) != 0; }

// --- caches ---------------------------------------------------------------------

void Qcow2Backend::cache_init(Cache& c, uint64_t bytes, uint64_t def) {
  if (!bytes) bytes = def;
  const uint64_t n = std::clamp<uint64_t>(bytes / cs_, 4, 1u << 20);
  c.cluster_size = cs_;
  c.slots.assign(n, Slot{});
  c.mem.reset(new uint8_t[n * cs_]);
  c.index.reserve(n * 2);
}

void Qcow2Backend::cache_drop(Cache& c) {
  for (auto& s : c.slots) s = Slot{};
  c.index.clear();
  if (&c == &l2_cache_) last_l2_offset_ = 0;
}

void Qcow2Backend::rekey(Cache& c, uint32_t slot, uint64_t new_offset) {
  c.index.erase(c.slots[slot].offset);
  c.slots[slot].offset = new_offset;
  c.index[new_offset] = slot;
  if (&c == &l2_cache_) last_l2_offset_ = 0;
}

Result<uint32_t> Qcow2Backend::l2_victim() {
  for (int round = 0; round < 2; round++) {
    int64_t best = -1;
    for (uint32_t i = 0; i < l2_cache_.slots.size(); i++) {
      const Slot& s = l2_cache_.slots[i];
      if (s.offset == 0) return i;
      if (s.pins || s.dirty || s.fresh) continue;
      if (best < 0 || s.lru < l2_cache_.slots[size_t(best)].lru) best = i;
    }
    if (best >= 0) {
      Slot& s = l2_cache_.slots[size_t(best)];
      l2_cache_.index.erase(s.offset);
      if (last_l2_offset_ == s.offset) last_l2_offset_ = 0;
      s = Slot{};
      return uint32_t(best);
    }
    // Every unpinned table is dirty: write them all back (in order).
    if (auto r = flush_metadata(); !r) return r.error();
  }
  return make_error(EIO, "qcow2: " + path_ + ": L2 cache exhausted");
}

Result<uint32_t> Qcow2Backend::l2_load(uint64_t off) {
  if (off == last_l2_offset_ && off != 0) {
    l2_cache_.hits.fetch_add(1, std::memory_order_relaxed);
    l2_cache_.slots[last_l2_slot_].lru = ++l2_cache_.tick;
    return last_l2_slot_;
  }
  auto it = l2_cache_.index.find(off);
  if (it != l2_cache_.index.end()) {
    l2_cache_.hits.fetch_add(1, std::memory_order_relaxed);
    l2_cache_.slots[it->second].lru = ++l2_cache_.tick;
    last_l2_offset_ = off;
    last_l2_slot_ = it->second;
    return it->second;
  }
  l2_cache_.misses.fetch_add(1, std::memory_order_relaxed);
  auto v = l2_victim();
  if (!v) return v.error();
  if (auto r = pread_exact(l2_cache_.data(*v), cs_, off, true); !r) return r.error();
  Slot& s = l2_cache_.slots[*v];
  s = Slot{};
  s.offset = off;
  s.lru = ++l2_cache_.tick;
  l2_cache_.index[off] = *v;
  last_l2_offset_ = off;
  last_l2_slot_ = *v;
  return *v;
}

Result<uint32_t> Qcow2Backend::l2_insert_fresh(uint64_t off) {
  auto v = l2_victim();
  if (!v) return v.error();
  std::memset(l2_cache_.data(*v), 0, cs_);
  Slot& s = l2_cache_.slots[*v];
  s = Slot{};
  s.offset = off;
  s.lru = ++l2_cache_.tick;
  s.dirty = true;
  s.fresh = true;
  l2_cache_.index[off] = *v;
  return *v;
}

Result<void> Qcow2Backend::l2_write_slot(uint32_t i) {
  Slot& s = l2_cache_.slots[i];
  const uint64_t c = s.offset >> cb_;
  auto m = meta_.find(c);
  if (overlaps_fixed(c) || m == meta_.end() || m->second != MetaKind::L2)
    return corruption("refusing to write an L2 table at " + hex(s.offset) + ": it overlaps other metadata");
  if (auto r = pwrite_all(l2_cache_.data(i), cs_, s.offset); !r) return r;
  s.dirty = false;
  return {};
}

Result<uint32_t> Qcow2Backend::rc_victim() {
  int64_t best = -1;
  for (uint32_t i = 0; i < rc_cache_.slots.size(); i++) {
    const Slot& s = rc_cache_.slots[i];
    if (s.offset == 0) return i;
    if (s.pins) continue;
    if (best < 0 || s.lru < rc_cache_.slots[size_t(best)].lru) best = i;
  }
  if (best < 0) return make_error(EIO, "qcow2: " + path_ + ": refcount cache exhausted");
  if (rc_cache_.slots[size_t(best)].dirty) {
    if (auto r = rc_write_slot(uint32_t(best)); !r) return r.error();
  }
  Slot& s = rc_cache_.slots[size_t(best)];
  rc_cache_.index.erase(s.offset);
  s = Slot{};
  return uint32_t(best);
}

Result<uint32_t> Qcow2Backend::rc_load(uint64_t off) {
  auto it = rc_cache_.index.find(off);
  if (it != rc_cache_.index.end()) {
    rc_cache_.hits.fetch_add(1, std::memory_order_relaxed);
    rc_cache_.slots[it->second].lru = ++rc_cache_.tick;
    return it->second;
  }
  if (off % cs_ != 0) return corruption("refcount block offset " + hex(off) + " is not cluster aligned");
  if (off >= physical_size_) return corruption("refcount block at " + hex(off) + " is past the end of the file");
  if (overlaps_fixed(off >> cb_)) return corruption("refcount block at " + hex(off) + " overlaps the header or a table");
  rc_cache_.misses.fetch_add(1, std::memory_order_relaxed);
  auto v = rc_victim();
  if (!v) return v.error();
  if (auto r = pread_exact(rc_cache_.data(*v), cs_, off, true); !r) return r.error();
  Slot& s = rc_cache_.slots[*v];
  s = Slot{};
  s.offset = off;
  s.lru = ++rc_cache_.tick;
  rc_cache_.index[off] = *v;
  return *v;
}

Result<void> Qcow2Backend::rc_write_slot(uint32_t i) {
  Slot& s = rc_cache_.slots[i];
  const uint64_t c = s.offset >> cb_;
  auto m = meta_.find(c);
  if (overlaps_fixed(c) || m == meta_.end() || m->second != MetaKind::RefBlock)
    return corruption("refusing to write a refcount block at " + hex(s.offset) + ": it overlaps other metadata");
  if (auto r = pwrite_all(rc_cache_.data(i), cs_, s.offset); !r) return r;
  s.dirty = false;
  return {};
}

// --- refcounts and allocation ---------------------------------------------------

Result<void> Qcow2Backend::scan_refcounts() {
  uint64_t allocated = 0, end = 0;
  std::vector<uint8_t> blk(cs_);
  const uint64_t E = 1ull << rb_bits_;
  for (uint64_t g = 0; g < reftable_.size(); g++) {
    const uint64_t off = reftable_[g] & kRefTableOffsetMask;
    if (!off) continue;
    if (off % cs_ != 0 || off >= physical_size_) {
      if (!read_only_ && !for_repair_)
        return make_error(EUCLEAN, "qcow2: " + path_ + ": refcount table entry " + std::to_string(g) +
                                       " points to an invalid block (" + hex(off) + "); repair it (check --repair)");
      continue;
    }
    if (auto r = pread_exact(blk.data(), cs_, off, true); !r) return r;
    for (uint64_t i = 0; i < E; i++) {
      if (refcount_get(blk.data(), i, rc_order_) != 0) {
        allocated++;
        end = g * E + i + 1;
      }
    }
  }
  ctr_.allocated = allocated;
  alloc_end_ = std::max<uint64_t>((physical_size_ + cs_ - 1) >> cb_, end);
  free_hint_ = 0;
  return {};
}

Result<uint64_t> Qcow2Backend::get_refcount(uint64_t c) {
  const uint64_t g = c >> rb_bits_;
  if (g >= reftable_.size()) return uint64_t(0);
  const uint64_t off = reftable_[g] & kRefTableOffsetMask;
  if (!off) return uint64_t(0);
  auto s = rc_load(off);
  if (!s) return s.error();
  return refcount_get(rc_cache_.data(*s), c & ((1ull << rb_bits_) - 1), rc_order_);
}

Result<void> Qcow2Backend::set_refcount(uint64_t c, uint64_t v) {
  if (v > refcount_max(rc_order_))
    return make_error(EIO, "qcow2: " + path_ + ": refcount of cluster " + std::to_string(c) + " would overflow " +
                               std::to_string(hdr_.refcount_bits()) + " bits");
  const uint64_t g = c >> rb_bits_;
  const uint64_t off = g < reftable_.size() ? reftable_[g] & kRefTableOffsetMask : 0;
  if (!off) {
    if (v == 0) return {};
    return make_error(EIO, "qcow2: " + path_ + ": no refcount block for cluster " + std::to_string(c));
  }
  auto s = rc_load(off);
  if (!s) return s.error();
  uint8_t* blk = rc_cache_.data(*s);
  const uint64_t i = c & ((1ull << rb_bits_) - 1);
  const uint64_t old = refcount_get(blk, i, rc_order_);
  refcount_set(blk, i, rc_order_, v);
  rc_cache_.slots[*s].dirty = true;
  if (old == 0 && v != 0) ctr_.allocated.fetch_add(1, std::memory_order_relaxed);
  if (old != 0 && v == 0) ctr_.allocated.fetch_sub(1, std::memory_order_relaxed);
  return {};
}

Result<void> Qcow2Backend::create_refblock(uint64_t g, uint64_t at) {
  if (g >= reftable_.size()) return grow_reftable(g);
  if ((at >> rb_bits_) != g || overlaps_metadata(at))
    return make_error(EIO, "qcow2: internal: bad place for a refcount block");
  auto v = rc_victim();
  if (!v) return v.error();
  uint8_t* blk = rc_cache_.data(*v);
  std::memset(blk, 0, cs_);
  refcount_set(blk, at & ((1ull << rb_bits_) - 1), rc_order_, 1);
  const uint64_t off = at << cb_;
  // The block (counting itself) first, then the table entry that points at it.
  if (auto r = pwrite_all(blk, cs_, off); !r) return r;
  if (auto r = sync(); !r) return r;
  uint8_t e[8];
  store_be64(e, off);
  if (auto r = pwrite_all(e, 8, hdr_.refcount_table_offset + g * 8); !r) return r;
  if (auto r = sync(); !r) return r;
  reftable_[g] = off;
  meta_[at] = MetaKind::RefBlock;
  if (compactor_) compactor_->on_refblock(g, at);
  Slot& s = rc_cache_.slots[*v];
  s = Slot{};
  s.offset = off;
  s.lru = ++rc_cache_.tick;
  rc_cache_.index[off] = *v;
  ctr_.allocated.fetch_add(1, std::memory_order_relaxed);
  alloc_end_ = std::max(alloc_end_, at + 1);
  return {};
}

Result<void> Qcow2Backend::grow_reftable(uint64_t need_group) {
  const uint64_t per = cs_ / 8;
  const uint64_t old_n = reftable_.size();
  auto lacks = [&](uint64_t g) { return g >= old_n || (reftable_[g] & kRefTableOffsetMask) == 0; };
  uint64_t entries = round_up(std::max<uint64_t>(need_group + 1, old_n + old_n / 2 + 1), per);
  uint64_t start = 0, T = 0, k = 0, last_g = 0;
  for (int iter = 0;; iter++) {
    if (iter > 64 || entries * 8 > kMaxRefTableBytes)
      return make_error(ENOSPC, "qcow2: " + path_ + ": the refcount table would exceed its 8 MiB limit");
    T = entries / per;
    start = alloc_end_;
    if (start + T + 64 >= (kMaxHostOffset >> cb_))
      return make_error(ENOSPC, "qcow2: " + path_ + ": no room below the 64 PiB host offset limit");
    k = 0;
    bool converged = false;
    for (int j = 0; j < 64 && !converged; j++) {
      const uint64_t end = start + T + k;
      uint64_t cnt = 0;
      for (uint64_t g = start >> rb_bits_; g <= (end - 1) >> rb_bits_; g++) cnt += lacks(g);
      if (cnt == k) converged = true;
      k = cnt;
    }
    if (!converged) return make_error(EIO, "qcow2: internal: refcount table layout did not converge");
    last_g = (start + T + k - 1) >> rb_bits_;
    if (last_g >= entries) {
      entries = round_up(last_g + 1, per);
      continue;
    }
    break;
  }
  std::vector<uint64_t> nt(entries, 0);
  std::copy(reftable_.begin(), reftable_.end(), nt.begin());
  std::vector<uint64_t> groups;
  uint64_t b = start + T;
  for (uint64_t g = start >> rb_bits_; g <= last_g; g++)
    if (lacks(g)) {
      nt[g] = b++ << cb_;
      groups.push_back(g);
    }
  std::vector<uint8_t> blocks(groups.size() * cs_, 0);
  uint64_t counted = 0;
  for (uint64_t c = start; c < start + T + k; c++) {
    const uint64_t g = c >> rb_bits_;
    auto it = std::find(groups.begin(), groups.end(), g);
    if (it != groups.end()) {
      refcount_set(&blocks[size_t(it - groups.begin()) * cs_], c & ((1ull << rb_bits_) - 1), rc_order_, 1);
      counted++;
    } else if (auto r = set_refcount(c, 1); !r) {
      return r;
    }
  }
  for (size_t i = 0; i < groups.size(); i++)
    if (auto r = pwrite_all(&blocks[i * cs_], cs_, nt[groups[i]]); !r) return r;
  std::vector<uint8_t> tbuf(T * cs_, 0);
  for (uint64_t i = 0; i < entries; i++) store_be64(&tbuf[i * 8], nt[i]);
  if (auto r = pwrite_all(tbuf.data(), tbuf.size(), start << cb_); !r) return r;
  for (uint32_t i = 0; i < rc_cache_.slots.size(); i++)
    if (rc_cache_.slots[i].dirty)
      if (auto r = rc_write_slot(i); !r) return r;
  if (auto r = sync(); !r) return r;
  uint8_t h[12];
  store_be64(h, start << cb_);
  store_be32(h + 8, uint32_t(T));
  if (auto r = write_header_bytes(48, h, 12); !r) return r;
  if (auto r = sync(); !r) return r;

  const uint64_t old_off = hdr_.refcount_table_offset;
  const uint64_t old_T = hdr_.refcount_table_clusters;
  hdr_.refcount_table_offset = start << cb_;
  hdr_.refcount_table_clusters = uint32_t(T);
  reftable_ = std::move(nt);
  for (uint64_t g : groups) meta_[reftable_[g] >> cb_] = MetaKind::RefBlock;
  if (compactor_) {
    for (uint64_t g : groups) compactor_->on_refblock(g, reftable_[g] >> cb_);
    for (uint64_t c = start; c < start + T; c++) compactor_->on_fixed(c);
  }
  ctr_.allocated.fetch_add(counted, std::memory_order_relaxed);
  alloc_end_ = std::max(alloc_end_, start + T + k);
  spdlog::debug("qcow2: {}: refcount table grown to {} entries at {}", path_, entries, hex(start << cb_));
  for (uint64_t c = old_off >> cb_; old_T && c < (old_off >> cb_) + old_T; c++)
    if (auto r = release_now(c); !r) return r;
  return {};
}

Result<uint64_t> Qcow2Backend::alloc_cluster() {
  const uint64_t mask = (1ull << rb_bits_) - 1;
  for (;;) {
    uint64_t c = free_hint_;
    while (c < alloc_end_) {
      const uint64_t g = c >> rb_bits_;
      const uint64_t off = g < reftable_.size() ? reftable_[g] & kRefTableOffsetMask : 0;
      if (!off) break;  // a group without a block: all free
      auto s = rc_load(off);
      if (!s) return s.error();
      const uint8_t* blk = rc_cache_.data(*s);
      uint64_t i = c & mask;
      while (i <= mask && refcount_get(blk, i, rc_order_) != 0) i++;
      c = (g << rb_bits_) + i;
      if (i <= mask) break;
    }
    free_hint_ = c;
    if (overlaps_metadata(c)) {  // refcount 0 yet metadata: a damaged image; never hand it out
      free_hint_ = c + 1;
      continue;
    }
    if (c >= (kMaxHostOffset >> cb_))
      return make_error(ENOSPC, "qcow2: " + path_ + ": no room below the 64 PiB host offset limit");
    const uint64_t g = c >> rb_bits_;
    if (g >= reftable_.size() || (reftable_[g] & kRefTableOffsetMask) == 0) {
      if (auto r = create_refblock(g, c); !r) return r.error();
      continue;
    }
    if (auto r = set_refcount(c, 1); !r) return r.error();
    free_hint_ = c + 1;
    alloc_end_ = std::max(alloc_end_, c + 1);
    return c;
  }
}

Result<bool> Qcow2Backend::alloc_specific(uint64_t c) {
  if (overlaps_metadata(c)) return false;
  auto rc = get_refcount(c);
  if (!rc) return rc.error();
  if (*rc != 0) return false;
  const uint64_t g = c >> rb_bits_;
  if (g >= reftable_.size() || (reftable_[g] & kRefTableOffsetMask) == 0) {
    if (auto r = create_refblock(g, c); !r) return r.error();
    return false;
  }
  if (auto r = set_refcount(c, 1); !r) return r.error();
  alloc_end_ = std::max(alloc_end_, c + 1);
  return true;
}

Result<uint64_t> Qcow2Backend::alloc_contiguous(uint64_t n) {
  for (int guard = 0; guard < 1024; guard++) {
    const uint64_t start = alloc_end_;
    if (start + n >= (kMaxHostOffset >> cb_))
      return make_error(ENOSPC, "qcow2: " + path_ + ": no room below the 64 PiB host offset limit");
    bool again = false;
    for (uint64_t c = start; c < start + n; c = ((c >> rb_bits_) + 1) << rb_bits_) {
      const uint64_t g = c >> rb_bits_;
      if (g >= reftable_.size()) {
        if (auto r = grow_reftable((start + n - 1) >> rb_bits_); !r) return r.error();
        again = true;
        break;
      }
      if ((reftable_[g] & kRefTableOffsetMask) == 0) {
        if (auto r = create_refblock(g, c); !r) return r.error();
        again = true;
        break;
      }
    }
    if (again) continue;
    for (uint64_t c = start; c < start + n; c++)
      if (auto r = set_refcount(c, 1); !r) return r.error();
    alloc_end_ = start + n;
    return start;
  }
  return make_error(EIO, "qcow2: internal: contiguous allocation did not converge");
}

Result<void> Qcow2Backend::release_now(uint64_t c) {
  auto rc = get_refcount(c);
  if (!rc) return rc.error();
  if (*rc == 0) {
    spdlog::warn("qcow2: {}: freeing cluster {} whose refcount is already 0", path_, c);
    return {};
  }
  if (auto r = set_refcount(c, *rc - 1); !r) return r;
  if (*rc == 1) {
    free_hint_ = std::min(free_hint_, c);
    punch(c << cb_, cs_);
    dbuf_key_ = 0;
  }
  return {};
}

void Qcow2Backend::queue_free(uint64_t c, bool punch_hole) {
  pending_free_.push_back(punch_hole ? c : c | kNoPunch);
}

void Qcow2Backend::queue_free_entry(uint64_t raw) {
  const L2Entry e = decode_l2(raw, cb_);
  switch (e.type) {
    case ClusterType::Normal:
    case ClusterType::ZeroAlloc:
      if (e.host_offset % cs_ == 0) queue_free(e.host_offset >> cb_);
      break;
    case ClusterType::Compressed: {
      const uint64_t a = e.compressed_range_start() >> cb_;
      const uint64_t z = (e.compressed_range_start() + e.compressed_range_length() - 1) >> cb_;
      for (uint64_t c = a; c <= z; c++) queue_free(c);
      break;
    }
    default: break;
  }
}

Result<void> Qcow2Backend::apply_pending_frees() {
  if (pending_free_.empty()) return {};
  std::sort(pending_free_.begin(), pending_free_.end(),
            [](uint64_t a, uint64_t b) { return (a & ~kNoPunch) < (b & ~kNoPunch); });
  uint64_t run_start = 0, run_len = 0;
  for (uint64_t entry : pending_free_) {
    const uint64_t c = entry & ~kNoPunch;
    if (overlaps_fixed(c)) {
      spdlog::warn("qcow2: {}: not freeing cluster {}: it holds the header or a table", path_, c);
      continue;
    }
    auto rc = get_refcount(c);
    if (!rc) return rc.error();
    if (*rc == 0) {
      spdlog::warn("qcow2: {}: freeing cluster {} whose refcount is already 0", path_, c);
      continue;
    }
    if (auto r = set_refcount(c, *rc - 1); !r) return r;
    if (*rc == 1 && (entry & kNoPunch)) {
      free_hint_ = std::min(free_hint_, c);
    } else if (*rc == 1) {
      free_hint_ = std::min(free_hint_, c);
      if (run_len && run_start + run_len == c) {
        run_len++;
      } else {
        if (run_len) punch(run_start << cb_, run_len << cb_);
        run_start = c;
        run_len = 1;
      }
    }
  }
  if (run_len) punch(run_start << cb_, run_len << cb_);
  pending_free_.clear();
  dbuf_key_ = 0;
  return {};
}

// --- flushing -------------------------------------------------------------------

Result<void> Qcow2Backend::flush_metadata() {
  if (read_only_ || closed_) return {};
  // 1. Refcount increments, and zeros for new L2 tables.
  if (!lazy_) {
    for (uint32_t i = 0; i < rc_cache_.slots.size(); i++)
      if (rc_cache_.slots[i].dirty)
        if (auto r = rc_write_slot(i); !r) return r;
  }
  bool meta = !l1_dirty_.empty();
  for (uint32_t i = 0; i < l2_cache_.slots.size(); i++) {
    Slot& s = l2_cache_.slots[i];
    if (s.fresh) {
      const uint64_t c = s.offset >> cb_;
      if (overlaps_fixed(c)) return corruption("refusing to initialise an L2 table over the header or a table");
      if (auto r = pwrite_all(zeros_.data(), cs_, s.offset); !r) return r;
      s.fresh = false;
    }
    meta |= s.dirty;
  }
  if (physical_size_ % cs_ != 0 && physical_size_ < alloc_end_ * cs_) {
    const uint64_t to = round_up(physical_size_, cs_);
    if (ftruncate(fd_, off_t(to)) == 0) physical_size_ = to;
  }
  // 2. Data, refcounts and new tables are durable before anything points at them.
  if (meta || unsynced_)
    if (auto r = sync(); !r) return r;
  // 3. The references.
  if (meta) {
    for (uint32_t i = 0; i < l2_cache_.slots.size(); i++)
      if (l2_cache_.slots[i].dirty)
        if (auto r = l2_write_slot(i); !r) return r;
    for (uint64_t i : l1_dirty_) {
      uint8_t e[8];
      store_be64(e, l1_[i]);
      if (auto r = pwrite_all(e, 8, hdr_.l1_table_offset + i * 8); !r) return r;
      l1_dirty_flag_[i] = 0;
    }
    l1_dirty_.clear();
    if (auto r = sync(); !r) return r;
  }
  // 4. What the old references held can now be freed.
  return apply_pending_frees();
}

Result<void> Qcow2Backend::flush_all() {
  if (read_only_ || closed_) return {};
  if (auto r = flush_metadata(); !r) return r;
  bool wrote = false;
  for (uint32_t i = 0; i < rc_cache_.slots.size(); i++)
    if (rc_cache_.slots[i].dirty) {
      if (auto r = rc_write_slot(i); !r) return r;
      wrote = true;
    }
  if (wrote || unsynced_) return sync();
  return {};
}

Result<void> Qcow2Backend::ensure_dirty_bit() {
  if (!lazy_ || dirty_set_) return {};
  if (auto r = set_incompatible_bits(hdr_.incompatible_features | kIncompatDirty); !r) return r;
  dirty_set_ = true;
  return {};
}

Result<void> Qcow2Backend::maybe_flush_frees() {
  if (pending_free_.size() < kFreeBatch) return {};
  return flush_metadata();
}

Result<void> Qcow2Backend::flush() {
  if (closed_) return make_error(EBADF, "qcow2: " + path_ + " is closed");
  ctr_.flushes.fetch_add(1, std::memory_order_relaxed);
  if (read_only_) return {};
  auto r = flush_metadata();
  if (!r) ctr_.errors.fetch_add(1, std::memory_order_relaxed);
  return r;
}

// --- L1 / L2 --------------------------------------------------------------------

void Qcow2Backend::set_l1(uint64_t i, uint64_t raw) {
  const uint64_t old = l1_[i];
  l1_[i] = raw;
  if (!l1_dirty_flag_[i]) {
    l1_dirty_flag_[i] = 1;
    l1_dirty_.push_back(i);
  }
  if (compactor_) compactor_->on_l1_change(i, old, raw);
}

void Qcow2Backend::set_l2(uint32_t slot, uint64_t l1i, uint64_t l2i, uint64_t raw) {
  uint8_t* p = l2_cache_.data(slot) + 8 * l2i;
  const uint64_t old = load_be64(p);
  store_be64(p, raw);
  l2_cache_.slots[slot].dirty = true;
  if (compactor_) compactor_->on_l2_change((l1i << l2_bits_) | l2i, old, raw);
}

Result<uint64_t> Qcow2Backend::l2_offset_checked(uint64_t l1i) {
  const uint64_t raw = l1_[l1i];
  const uint64_t off = raw & kL1OffsetMask;
  if (!off) return uint64_t(0);
  if (off % cs_ != 0)
    return corruption("L2 table offset " + hex(off) + " is not cluster aligned (L1 index " + std::to_string(l1i) + ")");
  if (off == last_l2_offset_ || l2_cache_.index.count(off)) return off;
  if (off >= physical_size_)
    return corruption("L2 table at " + hex(off) + " is past the end of the file (L1 index " + std::to_string(l1i) + ")");
  if (overlaps_fixed(off >> cb_))
    return corruption("L2 table at " + hex(off) + " overlaps the header, the L1 table or the refcount table");
  auto m = meta_.find(off >> cb_);
  if (m != meta_.end() && m->second != MetaKind::L2)
    return corruption("L2 table at " + hex(off) + " overlaps a refcount block");
  return off;
}

Result<int64_t> Qcow2Backend::l2_for_read(uint64_t l1i) {
  auto off = l2_offset_checked(l1i);
  if (!off) return off.error();
  if (*off == 0) return int64_t(-1);
  auto s = l2_load(*off);
  if (!s) return s.error();
  return int64_t(*s);
}

Result<uint32_t> Qcow2Backend::l2_for_write(uint64_t l1i) {
  auto off = l2_offset_checked(l1i);
  if (!off) return off.error();
  if (*off == 0) {
    auto c = alloc_cluster();
    if (!c) return c.error();
    const uint64_t noff = *c << cb_;
    meta_[*c] = MetaKind::L2;
    auto s = l2_insert_fresh(noff);
    if (!s) {
      meta_.erase(*c);
      (void)release_now(*c);
      return s.error();
    }
    set_l1(l1i, noff | kOflagCopied);
    return *s;
  }
  if (!(l1_[l1i] & kOflagCopied)) {
    auto rc = get_refcount(*off >> cb_);
    if (!rc) return rc.error();
    if (*rc != 1)
      return make_error(ENOTSUP, "qcow2: " + path_ + ": L2 table at " + hex(*off) + " is shared (refcount " +
                                     std::to_string(*rc) + "); writing to shared tables is not supported");
    set_l1(l1i, l1_[l1i] | kOflagCopied);
  }
  return l2_load(*off);
}

// --- reading --------------------------------------------------------------------

Result<void> Qcow2Backend::check_request(uint64_t offset, uint64_t len) const {
  const uint64_t size = virtual_size_.load(std::memory_order_relaxed);
  if (len > size || offset > size - len)
    return make_error(EINVAL, "qcow2: request at " + std::to_string(offset) + " of " + std::to_string(len) +
                                  " bytes is past the end of the disk (" + std::to_string(size) + " bytes)");
  return {};
}

Result<void> Qcow2Backend::read_backing(uint64_t g, uint8_t* out, uint64_t len) {
  uint64_t avail = 0;
  if (backing_ && g < backing_size_) avail = std::min(len, backing_size_ - g);
  if (avail)
    if (auto r = backing_->read(g, std::span<uint8_t>(out, avail)); !r) return r;
  if (avail < len) std::memset(out + avail, 0, len - avail);
  return {};
}

Result<void> Qcow2Backend::validate_data_entry(const L2Entry& e, uint64_t raw, uint64_t g, bool for_write) {
  (void)raw;
  switch (e.type) {
    case ClusterType::Normal:
    case ClusterType::ZeroAlloc:
      if (e.host_offset % cs_ != 0)
        return corruption("data cluster offset " + hex(e.host_offset) + " is not cluster aligned (guest offset " +
                          hex(g) + ")");
      if (e.type == ClusterType::Normal && e.host_offset >= physical_size_)
        return corruption("data cluster at " + hex(e.host_offset) + " is past the end of the file (guest offset " +
                          hex(g) + ")");
      if (for_write && overlaps_metadata(e.host_offset >> cb_))
        return corruption("data cluster at " + hex(e.host_offset) + " overlaps metadata (guest offset " + hex(g) + ")");
      return {};
    case ClusterType::Compressed:
      if (e.compressed_offset >= physical_size_)
        return corruption("compressed cluster at " + hex(e.compressed_offset) +
                          " is past the end of the file (guest offset " + hex(g) + ")");
      return {};
    default: return {};
  }
}

Result<void> Qcow2Backend::read_compressed(const L2Entry& e, uint64_t raw, uint8_t* out) {
  if (dbuf_key_ != raw || raw == 0) {
    const uint64_t len = std::min<uint64_t>(e.compressed_bytes(), cbuf_.size());
    if (auto r = pread_exact(cbuf_.data(), len, e.compressed_offset, true); !r) return r;
    inflateReset(zs_);
    zs_->next_in = cbuf_.data();
    zs_->avail_in = uInt(len);
    zs_->next_out = dbuf_.data();
    zs_->avail_out = uInt(cs_);
    const int ret = inflate(zs_, Z_FINISH);
    if (!((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && zs_->avail_out == 0)) {
      dbuf_key_ = 0;
      return make_error(EIO, "qcow2: " + path_ + ": compressed cluster at " + hex(e.compressed_offset) +
                                 " does not inflate to a full cluster");
    }
    dbuf_key_ = raw;
  }
  if (out != dbuf_.data()) std::memcpy(out, dbuf_.data(), cs_);
  return {};
}

Result<void> Qcow2Backend::read_cluster_source(uint64_t gc, uint64_t raw, uint8_t* out) {
  const L2Entry e = decode_l2(raw, cb_);
  switch (e.type) {
    case ClusterType::Unallocated: return read_backing(gc << cb_, out, cs_);
    case ClusterType::ZeroPlain:
    case ClusterType::ZeroAlloc: std::memset(out, 0, cs_); return {};
    case ClusterType::Normal: return pread_exact(out, cs_, e.host_offset, true);
    case ClusterType::Compressed: return read_compressed(e, raw, out);
  }
  return {};
}

Result<void> Qcow2Backend::read(uint64_t offset, std::span<uint8_t> out) {
  if (closed_) return make_error(EBADF, "qcow2: " + path_ + " is closed");
  if (auto r = check_request(offset, out.size()); !r) {
    ctr_.errors.fetch_add(1, std::memory_order_relaxed);
    return r;
  }
  ctr_.reads.fetch_add(1, std::memory_order_relaxed);
  ctr_.bytes_read.fetch_add(out.size(), std::memory_order_relaxed);
  const uint32_t tb = cb_ + l2_bits_;
  const uint64_t l2mask = (1ull << l2_bits_) - 1;
  // A pending run: data from the host file, zeros, or backing data.
  enum class K { None, Host, Zero, Backing };
  K kind = K::None;
  uint64_t run_src = 0, run_len = 0;
  uint8_t* run_dst = nullptr;
  auto flush_pending = [&]() -> Result<void> {
    Result<void> r;
    if (kind == K::Host) r = pread_exact(run_dst, run_len, run_src, true);
    else if (kind == K::Zero) std::memset(run_dst, 0, run_len);
    else if (kind == K::Backing) r = read_backing(run_src, run_dst, run_len);
    kind = K::None;
    run_len = 0;
    return r;
  };
  auto add = [&](K k, uint64_t src, uint8_t* dst, uint64_t n) -> Result<void> {
    if (kind == k && run_dst + run_len == dst && (k == K::Zero || run_src + run_len == src)) {
      run_len += n;
      return {};
    }
    if (auto r = flush_pending(); !r) return r;
    kind = k;
    run_src = src;
    run_dst = dst;
    run_len = n;
    return {};
  };
  auto fail = [&](Error e) {
    ctr_.errors.fetch_add(1, std::memory_order_relaxed);
    return e;
  };

  uint64_t done = 0;
  while (done < out.size()) {
    const uint64_t g = offset + done;
    const uint64_t l1i = g >> tb;
    const uint64_t chunk = std::min<uint64_t>(out.size() - done, ((l1i + 1) << tb) - g);
    uint8_t* dst = out.data() + done;
    auto slot = l2_for_read(l1i);
    if (!slot) return fail(slot.error());
    if (*slot < 0) {
      if (auto r = add(K::Backing, g, dst, chunk); !r) return fail(r.error());
      done += chunk;
      continue;
    }
    const uint32_t s = uint32_t(*slot);
    l2_cache_.slots[s].pins++;
    uint64_t pos = 0;
    Result<void> r;
    while (pos < chunk && r) {
      const uint64_t go = g + pos;
      const uint64_t in = go & (cs_ - 1);
      const uint64_t n = std::min(chunk - pos, cs_ - in);
      const uint64_t raw = l2_raw(s, (go >> cb_) & l2mask);
      const L2Entry e = decode_l2(raw, cb_);
      switch (e.type) {
        case ClusterType::Unallocated: r = add(K::Backing, go, dst + pos, n); break;
        case ClusterType::ZeroPlain:
        case ClusterType::ZeroAlloc: r = add(K::Zero, 0, dst + pos, n); break;
        case ClusterType::Normal:
          r = validate_data_entry(e, raw, go, false);
          if (r) r = add(K::Host, e.host_offset + in, dst + pos, n);
          break;
        case ClusterType::Compressed:
          r = validate_data_entry(e, raw, go, false);
          if (r) r = flush_pending();
          if (r) r = read_compressed(e, raw, dbuf_.data());
          if (r) std::memcpy(dst + pos, dbuf_.data() + in, n);
          break;
      }
      pos += n;
    }
    // The run may point into this table's data; finish it before unpinning.
    if (r) r = flush_pending();
    l2_cache_.slots[s].pins--;
    if (!r) return fail(r.error());
    done += chunk;
  }
  if (auto r = flush_pending(); !r) return fail(r.error());
  return {};
}

// --- writing --------------------------------------------------------------------

Result<void> Qcow2Backend::flush_run(Run& run) {
  if (!run.len) return {};
  auto r = pwrite_all(run.src, run.len, run.host);
  run.len = 0;
  return r;
}

Result<void> Qcow2Backend::write_in_table(uint64_t l1i, uint64_t offset, Bytes data) {
  auto sr = l2_for_write(l1i);
  if (!sr) return sr.error();
  const uint32_t slot = *sr;
  const uint64_t l2mask = (1ull << l2_bits_) - 1;
  l2_cache_.slots[slot].pins++;
  updates_.clear();
  Run run;
  auto append = [&](uint64_t host, const uint8_t* src, uint64_t n) -> Result<void> {
    if (run.len && run.host + run.len == host && run.src + run.len == src) {
      run.len += n;
      return {};
    }
    if (auto r = flush_run(run); !r) return r;
    run = Run{host, src, n};
    return {};
  };
  auto body = [&]() -> Result<void> {
    uint64_t pos = 0;
    while (pos < data.size()) {
      const uint64_t go = offset + pos;
      const uint64_t gc = go >> cb_;
      const uint64_t l2i = gc & l2mask;
      const uint64_t in = go & (cs_ - 1);
      const uint64_t n = std::min<uint64_t>(data.size() - pos, cs_ - in);
      const uint8_t* src = data.data() + pos;
      const uint64_t raw = l2_raw(slot, l2i);
      const L2Entry e = decode_l2(raw, cb_);
      bool in_place = false;
      if (e.type == ClusterType::Normal || e.type == ClusterType::ZeroAlloc) {
        if (auto r = validate_data_entry(e, raw, go, true); !r) return r;
        in_place = e.copied;
        if (!in_place) {
          auto rc = get_refcount(e.host_offset >> cb_);
          if (!rc) return rc.error();
          in_place = *rc == 1;
        }
      }
      if (in_place && e.type == ClusterType::Normal) {
        if (auto r = append(e.host_offset + in, src, n); !r) return r;
        if (!e.copied) updates_.push_back({l2i, raw | kOflagCopied, raw, 0});
      } else if (in_place) {  // preallocated zero cluster: fill it, then drop the zero flag
        if (n == cs_) {
          if (auto r = append(e.host_offset, src, n); !r) return r;
        } else {
          if (auto r = flush_run(run); !r) return r;
          std::memset(bounce_.data(), 0, cs_);
          std::memcpy(bounce_.data() + in, src, n);
          if (auto r = pwrite_all(bounce_.data(), cs_, e.host_offset); !r) return r;
        }
        updates_.push_back({l2i, e.host_offset | kOflagCopied, raw, 0});
      } else {
        if (e.type == ClusterType::Compressed)
          if (auto r = validate_data_entry(e, raw, go, false); !r) return r;
        auto c = alloc_cluster();
        if (!c) return c.error();
        const uint64_t host = *c << cb_;
        updates_.push_back({l2i, host | kOflagCopied, raw, *c});
        if (n == cs_) {
          if (auto r = append(host, src, n); !r) return r;
        } else {
          const bool zero_src = (e.type == ClusterType::Unallocated && (!backing_ || (gc << cb_) >= backing_size_)) ||
                                e.type == ClusterType::ZeroPlain || e.type == ClusterType::ZeroAlloc;
          if (zero_src && host >= physical_size_) {
            // Past the end of the file: the rest of the cluster reads as zeros already.
            if (auto r = append(host + in, src, n); !r) return r;
          } else {
            if (auto r = flush_run(run); !r) return r;
            if (auto r = read_cluster_source(gc, raw, bounce_.data()); !r) return r;
            std::memcpy(bounce_.data() + in, src, n);
            if (auto r = pwrite_all(bounce_.data(), cs_, host); !r) return r;
          }
        }
      }
      pos += n;
    }
    return flush_run(run);
  };
  auto r = body();
  if (!r) {
    for (const auto& u : updates_)
      if (u.new_cluster) (void)release_now(u.new_cluster);
    updates_.clear();
    l2_cache_.slots[slot].pins--;
    return r;
  }
  for (const auto& u : updates_) {
    set_l2(slot, l1i, u.l2_index, u.new_raw);
    if (u.new_cluster) queue_free_entry(u.old_raw);
  }
  updates_.clear();
  l2_cache_.slots[slot].pins--;
  return {};
}

Result<void> Qcow2Backend::write(uint64_t offset, Bytes data, bool fua) {
  auto fail = [&](Error e) {
    ctr_.errors.fetch_add(1, std::memory_order_relaxed);
    return e;
  };
  if (auto r = writable(); !r) return fail(r.error());
  if (auto r = check_request(offset, data.size()); !r) return fail(r.error());
  ctr_.writes.fetch_add(1, std::memory_order_relaxed);
  ctr_.bytes_written.fetch_add(data.size(), std::memory_order_relaxed);
  if (auto r = ensure_dirty_bit(); !r) return fail(r.error());
  const uint32_t tb = cb_ + l2_bits_;
  uint64_t done = 0;
  while (done < data.size()) {
    const uint64_t g = offset + done;
    const uint64_t l1i = g >> tb;
    const uint64_t chunk = std::min<uint64_t>(data.size() - done, ((l1i + 1) << tb) - g);
    if (auto r = write_in_table(l1i, g, data.subspan(done, chunk)); !r) return fail(r.error());
    done += chunk;
  }
  if (auto r = maybe_flush_frees(); !r) return fail(r.error());
  if (fua)
    if (auto r = flush_metadata(); !r) return fail(r.error());
  return {};
}

Result<bool> Qcow2Backend::reads_as_zero(uint64_t gc) {
  const uint64_t l1i = gc >> l2_bits_;
  auto slot = l2_for_read(l1i);
  if (!slot) return slot.error();
  const bool backing_zero = !backing_ || (gc << cb_) >= backing_size_;
  if (*slot < 0) return backing_zero;
  const L2Entry e = decode_l2(l2_raw(uint32_t(*slot), gc & ((1ull << l2_bits_) - 1)), cb_);
  switch (e.type) {
    case ClusterType::ZeroPlain:
    case ClusterType::ZeroAlloc: return true;
    case ClusterType::Unallocated: return backing_zero;
    default: return false;
  }
}

Result<void> Qcow2Backend::zero_in_table(uint64_t l1i, uint64_t offset, uint64_t len, bool discard, bool may_unmap) {
  const bool zero_flag = hdr_.version >= 3;
  const uint64_t l2mask = (1ull << l2_bits_) - 1;
  auto off = l2_offset_checked(l1i);
  if (!off) return off.error();
  if (*off == 0) {
    // No table: all of it unallocated, reading as zeros unless a backing
    // file shows through. v3 hides it with zero clusters; v2 writes zeros
    // (write-zeroes) or lets it show (discard, which promises nothing).
    if (!backing_ || offset >= backing_size_) return {};
    if (!zero_flag) {
      if (discard) return {};
      for (uint64_t p = 0; p < len; p += cs_)
        if (auto r = write_in_table(l1i, offset + p, Bytes(zeros_.data(), cs_)); !r) return r;
      return {};
    }
  }
  auto sr = l2_for_write(l1i);
  if (!sr) return sr.error();
  const uint32_t slot = *sr;
  l2_cache_.slots[slot].pins++;
  Result<void> r;
  for (uint64_t p = 0; p < len && r; p += cs_) {
    const uint64_t go = offset + p;
    const uint64_t gc = go >> cb_;
    const uint64_t l2i = gc & l2mask;
    const uint64_t raw = l2_raw(slot, l2i);
    const L2Entry e = decode_l2(raw, cb_);
    const bool backing_here = backing_ && go < backing_size_;
    uint64_t nraw = raw;
    bool free_old = false, real_zeros = false;
    switch (e.type) {
      case ClusterType::Unallocated:
        if (!backing_here) break;
        if (zero_flag) nraw = kOflagZero;
        else if (!discard) real_zeros = true;
        break;
      case ClusterType::ZeroPlain: break;
      case ClusterType::ZeroAlloc:
        if (discard || may_unmap) {
          nraw = kOflagZero;
          free_old = true;
        }
        break;
      case ClusterType::Normal:
        r = validate_data_entry(e, raw, go, false);
        if (!r) break;
        if (zero_flag) {
          if (discard || may_unmap || !e.copied) {
            nraw = kOflagZero;
            free_old = true;
          } else {
            nraw = e.host_offset | kOflagCopied | kOflagZero;  // keep the allocation
          }
        } else if (!backing_here || discard) {
          nraw = 0;
          free_old = true;
        } else {
          real_zeros = true;
        }
        break;
      case ClusterType::Compressed:
        r = validate_data_entry(e, raw, go, false);
        if (!r) break;
        if (zero_flag) {
          nraw = kOflagZero;
          free_old = true;
        } else if (!backing_here || discard) {
          nraw = 0;
          free_old = true;
        } else {
          real_zeros = true;
        }
        break;
    }
    if (!r) break;
    if (real_zeros) {
      r = write_in_table(l1i, go, Bytes(zeros_.data(), cs_));
    } else if (nraw != raw) {
      set_l2(slot, l1i, l2i, nraw);
      if (free_old) queue_free_entry(raw);
    }
  }
  l2_cache_.slots[slot].pins--;
  return r;
}

Result<void> Qcow2Backend::zero_range(uint64_t offset, uint64_t len, bool discard, bool may_unmap) {
  if (auto r = ensure_dirty_bit(); !r) return r;
  const uint64_t end = offset + len;
  const uint64_t a = std::min(round_up(offset, cs_), end);
  const uint64_t b = std::max(end & ~(cs_ - 1), a);
  // Partial clusters: discard ignores them (it is advisory); write-zeroes
  // writes real zeros unless the cluster already reads as zeros.
  auto partial = [&](uint64_t from, uint64_t to) -> Result<void> {
    if (from >= to || discard) return {};
    auto z = reads_as_zero(from >> cb_);
    if (!z) return z.error();
    if (*z) return {};
    const uint32_t tb = cb_ + l2_bits_;
    return write_in_table(from >> tb, from, Bytes(zeros_.data(), to - from));
  };
  if (auto r = partial(offset, a); !r) return r;
  const uint32_t tb = cb_ + l2_bits_;
  for (uint64_t g = a; g < b;) {
    const uint64_t l1i = g >> tb;
    const uint64_t chunk = std::min<uint64_t>(b - g, ((l1i + 1) << tb) - g);
    if (auto r = zero_in_table(l1i, g, chunk, discard, may_unmap); !r) return r;
    if (auto r = maybe_flush_frees(); !r) return r;
    g += chunk;
  }
  return partial(b, end);
}

Result<void> Qcow2Backend::discard(uint64_t offset, uint64_t len) {
  auto fail = [&](Error e) {
    ctr_.errors.fetch_add(1, std::memory_order_relaxed);
    return e;
  };
  if (auto r = writable(); !r) return fail(r.error());
  if (auto r = check_request(offset, len); !r) return fail(r.error());
  ctr_.discards.fetch_add(1, std::memory_order_relaxed);
  ctr_.bytes_discarded.fetch_add(len, std::memory_order_relaxed);
  if (auto r = zero_range(offset, len, true, true); !r) return fail(r.error());
  return {};
}

Result<void> Qcow2Backend::write_zeroes(uint64_t offset, uint64_t len, bool may_unmap, bool fua) {
  auto fail = [&](Error e) {
    ctr_.errors.fetch_add(1, std::memory_order_relaxed);
    return e;
  };
  if (auto r = writable(); !r) return fail(r.error());
  if (auto r = check_request(offset, len); !r) return fail(r.error());
  ctr_.write_zeroes.fetch_add(1, std::memory_order_relaxed);
  ctr_.bytes_zeroed.fetch_add(len, std::memory_order_relaxed);
  if (auto r = zero_range(offset, len, false, may_unmap); !r) return fail(r.error());
  if (fua)
    if (auto r = flush_metadata(); !r) return fail(r.error());
  return {};
}

// --- resize, stats, info ----------------------------------------------------------

Result<void> Qcow2Backend::resize(uint64_t new_size) {
  if (auto r = writable(); !r) return r;
  const uint64_t old = virtual_size_.load();
  if (new_size < old) return make_error(EINVAL, "qcow2: shrinking is not supported (" + std::to_string(old) + " → " +
                                                    std::to_string(new_size) + " bytes)");
  if (new_size == old) return {};
  if (new_size > kMaxVirtualSize) return make_error(EFBIG, "qcow2: virtual size too large");
  const uint64_t need = Header::l1_entries_for(new_size, cb_);
  if (need > l1_.size()) {
    if (need * 8 > kMaxL1Bytes) return make_error(EFBIG, "qcow2: the new size needs an L1 table over 32 MiB");
    if (auto r = flush_metadata(); !r) return r;
    const uint64_t n = std::min<uint64_t>(std::max<uint64_t>(need, l1_.size() + l1_.size() / 2), kMaxL1Bytes / 8);
    const uint64_t clusters = (n * 8 + cs_ - 1) >> cb_;
    auto start = alloc_contiguous(clusters);
    if (!start) return start.error();
    std::vector<uint8_t> buf(clusters << cb_, 0);
    for (uint64_t i = 0; i < l1_.size(); i++) store_be64(&buf[i * 8], l1_[i]);
    if (auto r = pwrite_all(buf.data(), buf.size(), *start << cb_); !r) return r;
    if (auto r = sync(); !r) return r;
    uint8_t h[12];
    store_be32(h, uint32_t(n));
    store_be64(h + 4, *start << cb_);
    if (auto r = write_header_bytes(36, h, 12); !r) return r;
    if (auto r = sync(); !r) return r;
    const uint64_t old_off = hdr_.l1_table_offset;
    const uint64_t old_clusters = (uint64_t(l1_.size()) * 8 + cs_ - 1) >> cb_;
    hdr_.l1_table_offset = *start << cb_;
    hdr_.l1_size = uint32_t(n);
    if (compactor_)
      for (uint64_t c = *start; c < *start + clusters; c++) compactor_->on_fixed(c);
    l1_.resize(n, 0);
    l1_dirty_flag_.resize(n, 0);
    for (uint64_t c = old_off >> cb_; old_off && c < (old_off >> cb_) + old_clusters; c++)
      if (auto r = release_now(c); !r) return r;
  }
  uint8_t s[8];
  store_be64(s, new_size);
  if (auto r = write_header_bytes(24, s, 8); !r) return r;
  if (auto r = sync(); !r) return r;
  hdr_.size = new_size;
  virtual_size_ = new_size;
  return {};
}

BlockStats Qcow2Backend::stats() const {
  BlockStats s;
  s.reads = ctr_.reads.load(std::memory_order_relaxed);
  s.writes = ctr_.writes.load(std::memory_order_relaxed);
  s.flushes = ctr_.flushes.load(std::memory_order_relaxed);
  s.discards = ctr_.discards.load(std::memory_order_relaxed);
  s.write_zeroes = ctr_.write_zeroes.load(std::memory_order_relaxed);
  s.bytes_read = ctr_.bytes_read.load(std::memory_order_relaxed);
  s.bytes_written = ctr_.bytes_written.load(std::memory_order_relaxed);
  s.bytes_discarded = ctr_.bytes_discarded.load(std::memory_order_relaxed);
  s.bytes_zeroed = ctr_.bytes_zeroed.load(std::memory_order_relaxed);
  s.errors = ctr_.errors.load(std::memory_order_relaxed);
  s.cluster_size = cs_;
  s.allocated_clusters = ctr_.allocated.load(std::memory_order_relaxed);
  s.file_size = physical_size_.load(std::memory_order_relaxed);
  const uint64_t file_clusters = (s.file_size + cs_ - 1) >> cb_;
  s.free_clusters = file_clusters > s.allocated_clusters ? file_clusters - s.allocated_clusters : 0;
  s.virtual_size = virtual_size_.load(std::memory_order_relaxed);
  s.l2_hits = l2_cache_.hits.load(std::memory_order_relaxed);
  s.l2_misses = l2_cache_.misses.load(std::memory_order_relaxed);
  s.refcount_hits = rc_cache_.hits.load(std::memory_order_relaxed);
  s.refcount_misses = rc_cache_.misses.load(std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(info_mu_);
  s.last_check = last_check_;
  return s;
}

Qcow2Info Qcow2Backend::info() const {
  Qcow2Info i;
  std::lock_guard<std::mutex> lock(info_mu_);
  i.filename = path_;
  i.version = hdr_.version;
  i.compat = hdr_.version >= 3 ? "1.1" : "0.10";
  i.virtual_size = virtual_size_.load(std::memory_order_relaxed);
  i.file_size = physical_size_.load(std::memory_order_relaxed);
  i.cluster_size = cs_;
  i.refcount_bits = hdr_.refcount_bits();
  i.lazy_refcounts = (hdr_.compatible_features & kCompatLazyRefcounts) != 0;
  i.dirty = (hdr_.incompatible_features & kIncompatDirty) != 0;
  i.corrupt = corrupt_marked_;
  i.read_only = read_only_;
  i.backing_file = hdr_.backing_file;
  i.backing_format = hdr_.backing_format.value_or("");
  i.nb_snapshots = hdr_.nb_snapshots;
  i.has_bitmaps = hdr_.bitmaps.has_value();
  i.incompatible_features = hdr_.incompatible_features;
  i.compatible_features = hdr_.compatible_features;
  i.autoclear_features = hdr_.autoclear_features;
  return i;
}

// --- jobs -------------------------------------------------------------------------

Result<std::unique_ptr<Qcow2Job>> Qcow2Backend::start_compaction() {
  if (auto r = writable(); !r) return r.error();
  if (job_) return make_error(EBUSY, "qcow2: " + path_ + ": another job is running");
  if (hdr_.bitmaps) return make_error(ENOTSUP, "qcow2: " + path_ + ": compaction of images with bitmaps is not supported");
  if (alloc_end_ > ((physical_size_ + cs_ - 1) >> cb_) + 1024)
    return make_error(EUCLEAN, "qcow2: " + path_ + ": refcounts claim clusters far past the end of the file; "
                                                   "repair it (check --repair) before compacting");
  if (auto r = flush_all(); !r) return r.error();
  auto j = std::make_unique<Qcow2Compactor>(*this);
  return std::unique_ptr<Qcow2Job>(std::move(j));
}

Result<std::unique_ptr<Qcow2Job>> Qcow2Backend::start_discard_zeroes() {
  if (auto r = writable(); !r) return r.error();
  if (job_) return make_error(EBUSY, "qcow2: " + path_ + ": another job is running");
  return std::unique_ptr<Qcow2Job>(std::make_unique<Qcow2ZeroDiscarder>(*this));
}

// --- opening any image --------------------------------------------------------------

Result<std::string> probe_format(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("open " + path);
  uint8_t m[4] = {};
  const ssize_t n = ::pread(fd, m, 4, 0);
  ::close(fd);
  if (n == 4 && load_be32(m) == kMagic) return std::string("qcow2");
  return std::string("raw");
}

Result<std::unique_ptr<BlockBackend>> open_image(const std::string& path, const ImageOptions& opts) {
  std::string fmt = opts.format;
  if (fmt.empty()) {
    auto p = probe_format(path);
    if (!p) return p.error();
    fmt = *p;
  }
  if (fmt == "qcow2") {
    Qcow2OpenOptions o = opts.qcow2;
    o.read_only = opts.read_only;
    auto b = Qcow2Backend::open(path, o);
    if (!b) return b.error();
    return std::unique_ptr<BlockBackend>(std::move(*b));
  }
  if (fmt == "raw") {
    auto b = RawBackend::open(path, opts.read_only);
    if (!b) return b.error();
    return std::unique_ptr<BlockBackend>(std::move(*b));
  }
  return make_error(EINVAL, "unknown image format '" + fmt + "' (qcow2 or raw)");
}

}  // namespace berth::storage
