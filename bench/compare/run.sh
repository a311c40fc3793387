#!/usr/bin/env bash
# Side by side, one run: the same origin and the same load generator
# (bench/load_gen) against
#   direct   load generator -> origin (the limit);
#   snyk     Snyk Broker (npm snyk-broker@5.22.14): server + one client;
#   ha-off   this project: broker-server + one broker-tunnel;
#   ha-on    this project in HA mode: broker-dispatcher, 2 broker-servers,
#            broker-ha-agent and 4 broker-tunnel workers of one token;
# each with broker-webhook (ours) or the client's /webhook route (Snyk) for
# the webhook scenario. The systems run one after another on the same
# 2-core machine, each alone. Scenarios:
#   1 KiB GETs closed-loop at 16 and 64 connections (req/s, p50, p99);
#   1 KiB GETs open-loop at RATE/s (p50, p99, p99.9 from each request's
#   intended send time, so without coordinated omission; "added" is minus
#   direct); one 100 MiB and one 1 GiB download; one 25 MiB upload;
#   WEBHOOK_RATE webhooks/s (2 KiB POSTs) travelling out to the platform;
#   resident memory of every process idle and its peak under load.
# Prints one table (every figure with its ratio to direct and to Snyk
# Broker, and the targets' verdicts) and writes it, the raw JSON and a PNG
# chart to OUT_DIR.
#
#   bench/compare/run.sh
#
# Needs npm (the npm registry) for Snyk Broker, installed once into
# SNYK_DIR; gnuplot (Debian's gnuplot-nox, installed when missing) for
# the chart.
#
# Environment (defaults in brackets):
#   BUILD_DIR [build/bench-release]  JOBS [2]  SKIP_BUILD (use BUILD_DIR)
#   OUT_DIR [build/compare]  DURATION [10] seconds per timed scenario
#   RATE [1000]  WEBHOOK_RATE [500]  SYSTEMS ["direct snyk ha-off ha-on"]
#   SNYK_DIR [~/.cache/broker-compare/snyk-broker-5.22.14]  KEEP_LOGS
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${repo_root}"
# shellcheck source=bench/lib.sh
source bench/lib.sh

snyk_version=5.22.14
build_dir="${BUILD_DIR:-build/bench-release}"
jobs="${JOBS:-2}"
out_dir="${OUT_DIR:-build/compare}"
duration="${DURATION:-10}"
rate="${RATE:-1000}"
webhook_rate="${WEBHOOK_RATE:-500}"
systems="${SYSTEMS:-direct snyk ha-off ha-on}"
snyk_dir="${SNYK_DIR:-${HOME}/.cache/broker-compare/snyk-broker-${snyk_version}}"
# Snyk Broker wants a UUID token; ours takes any.
token="$(cat /proc/sys/kernel/random/uuid)"

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "== building (Release, ${build_dir}) =="
  cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBROKER_BENCH=ON >/dev/null
  cmake --build "${build_dir}" -j "${jobs}" --target broker_server_bin \
    broker_tunnel_bin broker_dispatcher_bin broker_ha_agent_bin \
    broker_webhook_bin test_origin_bin load_gen
fi
server_bin="${build_dir}/services/server/broker-server"
tunnel_bin="${build_dir}/services/tunnel/broker-tunnel"
dispatcher_bin="${build_dir}/services/dispatcher/broker-dispatcher"
agent_bin="${build_dir}/services/ha-agent/broker-ha-agent"
webhook_bin="${build_dir}/services/webhook/broker-webhook"
origin_bin="${build_dir}/tests/testing/test-origin"
load_gen="${build_dir}/bench/load_gen"

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! command -v gnuplot >/dev/null || ! command -v python3 >/dev/null; then
  echo "== installing gnuplot-nox and python3 (the chart and the table) =="
  DEBIAN_FRONTEND=noninteractive ${sudo} apt-get install -y -q \
    --no-install-recommends gnuplot-nox python3 >/dev/null
fi

