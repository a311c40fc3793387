#!/usr/bin/env bash
# Builds the dispatcher's placement benchmark in Release mode and runs it:
# 10,000 tokens x 4 clients on 8 servers, then 9 (and 7), through the real
# in-memory store. Prints max/mean load, the share of allocations that move
# when a server is added, and whether each token's clients landed on
# distinct servers; exits non-zero when a target is missed. Works from any
# directory.
#
#   bench/run_placement_bench.sh [--tokens=N] [--clients=N] [--servers=N]
#
# Environment: BUILD_DIR (default build-bench, relative to the repository
# root), JOBS (parallel build jobs, default: nproc).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

build_dir="${BUILD_DIR:-build-bench}"
jobs="${JOBS:-$(nproc)}"

cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBROKER_BENCH=ON >/dev/null
cmake --build "${build_dir}" --target placement_bench -j "${jobs}"

echo
echo "== placement_bench (dispatcher placement figures) =="
"${build_dir}/bench/placement_bench" "$@"
