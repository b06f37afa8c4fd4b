#!/usr/bin/env bash
# Build Berth. Usage: scripts/build.sh [release|debug|asan]   (default: release)
# Installs missing Debian packages first. Output: build/<config>/berth
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-release}
case "$config" in
  release) flags=(-DCMAKE_BUILD_TYPE=Release) ;;
  debug)   flags=(-DCMAKE_BUILD_TYPE=Debug) ;;
  asan)    flags=(-DCMAKE_BUILD_TYPE=Debug -DBERTH_SANITIZE=ON) ;;
  *) echo "usage: $0 [release|debug|asan]" >&2; exit 2 ;;
esac
./scripts/deps.sh
cmake -S . -B "build/$config" -G Ninja "${flags[@]}" >/dev/null
ninja -C "build/$config" -j"${BERTH_JOBS:-2}"
