#!/usr/bin/env bash
# Fuzzes the manifest reader and validator with libFuzzer for a bounded time
# (default 60 s: scripts/fuzz.sh [SECONDS]). Crashes land in fuzz/regressions/,
# where every build's test suite replays them from then on.
source "$(dirname "$0")/lib.sh"
install_debian_packages
seconds="${1:-60}"
CC=clang build "$ROOT/build-fuzz" -DFFDL_FUZZ=ON -DFFDL_WITH_CUDA=OFF
mkdir -p "$ROOT/fuzz/corpus-work"
cd "$ROOT/fuzz/regressions"
export FFDL_LOG=error # tracebacks of bad Lua inputs would drown the fuzzer
"$ROOT/build-fuzz/fuzz_manifest" -max_total_time="$seconds" -max_len=8192 -timeout=10 \
  -dict="$ROOT/fuzz/manifest.dict" "$ROOT/fuzz/corpus-work" "$ROOT/fuzz/seeds"
