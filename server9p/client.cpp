#include "server9p/client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "server9p/transport.h"

namespace berth::p9 {

std::string errno_text(int code) {
  const char* name = strerrorname_np(code);
  return std::string(strerror(code)) + " (" + (name ? name : std::to_string(code)) + ")";
}

namespace {

class FdTransport final : public ClientTransport {
 public:
  explicit FdTransport(int fd) : fd_(fd) {}
  ~FdTransport() override { ::close(fd_); }

  Result<void> send(Bytes m) override {
    size_t off = 0;
    while (off < m.size()) {
      ssize_t n = ::send(fd_, m.data() + off, m.size() - off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return make_error(errno, std::string("send: ") + strerror(errno));
      }
      off += size_t(n);
    }
    return {};
  }

  Result<std::vector<uint8_t>> recv() override {
    uint8_t hdr[4];
    if (auto r = read_exact(hdr, 4); !r) return r.error();
    uint32_t size = load_le32(hdr);
    if (size < kHeaderSize || size > kMaxMsize + 64) return make_error(EPROTO, "bad message size from server");
    std::vector<uint8_t> m(size);
    std::memcpy(m.data(), hdr, 4);
    if (auto r = read_exact(m.data() + 4, size - 4); !r) return r.error();
    return m;
  }

 private:
  Result<void> read_exact(uint8_t* p, size_t n) {
    while (n > 0) {
      ssize_t got = ::recv(fd_, p, n, 0);
      if (got == 0) return make_error(ECONNRESET, "server closed the connection");
      if (got < 0) {
        if (errno == EINTR) continue;
        return make_error(errno, std::string("recv: ") + strerror(errno));
      }
      p += got;
      n -= size_t(got);
    }
    return {};
  }
  int fd_;
};

}  // namespace

Result<std::unique_ptr<ClientTransport>> dial(const std::string& spec) {
  auto a = parse_listen_addr(spec);
  if (!a) return a.error();
  int fd = -1;
  if (a->kind == ListenAddr::Unix) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::strncpy(sun.sun_path, a->path.c_str(), sizeof(sun.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
      int e = errno;
      ::close(fd);
      return make_error(e, "cannot connect to " + spec + ": " + strerror(e));
    }
  } else {
    sockaddr_storage ss{};
    socklen_t len;
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET, a->host.c_str(), &s4->sin_addr) == 1) {
      s4->sin_family = AF_INET;
      s4->sin_port = htons(uint16_t(a->port));
      len = sizeof(*s4);
    } else if (inet_pton(AF_INET6, a->host.c_str(), &s6->sin6_addr) == 1) {
      s6->sin6_family = AF_INET6;
      s6->sin6_port = htons(uint16_t(a->port));
      len = sizeof(*s6);
    } else {
      return make_error(EINVAL, "bad host '" + a->host + "' (give a numeric IP address)");
    }
    fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      int e = errno;
      ::close(fd);
      return make_error(e, "cannot connect to " + spec + ": " + strerror(e));
    }
  }
  return std::unique_ptr<ClientTransport>(std::make_unique<FdTransport>(fd));
}

Result<uint16_t> Client::send(Fcall req) {
  if (req.type != Tversion) {
    req.tag = next_tag_++;
    if (next_tag_ == kNoTag) next_tag_ = 1;
  }
  auto bytes = encode(req, Dialect::P9_2000L);
  if (auto r = t_->send(bytes); !r) return r.error();
  return req.tag;
}

Result<Fcall> Client::recv() {
  auto m = t_->recv();
  if (!m) return m.error();
  // Keep the message alive with the reply: data views point into it.
  last_ = std::move(m.value());
  Fcall r;
  if (!parse(last_, Dialect::P9_2000L, r).ok) return make_error(EPROTO, "malformed reply from server");
  if (r.type == Rlerror) return make_error(int(r.ecode), errno_text(int(r.ecode)));
  return r;
}

Result<Fcall> Client::rpc(Fcall req) {
  auto tag = send(std::move(req));
  if (!tag) return tag.error();
  return recv();
}

Result<void> Client::version(uint32_t msize, const std::string& v) {
  Fcall req;
  req.type = Tversion;
  req.tag = kNoTag;
  req.msize = msize;
  req.version = v;
  auto r = rpc(req);
  if (!r) return r.error();
  if (r->type != Rversion || r->version != v) return make_error(EPROTO, "server refused version " + v);
  msize_ = r->msize;
  return {};
}

Result<uint32_t> Client::attach(const std::string& aname) {
  Fcall req;
  req.type = Tattach;
  req.fid = new_fid();
  req.afid = kNoFid;
  req.uname = "berth";
  req.aname = aname;
  req.n_uname = uint32_t(geteuid());
  auto r = rpc(req);
  if (!r) return r.error();
  root_ = req.fid;
  return req.fid;
}

Result<uint32_t> Client::walk(uint32_t from, const std::string& path) {
  std::vector<std::string> parts = split_path(path);
  uint32_t cur = from;
  size_t i = 0;
  // Walk in chunks of at most 16 names, as the protocol requires.
  do {
    Fcall req;
    req.type = Twalk;
    req.fid = cur;
    req.newfid = new_fid();
    size_t n = std::min<size_t>(parts.size() - i, kMaxWalkElems);
    req.wnames.assign(parts.begin() + long(i), parts.begin() + long(i + n));
    auto r = rpc(req);
    if (cur != from) (void)clunk(cur);
    if (!r) return r.error();
    if (r->wqids.size() != n) return make_error(ENOENT, errno_text(ENOENT) + ": " + parts[i + r->wqids.size()]);
    cur = req.newfid;
    i += n;
  } while (i < parts.size());
  return cur;
}

