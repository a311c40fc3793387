#!/usr/bin/env bash
# The HA benchmark: the scenarios of tests/integration/ha_*_test.cc with
# their figures, from one run, in one table. Starts everything itself on
# loopback (test-origin, broker-dispatcher, broker-servers, broker-ha-agent,
# broker-tunnel workers) and drives it with bench/load_gen.
#
#   bench/run_ha_bench.sh
#
#   1. spreading: 4 workers of one token on one server, closed-loop GETs
#      until REQUESTS have been relayed: each worker's share.
#   2. kill -9 of a worker under RATE GETs/s: failed GETs, time until the
#      server dropped it.
#   3. SIGSTOP of a worker under RATE GETs/s: failed GETs, detection time.
#   4. HA mesh (dispatcher, 2 servers, agent): 5 workers, the 5th waits;
#      kill -9 of one of the 4: seconds until the 5th is admitted.
#   5. SIGTERM of a server under RATE GETs/s on the other: failed GETs, and
#      the draining server's exit status.
#   6. a slow worker: p99 of RATE GETs/s of a 2 ms origin call through 4
#      workers, and again with one of the 4 behind an origin 10x slower
#      (22 ms); the ratio of the two p99s.
#
# Environment (defaults in brackets):
#   BUILD_DIR [build/bench-release]  JOBS [2]
#   SKIP_BUILD  set to use the binaries already in BUILD_DIR
#   REQUESTS [100000]  RATE [500]  LOG_LEVEL [info]  KEEP_LOGS
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"
# shellcheck source=bench/lib.sh
source bench/lib.sh

build_dir="${BUILD_DIR:-build/bench-release}"
jobs="${JOBS:-2}"
requests="${REQUESTS:-100000}"
rate="${RATE:-500}"
log_level="${LOG_LEVEL:-info}"
token="ha-bench-$(date +%s)-$$"

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "== building (Release, ${build_dir}) =="
  cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBROKER_BENCH=ON >/dev/null
  cmake --build "${build_dir}" -j "${jobs}" --target broker_server_bin \
    broker_tunnel_bin broker_dispatcher_bin broker_ha_agent_bin \
    test_origin_bin load_gen
fi
server_bin="${build_dir}/services/server/broker-server"
tunnel_bin="${build_dir}/services/tunnel/broker-tunnel"
dispatcher_bin="${build_dir}/services/dispatcher/broker-dispatcher"
agent_bin="${build_dir}/services/ha-agent/broker-ha-agent"
origin_bin="${build_dir}/tests/testing/test-origin"
load_gen="${build_dir}/bench/load_gen"

work="$(mktemp -d "${TMPDIR:-/tmp}/broker-ha-bench.XXXXXX")"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

"${origin_bin}" 0 >"${work}/origin.out" 2>&1 &
pids+=($!)
origin_port="$(wait_for "${work}/origin.out" '^[0-9]+$' 20)"
# The same origin, 20 ms slower on /slow/<ms>: behind the slow worker.
"${origin_bin}" --slow-extra-ms=20 0 >"${work}/slow-origin.out" 2>&1 &
pids+=($!)
slow_origin_port="$(wait_for "${work}/slow-origin.out" '^[0-9]+$' 20)"
cat >"${work}/server-accept.json" <<EOF
{"public": [{"method": "GET", "path": "/bytes/:n"},
            {"method": "GET", "path": "/slow/:ms"}]}
EOF
# One rule file for every worker (the server insists); SLOW_ORIGIN says
# which origin a worker's /slow/ calls reach.
cat >"${work}/tunnel-accept.json" <<EOF
{"private": [{"method": "GET", "path": "/bytes/:n",
              "origin": "http://127.0.0.1:${origin_port}"},
             {"method": "GET", "path": "/slow/:ms",
              "origin": "\${SLOW_ORIGIN}"}]}
EOF

