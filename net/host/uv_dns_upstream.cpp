// Theory of operation: DNS upstream queries on libuv.
//
// Each query is a heap Query holding one libuv handle (uv_udp_t or
// uv_tcp_t), its requests and buffers, and a slot in a table addressed by
// DnsQueryHandle (index + generation). cancel() marks the Query closed,
// frees its slot at once and uv_close()s the handle; libuv then calls any
// pending request callbacks with UV_ECANCELED (ignored: the Query is
// closed) and finally the close callback, which deletes the Query. So every
// callback can trust its Query pointer, and checks `closed` before
// reporting anything.
//
// UDP datagrams are read into one shared 64 KiB buffer: libuv hands each
// datagram to on_udp_recv before it reads the next. TCP bytes are read into
// the same buffer and appended to the query's own, up to the length the
// 2-byte prefix announced (at most 65535), then reported once.
#include "net/host/uv_dns_upstream.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstring>

namespace berth::net {

namespace {

sockaddr_storage to_sockaddr(const DnsServerAddr& a) {
  sockaddr_storage ss{};
  if (a.v6) {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(a.port);
    std::memcpy(&s6->sin6_addr, a.addr6.b.data(), 16);
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(a.port);
    s4->sin_addr.s_addr = htonl(a.addr4.v);
  }
  return ss;
}

std::optional<DnsServerAddr> from_sockaddr(const sockaddr* sa) {
  if (!sa) return std::nullopt;
  DnsServerAddr a;
  if (sa->sa_family == AF_INET) {
    const auto* s4 = reinterpret_cast<const sockaddr_in*>(sa);
    a.addr4 = wire::Ipv4Addr(ntohl(s4->sin_addr.s_addr));
    a.port = ntohs(s4->sin_port);
    return a;
  }
  if (sa->sa_family == AF_INET6) {
    const auto* s6 = reinterpret_cast<const sockaddr_in6*>(sa);
    a.v6 = true;
    a.addr6 = wire::Ipv6Addr::from_bytes(reinterpret_cast<const uint8_t*>(&s6->sin6_addr));
    a.port = ntohs(s6->sin6_port);
    return a;
  }
  return std::nullopt;
}

Error uv_error(int rc, std::string_view what, const DnsServerAddr& server) {
  return make_error(-rc, fmt::format("{} {}: {}", what, server.to_string(), uv_strerror(rc)));
}

}  // namespace

struct UvDnsUpstream::Query {
  UvDnsUpstream* host = nullptr;
  uint32_t index = 0;
  uint64_t cookie = 0;
  DnsServerAddr server;
  bool tcp = false;
  bool closed = false;  // cancelled: report nothing more
  bool done = false;    // TCP: the one event was reported
  uv_udp_t udp{};
  uv_tcp_t stream{};
  uv_connect_t connect_req{};
  uv_write_t write_req{};
  std::vector<uint8_t> out;  // TCP: the length-prefixed query
  std::vector<uint8_t> in;   // TCP: the reply so far

  uv_handle_t* handle() {
    return tcp ? reinterpret_cast<uv_handle_t*>(&stream) : reinterpret_cast<uv_handle_t*>(&udp);
  }
};

UvDnsUpstream::UvDnsUpstream(uv_loop_t* loop, const MonoClock& clock, Options opts)
    : loop_(loop), clock_(clock), opts_(opts), rx_buf_(65536), timer_(new uv_timer_t) {
  uv_timer_init(loop_, timer_);
  timer_->data = this;
}

UvDnsUpstream::~UvDnsUpstream() {
  for (uint32_t i = 0; i < slots_.size(); i++)
    if (slots_[i].q) cancel(DnsQueryHandle{i, slots_[i].gen});
  uv_timer_stop(timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
}

void UvDnsUpstream::close_query(Query* q) {
  uv_close(q->handle(), [](uv_handle_t* h) { delete static_cast<Query*>(h->data); });
}

Result<DnsQueryHandle> UvDnsUpstream::add(Query* q) {
  uint32_t i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = uint32_t(slots_.size());
    slots_.emplace_back();
  }
  Slot& s = slots_[i];
  s.gen++;
  s.q = q;
  q->index = i;
  open_++;
  return DnsQueryHandle{i, s.gen};
}

Result<DnsQueryHandle> UvDnsUpstream::udp_query(const DnsServerAddr& server, Bytes query, uint64_t cookie) {
  if (open_ >= opts_.max_queries) return make_error(EMFILE, "DNS upstream query limit reached");
  auto* q = new Query;
  q->host = this;
  q->cookie = cookie;
  q->server = server;
  int rc = uv_udp_init(loop_, &q->udp);
  if (rc != 0) {
    delete q;
    return uv_error(rc, "udp socket for", server);
  }
  q->udp.data = q;
  sockaddr_storage sa = to_sockaddr(server);
  rc = uv_udp_connect(&q->udp, reinterpret_cast<const sockaddr*>(&sa));
  if (rc == 0) rc = uv_udp_recv_start(&q->udp, &UvDnsUpstream::on_alloc, &UvDnsUpstream::on_udp_recv);
  if (rc == 0) {
    uv_buf_t buf = uv_buf_init(const_cast<char*>(reinterpret_cast<const char*>(query.data())), unsigned(query.size()));
    int sent = uv_udp_try_send(&q->udp, &buf, 1, nullptr);
    rc = sent < 0 ? sent : 0;
  }
  if (rc != 0) {
    q->closed = true;
    close_query(q);
    return uv_error(rc, "udp query to", server);
  }
  return add(q);
}

Result<DnsQueryHandle> UvDnsUpstream::tcp_query(const DnsServerAddr& server, Bytes query, uint64_t cookie) {
  if (open_ >= opts_.max_queries) return make_error(EMFILE, "DNS upstream query limit reached");
  if (query.size() > 0xffff) return make_error(EMSGSIZE, "DNS query too large");
  auto* q = new Query;
  q->host = this;
  q->cookie = cookie;
  q->server = server;
  q->tcp = true;
  q->out.resize(2 + query.size());
  store_be16(q->out.data(), uint16_t(query.size()));
  std::memcpy(q->out.data() + 2, query.data(), query.size());
  int rc = uv_tcp_init(loop_, &q->stream);
  if (rc != 0) {
    delete q;
    return uv_error(rc, "tcp socket for", server);
  }
  q->stream.data = q;
  q->connect_req.data = q;
  q->write_req.data = q;
  (void)uv_tcp_nodelay(&q->stream, 1);
  sockaddr_storage sa = to_sockaddr(server);
  rc = uv_tcp_connect(&q->connect_req, &q->stream, reinterpret_cast<const sockaddr*>(&sa),
                      &UvDnsUpstream::on_tcp_connect);
  if (rc != 0) {
    q->closed = true;
    close_query(q);
    return uv_error(rc, "tcp connect to", server);
  }
  return add(q);
}

void UvDnsUpstream::cancel(DnsQueryHandle h) {
  if (!h.valid() || h.index >= slots_.size()) return;
  Slot& s = slots_[h.index];
  if (!s.q || s.gen != h.gen) return;
  Query* q = s.q;
  s.q = nullptr;
  free_.push_back(h.index);
  open_--;
  q->closed = true;
  close_query(q);
}

void UvDnsUpstream::set_timer(std::optional<Instant> at) {
  if (!at) {
    uv_timer_stop(timer_);
    return;
  }
  Instant now = clock_.now();
  uint64_t ms = *at <= now ? 0 : uint64_t(std::chrono::ceil<std::chrono::milliseconds>(*at - now).count());
  uv_timer_start(timer_, &UvDnsUpstream::on_timer_cb, ms, 0);
}

void UvDnsUpstream::on_timer_cb(uv_timer_t* t) {
  auto* self = static_cast<UvDnsUpstream*>(t->data);
  if (self->sink_) self->sink_->on_timer(self->clock_.now());
}

void UvDnsUpstream::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* q = static_cast<Query*>(h->data);
  *buf = uv_buf_init(reinterpret_cast<char*>(q->host->rx_buf_.data()), unsigned(q->host->rx_buf_.size()));
}

