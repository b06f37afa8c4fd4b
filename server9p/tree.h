// The synthetic file tree that 9P sessions serve.
//
// A Node is a directory or a file with permission bits, a stable qid path
// (unique for the process lifetime) and a one-line description (collected
// into /README). Opening a file yields an OpenFile: the per-fid state that
// makes the four kinds of files behave as DESIGN.md requires:
//
//   StateFile   content rendered once at open (a snapshot), size reported;
//               optionally writable, the written text is stored at clunk.
//   CtlFile     each write runs a command; the same fid then reads "OK ..."
//               or "ERROR ...". A failed command fails the Twrite.
//   StreamFile  reads block until data arrives (EAGAIN to the session, which
//               parks the request until the file says it is readable);
//               each open has its own cursor.
//   Dir         static children plus an optional dynamic generator, and
//               optional mkdir/unlink hooks for components.
//
// All nodes live on the main loop thread; nothing here is thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "server9p/proto.h"

namespace berth::p9 {

class Node;
using NodePtr = std::shared_ptr<Node>;

enum class Access : uint8_t { Read = 1, Write = 2, ReadWrite = 3 };
inline bool wants_read(Access a) { return uint8_t(a) & 1; }
inline bool wants_write(Access a) { return uint8_t(a) & 2; }

// Per-open state. Offsets are the client's; streams ignore them.
class OpenFile {
 public:
  virtual ~OpenFile() = default;
  // Copy up to out.size() bytes; 0 means end of file. EAGAIN means "would
  // block": the session parks the request and waits for notify_readable().
  virtual Result<size_t> read(uint64_t offset, std::span<uint8_t> out) = 0;
  virtual Result<size_t> write(uint64_t offset, Bytes data);  // default EACCES
  virtual Result<void> truncate(uint64_t size);                // default: accepted when size is 0
  virtual uint64_t size() const { return 0; }
  virtual Result<void> sync() { return {}; }   // Tfsync
  virtual Result<void> close() { return {}; }  // Tclunk
  // Streams: call `cb` once when a read may make progress. One waiter per
  // open file; a new call replaces the previous one, cancel_wait drops it.
  virtual void wait_readable(std::function<void()> cb) { cb(); }
  virtual void cancel_wait() {}
};

// Who opens a file, for components that account access (the pcap rings
// write each open and read to /audit). The views are valid only during the
// open call; a component that keeps them copies them.
struct OpenContext {
  std::string_view peer = "local";  // the transport's peer: "unix:PATH", "tcp:IP:PORT", "memory"
  std::string_view uname;           // the attach's uname (9P2000.u/.L: "uid N" when it was empty)
  std::string path;                 // the node's absolute path in the tree, "/pcap/all.pcap"
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  Node(std::string name, uint32_t perm, std::string description, bool dir);
  virtual ~Node() = default;

  const std::string& name() const { return name_; }
  uint32_t perm() const { return perm_; }  // 0444-style permission bits
  bool is_dir() const { return dir_; }
  uint64_t qid_path() const { return qid_path_; }
  Qid qid() const { return Qid{dir_ ? kQtDir : kQtFile, 0, qid_path_}; }
  const std::string& description() const { return description_; }

  // Size reported by stat/getattr when no open file says otherwise.
  virtual uint64_t size() const { return 0; }
  // Permission checks happen in the session; open only builds the state.
  virtual Result<std::unique_ptr<OpenFile>> open(Access access, bool truncate);
  // Open on behalf of a known client. Sessions call this one; the default
  // ignores the client and calls open(), so only nodes that care override it.
  virtual Result<std::unique_ptr<OpenFile>> open_as(const OpenContext& client, Access access, bool truncate) {
    (void)client;
    return open(access, truncate);
  }
  // Directory operations (files answer ENOTDIR).
  virtual std::vector<NodePtr> list() const { return {}; }
  virtual NodePtr lookup(std::string_view name) const;
  virtual Result<NodePtr> mkdir(std::string_view name, uint32_t perm);
  virtual Result<NodePtr> create(std::string_view name, uint32_t perm);
  virtual Result<void> unlink(std::string_view name);

 private:
  std::string name_;
  uint32_t perm_;
  std::string description_;
  bool dir_;
  uint64_t qid_path_;
};

class Dir : public Node {
 public:
  using Generator = std::function<std::vector<NodePtr>()>;
  using MkdirHook = std::function<Result<NodePtr>(std::string_view name, uint32_t perm)>;
  using UnlinkHook = std::function<Result<void>(std::string_view name)>;

  explicit Dir(std::string name, std::string description = {}, uint32_t perm = 0555);

  // Static child; replaces an existing child of the same name.
  NodePtr add(NodePtr child);
  void remove_static(std::string_view name);
  void set_generator(Generator g) { gen_ = std::move(g); }
  void set_mkdir(MkdirHook h) { mkdir_ = std::move(h); }
  void set_unlink(UnlinkHook h) { unlink_ = std::move(h); }

