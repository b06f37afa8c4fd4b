#!/usr/bin/env bash
# Build everything and run every test:
#   1. release build: unit tests and real-peer tests (diod tools, QEMU guest)
#   2. ASan+UBSan build: unit tests
#   3. libFuzzer targets, a bounded number of runs each
# Peer tests that cannot run here report SKIP with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
export BERTH_JOBS=${BERTH_JOBS:-2}

echo "== release build"
./scripts/build.sh release
echo "== release: unit and peer tests"
ctest --test-dir build/release --output-on-failure -j1

echo "== asan build"
./scripts/build.sh asan
echo "== asan: unit tests"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -L unit -j"$BERTH_JOBS"

echo "== fuzz targets"
./scripts/fuzz.sh "${BERTH_FUZZ_RUNS:-20000}"
echo "== all tests passed"