void UvDnsUpstream::on_udp_recv(uv_udp_t* h, ssize_t nread, const uv_buf_t* buf, const sockaddr* addr, unsigned) {
  auto* q = static_cast<Query*>(h->data);
  UvDnsUpstream* self = q->host;
  if (q->closed || !self->sink_ || nread == 0) return;  // 0: nothing more to read now
  if (nread < 0) {
    self->sink_->on_udp_error(q->cookie, int(-nread), self->clock_.now());
    return;
  }
  DnsServerAddr from = from_sockaddr(addr).value_or(q->server);
  self->sink_->on_udp_datagram(q->cookie, from, Bytes(reinterpret_cast<const uint8_t*>(buf->base), size_t(nread)),
                               self->clock_.now());
}

void UvDnsUpstream::on_tcp_connect(uv_connect_t* req, int status) {
  auto* q = static_cast<Query*>(req->data);
  if (q->closed) return;
  if (status < 0) {
    q->host->tcp_done(q, -status, {});
    return;
  }
  uv_buf_t buf = uv_buf_init(reinterpret_cast<char*>(q->out.data()), unsigned(q->out.size()));
  auto* s = reinterpret_cast<uv_stream_t*>(&q->stream);
  int rc = uv_write(&q->write_req, s, &buf, 1, &UvDnsUpstream::on_tcp_write);
  if (rc == 0) rc = uv_read_start(s, &UvDnsUpstream::on_alloc, &UvDnsUpstream::on_tcp_read);
  if (rc != 0) q->host->tcp_done(q, -rc, {});
}

void UvDnsUpstream::on_tcp_write(uv_write_t* req, int status) {
  auto* q = static_cast<Query*>(req->data);
  if (q->closed || status >= 0) return;
  q->host->tcp_done(q, -status, {});
}

void UvDnsUpstream::on_tcp_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* q = static_cast<Query*>(s->data);
  if (q->closed || q->done) return;
  if (nread == UV_EOF) {
    q->host->tcp_done(q, EPROTO, {});  // ended before a whole message
    return;
  }
  if (nread < 0) {
    q->host->tcp_done(q, int(-nread), {});
    return;
  }
  const auto* data = reinterpret_cast<const uint8_t*>(buf->base);
  size_t n = size_t(nread);
  // Take only up to the end of the one reply; anything after it is ignored.
  size_t want = q->in.size() < 2 ? 2 - q->in.size() : 2 + load_be16(q->in.data()) - q->in.size();
  while (n > 0 && want > 0) {
    size_t take = std::min(n, want);
    q->in.insert(q->in.end(), data, data + take);
    data += take;
    n -= take;
    want = q->in.size() < 2 ? 2 - q->in.size() : 2 + load_be16(q->in.data()) - q->in.size();
  }
  if (want == 0) q->host->tcp_done(q, 0, Bytes(q->in).subspan(2));
}

void UvDnsUpstream::tcp_done(Query* q, int err, Bytes reply) {
  q->done = true;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&q->stream));
  if (!sink_) return;
  if (err) sink_->on_tcp_error(q->cookie, err, clock_.now());
  else sink_->on_tcp_reply(q->cookie, reply, clock_.now());
}

}  // namespace berth::net
