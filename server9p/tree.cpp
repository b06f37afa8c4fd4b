// Node types of the synthetic tree. See tree.h for the contract of each.
#include "server9p/tree.h"

#include <algorithm>
#include <cstring>

namespace berth::p9 {

namespace {

uint64_t next_qid_path() {
  static uint64_t next = 1;  // main-thread only; 0 is never used
  return next++;
}

// Copy a window of `content` at `offset` into `out`.
size_t copy_window(std::string_view content, uint64_t offset, std::span<uint8_t> out) {
  if (offset >= content.size()) return 0;
  size_t n = std::min<uint64_t>(out.size(), content.size() - offset);
  std::memcpy(out.data(), content.data() + offset, n);
  return n;
}

}  // namespace

// ---- OpenFile defaults ------------------------------------------------------

Result<size_t> OpenFile::write(uint64_t, Bytes) { return make_error(EACCES, "file is read-only"); }

Result<void> OpenFile::truncate(uint64_t size) {
  if (size != 0) return make_error(EINVAL, "only truncation to size 0 is supported");
  return {};
}

// ---- Node ---------------------------------------------------------------------

Node::Node(std::string name, uint32_t perm, std::string description, bool dir)
    : name_(std::move(name)), perm_(perm), description_(std::move(description)), dir_(dir),
      qid_path_(next_qid_path()) {}

Result<std::unique_ptr<OpenFile>> Node::open(Access, bool) { return make_error(EOPNOTSUPP, "cannot open"); }
NodePtr Node::lookup(std::string_view) const { return nullptr; }
Result<NodePtr> Node::mkdir(std::string_view, uint32_t) {
  return make_error(dir_ ? EACCES : ENOTDIR, dir_ ? "directory does not accept new entries" : "not a directory");
}
Result<NodePtr> Node::create(std::string_view, uint32_t) {
  return make_error(dir_ ? EACCES : ENOTDIR, dir_ ? "files cannot be created here" : "not a directory");
}
Result<void> Node::unlink(std::string_view) {
  return make_error(dir_ ? EACCES : ENOTDIR, dir_ ? "entries cannot be removed here" : "not a directory");
}

// ---- Dir ----------------------------------------------------------------------

namespace {
class DirHandle final : public OpenFile {
 public:
  Result<size_t> read(uint64_t, std::span<uint8_t>) override { return make_error(EISDIR, "is a directory"); }
};
}  // namespace

Dir::Dir(std::string name, std::string description, uint32_t perm)
    : Node(std::move(name), perm, std::move(description), true) {}

NodePtr Dir::add(NodePtr child) {
  remove_static(child->name());
  children_.push_back(child);
  return child;
}

void Dir::remove_static(std::string_view name) {
  std::erase_if(children_, [&](const NodePtr& n) { return n->name() == name; });
}

std::vector<NodePtr> Dir::list() const {
  std::vector<NodePtr> out = children_;
  if (gen_) {
    for (auto& n : gen_()) out.push_back(std::move(n));
  }
  return out;
}

NodePtr Dir::lookup(std::string_view name) const {
  for (auto& c : children_)
    if (c->name() == name) return c;
  if (gen_)
    for (auto& c : gen_())
      if (c->name() == name) return c;
  return nullptr;
}

Result<std::unique_ptr<OpenFile>> Dir::open(Access access, bool) {
  if (wants_write(access)) return make_error(EISDIR, "is a directory");
  return std::unique_ptr<OpenFile>(std::make_unique<DirHandle>());
}

Result<NodePtr> Dir::mkdir(std::string_view name, uint32_t perm) {
  if (!mkdir_) return Node::mkdir(name, perm);
  if (lookup(name)) return make_error(EEXIST, "file exists");
  return mkdir_(name, perm);
}

Result<void> Dir::unlink(std::string_view name) {
  if (!lookup(name)) return make_error(ENOENT, "no such file or directory");
  if (!unlink_) return Node::unlink(name);
  return unlink_(name);
}

// ---- StateFile --------------------------------------------------------------

namespace {
class StateHandle final : public OpenFile {
 public:
  StateHandle(std::string content, StateFile::Store store) : content_(std::move(content)), store_(std::move(store)) {}
  Result<size_t> read(uint64_t offset, std::span<uint8_t> out) override { return copy_window(content_, offset, out); }
  Result<size_t> write(uint64_t offset, Bytes data) override {
    if (!store_) return OpenFile::write(offset, data);
    constexpr uint64_t kMax = 1 << 20;  // a state file is text a person writes
    if (offset > kMax || data.size() > kMax - offset) return make_error(EFBIG, "state file content limited to 1 MiB");
    if (content_.size() < offset + data.size()) content_.resize(offset + data.size());
    std::memcpy(content_.data() + offset, data.data(), data.size());
    dirty_ = true;
    // Whole lines are applied at once, so a bad `echo LINE > file` fails
    // at its write (where shells report errors), not only at close.
    if (content_.back() == '\n') {
      if (auto r = commit(); !r) return r.error();
    }
    return data.size();
  }
  Result<void> truncate(uint64_t size) override {
    if (!store_) return make_error(EACCES, "file is read-only");
    if (size > content_.size()) return make_error(EINVAL, "cannot extend a state file");
    content_.resize(size);
    dirty_ = true;
    return {};
  }
  uint64_t size() const override { return content_.size(); }
  Result<void> sync() override { return commit(); }
  Result<void> close() override { return commit(); }

