#!/usr/bin/env bash
# The soak: a long open-loop run of 1 KiB GETs at half the measured maximum
# through broker-server and two broker-tunnel workers of one token, one
# worker restarted (SIGTERM, then started again) every RESTART_EVERY
# seconds, alternating, so the token is never without a worker. Samples
# broker-server's resident memory and open file descriptors before each
# restart and prints, after the warm-up, whether both stayed flat (within
# 2 %) and how many GETs failed (target: none).
#
#   bench/soak/run.sh                       (30 minutes, Release build)
#   BUILD_DIR=build/asan SKIP_BUILD=1 RATE_FRACTION=0.1 bench/soak/run.sh
#                                           (the AddressSanitizer build)
#
# Environment (defaults in brackets):
#   BUILD_DIR [build/bench-release]  JOBS [2]  SKIP_BUILD (use BUILD_DIR)
#   MINUTES [30]  WARMUP_MINUTES [5]  RESTART_EVERY [10] seconds
#   RATE_FRACTION [0.5] of the closed-loop maximum measured first
#   RATE  a fixed rate instead (requests/s)  KEEP_LOGS
# Not run in CI (it takes half an hour); the README has its figures.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${repo_root}"
# shellcheck source=bench/lib.sh
source bench/lib.sh

build_dir="${BUILD_DIR:-build/bench-release}"
jobs="${JOBS:-2}"
minutes="${MINUTES:-30}"
warmup_minutes="${WARMUP_MINUTES:-5}"
restart_every="${RESTART_EVERY:-10}"
rate_fraction="${RATE_FRACTION:-0.5}"
token="soak-$(date +%s)-$$"

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "== building (Release, ${build_dir}) =="
  cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBROKER_BENCH=ON >/dev/null
  cmake --build "${build_dir}" -j "${jobs}" --target broker_server_bin \
    broker_tunnel_bin test_origin_bin load_gen
fi
server_bin="${build_dir}/services/server/broker-server"
tunnel_bin="${build_dir}/services/tunnel/broker-tunnel"
origin_bin="${build_dir}/tests/testing/test-origin"
# The generator is not what is soaked: any build's will do.
load_gen="${LOAD_GEN:-${build_dir}/bench/load_gen}"
[ -x "${load_gen}" ] || die "no load generator at ${load_gen} (set LOAD_GEN)"

work="$(mktemp -d "${TMPDIR:-/tmp}/broker-soak.XXXXXX")"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

"${origin_bin}" 0 >"${work}/origin.out" 2>&1 &
pids+=($!)
origin="http://127.0.0.1:$(wait_for "${work}/origin.out" '^[0-9]+$' 20)"
echo '{"public": [{"method": "GET", "path": "/bytes/:n"}]}' \
  >"${work}/server-accept.json"
echo "{\"private\": [{\"method\": \"GET\", \"path\": \"/bytes/:n\", \"origin\": \"${origin}\"}]}" \
  >"${work}/tunnel-accept.json"

ACCEPT="${work}/server-accept.json" PORT=0 BROKER_TUNNEL_PORT=0 \
  LOG_LEVEL=warn "${server_bin}" >"${work}/server.out" 2>&1 &
server_pid=$!
pids+=("${server_pid}")
line="$(wait_for "${work}/server.out" '"broker-server listening"' 60)"
server_port="$(num "${line}" port)"
tunnel_port="$(num "${line}" tunnel_port)"
url="http://127.0.0.1:${server_port}/broker/${token}/bytes/1024"

# start_worker SLOT: (re)starts worker SLOT (0 or 1); sets worker_pid[SLOT].
declare -a worker_pid
start_worker() {
  local log="${work}/worker$1.out"
  : >"${log}"
  BROKER_TOKEN="${token}" BROKER_SERVER_URL="http://127.0.0.1:${tunnel_port}" \
    ACCEPT="${work}/tunnel-accept.json" PORT=0 LOG_LEVEL=info \
    "${tunnel_bin}" >>"${log}" 2>&1 &
  worker_pid[$1]=$!
  pids+=("${worker_pid[$1]}")
  wait_for "${log}" 'tunnel connected to the broker server' 60 >/dev/null
}
start_worker 0
start_worker 1
deadline=$((SECONDS + 30))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "${url}")" = 200 ]; do
  [ "${SECONDS}" -lt "${deadline}" ] || die "the tunnel never answered 200"
  sleep 0.1
done

if [ -z "${RATE:-}" ]; then
  echo "== measuring the maximum (closed loop, 64 connections, 5 s) =="
  max="$("${load_gen}" closed --url "${url}" --connections 64 --duration 5)"
  rate="$(calc "int($(num "${max}" req_per_s) * ${rate_fraction})")"
  echo "maximum $(num "${max}" req_per_s) req/s; soaking at ${rate} req/s"