# start_server NAME [ENV=VALUE...]: sets server_pid, server_port,
# server_tunnel_port.
start_server() {
  local name="$1"
  shift
  env ACCEPT="${work}/server-accept.json" PORT=0 BROKER_TUNNEL_PORT=0 \
    LOG_LEVEL="${log_level}" "$@" "${server_bin}" >"${work}/${name}.out" 2>&1 &
  server_pid=$!
  pids+=("${server_pid}")
  local line
  line="$(wait_for "${work}/${name}.out" '"broker-server listening"' 20)"
  server_port="$(num "${line}" port)"
  server_tunnel_port="$(num "${line}" tunnel_port)"
}

# start_worker NAME [ENV=VALUE...]: sets worker_pid, worker_port.
start_worker() {
  local name="$1"
  shift
  env BROKER_TOKEN="${token}" SLOW_ORIGIN="http://127.0.0.1:${origin_port}" \
    ACCEPT="${work}/tunnel-accept.json" PORT=0 \
    BROKER_CLIENT_URL="http://worker:8000" LOG_LEVEL="${log_level}" "$@" \
    "${tunnel_bin}" >"${work}/${name}.out" 2>&1 &
  worker_pid=$!
  pids+=("${worker_pid}")
  worker_port="$(num "$(wait_for "${work}/${name}.out" \
    '"broker-tunnel listening"' 20)" port)"
}

relayed() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk '$1 == "broker_tunnel_requests_total" { print $2 }'
}

# failed JSON: failed requests of a load_gen result.
failed() { calc "$(num "$1" errors) + $(num "$1" unanswered)"; }

# open_load NAME URL SECONDS: open-loop GETs at RATE in the background;
# sets load_pid.
open_load() {
  "${load_gen}" open --url "$2" --rate "${rate}" --duration "$3" \
    --warmup 0 >"${work}/$1.json" 2>"${work}/$1.err" &
  load_pid=$!
  pids+=("${load_pid}")
}

rows=()
row() { rows+=("$(printf '| %-44s | %14s | %-22s | %-4s |' "$@")"); }
verdict() { if [ "$(calc "$1")" = 1 ]; then echo PASS; else echo FAIL; fi; }

echo "== 1-3. one server, 4 workers of one token =="
start_server single
single_port="${server_port}"
single_tunnel_port="${server_tunnel_port}"
single_log="${work}/single.out"
worker_ports=()
worker_pids=()
for i in 0 1 2 3; do
  start_worker "w${i}" BROKER_SERVER_URL="http://127.0.0.1:${server_tunnel_port}"
  worker_ports+=("${worker_port}")
  worker_pids+=("${worker_pid}")
done
wait_for_count "${single_log}" 'broker client connected' 4 20 >/dev/null
url="http://127.0.0.1:${single_port}/broker/${token}/bytes/1024"
before=()
for p in "${worker_ports[@]}"; do before+=("$(relayed "${p}")"); done
total=0
rounds=0
while [ "$(calc "${total} < ${requests}")" = 1 ] && [ "${rounds}" -lt 20 ]; do
  "${load_gen}" closed --url "${url}" --connections 64 --duration 3 \
    --warmup 0 >"${work}/shares.json"
  total=0
  for i in 0 1 2 3; do
    total=$((total + $(relayed "${worker_ports[$i]}") - before[i]))
  done
  rounds=$((rounds + 1))
done
worst=0
shares=""
for i in 0 1 2 3; do
  share="$(awk "BEGIN { printf \"%.2f\", 100 * ($(relayed "${worker_ports[$i]}") - ${before[$i]}) / ${total} }")"
  shares="${shares}${shares:+ / }${share}"
  dev="$(calc "${share} > 25 ? ${share} - 25 : 25 - ${share}")"
  worst="$(calc "${dev} > ${worst} ? ${dev} : ${worst}")"
done
echo "shares (%) over ${total} requests: ${shares}"
row "shares of 4 workers, ${total} requests (%)" "${shares}" \
  "each 25 +- 2" "$(verdict "${worst} <= 2")"

# 2. kill -9 of a worker mid-load.
disconnects="$(count_lines "${single_log}" 'broker client disconnected')"
open_load kill "${url}" 8
sleep 3
kill -KILL "${worker_pids[1]}"
wait "${worker_pids[1]}" 2>/dev/null || true
drop="$(wait_for_count "${single_log}" 'broker client disconnected' \
  $((disconnects + 1)) 10)"