Result<Qid> Client::open(uint32_t fid, uint32_t flags) {
  Fcall req;
  req.type = Tlopen;
  req.fid = fid;
  req.flags = flags;
  auto r = rpc(req);
  if (!r) return r.error();
  return r->qid;
}

Result<std::vector<uint8_t>> Client::read(uint32_t fid, uint64_t offset, uint32_t count) {
  Fcall req;
  req.type = Tread;
  req.fid = fid;
  req.offset = offset;
  req.count = std::min(count, msize_ - kIoHeaderSize);
  auto r = rpc(req);
  if (!r) return r.error();
  return std::vector<uint8_t>(r->data.begin(), r->data.end());
}

Result<uint32_t> Client::write(uint32_t fid, uint64_t offset, Bytes data) {
  uint32_t done = 0;
  do {
    Fcall req;
    req.type = Twrite;
    req.fid = fid;
    req.offset = offset + done;
    req.data = data.subspan(done, std::min<size_t>(data.size() - done, msize_ - kIoHeaderSize));
    auto r = rpc(req);
    if (!r) return r.error();
    if (r->count == 0) break;
    done += r->count;
  } while (done < data.size());
  return done;
}

Result<std::string> Client::read_all(uint32_t fid) {
  std::string out;
  for (;;) {
    auto chunk = read(fid, out.size(), msize_);
    if (!chunk) return chunk.error();
    if (chunk->empty()) return out;
    out.append(chunk->begin(), chunk->end());
  }
}

Result<void> Client::clunk(uint32_t fid) {
  Fcall req;
  req.type = Tclunk;
  req.fid = fid;
  auto r = rpc(req);
  if (!r) return r.error();
  return {};
}

Result<std::vector<DirEntry>> Client::readdir(uint32_t fid) {
  std::vector<DirEntry> out;
  uint64_t offset = 0;
  for (;;) {
    Fcall req;
    req.type = Treaddir;
    req.fid = fid;
    req.offset = offset;
    req.count = msize_ - kIoHeaderSize;
    auto r = rpc(req);
    if (!r) return r.error();
    size_t before = out.size();
    if (!parse_readdir(r->data, out)) return make_error(EPROTO, "malformed Rreaddir");
    if (out.size() == before) return out;
    offset = out.back().offset;
  }
}

Result<Fcall> Client::getattr(uint32_t fid) {
  Fcall req;
  req.type = Tgetattr;
  req.fid = fid;
  req.request_mask = kGetattrBasic;
  return rpc(req);
}

Result<std::string> Client::cat(const std::string& path) {
  auto fid = walk(root_, path);
  if (!fid) return fid.error();
  auto q = open(*fid, O_RDONLY);
  if (!q) {
    (void)clunk(*fid);
    return q.error();
  }
  auto s = read_all(*fid);
  (void)clunk(*fid);
  return s;
}

Result<std::vector<DirEntry>> Client::ls(const std::string& path) {
  auto fid = walk(root_, path);
  if (!fid) return fid.error();
  auto q = open(*fid, O_RDONLY | O_DIRECTORY);
  if (!q) {
    (void)clunk(*fid);
    return q.error();
  }
  auto entries = readdir(*fid);
  (void)clunk(*fid);
  return entries;
}

Result<std::string> Client::ctl(const std::string& path, const std::string& text) {
  auto fid = walk(root_, path);
  if (!fid) return fid.error();
  auto q = open(*fid, O_RDWR | O_TRUNC);
  if (!q) {
    (void)clunk(*fid);
    return q.error();
  }
  auto w = write(*fid, 0, as_bytes(text));
  auto result = read_all(*fid);
  // Read-write state files apply their content at the latest on clunk.
  auto c = clunk(*fid);
  if (w && !c) return c.error();
  if (!w) {
    std::string msg = w.error().message;
    if (result && !result->empty()) {
      msg = *result;
      while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    }
    return make_error(w.error().code, msg);
  }
  return result;
}

Result<void> Client::mkdir(const std::string& path) {
  auto parts = split_path(path);
  if (parts.empty()) return make_error(EEXIST, "cannot make the root");
  std::string name = parts.back();
  parts.pop_back();
  std::string parent;
  for (auto& p : parts) parent += "/" + p;
  auto fid = walk(root_, parent);
  if (!fid) return fid.error();
  Fcall req;
  req.type = Tmkdir;
  req.fid = *fid;
  req.name = name;
  req.mode = 0755;
  req.gid = uint32_t(getegid());
  auto r = rpc(req);
  (void)clunk(*fid);
  if (!r) return r.error();
  return {};
}

Result<void> Client::remove(const std::string& path) {
  auto fid = walk(root_, path);
  if (!fid) return fid.error();
  Fcall req;
  req.type = Tremove;
  req.fid = *fid;
  auto r = rpc(req);  // the fid is clunked by Tremove either way
  if (!r) return r.error();
  return {};
}

Result<Fcall> Client::stat(const std::string& path) {
  auto fid = walk(root_, path);
  if (!fid) return fid.error();
  auto r = getattr(*fid);
  (void)clunk(*fid);
  return r;
}

Result<void> Client::tail(const std::string& path, const std::function<bool(Bytes)>& sink) {
  auto fid = walk(root_, path);
  if (!fid) return fid.error();
  auto q = open(*fid, O_RDONLY);
  if (!q) {
    (void)clunk(*fid);
    return q.error();
  }
  uint64_t off = 0;
  for (;;) {
    auto chunk = read(*fid, off, msize_);
    if (!chunk) {
      (void)clunk(*fid);
      return chunk.error();
    }
    if (chunk->empty()) break;
    off += chunk->size();
    if (!sink(*chunk)) break;
  }
  (void)clunk(*fid);
  return {};
}

}  // namespace berth::p9
