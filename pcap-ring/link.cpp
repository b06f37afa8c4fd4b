#include "pcap-ring/link.h"

namespace berth::pcap {

namespace {

class CaptureLink final : public net::FrameLink {
 public:
  CaptureLink(std::unique_ptr<net::FrameLink> owned, net::FrameLink* inner, CaptureSet& set, uint32_t link_no)
      : owned_(std::move(owned)), inner_(inner), set_(set), link_no_(link_no) {
    set_.register_link(link_no_, inner_->type() + " " + inner_->peer());
  }

  std::string type() const override { return inner_->type(); }
  std::string peer() const override { return inner_->peer(); }
  Result<void> start(Receive rx) override {
    rx_ = std::move(rx);
    return inner_->start([this](Bytes frame) {
      set_.capture(link_no_, Direction::FromGuest, frame);
      rx_(frame);
    });
  }
  bool send(Bytes frame) override {
    bool sent = inner_->send(frame);
    if (sent) set_.capture(link_no_, Direction::ToGuest, frame);
    return sent;
  }
  void close() override { inner_->close(); }
  size_t max_frame() const override { return inner_->max_frame(); }
  bool writable() const override { return inner_->writable(); }
  const net::LinkStats& stats() const override { return inner_->stats(); }
  void set_on_writable(std::function<void()> cb) override { inner_->set_on_writable(std::move(cb)); }

 private:
  std::unique_ptr<net::FrameLink> owned_;
  net::FrameLink* inner_;
  CaptureSet& set_;
  uint32_t link_no_;
  Receive rx_;
};

}  // namespace

std::unique_ptr<net::FrameLink> wrap_link(std::unique_ptr<net::FrameLink> inner, CaptureSet& set, uint32_t link_no) {
  net::FrameLink* raw = inner.get();
  return std::make_unique<CaptureLink>(std::move(inner), raw, set, link_no);
}

std::unique_ptr<net::FrameLink> wrap_link(net::FrameLink* inner, CaptureSet& set, uint32_t link_no) {
  return std::make_unique<CaptureLink>(nullptr, inner, set, link_no);
}

}  // namespace berth::pcap