 private:
  Result<void> commit() {
    if (!dirty_) return {};
    dirty_ = false;
    return store_(content_);
  }
  std::string content_;
  StateFile::Store store_;
  bool dirty_ = false;
};
}  // namespace

StateFile::StateFile(std::string name, std::string description, Render render, Store store)
    : Node(std::move(name), store ? 0644 : 0444, std::move(description), false), render_(std::move(render)),
      store_(std::move(store)) {}

Result<std::unique_ptr<OpenFile>> StateFile::open(Access access, bool truncate) {
  // A writer that truncates starts from empty text; others see the snapshot.
  std::string content = (wants_write(access) && truncate) ? std::string() : render_();
  auto h = std::make_unique<StateHandle>(std::move(content), wants_write(access) ? store_ : Store{});
  if (wants_write(access) && truncate) (void)h->truncate(0);  // marks dirty: "> file" empties it
  return std::unique_ptr<OpenFile>(std::move(h));
}

// ---- CtlFile ------------------------------------------------------------------

namespace {
class CtlHandle final : public OpenFile {
 public:
  CtlHandle(CtlFile::Handler* h, std::string usage) : handler_(h), result_(std::move(usage)) {}
  Result<size_t> read(uint64_t offset, std::span<uint8_t> out) override { return copy_window(result_, offset, out); }
  Result<size_t> write(uint64_t, Bytes data) override {
    // Each write is a batch of commands, one per line; stop at the first error.
    std::string_view text = as_chars(data);
    std::string ok;
    size_t ran = 0;
    while (!text.empty()) {
      size_t nl = text.find('\n');
      std::string_view line = text.substr(0, nl);
      text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
      while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
      if (line.empty()) continue;
      auto r = (*handler_)(line);
      ran++;
      if (!r) {
        result_ = "ERROR " + r.error().message + "\n";
        return r.error();
      }
      ok += r.value().empty() ? "OK\n" : "OK " + r.value() + (r.value().back() == '\n' ? "" : "\n");
    }
    if (ran == 0) {
      result_ = "ERROR empty command\n";
      return make_error(EINVAL, "empty command");
    }
    result_ = std::move(ok);
    return data.size();
  }
  Result<void> truncate(uint64_t) override { return {}; }  // "echo >" truncates; a ctl has nothing to cut
  uint64_t size() const override { return result_.size(); }

