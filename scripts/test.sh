#!/usr/bin/env bash
# Sets everything up and runs every test: formatting, a g++ -Werror build with
# all tests, a clang AddressSanitizer+UndefinedBehaviorSanitizer build with
# all tests, and each libFuzzer target for a bounded time.
#   FUZZ_SECONDS=15 (per target; 0 skips fuzzing)   JOBS=<parallel jobs>
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${JOBS:-$(nproc)}
fuzz_seconds=${FUZZ_SECONDS:-15}

start=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - start))" "$*"; }

step "Installing packages"
scripts/setup.sh

step "Checking formatting (clang-format)"
scripts/check_format.sh

step "Checking the Helm charts (helm lint, rendered manifests)"
scripts/check_charts.sh

# Optimised as shipped, without debug information: the ASan build below is
# the one for stack traces, and -g costs a third of this build's time.
step "Building with g++ -O2 -Werror (build/gcc)"
cmake -S . -B build/gcc -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DBROKER_WERROR=ON -DCMAKE_CXX_COMPILER=g++ >/dev/null
cmake --build build/gcc -j "$jobs"

step "Checking the Dockerfile against the binaries"
scripts/check_dockerfile.sh build/gcc

step "Building with clang + AddressSanitizer + UBSan (build/asan)"
# Line tables are all a sanitizer report needs to name file:line. The same
# build holds the libFuzzer targets (edge counters only: light enough for
# the tests that run on it), so fuzzing needs no build of its own.
cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS_DEBUG=-gline-tables-only -DBROKER_WERROR=ON -DCMAKE_CXX_COMPILER=clang++ -DBROKER_BENCH=OFF \
  -DBROKER_SANITIZE=address,undefined \
  -DBROKER_FUZZ=ON -DBROKER_FUZZ_COVERAGE=counters >/dev/null
cmake --build build/asan -j "$jobs"

step "Static analysis (clang-tidy)"
scripts/tidy.sh build/asan

if [ "$fuzz_seconds" != "0" ]; then
  step "Fuzzing each target for ${fuzz_seconds}s"
  BUILD_DIR=build/asan scripts/fuzz.sh "$fuzz_seconds"
fi

step "Running the tests under AddressSanitizer + UBSan"
(cd build/asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  LSAN_OPTIONS=suppressions="$root/scripts/lsan.supp" \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure --timeout 300 -j "$jobs")

step "Running the tests (g++ build)"
# Most integration tests wait on processes, not the CPU: one job more than
# cores.
(cd build/gcc && ctest --output-on-failure --timeout 300 -j "$((jobs + 1))")
step "All checks passed"
