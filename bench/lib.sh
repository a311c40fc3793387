# Shared by the bench/run_*_bench.sh scripts (sourced, not run). The caller
# sets `work` (a scratch directory) and appends every process it starts to
# `pids`; cleanup stops them all.

pids=()

# stop_processes PID...: SIGTERM to each (SIGCONT first, in case it was
# stopped), then up to 5 s each to exit before SIGKILL.
stop_processes() {
  local pid
  for pid in "$@"; do
    kill -CONT "${pid}" 2>/dev/null || true
    kill -TERM "${pid}" 2>/dev/null || true
  done
  for pid in "$@"; do
    for _ in $(seq 50); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pid}" 2>/dev/null || true
    wait "${pid}" 2>/dev/null || true
  done
}

bench_cleanup() {
  stop_processes "${pids[@]}"
  if [ -n "${KEEP_LOGS:-}" ]; then
    echo "logs and results kept in ${work}"
  else
    rm -rf "${work}"
  fi
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

# wait_for FILE PATTERN SECONDS: prints the first line of FILE matching the
# extended regex PATTERN, waiting for it.
wait_for() {
  local file="$1" pattern="$2" deadline=$((SECONDS + $3)) line
  while [ "${SECONDS}" -lt "${deadline}" ]; do
    line="$(grep -E -m1 "${pattern}" "${file}" 2>/dev/null || true)"
    if [ -n "${line}" ]; then
      echo "${line}"
      return 0
    fi
    sleep 0.05
  done
  echo "--- ${file}:" >&2
  tail -n 20 "${file}" >&2 || true
  die "timed out waiting for /${pattern}/ in ${file}"
}

# count_lines FILE PATTERN: how many lines of FILE match PATTERN.
count_lines() { grep -c -E "$2" "$1" 2>/dev/null || true; }

# wait_for_count FILE PATTERN N SECONDS: waits until N lines match; prints
# the seconds it took (fractional), or dies.
wait_for_count() {
  local file="$1" pattern="$2" want="$3" start now
  start="$(date +%s.%N)"
  local deadline=$((SECONDS + $4))
  while [ "${SECONDS}" -lt "${deadline}" ]; do
    if [ "$(count_lines "${file}" "${pattern}")" -ge "${want}" ]; then
      now="$(date +%s.%N)"
      awk "BEGIN { printf \"%.3f\", ${now} - ${start} }"
      return 0
    fi
    sleep 0.01
  done
  die "timed out waiting for ${want} lines /${pattern}/ in ${file}"
}

# num JSON KEY: the first number stored under "KEY" in a JSON line.
num() {
  local value
  value="$(grep -o "\"$2\":[-0-9.eE+]*" <<<"$1" | head -n1 | cut -d: -f2)"
  echo "${value:-0}"
}

# calc EXPRESSION: floating-point arithmetic.
calc() { awk "BEGIN { printf \"%.6g\", ($1) }"; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