else
  rate="${RATE}"
fi

seconds=$((minutes * 60))
echo "== ${minutes} min at ${rate} GET/s, a worker restarted every ${restart_every} s =="
"${load_gen}" open --url "${url}" --rate "${rate}" --duration "${seconds}" \
  --resend-idle-closed 1 \
  --warmup 0 >"${work}/load.json" 2>"${work}/load.err" &
load_pid=$!
pids+=("${load_pid}")

# Sampled just before each restart, when both workers have been connected
# for a while: every sample sees the same steady state.
samples="${work}/samples.txt"  # elapsed_s rss_kib fds
start=${SECONDS}
next_restart=${restart_every}
restarts=0
unclean_exits=0
# stop_worker SLOT: SIGTERM, then the exit status: anything but 0 (a
# sanitizer report aborts with 134) is counted and its log kept.
stop_worker() {
  local status=0
  kill -TERM "${worker_pid[$1]}"
  wait "${worker_pid[$1]}" 2>/dev/null || status=$?
  if [ "${status}" != 0 ]; then
    unclean_exits=$((unclean_exits + 1))
    cp "${work}/worker$1.out" "${work}/worker$1-exit${status}-${SECONDS}.out"
  fi
}
slot=0
while kill -0 "${load_pid}" 2>/dev/null; do
  elapsed=$((SECONDS - start))
  if [ "${elapsed}" -ge "${next_restart}" ] && [ "${elapsed}" -lt $((seconds - 5)) ]; then
    echo "${elapsed} $(rss_kib "${server_pid}") $(ls "/proc/${server_pid}/fd" | wc -l)" \
      >>"${samples}"
    stop_worker "${slot}"
    start_worker "${slot}"
    restarts=$((restarts + 1))
    slot=$((1 - slot))
    next_restart=$((elapsed + restart_every))
  fi
  sleep 0.2
done
wait "${load_pid}" || true
load="$(cat "${work}/load.json")"
# The end: the server first, then the workers, which are reconnecting to a
# server that is gone when they get SIGTERM.
kill -TERM "${server_pid}"
wait "${server_pid}" 2>/dev/null || true
stop_worker 0
stop_worker 1

warm=$((warmup_minutes * 60))
read -r rss_min rss_max fd_min fd_max n < <(awk -v warm="${warm}" '
  $1 >= warm {
    if (n == 0 || $2 < rmin) rmin = $2; if ($2 > rmax) rmax = $2
    if (n == 0 || $3 < fmin) fmin = $3; if ($3 > fmax) fmax = $3
    n++
  }
  END { print rmin + 0, rmax + 0, fmin + 0, fmax + 0, n + 0 }' "${samples}")
rss_drift="$(calc "${rss_min} > 0 ? 100 * (${rss_max} - ${rss_min}) / ${rss_min} : 0")"
fd_drift="$(calc "${fd_min} > 0 ? 100 * (${fd_max} - ${fd_min}) / ${fd_min} : 0")"
failed="$(calc "$(num "${load}" errors)")"
verdict() { if [ "$(calc "$1")" = 1 ]; then echo PASS; else echo FAIL; fi; }

echo
echo "load: ${load}"
echo
printf '| %-52s | %-24s | %-6s |\n' "figure" "value" "target"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" "$(printf -- '-%.0s' {1..26})" "--------"
row() { printf '| %-52s | %-24s | %-6s |\n' "$@"; }
row "GETs sent at ${rate}/s for ${minutes} min" "$(num "${load}" requests)" ""
row "failed GETs (incl. unanswered)" "${failed}" "$(verdict "${failed} == 0")"
# A pooled connection the server closed after its 60 s keep-alive timeout:
# the generator (--resend-idle-closed) sends the GET again on a new one,
# as HTTP clients do.
row "GETs resent (server closed an idle connection)" \
  "$(num "${load}" stale_connection_retries)" ""
row "p50 / p99 / p99.9 latency (us)" \
  "$(num "${load}" p50_us) / $(num "${load}" p99_us) / $(num "${load}" p999_us)" ""
row "worker restarts (SIGTERM + start)" "${restarts}" ""
row "worker exits not clean (status != 0)" "${unclean_exits}" \
  "$(verdict "${unclean_exits} == 0")"
row "server RSS after ${warmup_minutes} min: min..max KiB" \
  "${rss_min}..${rss_max} (+${rss_drift}%)" "$(verdict "${rss_drift} <= 2")"
row "server open fds after ${warmup_minutes} min: min..max" \
  "${fd_min}..${fd_max} (+${fd_drift}%)" "$(verdict "${fd_drift} <= 2")"
row "samples after the warm-up" "${n}" ""
echo
echo "Load average: $(cut -d' ' -f1-3 /proc/loadavg)"
