// 16550A (vmm/uart.h) driven the way Linux's 8250 driver drives it:
// autoconfig's probe (scratch IER, loopback MSR, FIFO detection), startup's
// THRE interrupt test, then interrupt-driven transmit and receive.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "vmm/uart.h"

using namespace berth;
using namespace berth::vmm;

namespace {

struct CountingLine : InterruptLine {
  int count = 0;
  void trigger() override { count++; }
};

struct Port {
  CountingLine irq;
  std::string out;
  Uart uart{irq, [this](uint8_t b) { out.push_back(char(b)); }};
  uint8_t in(unsigned reg) {
    uint8_t v = 0;
    uart.bus_read(reg, std::span<uint8_t>(&v, 1));
    return v;
  }
  void outb(unsigned reg, uint8_t v) { uart.bus_write(reg, Bytes(&v, 1)); }
};

enum : unsigned { RX = 0, TX = 0, IER = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };

}  // namespace

TEST_CASE("uart passes the 8250 driver's autoconfig as a 16550A", "[vmm][uart]") {
  Port p;
  // Scratch test on IER (autoconfig): 0 reads back 0, 0x0F reads back 0x0F.
  p.outb(IER, 0);
  CHECK((p.in(IER) & 0x0f) == 0);
  p.outb(IER, 0x0f);
  CHECK((p.in(IER) & 0x0f) == 0x0f);
  p.outb(IER, 0);
  // Loopback check: MCR = LOOP | OUT2 | RTS → MSR high nibble 0x90.
  uint8_t save_mcr = p.in(MCR);
  p.outb(MCR, 0x10 | 0x0a);
  CHECK((p.in(MSR) & 0xf0) == 0x90);
  p.outb(MCR, save_mcr);
  // Scratch register.
  p.outb(SCR, 0x5a);
  CHECK(p.in(SCR) == 0x5a);
  // LCR 0xBF (EFR access on 16650s), then FIFO detection: IIR bits 7:6 = 11.
  p.outb(LCR, 0xbf);
  p.outb(2, 0);  // EFR on a 16650; FCR here
  p.outb(LCR, 0);
  p.outb(FCR, 0x01);
  CHECK((p.in(IIR) >> 6) == 3);
  // autoconfig_16550a: with DLAB, offset 2 is still IIR (nonzero: no EFR).
  p.outb(LCR, 0x80);
  CHECK(p.in(2) != 0);
  // 16750 check: bit 5 of IIR must stay clear.
  p.outb(LCR, 0);
  p.outb(FCR, 0x01 | 0x20);
  CHECK(((p.in(IIR) >> 5) & 7) == 6);
  // UUE (IER bit 6) does not stick: not an XScale.
  p.outb(IER, 0x40);
  CHECK((p.in(IER) & 0x40) == 0);
  // Divisor latch through DLAB.
  p.outb(LCR, 0x80);
  p.outb(0, 0x01);
  p.outb(1, 0x00);
  CHECK(p.in(0) == 0x01);
  CHECK(p.in(1) == 0x00);
  p.outb(LCR, 0x03);
  // LSR is never 0xff (startup's "LSR safety check") and shows THRE|TEMT.
  CHECK(p.in(LSR) == 0x60);
}

TEST_CASE("uart raises THRE when enabled and re-raises it after each transmit", "[vmm][uart]") {
  Port p;
  p.outb(LCR, 0x03);
  p.outb(MCR, 0x0b);  // DTR | RTS | OUT2
  // Startup test: enabling THRI with an empty THR makes IIR report it.
  p.outb(IER, 0x02);
  CHECK(p.in(LSR) & 0x40);
  uint8_t iir1 = p.in(IIR);
  CHECK((iir1 & 0x0f) == 0x02);
  CHECK(p.irq.count == 1);
  // Reading IIR cleared it; re-enabling re-asserts it (a real 16550 does).
  CHECK((p.in(IIR) & 0x01) == 1);
  p.outb(IER, 0);
  p.outb(IER, 0x02);
  CHECK((p.in(IIR) & 0x0f) == 0x02);
  CHECK(p.irq.count == 2);
  // Transmit: each THR write reaches the sink and the THR empties again.
  for (char c : std::string("ok\n")) p.outb(TX, uint8_t(c));
  CHECK(p.out == "ok\n");
  CHECK((p.in(IIR) & 0x0f) == 0x02);
  CHECK(p.irq.count >= 3);
  // stop_tx: THRI off, nothing pending.
  p.outb(IER, 0);
  CHECK((p.in(IIR) & 0x01) == 1);
}

TEST_CASE("uart receives console input with a data-ready interrupt", "[vmm][uart]") {
  Port p;
  p.outb(FCR, 0x07);
  p.outb(IER, 0x01);  // RDI
  CHECK(p.irq.count == 0);
  const std::string text = "ls\n";
  CHECK(p.uart.input(as_bytes(text)) == 3);
  CHECK(p.irq.count == 1);
  CHECK(p.in(LSR) & 0x01);
  CHECK((p.in(IIR) & 0x0f) == 0x04);
  std::string got;
  while (p.in(LSR) & 0x01) got.push_back(char(p.in(RX)));
  CHECK(got == text);
  CHECK((p.in(IIR) & 0x01) == 1);
  // The receiver is bounded: the excess is counted, not queued.
  std::vector<uint8_t> flood(Uart::kRxLimit + 10, 'x');
  CHECK(p.uart.input(flood) == Uart::kRxLimit);
  CHECK(p.uart.rx_dropped() == 10);
  // FCR clear-RX empties it.
  p.outb(FCR, 0x03);
  CHECK((p.in(LSR) & 0x01) == 0);
}

TEST_CASE("uart loopback returns transmitted bytes to the receiver", "[vmm][uart]") {
  Port p;
  p.outb(MCR, 0x10);
  p.outb(TX, 'A');
  CHECK(p.out.empty());
  CHECK(p.in(LSR) & 0x01);
  CHECK(p.in(RX) == 'A');
}