 private:
  CtlFile::Handler* handler_;
  std::string result_;
};
}  // namespace

CtlFile::CtlFile(std::string name, std::string description, Handler handler, std::string usage)
    : Node(std::move(name), 0644, std::move(description), false), handler_(std::move(handler)),
      usage_(std::move(usage)) {}

Result<std::unique_ptr<OpenFile>> CtlFile::open(Access, bool) {
  return std::unique_ptr<OpenFile>(std::make_unique<CtlHandle>(&handler_, usage_));
}

// ---- ByteStream -------------------------------------------------------------

ByteStream::ByteStream(size_t capacity) : cap_(capacity) {}

void ByteStream::append(Bytes data) {
  if (closed_ || data.empty()) return;
  if (data.size() >= cap_) {
    start_ += buf_.size() + (data.size() - cap_);
    buf_.assign(data.end() - cap_, data.end());
  } else {
    size_t overflow = buf_.size() + data.size() > cap_ ? buf_.size() + data.size() - cap_ : 0;
    buf_.erase(buf_.begin(), buf_.begin() + overflow);
    start_ += overflow;
    buf_.insert(buf_.end(), data.begin(), data.end());
  }
  wake();
}

void ByteStream::close() {
  closed_ = true;
  wake();
}

size_t ByteStream::copy_out(uint64_t seq, std::span<uint8_t> out) const {
  if (seq < start_ || seq >= end_seq()) return 0;
  size_t from = seq - start_;
  size_t n = std::min(out.size(), buf_.size() - from);
  std::copy_n(buf_.begin() + from, n, out.begin());
  return n;
}

ByteStream::WaiterId ByteStream::add_waiter(std::function<void()> cb) {
  WaiterId id = next_waiter_++;
  waiters_.emplace(id, std::move(cb));
  return id;
}

void ByteStream::remove_waiter(WaiterId id) { waiters_.erase(id); }

void ByteStream::wake() {
  // Waiters are one-shot; a callback may add or remove waiters.
  auto fire = std::move(waiters_);
  waiters_.clear();
  for (auto& [id, cb] : fire) cb();
}

ByteStreamReader::ByteStreamReader(std::shared_ptr<ByteStream> s, uint64_t start) : s_(std::move(s)), pos_(start) {}
ByteStreamReader::~ByteStreamReader() { cancel_wait(); }

Result<size_t> ByteStreamReader::read(uint64_t, std::span<uint8_t> out) {
  if (pos_ < s_->start_seq()) {
    lost_ += s_->start_seq() - pos_;
    pos_ = s_->start_seq();
  }
  if (pos_ == s_->end_seq()) {
    if (s_->closed()) return size_t(0);
    return make_error(EAGAIN, "no data yet");
  }
  size_t n = s_->copy_out(pos_, out);
  pos_ += n;
  return n;
}

void ByteStreamReader::wait_readable(std::function<void()> cb) {
  cancel_wait();
  if (pos_ != s_->end_seq() || s_->closed()) return cb();
  waiter_ = s_->add_waiter([this, cb = std::move(cb)] {
    waiter_ = 0;
    cb();
  });
}

void ByteStreamReader::cancel_wait() {
  if (waiter_) s_->remove_waiter(waiter_);
  waiter_ = 0;
}

// ---- StreamFile -------------------------------------------------------------

StreamFile::StreamFile(std::string name, std::string description, Opener opener)
    : Node(std::move(name), 0444, std::move(description), false), opener_(std::move(opener)) {}

StreamFile::StreamFile(std::string name, std::string description, std::shared_ptr<ByteStream> stream, bool replay)
    : StreamFile(std::move(name), std::move(description), [stream, replay]() -> Result<std::unique_ptr<OpenFile>> {
        return std::unique_ptr<OpenFile>(
            std::make_unique<ByteStreamReader>(stream, replay ? stream->start_seq() : stream->end_seq()));
      }) {}

Result<std::unique_ptr<OpenFile>> StreamFile::open(Access access, bool) {
  if (wants_write(access)) return make_error(EACCES, "stream is read-only");
  return opener_();
}

// ---- FuncFile -----------------------------------------------------------------

namespace {
class FuncHandle final : public OpenFile {
 public:
  FuncHandle(FuncFile::ReadFn* r, FuncFile::WriteFn* w) : r_(r), w_(w) {}
  Result<size_t> read(uint64_t offset, std::span<uint8_t> out) override { return (*r_)(offset, out); }
  Result<size_t> write(uint64_t offset, Bytes data) override {
    if (!*w_) return OpenFile::write(offset, data);
    return (*w_)(offset, data);
  }

 private:
  FuncFile::ReadFn* r_;
  FuncFile::WriteFn* w_;
};
}  // namespace

FuncFile::FuncFile(std::string name, std::string description, uint32_t perm, ReadFn read, WriteFn write)
    : Node(std::move(name), perm, std::move(description), false), read_(std::move(read)), write_(std::move(write)) {}

Result<std::unique_ptr<OpenFile>> FuncFile::open(Access, bool) {
  return std::unique_ptr<OpenFile>(std::make_unique<FuncHandle>(&read_, &write_));
}

// ---- Tree ---------------------------------------------------------------------

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  while (!path.empty()) {
    size_t slash = path.find('/');
    std::string_view part = path.substr(0, slash);
    if (!part.empty()) out.emplace_back(part);
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

Tree::Tree() : root_(std::make_shared<Dir>("/", "")) {}

std::shared_ptr<Dir> Tree::mkdirs(std::string_view dir_path) {
  std::shared_ptr<Dir> d = root_;
  for (auto& part : split_path(dir_path)) {
    auto next = std::dynamic_pointer_cast<Dir>(d->lookup(part));
    if (!next) next = std::static_pointer_cast<Dir>(d->add(std::make_shared<Dir>(part)));
    d = next;
  }
  return d;
}

NodePtr Tree::mount(std::string_view dir_path, NodePtr node) { return mkdirs(dir_path)->add(std::move(node)); }

NodePtr Tree::resolve(std::string_view path) const {
  NodePtr n = root_;
  for (auto& part : split_path(path)) {
    n = n->lookup(part);
    if (!n) return nullptr;
  }
  return n;
}

NodePtr Tree::attach_point(std::string_view aname) const {
  if (aname == "ctl") return resolve("/debug");
  return resolve(aname);
}

namespace {
void describe_into(const NodePtr& n, const std::string& path, std::string& out) {
  for (auto& c : n->list()) {
    std::string p = path + "/" + c->name();
    if (!c->description().empty()) {
      std::string shown = p + (c->is_dir() ? "/" : "");
      out += shown;
      out.append(shown.size() < 24 ? 24 - shown.size() : 1, ' ');
      out += c->description();
      out += '\n';
    }
    if (c->is_dir()) describe_into(c, p, out);
  }
}
}  // namespace

std::string Tree::describe() const {
  std::string out;
  describe_into(root_, "", out);
  return out;
}

}  // namespace berth::p9
