// 16550A emulation (see uart.h). Register semantics follow the National
// Semiconductor PC16550D data sheet; the interrupt priorities (IIR) are
// receiver line status (never raised here) > received data available >
// transmitter holding register empty > modem status (never raised here).
#include "vmm/uart.h"

namespace berth::vmm {

namespace {
constexpr uint8_t kIerRdi = 0x01, kIerThri = 0x02, kIerMask = 0x0f;
constexpr uint8_t kIirNoInt = 0x01, kIirThri = 0x02, kIirRdi = 0x04, kIirFifo = 0xc0;
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kMcrLoop = 0x10, kMcrMask = 0x1f;
constexpr uint8_t kLsrDr = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;
}  // namespace

void Uart::bus_read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mu_);
  bool was = irq_pending_locked();
  // Wider accesses read consecutive registers (the driver only does bytes).
  for (size_t i = 0; i < data.size(); i++) data[i] = offset + i < 8 ? read_reg(unsigned(offset + i)) : 0xff;
  update_irq_locked(was);
}

void Uart::bus_write(uint64_t offset, Bytes data) {
  std::lock_guard lock(mu_);
  bool was = irq_pending_locked();
  for (size_t i = 0; i < data.size(); i++)
    if (offset + i < 8) write_reg(unsigned(offset + i), data[i]);
  update_irq_locked(was);
}

size_t Uart::input(Bytes data) {
  std::lock_guard lock(mu_);
  bool was = irq_pending_locked();
  size_t n = 0;
  for (uint8_t b : data) {
    if (rx_.size() >= kRxLimit) {
      rx_dropped_++;
      continue;
    }
    rx_.push_back(b);
    n++;
  }
  update_irq_locked(was);
  return n;
}

uint64_t Uart::rx_dropped() const {
  std::lock_guard lock(mu_);
  return rx_dropped_;
}

uint8_t Uart::iir_locked() const {
  uint8_t fifo = fifo_enabled_ ? kIirFifo : 0;
  if ((ier_ & kIerRdi) && !rx_.empty()) return fifo | kIirRdi;
  if ((ier_ & kIerThri) && thri_pending_) return fifo | kIirThri;
  return fifo | kIirNoInt;
}

bool Uart::irq_pending_locked() const { return !(iir_locked() & kIirNoInt); }

void Uart::update_irq_locked(bool was_pending) {
  // OUT2 is not treated as a gate (as in QEMU): an interrupt is never lost
  // to a driver that enables it late.
  bool now = irq_pending_locked();
  if (now && !was_pending) irq_.trigger();
}

uint8_t Uart::read_reg(unsigned reg) {
  switch (reg) {
    case 0:
      if (lcr_ & kLcrDlab) return dll_;
      if (rx_.empty()) return 0;
      {
        uint8_t b = rx_.front();
        rx_.pop_front();
        return b;
      }
    case 1:
      return (lcr_ & kLcrDlab) ? dlm_ : ier_;
    case 2: {
      uint8_t iir = iir_locked();
      // Reading IIR while it reports THRE clears that interrupt (§8.6.3).
      if ((iir & 0x0f) == kIirThri) thri_pending_ = false;
      return iir;
    }
    case 3:
      return lcr_;
    case 4:
      return mcr_;
    case 5:
      return uint8_t(kLsrThre | kLsrTemt | (rx_.empty() ? 0 : kLsrDr));
    case 6:
      if (mcr_ & kMcrLoop) {
        // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
        uint8_t m = 0;
        if (mcr_ & 0x01) m |= kMsrDsr;
        if (mcr_ & 0x02) m |= kMsrCts;
        if (mcr_ & 0x04) m |= kMsrRi;
        if (mcr_ & 0x08) m |= kMsrDcd;
        return m;
      }
      return kMsrDcd | kMsrDsr | kMsrCts;  // a connected terminal
    case 7:
      return scr_;
  }
  return 0xff;
}

void Uart::write_reg(unsigned reg, uint8_t v) {
  switch (reg) {
    case 0:
      if (lcr_ & kLcrDlab) {
        dll_ = v;
        return;
      }
      if (mcr_ & kMcrLoop) {
        if (rx_.size() < kRxLimit) rx_.push_back(v);
      } else if (sink_) {
        sink_(v);
      }
      // Sent at once: the THR is empty again.
      thri_pending_ = true;
      return;
    case 1:
      if (lcr_ & kLcrDlab) {
        dlm_ = v;
        return;
      }
      // Enabling THRE interrupts while the THR is empty raises one
      // (Linux's startup test relies on it).
      if ((v & kIerThri) && !(ier_ & kIerThri)) thri_pending_ = true;
      ier_ = v & kIerMask;
      return;
    case 2:
      if ((v & kFcrEnable) != fifo_enabled_) rx_.clear();  // toggling the FIFO resets it
      fifo_enabled_ = v & kFcrEnable;
      if (v & kFcrClearRx) rx_.clear();
      return;
    case 3:
      lcr_ = v;
      return;
    case 4:
      mcr_ = v & kMcrMask;
      return;
    case 7:
      scr_ = v;
      return;
    default:
      return;  // LSR, MSR: read-only
  }
}

}  // namespace berth::vmm
