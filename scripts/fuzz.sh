#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang, ASan and UBSan in
# build-fuzz/ and runs each for a bounded time on a copy of its seed corpus
# (fuzz/corpus/<target>/ is never modified).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 30)
#
# Exits non-zero when a fuzzer finds a crash, a sanitizer report, a broken
# invariant, a timeout or an out-of-memory; the input is saved under
# build-fuzz/artifacts/<target>/, which each run empties first (copy it to
# fuzz/regressions/; reproduce with build-fuzz/fuzz/<target> <file>). Works
# from any directory.
#
# Environment: BUILD_DIR (default build-fuzz, relative to the repository
# root; one configured with BROKER_FUZZ=ON is not reconfigured), JOBS (parallel build jobs, default: nproc), FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-fork=1 -ignore_crashes=1" to keep fuzzing past a
# known crash and collect every distinct one), FUZZ_TARGETS (space-separated
# subset of the targets, e.g. "tunnel_serve_fuzz").
set -euo pipefail

seconds="${1:-30}"
if ! [[ "${seconds}" =~ ^[0-9]+$ ]] || (( seconds < 1 )); then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

build_dir="${BUILD_DIR:-build-fuzz}"
jobs="${JOBS:-$(nproc)}"
read -r -a targets <<<"${FUZZ_TARGETS:-rule_loader_fuzz matcher_fuzz \
dispatcher_api_fuzz http_ingress_fuzz tunnel_serve_fuzz worker_serve_fuzz \
webhook_ingress_fuzz}"

# A build directory already configured with BROKER_FUZZ=ON is used as it is
# (CI's build/asan, which also runs the tests). Otherwise: -O1 and line
# tables, fast to build, fast enough to fuzz, and reports still name
# file:line.
if ! grep -q '^BROKER_FUZZ:BOOL=ON$' "${build_dir}/CMakeCache.txt" 2>/dev/null; then
  CC=clang CXX=clang++ cmake -S . -B "${build_dir}" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
    -DBROKER_FUZZ=ON -DBROKER_BENCH=OFF \
    >/dev/null
fi
cmake --build "${build_dir}" --target "${targets[@]}" -j "${jobs}"

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
for target in "${targets[@]}"; do
  name="${target%_fuzz}"
  corpus="${build_dir}/corpus/${name}"
  artifacts="${build_dir}/artifacts/${target}"
  log="${build_dir}/logs/${target}.log"
  rm -rf "${corpus}" "${artifacts}"
  mkdir -p "${corpus}" "${artifacts}" "$(dirname "${log}")"
  cp -R "fuzz/corpus/${name}/." "${corpus}/"
  # Every crash found so far is replayed first.
  find fuzz/regressions -name "${name}-*" -exec cp {} "${corpus}/" \;

  echo
  echo "== ${target}: ${seconds}s on a copy of fuzz/corpus/${name} =="
  dict_args=()
  # A dictionary helps a target whose input has keywords; not every one has.
  if [[ -s "fuzz/${name}.dict" ]]; then
    dict_args=(-dict="fuzz/${name}.dict")
  fi
  status=0
  "${build_dir}/fuzz/${target}" \
    -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 \
    -max_len=1048576 -print_final_stats=1 \
    "${dict_args[@]}" \
    -artifact_prefix="${artifacts}/" ${FUZZ_ARGS:-} \
    "${corpus}" >"${log}" 2>&1 || status=$?
  # With -ignore_crashes (FUZZ_ARGS) libFuzzer exits 0 after a crash: an
  # artifact is what tells.
  if (( status == 0 )) && [[ -n "$(ls -A "${artifacts}")" ]]; then
    status=1
  fi
  if (( status == 0 )); then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' \
      "${log}" || true
    echo "${target}: OK ($(find "${corpus}" -type f | wc -l) inputs in" \
      "${corpus})"
  else
    failed+=("${target}")
    echo "${target}: FAILED (exit ${status}); last lines of ${log}:"
    tail -n 80 "${log}"
    echo "inputs saved in ${artifacts}/:"
    ls -l "${artifacts}"
  fi
done

echo
if (( ${#failed[@]} > 0 )); then
  echo "FAIL: ${failed[*]} found a problem (see above)"
  exit 1
fi
echo "PASS: no crash in ${targets[*]} (${seconds}s each)"
