#!/usr/bin/env bash
# The webhook benchmark (You => Snyk), one run, one table. Starts on
# loopback: a test-origin as the platform, broker-server, 4 broker-tunnel
# workers with their webhook egress, and broker-webhook; drives it with
# bench/load_gen.
#
#   bench/run_webhook_bench.sh
#
#   1. added latency: p50 and p99 of RATE webhooks/s (POSTs of BODY bytes)
#      through broker-webhook, minus the same posted straight to the
#      platform endpoint.
#   2. a worker's death under RATE webhooks/s: failed events, and the time
#      from its kill -9 to the first event delivered through another worker
#      (events sent one after another from the kill on).
#
# Environment (defaults in brackets):
#   BUILD_DIR [build/bench-release]  JOBS [2]
#   SKIP_BUILD  set to use the binaries already in BUILD_DIR
#   RATE [500]  BODY [2048]  LOG_LEVEL [warn]  KEEP_LOGS
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"
# shellcheck source=bench/lib.sh
source bench/lib.sh

build_dir="${BUILD_DIR:-build/bench-release}"
jobs="${JOBS:-2}"
rate="${RATE:-500}"
body_bytes="${BODY:-2048}"
log_level="${LOG_LEVEL:-warn}"
token="webhook-bench-$(date +%s)-$$"

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "== building (Release, ${build_dir}) =="
  cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBROKER_BENCH=ON >/dev/null
  cmake --build "${build_dir}" -j "${jobs}" --target broker_server_bin \
    broker_tunnel_bin broker_webhook_bin test_origin_bin load_gen
fi
server_bin="${build_dir}/services/server/broker-server"
tunnel_bin="${build_dir}/services/tunnel/broker-tunnel"
webhook_bin="${build_dir}/services/webhook/broker-webhook"
origin_bin="${build_dir}/tests/testing/test-origin"
load_gen="${build_dir}/bench/load_gen"

work="$(mktemp -d "${TMPDIR:-/tmp}/broker-webhook-bench.XXXXXX")"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

"${origin_bin}" 0 >"${work}/platform.out" 2>&1 &
pids+=($!)
platform_port="$(wait_for "${work}/platform.out" '^[0-9]+$' 20)"
platform="http://127.0.0.1:${platform_port}"
cat >"${work}/server-accept.json" <<EOF
{"public": [{"method": "GET", "path": "/x"}],
 "private": [{"method": "POST", "path": "/webhook/github/:id",
              "origin": "${platform}"}]}
EOF
cat >"${work}/client-accept.json" <<EOF
{"public": [{"method": "POST", "path": "/webhook/github/:id"}],
 "private": [{"method": "GET", "path": "/x", "origin": "http://127.0.0.1:1"}]}
EOF

env ACCEPT="${work}/server-accept.json" PORT=0 BROKER_TUNNEL_PORT=0 \
  LOG_LEVEL="${log_level}" "${server_bin}" >"${work}/server.out" 2>&1 &
pids+=($!)
line="$(wait_for "${work}/server.out" '"broker-server listening"' 20)"
tunnel_port="$(num "${line}" tunnel_port)"

worker_pids=()
egress=()
for i in 0 1 2 3; do
  env BROKER_TOKEN="${token}" BROKER_SERVER_URL="http://127.0.0.1:${tunnel_port}" \
    ACCEPT="${work}/client-accept.json" PORT=0 BROKER_TUNNEL_EGRESS_PORT=0 \
    BROKER_CLIENT_URL="http://webhook:8001" LOG_LEVEL=info \
    "${tunnel_bin}" >"${work}/w${i}.out" 2>&1 &
  worker_pids+=($!)
  pids+=($!)
  line="$(wait_for "${work}/w${i}.out" '"broker-tunnel listening"' 20)"
  egress+=("127.0.0.1:$(num "${line}" egress_port)")
  wait_for "${work}/w${i}.out" 'tunnel connected to the broker server' 20 \
    >/dev/null
