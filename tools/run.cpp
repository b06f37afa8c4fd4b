// `berth run`: `berth serve` plus a KVM guest whose devices are in process
// (DESIGN.md; seed §3.1). The guest's virtio-net is a link of the
// translator, each --disk is also a virtio-blk disk on its I/O thread,
// virtio-9p (mount tag "berth") serves the same control tree, and /vm shows
// and steers the VM. The process exits when the guest does:
//   0  the guest powered off (or was stopped through /vm/ctl or a signal)
//   1  berth could not start (bad options, unusable KVM, a kernel it cannot boot)
//   2  usage error
//   3  the guest rebooted (berth run does not restart it)
//   4  the guest crashed (triple fault, or KVM could not run it)
#include <spdlog/spdlog.h>
#include <malloc.h>
#include <sys/random.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <functional>
#include <string>

#include "net/config.h"
#include "net/link/frame_link.h"
#include "server9p/base.h"
#include "storage/disk.h"
#include "tools/serve.h"
#include "vmm/virtio_9p.h"
#include "vmm/virtio_blk.h"
#include "vmm/virtio_net.h"
#include "vmm/virtio_rng.h"
#include "vmm/vm.h"
#include "vmm/vm_tree.h"

using namespace berth;

namespace {

constexpr const char* kBaseCmdline = "console=ttyS0 reboot=k panic=-1";

// "512M", "1G", "2048K", or bytes.
Result<uint64_t> parse_size(std::string_view s) {
  if (s.empty()) return make_error(EINVAL, "empty size");
  uint64_t mult = 1;
  char last = s.back();
  if (last == 'K' || last == 'k') mult = 1ull << 10;
  if (last == 'M' || last == 'm') mult = 1ull << 20;
  if (last == 'G' || last == 'g') mult = 1ull << 30;
  if (mult != 1) s.remove_suffix(1);
  if (s.empty() || s.size() > 12) return make_error(EINVAL, "bad size");
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return make_error(EINVAL, "bad size");
    v = v * 10 + uint64_t(c - '0');
  }
  return v * mult;
}

class RunExtension final : public ServeExtension {
 public:
  ~RunExtension() override {
    // The VM first: its transports refer to the devices below.
    vm_.reset();
  }

  const char* command() const override { return "run"; }

  void usage(FILE* to) const override {
    std::fprintf(to,
                 "usage: berth run --kernel BZIMAGE [--initrd FILE] [--cmdline TEXT] [--mem 512M] [--cpus N]\n"
                 "                 [--console stdout|none] [serve options]\n\n"
                 "Boot a Linux guest under KVM with its devices in process: virtio-net on the translator,\n"
                 "virtio-blk for every --disk, virtio-9p (mount tag 'berth') serving the control tree,\n"
                 "virtio-rng and a serial console (/vm/console). The guest sees its devices as virtio-mmio\n"
                 "in ACPI, so its kernel needs virtio_mmio (a module in Debian's kernels).\n\n"
                 "  --kernel FILE    a bzImage with a 64-bit entry point (Linux boot protocol 2.12+)\n"
                 "  --initrd FILE    an initramfs\n"
                 "  --cmdline TEXT   appended to '%s'\n"
                 "  --mem SIZE       guest memory (default 512M)\n"
                 "  --cpus N         vCPUs, 1..32 (default 1)\n"
                 "  --console stdout|none\n"
                 "                   also copy the console to standard output (default none); on a\n"
                 "                   terminal, keystrokes then go to the guest (Ctrl-] detaches)\n"
                 "Exit status: 0 the guest powered off or was stopped, 1 berth could not start,\n"
                 "3 the guest rebooted, 4 the guest crashed.\n\n",
                 kBaseCmdline);
  }

