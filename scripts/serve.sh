#!/usr/bin/env bash
# Berth's main job on its defaults: build, then serve the control tree.
# Extra arguments go to `berth serve` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh release >&2
exec ./build/release/berth serve "$@"