snyk_cli="${snyk_dir}/node_modules/snyk-broker/dist/cli/index.js"
if [[ " ${systems} " == *" snyk "* ]] && [ ! -f "${snyk_cli}" ]; then
  command -v npm >/dev/null || die "npm is needed for Snyk Broker (apt-get install npm)"
  echo "== installing snyk-broker@${snyk_version} into ${snyk_dir} =="
  mkdir -p "${snyk_dir}"
  npm install --prefix "${snyk_dir}" --no-audit --no-fund --loglevel=error \
    "snyk-broker@${snyk_version}" >/dev/null
fi
if [[ " ${systems} " == *" snyk "* ]]; then
  # The package does not ship its config.default.json and will not start
  # without one (reference section 8). These are the keys the classic
  # server and client read; the rest of Snyk's file configures integration
  # types this benchmark does not use.
  cat >"${snyk_dir}/config.default.json" <<'EOF'
{
  "API_VERSION": "2024-02-08~experimental",
  "DISPATCHER_URL_PREFIX": "/hidden/broker",
  "REMOTE_WORKLOAD_NAME": "BrokerWorkload",
  "REMOTE_WORKLOAD_MODULE_PATH": "../broker-workload/websocketRequests",
  "CLIENT_WORKLOAD_NAME": "BrokerClientRequestWorkload",
  "CLIENT_WORKLOAD_MODULE_PATH": "../broker-workload/clientLocalRequests"
}
EOF
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/broker-compare.XXXXXX")"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "${out_dir}"
rm -f "${out_dir}"/*.json

"${origin_bin}" 0 >"${work}/origin.out" 2>&1 &
pids+=($!)
origin="http://127.0.0.1:$(wait_for "${work}/origin.out" '^[0-9]+$' 20)"
# The same rules for both brokers: the scenarios' routes in, the webhook
# out (the origin plays the platform's webhook endpoint too).
cat >"${work}/server-accept.json" <<EOF
{"public": [{"method": "GET", "path": "/bytes/:n"},
            {"method": "POST", "path": "/sink"}],
 "private": [{"method": "POST", "path": "/webhook/github/:id",
              "origin": "${origin}"}]}
EOF
cat >"${work}/client-accept.json" <<EOF
{"private": [{"method": "GET", "path": "/bytes/:n", "origin": "${origin}"},
             {"method": "POST", "path": "/sink", "origin": "${origin}"}],
 "public": [{"method": "POST", "path": "/webhook/github/:id"}]}
EOF

system_pids=()   # the processes of the system under test
system_names=()  # their roles, for the memory figures

# spawn ROLE LOG CMD...: starts a process of the system under test; sets
# spawned_pid.
spawn() {
  local role="$1" log="$2"
  shift 2
  "$@" >"${log}" 2>&1 &
  spawned_pid=$!
  pids+=("${spawned_pid}")
  system_pids+=("${spawned_pid}")
  system_names+=("${role}")
}

# stop_system: stops every process of the system under test.
stop_system() {
  stop_processes "${system_pids[@]}"
  system_pids=()
  system_names=()
}

# free_port: a TCP port free on loopback now (for Snyk Broker, which
# cannot listen on port 0 and say where).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ok URL: until URL answers 200 (20 s).
wait_ok() {
  local deadline=$((SECONDS + 20))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; do
    [ "${SECONDS}" -lt "${deadline}" ] || die "$1 never answered 200"
    sleep 0.1
  done
}

# The systems. Each sets base (the platform's URL prefix of the origin's
# routes) and webhook (where the private network posts a webhook).

start_direct() {
  base="${origin}"
  webhook="${origin}/webhook/github/1"
}

start_snyk() {
  local port client_port
  port="$(free_port)"
  client_port="$(free_port)"
  # From its own folder: it reads config.default.json from there.
  spawn server "${work}/snyk-server.out" env -C "${snyk_dir}" \
    ACCEPT="${work}/server-accept.json" PORT="${port}" LOG_LEVEL=warn \
    node "${snyk_cli}" server
  wait_ok "http://127.0.0.1:${port}/healthcheck"
  spawn client "${work}/snyk-client.out" env -C "${snyk_dir}" \
    BROKER_TOKEN="${token}" BROKER_SERVER_URL="http://127.0.0.1:${port}" \
    ACCEPT="${work}/client-accept.json" PORT="${client_port}" \
    BROKER_CLIENT_URL="http://127.0.0.1:${client_port}" \
    PREFLIGHT_CHECKS_ENABLED=false IPV6_CONNECTIVITY_CHECK_ENABLED=false \
    LOG_LEVEL=warn node "${snyk_cli}" client
  base="http://127.0.0.1:${port}/broker/${token}"
  webhook="http://127.0.0.1:${client_port}/webhook/github/1"
  wait_ok "${base}/bytes/1"
}

# start_ours_server NAME [ENV=VALUE...]: sets server_port, server_tunnel_port.
start_ours_server() {
  local name="$1" line
  shift
  spawn "${name}" "${work}/${name}.out" env \
    ACCEPT="${work}/server-accept.json" PORT=0 BROKER_TUNNEL_PORT=0 \
    LOG_LEVEL=warn "$@" "${server_bin}"
  line="$(wait_for "${work}/${name}.out" '"broker-server listening"' 20)"
  server_port="$(num "${line}" port)"
  server_tunnel_port="$(num "${line}" tunnel_port)"
}

# start_ours_worker NAME [ENV=VALUE...]: appends its egress to egress.
start_ours_worker() {
  local name="$1" line
  shift
  spawn "${name}" "${work}/${name}.out" env BROKER_TOKEN="${token}" \
    ACCEPT="${work}/client-accept.json" PORT=0 BROKER_TUNNEL_EGRESS_PORT=0 \
    BROKER_CLIENT_URL="http://127.0.0.1:1" LOG_LEVEL=info "$@" "${tunnel_bin}"
  line="$(wait_for "${work}/${name}.out" '"broker-tunnel listening"' 20)"
  egress+=("127.0.0.1:$(num "${line}" egress_port)")
  wait_for "${work}/${name}.out" 'tunnel connected to the broker server' 20 \
    >/dev/null
}

start_ours_webhook() {
  local port
  spawn webhook "${work}/webhook.out" env PORT=0 \
    ACCEPT="${work}/client-accept.json" BROKER_TOKEN="${token}" \
    BROKER_TUNNEL_EGRESS_TARGET="ipv4:$(IFS=,; echo "${egress[*]}")" \
    LOG_LEVEL=warn "${webhook_bin}"
  port="$(num "$(wait_for "${work}/webhook.out" '"broker-webhook listening"' 20)" port)"
  webhook="http://127.0.0.1:${port}/webhook/github/1"
  wait_ok "http://127.0.0.1:${port}/healthcheck"
}

start_ha-off() {
  egress=()
  start_ours_server server
  start_ours_worker worker \
    BROKER_SERVER_URL="http://127.0.0.1:${server_tunnel_port}"
  start_ours_webhook
  base="http://127.0.0.1:${server_port}/broker/${token}"
  wait_ok "${base}/bytes/1"
}

start_ha-on() {
  local dispatcher port id i first_port
  egress=()
  spawn dispatcher "${work}/dispatcher.out" env PORT=0 LOG_LEVEL=warn \
    "${dispatcher_bin}"
  port="$(num "$(wait_for "${work}/dispatcher.out" \
    '"broker-dispatcher listening"' 20)" port)"
  dispatcher="http://127.0.0.1:${port}"
  for id in 0 1; do
    start_ours_server "server${id}" DISPATCHER_URL="${dispatcher}" \
      HOSTNAME="broker-server-${id}" BROKER_SERVER_ADVERTISE_HOST=127.0.0.1
    [ "${id}" = 0 ] && first_port="${server_port}"
    # Registered before the first allocation (the server's own call is
    # asynchronous): the same registration, waited for.
    curl -sf -o /dev/null -X POST -H 'content-type: application/vnd.api+json' \
      -d "{\"data\":{\"attributes\":{\"tunnel_url\":\"http://127.0.0.1:${server_tunnel_port}\",\"internal_url\":\"http://127.0.0.1:${server_port}\"}}}" \
      "${dispatcher}/internal/brokerservers/${id}"
  done
  spawn agent "${work}/agent.out" env BROKER_TOKEN="${token}" \
    BROKER_HA_MODE_ENABLED=true BROKER_DISPATCHER_BASE_URL="${dispatcher}" \
    BROKER_HA_AGENT_PORT=0 ACCEPT="${work}/client-accept.json" \
    BROKER_CLIENT_URL="http://127.0.0.1:1" LOG_LEVEL=warn "${agent_bin}"
  port="$(num "$(wait_for "${work}/agent.out" '"broker-ha-agent listening"' 20)" port)"
  for i in 0 1 2 3; do
    start_ours_worker "worker${i}" BROKER_HA_MODE_ENABLED=true \
      BROKER_HA_AGENT_ADDR="127.0.0.1:${port}" \
      BROKER_SERVER_URL="http://127.0.0.1:1"
  done
  start_ours_webhook
  # The platform calls either server; server 0 relays to the workers it
  # holds and forwards to server 1 for the others.
  base="http://127.0.0.1:${first_port}/broker/${token}"
  wait_ok "${base}/bytes/1"
}

# The memory sampler: every 100 ms, each process's VmRSS in KiB, as
# "role kib" lines in ${work}/<system>.rss until stopped. One Python
# process reading /proc: a shell loop forking awk for each process every
# 100 ms took 3-10 % of the two cores from the system it measured.
start_sampler() {
  local file="$1" i
  local -a args=()
  for i in "${!system_pids[@]}"; do
    args+=("${system_names[$i]}=${system_pids[$i]}")
  done
  python3 -c '
import sys, time
procs = [a.split("=", 1) for a in sys.argv[1:]]
while True:
    for role, pid in procs:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        print(role, line.split()[1], flush=True)
        except OSError:
            pass
    time.sleep(0.1)
' "${args[@]}" >"${file}" &
  sampler_pid=$!
  pids+=("${sampler_pid}")
}

# run SYSTEM SCENARIO ARGS...: load_gen ARGS, its JSON kept in OUT_DIR.
run() {
  local system="$1" scenario="$2" out
  shift 2
  out="${out_dir}/${system}-${scenario}.json"
  if ! timeout $((duration * 3 + 180)) "${load_gen}" "$@" >"${out}" \
    2>"${work}/${system}-${scenario}.err"; then
    echo "{\"errors\":1,\"failed\":\"load_gen exited abnormally\"}" >"${out}"
  fi
  printf '  %-10s %s\n' "${scenario}" "$(head -c 300 "${out}")"
}

measure() {
  local system="$1" idle_file="${out_dir}/${system}-memory.json" i
  echo "== ${system} =="
  "start_${system}"
  sleep 1  # settled: lanes parked, first health checks done
  {
    printf '{"idle":{'
    for i in "${!system_pids[@]}"; do
      printf '%s"%s":%s' "$([ "${i}" = 0 ] || echo ,)" "${system_names[$i]}" \
        "$(rss_kib "${system_pids[$i]}")"
    done
    printf '}'
  } >"${idle_file}"
  start_sampler "${work}/${system}.rss"
  run "${system}" get16 closed --url "${base}/bytes/1024" --connections 16 \
    --duration "${duration}"
  run "${system}" get64 closed --url "${base}/bytes/1024" --connections 64 \
    --duration "${duration}"
  run "${system}" open open --url "${base}/bytes/1024" --rate "${rate}" \
    --duration "${duration}"
  run "${system}" down100m download --url "${base}/bytes/104857600"
  run "${system}" down1g download --url "${base}/bytes/1073741824"
  run "${system}" up25m upload --url "${base}/sink" --bytes 26214400
  run "${system}" webhooks open --url "${webhook}" --rate "${webhook_rate}" \
    --duration "${duration}" --post-bytes 2048
  kill "${sampler_pid}" 2>/dev/null || true
  wait "${sampler_pid}" 2>/dev/null || true
  # The peak of each role.
  awk 'BEGIN { printf ",\"peak\":{" }
       { if (!($1 in max) || $2 > max[$1]) max[$1] = $2 }
       END { sep = ""; for (r in max) { printf "%s\"%s\":%s", sep, r, max[r]; sep = "," }
             print "}}" }' "${work}/${system}.rss" >>"${idle_file}"
  stop_system
}

for system in ${systems}; do measure "${system}"; done

python3 bench/compare/report.py --dir "${out_dir}" --rate "${rate}" \
  --webhook-rate "${webhook_rate}" --systems "${systems}" \
  --load "$(cut -d' ' -f1-3 /proc/loadavg)"
