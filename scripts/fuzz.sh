#!/usr/bin/env bash
# Build the libFuzzer targets with clang (build/fuzz) and run each one for a
# bounded number of runs over a scratch copy of its seed corpus.
#   scripts/fuzz.sh [RUNS]        (default 20000 runs per target)
# Env: BERTH_JOBS (build parallelism, default 2), FUZZ_MAX_LEN (default 4096),
#      FUZZ_TARGETS (space-separated subset, default: all fuzz_* targets).
# Fails on the first target that crashes, leaks or times out; the reproducer
# is left in build/fuzz/artifacts/<target>/ (replay: build/fuzz/<target> FILE).
# The committed corpus (tests/fuzz/corpus/) is never modified.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20000}
jobs=${BERTH_JOBS:-2}
max_len=${FUZZ_MAX_LEN:-4096}

# clang and the sanitizer/libFuzzer runtimes (LeakSanitizer comes from libclang-rt-14-dev).
need=()
command -v clang++ >/dev/null || need+=(clang)
dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null | grep -q 'install ok installed' || need+=(libclang-rt-14-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DBERTH_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=${FUZZ_TARGETS:-$(ninja -C build/fuzz -t targets all | sed -n 's/^\(fuzz_[A-Za-z0-9_]*\): CXX_EXECUTABLE_LINKER.*/\1/p' | sort -u)}
[ -n "$targets" ] || { echo "fuzz.sh: no fuzz targets found" >&2; exit 1; }
# shellcheck disable=SC2086
ninja -C build/fuzz -j"$jobs" $targets

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for t in $targets; do
  corpus=${t#fuzz_}
  seed=tests/fuzz/corpus/$corpus
  scratch=build/fuzz/corpus-run/$corpus
  artifacts=build/fuzz/artifacts/$t
  rm -rf "$scratch"
  mkdir -p "$scratch" "$artifacts"
  [ -d "$seed" ] && cp -R "$seed"/. "$scratch"/
  # Replay the inputs that once broke this target first.
  for crash in tests/fuzz/crashes/"$corpus"-*; do
    [ -e "$crash" ] || continue
    if ! build/fuzz/"$t" "$crash" >build/fuzz/"$t".replay.log 2>&1; then
      tail -n 40 build/fuzz/"$t".replay.log >&2
      echo "fuzz.sh: $t fails on the regression input $crash" >&2
      exit 1
    fi
  done
  echo "== $t: $runs runs (seed corpus: $seed)"
  if ! build/fuzz/"$t" -runs="$runs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$artifacts"/ "$scratch" 2>build/fuzz/"$t".log; then
    tail -n 60 build/fuzz/"$t".log >&2
    echo "fuzz.sh: $t FAILED; reproducer in $artifacts/ (full log: build/fuzz/$t.log)" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' build/fuzz/"$t".log || true
done
echo "== fuzz: all targets passed"