done
target="ipv4:$(IFS=,; echo "${egress[*]}")"
env PORT=0 ACCEPT="${work}/client-accept.json" BROKER_TOKEN="${token}" \
  BROKER_TUNNEL_EGRESS_TARGET="${target}" LOG_LEVEL="${log_level}" \
  "${webhook_bin}" >"${work}/webhook.out" 2>&1 &
pids+=($!)
webhook_port="$(num "$(wait_for "${work}/webhook.out" \
  '"broker-webhook listening"' 20)" port)"
webhook="http://127.0.0.1:${webhook_port}"
for _ in $(seq 200); do
  if curl -sf -o /dev/null "${webhook}/healthcheck"; then break; fi
  sleep 0.05
done

rows=()
row() { rows+=("$(printf '| %-46s | %16s | %-12s |' "$@")"); }

# open_post NAME URL SECONDS: RATE POSTs/s of BODY bytes; the JSON result.
open_post() {
  "${load_gen}" open --url "$2" --rate "${rate}" --duration "$3" \
    --warmup 1 --post-bytes "${body_bytes}" >"${work}/$1.json" \
    2>"${work}/$1.err"
  cat "${work}/$1.json"
}
failed() { calc "$(num "$1" errors) + $(num "$1" unanswered) + $(num "$1" non_2xx)"; }

echo "== 1. added latency at ${rate} webhooks/s =="
direct="$(open_post direct "${platform}/webhook/github/1" 10)"
via="$(open_post via "${webhook}/webhook/github/1" 10)"
echo "direct: ${direct}"
echo "via broker-webhook: ${via}"
p50_d="$(num "${direct}" p50_us)"
p99_d="$(num "${direct}" p99_us)"
p50_v="$(num "${via}" p50_us)"
p99_v="$(num "${via}" p99_us)"
row "p50 added latency (us)" "$(calc "${p50_v} - ${p50_d}")" \
  "${p50_v} vs ${p50_d}"
row "p99 added latency (us)" "$(calc "${p99_v} - ${p99_d}")" \
  "${p99_v} vs ${p99_d}"
row "failed webhooks via broker-webhook" \
  "$(failed "${via}") of $(num "${via}" requests)" ""
shares=""
for i in 0 1 2 3; do
  n="$(curl -s "http://127.0.0.1:$(num "$(grep -m1 '"broker-tunnel listening"' \
    "${work}/w${i}.out")" port)/metrics" |
    awk '$1 == "broker_tunnel_webhooks_total" { print $2 }')"
  shares="${shares}${shares:+ / }${n}"
done
row "  events per worker" "${shares}" ""

echo "== 2. kill -9 of a worker under ${rate} webhooks/s =="
"${load_gen}" open --url "${webhook}/webhook/github/2" --rate "${rate}" \
  --duration 6 --warmup 0 --post-bytes "${body_bytes}" \
  >"${work}/kill.json" 2>"${work}/kill.err" &
load_pid=$!
pids+=("${load_pid}")
sleep 2
kill -KILL "${worker_pids[1]}"
killed_at="$(date +%s.%N)"
# Events one after another from the kill on: the first 2xx.
for _ in $(seq 1000); do
  if curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
    -d '{}' "${webhook}/webhook/github/3"; then
    break
  fi
done
first_at="$(date +%s.%N)"
wait "${load_pid}" || true
kill_json="$(cat "${work}/kill.json")"
echo "kill -9: ${kill_json}"
row "kill -9 of a worker: failed webhooks" \
  "$(failed "${kill_json}") of $(num "${kill_json}" requests)" "0"
row "  first event through another worker after (ms)" \
  "$(awk "BEGIN { printf \"%.1f\", 1000 * (${first_at} - ${killed_at}) }")" \
  "<= 200"
row "  max latency around the kill (us)" \
  "$(num "${kill_json}" max_us)" ""

echo
echo "== webhooks, one run: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) =="
printf '| %-46s | %16s | %-12s |\n' scenario figure note
printf '| %-46s | %16s | %-12s |\n' "$(printf -- '-%.0s' {1..46})" \
  "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..12})"
printf '%s\n' "${rows[@]}"
