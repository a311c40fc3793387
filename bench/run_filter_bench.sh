#!/usr/bin/env bash
# Builds the accept-rule benchmarks in Release mode and runs them:
# filter_latency (per-operation median/p99/p99.9 against the targets) and then
# filter_bench (Google Benchmark means). Works from any directory.
#
#   bench/run_filter_bench.sh [extra filter_bench flags...]
#
# Environment: BUILD_DIR (default build-bench, relative to the repository
# root), JOBS (parallel build jobs, default: nproc), MIN_TIME (seconds per
# Google Benchmark, default 0.2).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

build_dir="${BUILD_DIR:-build-bench}"
jobs="${JOBS:-$(nproc)}"
min_time="${MIN_TIME:-0.2}"

cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBROKER_BENCH=ON >/dev/null
cmake --build "${build_dir}" --target filter_bench filter_latency -j "${jobs}"

echo
echo "== filter_latency (per-operation percentiles) =="
"${build_dir}/bench/filter_latency"

echo
echo "== filter_bench (Google Benchmark, means) =="
"${build_dir}/bench/filter_bench" --benchmark_min_time="${min_time}" "$@"
