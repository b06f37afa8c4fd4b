// Guest links over a unix stream socket that Berth listens on:
//  - QemuLink  ("qemu:PATH"): each frame is a 4-byte big-endian length and the
//    frame. QEMU's `-netdev stream` and passt use this format.
//  - VmnetLink ("vmnet:PATH"): VPNKit/HyperKit's protocol. A handshake (see
//    VmnetLink), then each frame as a 2-byte little-endian length and the frame.
//
// One guest at a time: a connection that arrives while a live guest is
// attached is closed at once and counted in peers_refused (a guest that has
// hung up is replaced even before its EOF is read).
//
// Bad input from the guest:
//  - length 0, or larger than any frame could be (a length the format cannot
//    produce for a real frame: > 69632 for qemu, which is QEMU's own buffer
//    size): framing is lost, the guest is disconnected (disconnects) and the
//    next connection may attach;
//  - length 1..13: the frame is skipped (rx_dropped_runt);
//  - length above max_frame but plausible: skipped (rx_dropped_oversize). The
//    stream stays in step, so the guest stays attached.
#pragma once

#include <optional>

#include "net/link/link_base.h"
#include "net/wire/addr.h"

namespace berth::net {

class StreamLink : public LinkBase {
 public:
  ~StreamLink() override;
  [[nodiscard]] Result<void> start(Receive rx) override;
  void close() override;
  bool has_peer() const override { return conn_.is_open() && attached_; }
  const std::string& path() const { return path_; }

 protected:
  StreamLink(uv_loop_t* loop, std::string path, size_t max_frame, size_t header_len, size_t max_plausible);

  // Framing: the length in a header_len-byte header.
  virtual size_t decode_length(const uint8_t* header) const = 0;
  // A new connection was accepted. Links without a handshake call attach().
  virtual void on_connected() = 0;
  // Handshake bytes (called until attach()); returns how many were used, 0
  // for "need more". May attach(), drop_peer() or refuse_peer().
  virtual size_t handshake(Bytes in) {
    (void)in;
    return 0;
  }
  virtual void on_dropped() {}

  void attach() { attached_ = true; }
  // Disconnects the guest now (counted in disconnects).
  void drop_peer(const std::string& why);
  // Stops reading; disconnects once the queued replies are written.
  void refuse_peer(const std::string& why);

  void flush() override;
  std::string path_;
  bool attached_ = false;

 private:
  static void on_listen_event(uv_poll_t* h, int status, int events);
  static void on_conn_event(uv_poll_t* h, int status, int events);
  void accept_all();
  void on_readable();
  void parse();
  bool conn_hung_up() const;
  void update_events();

  const size_t max_plausible_;
  PolledFd listen_, conn_;
  OneShotTimer accept_retry_;
  uint64_t ino_ = 0;
  std::vector<uint8_t> rbuf_;
  size_t rhead_ = 0, rtail_ = 0;  // unparsed bytes are rbuf_[rhead_, rtail_)
  size_t skip_ = 0;               // bytes of a dropped frame still to skip
  size_t head_off_ = 0;           // bytes of txq_.front() already written
  bool refusing_ = false;
  std::string refuse_reason_;
};

class QemuLink final : public StreamLink {
 public:
  static constexpr size_t kMaxPlausible = 69632;  // QEMU's NET_BUFSIZE (4096 + 65536)
  QemuLink(uv_loop_t* loop, std::string path, size_t max_frame);
  ~QemuLink() override;
  std::string type() const override { return "qemu"; }
  std::string peer() const override;

 private:
  void write_header(uint8_t* out, size_t frame_len) const override;
  size_t decode_length(const uint8_t* header) const override;
  void on_connected() override { attach(); }
};

// The vmnet handshake, as VPNKit's server (src/hostnet/vmnet.ml) and
// HyperKit's client (src/lib/pci_virtio_net_vpnkit.c) speak it:
//  1. client -> server, 49 bytes: "VMN3T", version u32 LE (22), 40 bytes of
//     commit id text. The server answers with its own 49-byte init. On another
//     version it sends its init and disconnects; on another magic, Berth
//     disconnects without answering.
//  2. client -> server, 41 bytes: command u8, 36 bytes of UUID text, 4 bytes.
//     1 = ethernet (the 4 bytes unused), 8 = ethernet with a preferred IPv4
//     address (u32 LE of the address as a host-order integer). A UUID of 36
//     NUL bytes stands for the nil UUID.
//  3. server -> client, 258 bytes: u8 1 (vif), mtu u16 LE, max_packet_size
//     u16 LE (mtu + 50, as VPNKit), the guest's MAC (6 bytes), zeros. Or on an
//     unknown command or a malformed UUID: u8 2 (disconnect), u8 length, the
//     reason, zeros; then the server disconnects.
// The MAC is derived from the UUID, so a guest keeps its MAC (and DHCP lease)
// across reconnects and restarts.
class VmnetLink final : public StreamLink {
 public:
  static constexpr size_t kInitLen = 49, kCommandLen = 41, kResponseLen = 258;
  static constexpr uint32_t kVersion = 22;

  VmnetLink(uv_loop_t* loop, std::string path, size_t max_frame);
  ~VmnetLink() override;
  std::string type() const override { return "vmnet"; }
  std::string peer() const override;

  // The attached (or last attached) guest's UUID text, MAC and preferred IPv4.
  const std::string& guest_uuid() const { return uuid_; }
  wire::MacAddr guest_mac() const { return mac_; }
  std::optional<wire::Ipv4Addr> preferred_ipv4() const { return preferred_ipv4_; }

 private:
  enum class Stage { Init, Command, Done };
  void write_header(uint8_t* out, size_t frame_len) const override;
  size_t decode_length(const uint8_t* header) const override;
  void on_connected() override { stage_ = Stage::Init; }
  size_t handshake(Bytes in) override;
  void send_disconnect(const std::string& reason);

  Stage stage_ = Stage::Init;
  std::string uuid_;
  wire::MacAddr mac_;
  std::optional<wire::Ipv4Addr> preferred_ipv4_;
};

// A stable, locally administered unicast MAC for a vmnet UUID (its text,
// compared case-insensitively).
wire::MacAddr vmnet_mac_for_uuid(std::string_view uuid);
// 8-4-4-4-12 hex digits with dashes.
bool is_uuid_text(std::string_view s);

}  // namespace berth::net