  std::vector<NodePtr> list() const override;
  NodePtr lookup(std::string_view name) const override;
  Result<std::unique_ptr<OpenFile>> open(Access access, bool truncate) override;
  Result<NodePtr> mkdir(std::string_view name, uint32_t perm) override;
  Result<void> unlink(std::string_view name) override;

 private:
  std::vector<NodePtr> children_;
  Generator gen_;
  MkdirHook mkdir_;
  UnlinkHook unlink_;
};

class StateFile : public Node {
 public:
  using Render = std::function<std::string()>;
  using Store = std::function<Result<void>(std::string_view content)>;

  // Read-only (0444) unless a store hook is given (then 0644).
  StateFile(std::string name, std::string description, Render render, Store store = {});
  uint64_t size() const override { return render_().size(); }
  Result<std::unique_ptr<OpenFile>> open(Access access, bool truncate) override;

 private:
  Render render_;
  Store store_;
};

class CtlFile : public Node {
 public:
  // Runs one command (one line, without its newline). The returned text
  // follows "OK"; an Error becomes "ERROR <message>" and fails the write.
  using Handler = std::function<Result<std::string>(std::string_view command)>;

  CtlFile(std::string name, std::string description, Handler handler, std::string usage = {});
  Result<std::unique_ptr<OpenFile>> open(Access access, bool truncate) override;

 private:
  Handler handler_;
  std::string usage_;
};

// A bounded byte stream with many readers. Writers append; each reader has
// its own cursor. Readers that fall behind the retained window skip ahead and
// count the bytes they lost. Opening starts at the oldest retained byte
// (`replay`) or at the live end.
class ByteStream {
 public:
  explicit ByteStream(size_t capacity);
  void append(Bytes data);
  void close();  // readers then see end of file once drained
  uint64_t start_seq() const { return start_; }
  uint64_t end_seq() const { return start_ + buf_.size(); }
  bool closed() const { return closed_; }
  size_t copy_out(uint64_t seq, std::span<uint8_t> out) const;  // from absolute position

  using WaiterId = uint64_t;
  WaiterId add_waiter(std::function<void()> cb);
  void remove_waiter(WaiterId id);

 private:
  void wake();
  size_t cap_;
  std::deque<uint8_t> buf_;
  uint64_t start_ = 0;
  bool closed_ = false;
  WaiterId next_waiter_ = 1;
  std::map<WaiterId, std::function<void()>> waiters_;
};

class StreamFile : public Node {
 public:
  using Opener = std::function<Result<std::unique_ptr<OpenFile>>()>;
  StreamFile(std::string name, std::string description, Opener opener);
  // Convenience: a stream over a ByteStream; `replay` starts each reader at
  // the oldest retained byte, otherwise at the live end.
  StreamFile(std::string name, std::string description, std::shared_ptr<ByteStream> stream, bool replay);
  Result<std::unique_ptr<OpenFile>> open(Access access, bool truncate) override;

 private:
  Opener opener_;
};

// A cursor over a ByteStream; used by StreamFile and by components that
// build their own stream nodes.
class ByteStreamReader : public OpenFile {
 public:
  ByteStreamReader(std::shared_ptr<ByteStream> s, uint64_t start);
  ~ByteStreamReader() override;
  Result<size_t> read(uint64_t offset, std::span<uint8_t> out) override;
  void wait_readable(std::function<void()> cb) override;
  void cancel_wait() override;
  uint64_t lost() const { return lost_; }

 private:
  std::shared_ptr<ByteStream> s_;
  uint64_t pos_;
  uint64_t lost_ = 0;
  ByteStream::WaiterId waiter_ = 0;
};

// A file built from two lambdas, for small special files (/debug/zero).
class FuncFile : public Node {
 public:
  using ReadFn = std::function<Result<size_t>(uint64_t offset, std::span<uint8_t> out)>;
  using WriteFn = std::function<Result<size_t>(uint64_t offset, Bytes data)>;
  FuncFile(std::string name, std::string description, uint32_t perm, ReadFn read, WriteFn write = {});
  Result<std::unique_ptr<OpenFile>> open(Access access, bool truncate) override;

 private:
  ReadFn read_;
  WriteFn write_;
};

// The tree: a root directory plus helpers for components to mount subtrees.
class Tree {
 public:
  Tree();
  std::shared_ptr<Dir> root() const { return root_; }
  // Creates missing directories along `dir_path` ("/a/b"), then adds `node`.
  NodePtr mount(std::string_view dir_path, NodePtr node);
  std::shared_ptr<Dir> mkdirs(std::string_view dir_path);
  // Resolve an absolute path; nullptr when missing.
  NodePtr resolve(std::string_view path) const;
  // The attach point for an aname: "" and "/" are the root, "ctl" is /debug
  // (so diod's tools work), anything else a path.
  NodePtr attach_point(std::string_view aname) const;
  // "path<TAB>description" for every node with a description, depth first.
  std::string describe() const;

 private:
  std::shared_ptr<Dir> root_;
};

// Split "a/b/c" (leading/trailing slashes ignored) into components.
std::vector<std::string> split_path(std::string_view path);

}  // namespace berth::p9