  int parse_option(int argc, char** argv, int& i) override {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "berth run: %s needs a value\n", a.c_str());
        return nullptr;
      }
      return argv[++i];
    };
    if (a == "--kernel" || a == "--initrd" || a == "--cmdline" || a == "--mem" || a == "--cpus" ||
        a == "--console") {
      const char* v = value();
      if (!v) return -1;
      if (a == "--kernel") cfg_.kernel_path = v;
      if (a == "--initrd") cfg_.initrd_path = v;
      if (a == "--cmdline") user_cmdline_ = v;
      if (a == "--mem") {
        auto n = parse_size(v);
        if (!n || *n < (64ull << 20) || *n > (1ull << 40) || *n % 4096 != 0) {
          std::fprintf(stderr, "berth run: --mem %s: give a size from 64M to 1T, like 512M or 2G\n", v);
          return -1;
        }
        cfg_.mem_bytes = *n;
      }
      if (a == "--cpus") {
        char* end = nullptr;
        long n = std::strtol(v, &end, 10);
        if (!*v || *end || n < 1 || n > 32) {
          std::fprintf(stderr, "berth run: --cpus %s: give a number from 1 to 32\n", v);
          return -1;
        }
        cfg_.cpus = unsigned(n);
      }
      if (a == "--console") {
        std::string c = v;
        if (c != "stdout" && c != "none") {
          std::fprintf(stderr, "berth run: --console takes stdout or none\n");
          return -1;
        }
        console_stdout_ = c == "stdout";
      }
      return 1;
    }
    return 0;
  }

  Result<void> prepare() override {
    if (cfg_.kernel_path.empty()) return make_error(EINVAL, "--kernel BZIMAGE is required (see berth run --help)");
    if (access(cfg_.kernel_path.c_str(), R_OK) != 0)
      return make_error(errno, "cannot read the kernel " + cfg_.kernel_path + ": " + strerror(errno));
    if (!cfg_.initrd_path.empty() && access(cfg_.initrd_path.c_str(), R_OK) != 0)
      return make_error(errno, "cannot read the initrd " + cfg_.initrd_path + ": " + strerror(errno));
    cfg_.cmdline = kBaseCmdline;
    if (!user_cmdline_.empty()) cfg_.cmdline += " " + user_cmdline_;
    // KVM is checked before anything listens, so a host that cannot run
    // the guest says so at once.
    return vmm::probe_kvm();
  }

  Result<void> start(ServeContext& ctx) override {
    auto vm = vmm::Vm::create(ctx.loop, cfg_);
    if (!vm) return vm.error();
    vm_ = std::move(vm.value());
    auto parts = std::make_shared<vmm::VmTreeParts>();
    parts->vm = vm_.get();
    parts->config = cfg_;
    parts->console = std::make_shared<p9::ByteStream>(1u << 20);
    bool to_stdout = console_stdout_;
    vm_->set_console_sink([stream = parts->console, to_stdout](Bytes b) {
      stream->append(b);
      if (to_stdout) {
        std::fwrite(b.data(), 1, b.size(), stdout);
        std::fflush(stdout);
      }
    });

    // Network: a locally administered MAC (52:54:00 is QEMU's; ours differ
    // in the fourth byte onwards by run, so two guests never clash).
    std::array<uint8_t, 6> mac{0x52, 0x54, 0x00, 0xbe, 0x00, 0x00};
    if (getrandom(mac.data() + 4, 2, 0) != 2) mac[4] = uint8_t(getpid()), mac[5] = uint8_t(getpid() >> 8);
    net_ = std::make_unique<vmm::VirtioNet>(ctx.loop, mac, ctx.net->mtu);
    auto port = ctx.attach_link(net_.get());
    if (!port) return make_error(port.error().code, "virtio-net: " + port.error().message);
    std::printf("berth: link %u is virtio %s\n", *port, net_->peer().c_str());
    if (auto r = add(*net_, "net0", parts); !r) return r;

    if (ctx.disks) {
      for (auto& d : ctx.disks->disks()) {
        blks_.push_back(
            std::make_unique<vmm::VirtioBlk>(d->io(), d->backend(), d->backend().read_only(), d->id()));
        if (auto r = add(*blks_.back(), "blk-" + d->id(), parts); !r) return r;
      }
    }
    ninep_ = std::make_unique<vmm::Virtio9p>(*ctx.tree, *ctx.stats, *ctx.clock, "berth");
    if (auto r = add(*ninep_, "9p", parts); !r) return r;
    rng_ = std::make_unique<vmm::VirtioRng>();
    if (auto r = add(*rng_, "rng", parts); !r) return r;

    vmm::mount_vm_tree(*ctx.tree, *ctx.metrics, parts);

    shutdown_ = ctx.shutdown;
    vm_->set_on_exit([this, loop = ctx.loop](vmm::VmExit why, std::string detail) {
      int status = 0;
      switch (why) {
        case vmm::VmExit::PowerOff:
          std::printf("berth: the guest powered off\n");
          break;
        case vmm::VmExit::Stopped:
          std::printf("berth: the guest was stopped\n");
          break;
        case vmm::VmExit::Reboot:
          std::printf("berth: the guest rebooted; berth run does not restart it\n");
          status = 3;
          break;
        case vmm::VmExit::Crashed:
          std::printf("berth: the guest crashed: %s\n", detail.c_str());
          status = 4;
          break;
      }
      std::fflush(stdout);
      spdlog::info("VM ended: {} {}", vmm::to_string(why), detail);
      // A short grace period, so that the client whose write to /vm/ctl
      // stopped the VM (and anyone reading the tree) gets its answer.
      exit_status_ = status;
      grace_ = new uv_timer_t;
      uv_timer_init(loop, grace_);
      grace_->data = this;
      uv_timer_start(grace_, [](uv_timer_t* t) {
        auto* self = static_cast<RunExtension*>(t->data);
        self->shutdown_(self->exit_status_);
      }, 300, 0);
    });
    if (auto r = vm_->boot(); !r) return r;
    if (console_stdout_ && isatty(STDIN_FILENO)) attach_terminal(ctx.loop);
    // The kernel and initrd were read into buffers that boot() has freed:
    // hand that memory back, since the VMM's own footprint is what stays.
    malloc_trim(0);
    std::printf("berth: vm running: %u vCPU%s, %llu MiB, kernel %s\n", cfg_.cpus, cfg_.cpus == 1 ? "" : "s",
                (unsigned long long)(cfg_.mem_bytes >> 20), cfg_.kernel_path.c_str());
    return {};
  }

  // With --console stdout on a terminal, keystrokes go to the guest's
  // serial port (raw mode) until Ctrl-] detaches the terminal.
  void attach_terminal(uv_loop_t* loop) {
    tty_ = new uv_tty_t;
    if (uv_tty_init(loop, tty_, STDIN_FILENO, 1) != 0) {
      delete tty_;
      tty_ = nullptr;
      return;
    }
    tty_->data = this;
    uv_tty_set_mode(tty_, UV_TTY_MODE_RAW);
    std::printf("berth: the terminal is the guest's console; Ctrl-] detaches it\r\n");
    std::fflush(stdout);
    uv_read_start(
        reinterpret_cast<uv_stream_t*>(tty_),
        [](uv_handle_t*, size_t, uv_buf_t* buf) {
          static char mem[256];
          *buf = uv_buf_init(mem, sizeof mem);
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
          auto* self = static_cast<RunExtension*>(s->data);
          if (n < 0) {
            self->detach_terminal();
            return;
          }
          for (ssize_t i = 0; i < n; i++) {
            if (buf->base[i] == 0x1d) {  // Ctrl-]
              if (i > 0) self->vm_->console_input(Bytes(reinterpret_cast<uint8_t*>(buf->base), size_t(i)));
              self->detach_terminal();
              std::printf("\nberth: terminal detached; the guest keeps running (berth ctl write /vm/ctl stop)\n");
              std::fflush(stdout);
              return;
            }
          }
          if (n > 0) self->vm_->console_input(Bytes(reinterpret_cast<uint8_t*>(buf->base), size_t(n)));
        });
  }

  void detach_terminal() {
    if (!tty_) return;
    uv_read_stop(reinterpret_cast<uv_stream_t*>(tty_));
    uv_tty_reset_mode();
    uv_close(reinterpret_cast<uv_handle_t*>(tty_), [](uv_handle_t* h) { delete reinterpret_cast<uv_tty_t*>(h); });
    tty_ = nullptr;
  }

  void stop() override {
    detach_terminal();
    if (grace_) {
      uv_timer_stop(grace_);
      uv_close(reinterpret_cast<uv_handle_t*>(grace_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      grace_ = nullptr;
    }
    if (vm_) vm_->stop();
  }

 private:
  Result<void> add(vmm::VirtioDevice& dev, std::string name, const std::shared_ptr<vmm::VmTreeParts>& parts) {
    auto t = vm_->add_virtio(dev, name);
    if (!t) return make_error(t.error().code, name + ": " + t.error().message);
    parts->devices.push_back(vmm::VmDeviceInfo{std::move(name), *t});
    return {};
  }

  vmm::VmConfig cfg_;
  std::string user_cmdline_;
  bool console_stdout_ = false;
  std::unique_ptr<vmm::VirtioNet> net_;
  std::vector<std::unique_ptr<vmm::VirtioBlk>> blks_;
  std::unique_ptr<vmm::Virtio9p> ninep_;
  std::unique_ptr<vmm::VirtioRng> rng_;
  std::function<void(int)> shutdown_;
  uv_timer_t* grace_ = nullptr;  // between the guest's end and the shutdown
  uv_tty_t* tty_ = nullptr;      // stdin, while it is the guest's console
  int exit_status_ = 0;
  std::unique_ptr<vmm::Vm> vm_;  // last: destroyed first
};

}  // namespace

int run_main(int argc, char** argv) {
  // Large buffers (the kernel image, the initrd) come from their own
  // mappings and go back to the system when freed, instead of raising
  // glibc's dynamic threshold and staying in the heap.
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  RunExtension ext;
  return serve_with(argc, argv, &ext);
}
