// A 16550A UART (the guest's ttyS0 at 0x3f8, IRQ 4), enough for Linux's
// 8250 driver: its probe (scratch IER, LCR/DLAB, FIFO detection as a 16550A,
// loopback modem-line check) and interrupt-driven transmit and receive.
//
// Registers (offset from the base; DLAB is LCR bit 7):
//   0 RBR (read) / THR (write) / DLL (DLAB)   4 MCR
//   1 IER / DLM (DLAB)                         5 LSR (THRE|TEMT always; DR)
//   2 IIR (read, FIFO bits) / FCR (write)      6 MSR
//   3 LCR                                      7 SCR
// Transmission is instant: a THR write goes to the sink and the THR is empty
// again, so a THRE interrupt follows when enabled. The interrupt is raised
// on the rising edge of "some enabled interrupt is pending" (the ISA line is
// edge-triggered; the 8250 handler loops on IIR until nothing is pending).
// In loopback (MCR bit 4) transmitted bytes come back to the receiver and
// MSR mirrors MCR, as the driver's probe checks.
//
// Threading: bus_read/bus_write on vCPU threads and input() on any thread,
// all under one mutex. The sink is called under it, on a vCPU thread: it
// must be cheap and must not call back into the UART.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

#include "vmm/bus.h"

namespace berth::vmm {

class Uart final : public BusDevice {
 public:
  static constexpr uint16_t kCom1Base = 0x3f8;
  static constexpr uint8_t kCom1Irq = 4;
  static constexpr size_t kRxLimit = 4096;

  using Sink = std::function<void(uint8_t)>;
  Uart(InterruptLine& irq, Sink sink) : irq_(irq), sink_(std::move(sink)) {}

  void bus_read(uint64_t offset, std::span<uint8_t> data) override;
  void bus_write(uint64_t offset, Bytes data) override;

  // Bytes for the receiver; beyond kRxLimit queued they are dropped and
  // counted. Returns how many were accepted.
  size_t input(Bytes data);
  uint64_t rx_dropped() const;

 private:
  uint8_t read_reg(unsigned reg);
  void write_reg(unsigned reg, uint8_t v);
  uint8_t iir_locked() const;
  bool irq_pending_locked() const;
  void update_irq_locked(bool was_pending);

  InterruptLine& irq_;
  Sink sink_;
  mutable std::mutex mu_;
  std::deque<uint8_t> rx_;
  uint64_t rx_dropped_ = 0;
  uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, dll_ = 0x0c, dlm_ = 0;
  bool fifo_enabled_ = false;
  bool thri_pending_ = false;  // THR empty interrupt, cleared by an IIR read reporting it or a THR write
};

}  // namespace berth::vmm