wait "${load_pid}" || true
kill_json="$(cat "${work}/kill.json")"
echo "kill -9: ${kill_json}"
row "kill -9 of a worker, ${rate} GET/s: failed GETs" \
  "$(failed "${kill_json}") of $(num "${kill_json}" requests)" "0" \
  "$(verdict "$(failed "${kill_json}") == 0")"
row "  worker dropped after (s)" "${drop}" "" ""

# 3. SIGSTOP of a worker mid-load (half-open: the socket stays up).
disconnects="$(count_lines "${single_log}" 'broker client disconnected')"
open_load stop "${url}" 8
sleep 3
kill -STOP "${worker_pids[2]}"
detect="$(wait_for_count "${single_log}" 'broker client disconnected' \
  $((disconnects + 1)) 10)"
wait "${load_pid}" || true
kill -CONT "${worker_pids[2]}" || true
stop_json="$(cat "${work}/stop.json")"
echo "SIGSTOP: ${stop_json}"
row "SIGSTOP of a worker, ${rate} GET/s: failed GETs" \
  "$(failed "${stop_json}") of $(num "${stop_json}" requests)" "0" \
  "$(verdict "$(failed "${stop_json}") == 0")"
row "  frozen worker detected after (s)" "${detect}" "<= 2" \
  "$(verdict "${detect} <= 2")"

echo "== 6. a slow worker among 4 =="
# p99_of TOKEN NAME: p99 (us) of RATE GETs/s of /slow/2 for TOKEN's workers.
p99_of() {
  "${load_gen}" open --url "http://127.0.0.1:${single_port}/broker/$1/slow/2" \
    --rate "${rate}" --duration 10 --warmup 2 >"${work}/$2.json"
  num "$(cat "${work}/$2.json")" p99_us
}
# start_token_workers TOKEN SLOW_COUNT: 4 workers of TOKEN on the single
# server, the last SLOW_COUNT of them behind the slow origin.
start_token_workers() {
  local i origin
  token_worker_ports=()
  for i in 0 1 2 3; do
    origin="http://127.0.0.1:${origin_port}"
    if [ "${i}" -ge $((4 - $2)) ]; then
      origin="http://127.0.0.1:${slow_origin_port}"
    fi
    token="$1" start_worker "$1-${i}" SLOW_ORIGIN="${origin}" \
      BROKER_SERVER_URL="http://127.0.0.1:${single_tunnel_port}"
    token_worker_ports+=("${worker_port}")
  done
}
connected="$(count_lines "${single_log}" 'broker client connected')"
start_token_workers "${token}-fast" 0
start_token_workers "${token}-slow" 1
wait_for_count "${single_log}" 'broker client connected' $((connected + 8)) 20 \
  >/dev/null
p99_fast="$(p99_of "${token}-fast" fast)"
p99_slow="$(p99_of "${token}-slow" slow)"
slow_ratio="$(awk "BEGIN { printf \"%.2f\", ${p99_slow} / ${p99_fast} }")"
echo "p99 all fast ${p99_fast} us, one 10x slower ${p99_slow} us: x${slow_ratio}"
slow_total=0
for p in "${token_worker_ports[@]}"; do
  slow_total=$((slow_total + $(relayed "${p}")))
done
slow_share="$(awk "BEGIN { printf \"%.2f\", 100 * $(relayed "${token_worker_ports[3]}") / ${slow_total} }")"
row "one worker 10x slower, ${rate} GET/s: p99 ratio" \
  "x${slow_ratio}" "<= 1.5 (${p99_fast} us)" "$(verdict "${slow_ratio} <= 1.5")"
row "  the slow worker's share of requests (%)" "${slow_share}" "" ""

echo "== 4-5. HA mesh: dispatcher, 2 servers, agent, 5 workers =="
PORT=0 LOG_LEVEL="${log_level}" "${dispatcher_bin}" \
  >"${work}/dispatcher.out" 2>&1 &
