#!/usr/bin/env bash
# Install everything Berth needs to build and test on Debian 12 (bookworm).
# Idempotent: packages already present are skipped by apt-get.
set -euo pipefail

pkgs=(
  # build
  build-essential cmake ninja-build pkg-config
  libuv1-dev libfmt-dev libspdlog-dev catch2 libcereal-dev
  # fuzzing and sanitizers
  clang libclang-rt-14-dev
  # real peers
  diod qemu-system-x86 busybox-static cpio kmod xz-utils iproute2 procps python3
  wget socat iperf3 iputils-ping curl dnsmasq-base isc-dhcp-client bind9-dnsutils
  libpcap-dev tcpdump tshark
  zlib1g-dev qemu-utils fio
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
