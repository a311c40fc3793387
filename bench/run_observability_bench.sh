#!/usr/bin/env bash
# The cost of observability: small-request (1 KiB) throughput through
# broker-server -> gRPC tunnel -> broker-tunnel -> origin with metrics and
# gRPC interceptors on (BROKER_METRICS_ENABLED=true, /metrics scraped every
# second as Prometheus would) against the same build with them off. The
# two modes alternate ROUNDS times, each with a fresh server and worker, and
# the medians are compared: one run, one ratio (target >= 95 %).
#
#   bench/run_observability_bench.sh
#
# Environment (defaults in brackets):
#   BUILD_DIR [build/bench-release]  JOBS [2]  SKIP_BUILD (use BUILD_DIR as is)
#   DURATION [5]  seconds of each run (+1 s warm-up)   ROUNDS [5]
#   CONNECTIONS [64]  keep-alive connections of the closed-loop generator
#   KEEP_LOGS     set to keep the temporary directory
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

build_dir="${BUILD_DIR:-build/bench-release}"
jobs="${JOBS:-2}"
duration="${DURATION:-5}"
rounds="${ROUNDS:-5}"
connections="${CONNECTIONS:-64}"
token="bench-obs-$(date +%s)-$$"

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
load_gen="${build_dir}/bench/load_gen"

work="$(mktemp -d "${TMPDIR:-/tmp}/broker-observability-bench.XXXXXX")"
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

"${origin_bin}" 0 >"${work}/origin.out" 2>&1 &
pids+=($!)
origin="http://127.0.0.1:$(wait_for "${work}/origin.out" '^[0-9]+$' 20)"
echo '{"public": [{"method": "GET", "path": "/bytes/:n"}]}' \
  >"${work}/server-accept.json"
echo "{\"private\": [{\"method\": \"GET\", \"path\": \"/bytes/:n\", \"origin\": \"${origin}\"}]}" \
  >"${work}/tunnel-accept.json"

# measure MODE ROUND: starts a server and a worker with metrics MODE
# (true|false), runs the closed loop, prints req/s, stops both.
measure() {
  local mode="$1" name="$2-$1" line server_port tunnel_port server_pid \
    tunnel_pid scraper=""
  BROKER_METRICS_ENABLED="${mode}" ACCEPT="${work}/server-accept.json" \
    PORT=0 BROKER_TUNNEL_PORT=0 LOG_LEVEL=warn "${server_bin}" \
    >"${work}/${name}-server.out" 2>&1 &
  server_pid=$!
  pids+=("${server_pid}")
  line="$(wait_for "${work}/${name}-server.out" '"broker-server listening"' 20)"
  server_port="$(num "${line}" port)"
  tunnel_port="$(num "${line}" tunnel_port)"
  BROKER_METRICS_ENABLED="${mode}" BROKER_TOKEN="${token}" \
    BROKER_SERVER_URL="http://127.0.0.1:${tunnel_port}" \
    ACCEPT="${work}/tunnel-accept.json" PORT=0 LOG_LEVEL=warn \
    "${tunnel_bin}" >"${work}/${name}-tunnel.out" 2>&1 &
  tunnel_pid=$!
  pids+=("${tunnel_pid}")
  local url="http://127.0.0.1:${server_port}/broker/${token}/bytes/1024"
  local deadline=$((SECONDS + 20))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "${url}")" = 200 ]; do
    [ "${SECONDS}" -lt "${deadline}" ] || die "${name}: the tunnel never answered"
    sleep 0.05
  done
  if [ "${mode}" = true ]; then
    # Scraped like Prometheus does, each second, during the run.
    (while true; do
      curl -s -o /dev/null "http://127.0.0.1:${server_port}/metrics" || true
      sleep 1
    done) &
    scraper=$!
  fi
  "${load_gen}" closed --url "${url}" --connections "${connections}" \
    --duration "${duration}" --warmup 1 >"${work}/${name}.json" \
    2>"${work}/${name}.err" || die "${name}: load_gen failed"
  [ -n "${scraper}" ] && kill "${scraper}" 2>/dev/null && wait "${scraper}" 2>/dev/null
  kill -TERM "${tunnel_pid}" "${server_pid}" 2>/dev/null || true
  wait "${tunnel_pid}" "${server_pid}" 2>/dev/null || true
  local errors
  errors="$(num "$(cat "${work}/${name}.json")" errors)"
  [ "${errors}" = 0 ] || die "${name}: ${errors} requests failed"
  num "$(cat "${work}/${name}.json")" req_per_s
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -a on off
for round in $(seq "${rounds}"); do
  on+=("$(measure true "${round}")")
  off+=("$(measure false "${round}")")
  printf 'round %s: on %8.0f req/s   off %8.0f req/s\n' "${round}" \
    "${on[-1]}" "${off[-1]}"
done
on_median="$(printf '%s\n' "${on[@]}" | median)"
off_median="$(printf '%s\n' "${off[@]}" | median)"
ratio="$(calc "100 * ${on_median} / ${off_median}")"
verdict=FAIL
awk "BEGIN { exit !(${ratio} >= 95) }" && verdict=PASS
echo
printf '| 1 KiB GET through the tunnel, %s connections | req/s (median of %s) |\n' \
  "${connections}" "${rounds}"
printf '|---|---|\n'
printf '| metrics + interceptors off | %.0f |\n' "${off_median}"
printf '| metrics + interceptors on, /metrics scraped 1/s | %.0f |\n' "${on_median}"
printf '| on / off | %.1f %% (target >= 95 %%) %s |\n' "${ratio}" "${verdict}"