pids+=($!)
dispatcher_port="$(num "$(wait_for "${work}/dispatcher.out" \
  '"broker-dispatcher listening"' 20)" port)"
dispatcher="http://127.0.0.1:${dispatcher_port}"
server_ports=()
server_pids=()
for id in 0 1; do
  start_server "s${id}" DISPATCHER_URL="${dispatcher}" \
    HOSTNAME="broker-server-${id}" BROKER_SERVER_ADVERTISE_HOST=127.0.0.1
  server_ports+=("${server_port}")
  server_pids+=("${server_pid}")
  # Registered before the first allocation (the server's own call is
  # asynchronous): the same registration, waited for.
  curl -sf -o /dev/null -X POST -H 'content-type: application/vnd.api+json' \
    -d "{\"data\":{\"attributes\":{\"tunnel_url\":\"http://127.0.0.1:${server_tunnel_port}\",\"internal_url\":\"http://127.0.0.1:${server_port}\"}}}" \
    "${dispatcher}/internal/brokerservers/${id}"
done
env BROKER_TOKEN="${token}" BROKER_HA_MODE_ENABLED=true \
  BROKER_DISPATCHER_BASE_URL="${dispatcher}" BROKER_HA_AGENT_PORT=0 \
  ACCEPT="${work}/tunnel-accept.json" BROKER_CLIENT_URL="http://worker:8000" \
  LOG_LEVEL="${log_level}" "${agent_bin}" >"${work}/agent.out" 2>&1 &
pids+=($!)
agent_port="$(num "$(wait_for "${work}/agent.out" \
  '"broker-ha-agent listening"' 20)" port)"
ha_pids=()
for i in 0 1 2 3; do
  start_worker "ha${i}" BROKER_HA_MODE_ENABLED=true \
    BROKER_HA_AGENT_ADDR="127.0.0.1:${agent_port}" \
    BROKER_SERVER_URL="http://127.0.0.1:1"
  ha_pids+=("${worker_pid}")
  wait_for "${work}/ha${i}.out" 'tunnel connected to the broker server' 20 \
    >/dev/null
done
start_worker ha4 BROKER_HA_MODE_ENABLED=true \
  BROKER_HA_AGENT_ADDR="127.0.0.1:${agent_port}" \
  BROKER_SERVER_URL="http://127.0.0.1:1"
wait_for "${work}/agent.out" 'refused this broker client' 20 >/dev/null
fifth_in="$(count_lines "${work}/ha4.out" 'tunnel connected to the broker server')"
kill -KILL "${ha_pids[0]}"
admitted="$(wait_for_count "${work}/ha4.out" \
  'tunnel connected to the broker server' $((fifth_in + 1)) 20)"
wait "${ha_pids[0]}" 2>/dev/null || true
echo "5th worker admitted ${admitted} s after kill -9 of one of the four"
row "5th worker: admitted after a kill -9 (s)" "${admitted}" "<= 1" \
  "$(verdict "${admitted} <= 1")"

# 5. SIGTERM of server 0 while server 1 takes GETs.
url1="http://127.0.0.1:${server_ports[1]}/broker/${token}/bytes/1024"
open_load drain "${url1}" 8
sleep 3
kill -TERM "${server_pids[0]}"
status=0
wait "${server_pids[0]}" || status=$?
wait "${load_pid}" || true
drain_json="$(cat "${work}/drain.json")"
echo "server SIGTERM: ${drain_json}; exit status ${status}"
row "server SIGTERM, ${rate} GET/s: failed GETs" \
  "$(failed "${drain_json}") of $(num "${drain_json}" requests)" "0" \
  "$(verdict "$(failed "${drain_json}") == 0")"
row "  draining server's exit status" "${status}" "0" \
  "$(verdict "${status} == 0")"

echo
echo "== HA, one run: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) =="
printf '| %-44s | %14s | %-22s | %-4s |\n' scenario figure target ok
printf '| %-44s | %14s | %-22s | %-4s |\n' "$(printf -- '-%.0s' {1..44})" \
  "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..22})" "----"
printf '%s\n' "${rows[@]}"
