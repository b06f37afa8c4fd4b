// Filters through libpcap: pcap_open_dead gives a handle with no device for
// pcap_compile (Ethernet, the rule's snaplen); the program outlives it.
#include "pcap-ring/filter.h"

#include <netdb.h>

#include <algorithm>
#include <array>
#include <utility>

namespace berth::pcap {

namespace {

// Words of libpcap's lexer (scanner.l of libpcap 1.10), by their role in
// the grammar's qualifiers.
constexpr std::array kAddrQualifiers = {"host", "net", "port", "portrange", "proto", "protochain", "gateway"};
constexpr std::array kHeadWords = {  // direction and protocol qualifiers: they start a new term's head
    "src", "dst", "ra", "ta", "address1", "addr1", "address2", "addr2", "address3", "addr3", "address4", "addr4",
    "link", "ether", "ppp", "slip", "fddi", "tr", "wlan", "arp", "rarp", "ip", "sctp", "tcp", "udp", "icmp", "igmp",
    "igrp", "pim", "vrrp", "carp", "radio", "ip6", "icmp6", "ah", "esp", "atalk", "aarp", "decnet", "lat", "sca",
    "moprc", "mopdl", "iso", "esis", "es-is", "isis", "is-is", "l1", "l2", "iih", "lsp", "snp", "csnp", "psnp",
    "clnp", "stp", "ipx", "netbeui"};
constexpr std::array kConnectives = {"and", "or", "not"};
constexpr std::array kOtherWords = {  // primitives and constants: no name follows them as a host
    "mask", "type", "subtype", "direction", "dir", "less", "greater", "byte", "broadcast", "multicast", "len",
    "length", "inbound", "outbound", "ifindex", "vlan", "mpls", "pppoed", "pppoes", "geneve", "lane", "llc", "metac",
    "bcc", "oam", "oamf4", "oamf4ec", "oamf4sc", "sc", "ilmic", "vpi", "vci", "connectmsg", "metaconnect", "on",
    "ifname", "rset", "ruleset", "rnr", "rulenum", "srnr", "subrulenum", "reason", "action", "fisu", "lssu", "lsu",
    "msu", "hfisu", "hlssu", "hmsu", "sio", "opc", "dpc", "sls", "hsio", "hopc", "hdpc", "hsls", "icmptype",
    "icmpcode", "icmp-echoreply", "icmp-unreach", "icmp-sourcequench", "icmp-redirect", "icmp-echo",
    "icmp-routeradvert", "icmp-routersolicit", "icmp-timxceed", "icmp-paramprob", "icmp-tstamp",
    "icmp-tstampreply", "icmp-ireq", "icmp-ireqreply", "icmp-maskreq", "icmp-maskreply", "icmp6type", "icmp6code",
    "tcpflags", "tcp-fin", "tcp-syn", "tcp-rst", "tcp-push", "tcp-ack", "tcp-urg", "tcp-ece", "tcp-cwr"};
// ether proto / llc names libpcap knows without any lookup (nametoaddr.c).
constexpr std::array kBuiltinProtos = {"aarp", "arp", "atalk", "decnet", "ip", "ip6", "lat", "loopback", "mopdl",
                                       "moprc", "rarp", "sca", "iso", "stp", "ipx", "netbeui"};
constexpr std::array kLlcNames = {"i", "s", "u", "rr", "rnr", "rej", "ui", "ua", "disc", "dm", "sabme", "test",
                                  "xid", "frmr"};

template <size_t N>
bool in(const std::array<const char*, N>& set, std::string_view w) {
  return std::any_of(set.begin(), set.end(), [&](const char* k) { return w == k; });
}
bool hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
bool digit(char c) { return c >= '0' && c <= '9'; }
bool all_of(std::string_view w, bool (*f)(char)) { return !w.empty() && std::all_of(w.begin(), w.end(), f); }

// Numbers (decimal, octal, 0x hex), dotted quads and their prefixes, and
// MAC addresses written with '-' or '.': nothing to look up.
bool numeric(std::string_view w) {
  if (all_of(w, digit)) return true;
  if (w.size() > 2 && w[0] == '0' && (w[1] == 'x' || w[1] == 'X') && all_of(w.substr(2), hex)) return true;
  for (char sep : {'.', '-'}) {
    size_t parts = 1;
    bool ok = true, dec = true;
    std::string_view rest = w;
    while (ok) {
      size_t at = rest.find(sep);
      std::string_view part = rest.substr(0, at);
      ok = all_of(part, hex) && part.size() <= 4;
      dec = dec && all_of(part, digit);
      if (at == std::string_view::npos) break;
      rest.remove_prefix(at + 1);
      parts++;
    }
    if (!ok || parts < 2) continue;
    if (sep == '.' && dec && parts <= 4) return true;  // 10.1, 10.1.2.3
    if (parts == 6 || (sep == '.' && parts == 3)) return true;  // MAC forms
  }
  return false;
}

bool known_service(std::string_view w) {
  std::string n(w);
  for (const char* proto : {"tcp", "udp", "sctp"})
    if (getservbyname(n.c_str(), proto)) return true;
  return false;
}
bool known_protocol(std::string_view w) { return in(kBuiltinProtos, w) || getprotobyname(std::string(w).c_str()); }
bool port_range(std::string_view w) {
  size_t dash = w.find('-');
  return dash != std::string_view::npos && all_of(w.substr(0, dash), digit) && all_of(w.substr(dash + 1), digit);
}

}  // namespace

Result<void> Filter::check_names(std::string_view expr) {
  enum class Q { Host, Port, Proto, Other };
  Q prev = Q::Host;  // the qualifier the last primary got (a bare name after and/or inherits it)
  bool head = false;  // inside a head of qualifier words
  Q head_q = Q::Host;
  std::string_view last_word;
  auto end_term = [&] {
    head = false;
    head_q = Q::Host;
  };
  size_t i = 0;
  while (i < expr.size()) {
    char c = expr[i];
    bool escaped = false;
    if (c == '\\') {  // "\name": a name even when it is a keyword
      escaped = true;
      i++;
      if (i >= expr.size()) break;
      c = expr[i];
    }
    auto word_char = [](char ch) {
      return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || digit(ch) || ch == '-' || ch == '_' ||
             ch == '.' || ch == ':';
    };
    if (!word_char(c)) {
      if (c == '(') {  // a fresh start: be strict, as for a bare name
        prev = Q::Host;
        end_term();
      } else if (c == '&' || c == '|' || c == '!') {
        end_term();
      } else if (c == '$') {  // $HEX: an ARCnet address
        i++;
        while (i < expr.size() && hex(expr[i])) i++;
        continue;
      }
      i++;
      continue;
    }
    size_t j = i;
    while (j < expr.size() && word_char(expr[j])) j++;
    std::string_view run = expr.substr(i, j - i);
    i = j;
    // Split at ':' (IPv6 and MAC addresses, "ether[12:2]"); trim the
    // characters the lexer cannot start or end a name with.
    const bool address = run.find(':') != std::string_view::npos;  // hex groups are address parts
    while (!run.empty()) {
      size_t colon = run.find(':');
      std::string_view w = run.substr(0, colon);
      run = colon == std::string_view::npos ? std::string_view() : run.substr(colon + 1);
      while (!w.empty() && (w.front() == '-' || w.front() == '_' || w.front() == '.')) w.remove_prefix(1);
      while (!w.empty() && (w.back() == '-' || w.back() == '_')) w.remove_suffix(1);
      if (w.empty()) continue;
      if (!escaped && in(kConnectives, w)) {
        end_term();
      } else if (!escaped && in(kAddrQualifiers, w)) {
        head = true;
        head_q = (w == "port" || w == "portrange") ? Q::Port
                 : (w == "proto" || w == "protochain") ? Q::Proto
                 : (w == "net") ? Q::Other
                                : Q::Host;
      } else if (!escaped && in(kHeadWords, w)) {
        head = true;
      } else if (!escaped && in(kOtherWords, w)) {
        end_term();
        prev = Q::Host;
      } else if (numeric(w) || (address && all_of(w, hex))) {
        prev = head ? head_q : prev;
        end_term();
      } else {
        Q q = head ? head_q : prev;
        bool ok = (q == Q::Port && (known_service(w) || port_range(w))) || (q == Q::Proto && known_protocol(w)) ||
                  (last_word == "llc" && in(kLlcNames, w));
        if (!ok)
          return make_error(EINVAL, "filter '" + std::string(expr) + "': '" + std::string(w) +
                                        "' would be looked up as a name (a host name, by DNS); berth resolves no "
                                        "names in filters: use an address");
        prev = q;
        end_term();
      }
      last_word = w;
    }
  }
  return {};
}

Result<Filter> Filter::compile(std::string_view expression, uint32_t snaplen) {
  if (expression.size() > kMaxExpression)
    return make_error(EINVAL, "filter longer than " + std::to_string(kMaxExpression) + " bytes");
  if (expression.find('\0') != std::string_view::npos) return make_error(EINVAL, "filter contains a NUL byte");
  Filter f;
  f.expr_ = std::string(expression);
  if (expression.find_first_not_of(" \t") == std::string_view::npos) {
    f.expr_.clear();
    return f;  // the empty filter: every frame
  }
  if (auto names = check_names(f.expr_); !names) return names.error();
  pcap_t* dead = pcap_open_dead(DLT_EN10MB, int(snaplen));
  if (!dead) return make_error(ENOMEM, "pcap_open_dead failed");
  bpf_program prog{0, nullptr};
  if (pcap_compile(dead, &prog, f.expr_.c_str(), 1, PCAP_NETMASK_UNKNOWN) != 0) {
    std::string why = pcap_geterr(dead);
    pcap_close(dead);
    return make_error(EINVAL, "bad filter '" + f.expr_ + "': " + why);
  }
  pcap_close(dead);
  f.prog_ = prog;
  return f;
}

Filter::Filter(Filter&& o) noexcept : expr_(std::move(o.expr_)), prog_(o.prog_) { o.prog_ = {0, nullptr}; }

Filter& Filter::operator=(Filter&& o) noexcept {
  if (this != &o) {
    if (prog_.bf_insns) pcap_freecode(&prog_);
    expr_ = std::move(o.expr_);
    prog_ = o.prog_;
    o.prog_ = {0, nullptr};
  }
  return *this;
}

Filter::~Filter() {
  if (prog_.bf_insns) pcap_freecode(&prog_);
}

bool Filter::run(Bytes frame) const {
  pcap_pkthdr h{};
  h.caplen = h.len = uint32_t(frame.size());
  return pcap_offline_filter(&prog_, &h, frame.data()) != 0;
}

}  // namespace berth::pcap
