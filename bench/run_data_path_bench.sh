#!/usr/bin/env bash
# The data-path benchmark: builds Release, starts test-origin, broker-server
# and one broker-tunnel on loopback, runs every scenario both directly
# (load generator -> origin) and through the tunnel (load generator ->
# broker-server -> gRPC tunnel -> broker-tunnel -> origin), and prints one
# table with the ratios and a PASS/FAIL per target, all from this one run.
# Generator, origin and broker share the machine: the direct figure is the
# yardstick, the tunnel figure is only meaningful next to it.
#
#   bench/run_data_path_bench.sh
#
# Environment (defaults in brackets):
#   BUILD_DIR [build/bench-release]  JOBS [2]
#   SKIP_BUILD        set to use the binaries already in BUILD_DIR
#   DURATION [10]     seconds of each throughput / latency run (+1 s warm-up)
#   CONNECTIONS [64]  keep-alive connections of the throughput run
#   LOADGEN_THREADS [1]  threads of the closed-loop generator
#   RATE [1000]       requests/s of the open-loop (latency) runs
#   BIG_BYTES [1073741824]  size of the download and the upload
#   SLOW_RATE [65536] bytes/s of the slow reader (head-of-line run)
#   IDLE_WORKERS [1000]  idle workers for the per-worker memory figure
#   LANES [1]         BROKER_TUNNEL_LANES of the worker (and of the idle ones)
#   LOG_LEVEL [info]  of broker-server and broker-tunnel
#   KEEP_LOGS         set to keep the temporary directory (logs, JSON)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

build_dir="${BUILD_DIR:-build/bench-release}"
jobs="${JOBS:-2}"
duration="${DURATION:-10}"
connections="${CONNECTIONS:-64}"
loadgen_threads="${LOADGEN_THREADS:-1}"
rate="${RATE:-1000}"
big_bytes="${BIG_BYTES:-1073741824}"
slow_rate="${SLOW_RATE:-65536}"
idle_workers="${IDLE_WORKERS:-1000}"
lanes="${LANES:-1}"
log_level="${LOG_LEVEL:-info}"
token="bench-$(date +%s)-$$"

if [ -z "${SKIP_BUILD:-}" ]; then
  echo "== building (Release, ${build_dir}) =="
  cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBROKER_BENCH=ON >/dev/null
  cmake --build "${build_dir}" -j "${jobs}" --target broker_server_bin \
    broker_tunnel_bin test_origin_bin load_gen idle_workers
fi
bin="${build_dir}"
server_bin="${bin}/services/server/broker-server"
tunnel_bin="${bin}/services/tunnel/broker-tunnel"
origin_bin="${bin}/tests/testing/test-origin"
load_gen="${bin}/bench/load_gen"
idle_bin="${bin}/bench/idle_workers"

# Every worker and lane is a socket: 1,000 idle workers need more than the
# usual 1,024 descriptors (in the server and in idle_workers).
hard_limit="$(ulimit -Hn)"
want=$((idle_workers * 2 + 1024))
if [ "${hard_limit}" != "unlimited" ] && [ "${hard_limit}" -lt "${want}" ]; then
  want="${hard_limit}"
fi
ulimit -n "${want}" 2>/dev/null || true

work="$(mktemp -d "${TMPDIR:-/tmp}/broker-data-path-bench.XXXXXX")"
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# Where the memory of the main pair stands between scenarios.
show_rss() {
  echo "VmRSS: broker-server $(rss_kib "${main_server_pid}") KiB," \
    "broker-tunnel $(rss_kib "${tunnel_pid}") KiB"
}

# run NAME ARGS...: runs load_gen, keeps its JSON in ${work}/NAME.json and
# prints it. A crash or hang becomes an errors=1 line.
run() {
  local name="$1"
  shift
  local limit=$((duration * 3 + 120))
  if ! timeout "${limit}" "${load_gen}" "$@" >"${work}/${name}.json" \
    2>"${work}/${name}.err"; then
    echo "{\"errors\":1,\"failed\":\"load_gen $1 exited abnormally\"}" \
      >"${work}/${name}.json"
  fi
  cat "${work}/${name}.json"
}

echo "== starting test-origin, broker-server, broker-tunnel =="
"${origin_bin}" 0 >"${work}/origin.out" 2>&1 &
pids+=($!)
origin_pid=$!
origin_port="$(wait_for "${work}/origin.out" '^[0-9]+$' 20)"
origin="http://127.0.0.1:${origin_port}"

# The routes the scenarios use, allowed on both sides.
cat >"${work}/server-accept.json" <<EOF
{"public": [
  {"method": "GET", "path": "/bytes/:n"},
  {"method": "POST", "path": "/sink"}
]}
EOF
cat >"${work}/tunnel-accept.json" <<EOF
{"private": [
  {"method": "GET", "path": "/bytes/:n", "origin": "${origin}"},
  {"method": "POST", "path": "/sink", "origin": "${origin}"}
]}
EOF

# start_server NAME: starts a broker-server; sets server_pid, server_port,
# server_tunnel_port.
start_server() {
  ACCEPT="${work}/server-accept.json" PORT=0 BROKER_TUNNEL_PORT=0 \
    LOG_LEVEL="${log_level}" "${server_bin}" >"${work}/$1.out" 2>&1 &
  server_pid=$!
  pids+=("${server_pid}")
  local line
  line="$(wait_for "${work}/$1.out" '"broker-server listening"' 20)"
  server_port="$(num "${line}" port)"
  server_tunnel_port="$(num "${line}" tunnel_port)"
}

start_server server
main_server_pid="${server_pid}"
BROKER_TOKEN="${token}" \
  BROKER_SERVER_URL="http://127.0.0.1:${server_tunnel_port}" \
  ACCEPT="${work}/tunnel-accept.json" PORT=0 BROKER_TUNNEL_LANES="${lanes}" \
  LOG_LEVEL="${log_level}" "${tunnel_bin}" >"${work}/tunnel.out" 2>&1 &
tunnel_pid=$!
pids+=("${tunnel_pid}")
wait_for "${work}/tunnel.out" '"broker-tunnel listening"' 20 >/dev/null
tunnel="http://127.0.0.1:${server_port}/broker/${token}"

# Ready when a request makes the whole trip.
deadline=$((SECONDS + 20))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "${tunnel}/bytes/1")" = 200 ]; do
  [ "${SECONDS}" -lt "${deadline}" ] || die "the tunnel never answered 200"
  sleep 0.1
done
sleep 0.5  # the worker refills its lanes

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
rss_start_server="$(rss_kib "${main_server_pid}")"
rss_start_tunnel="$(rss_kib "${tunnel_pid}")"
watch=(--watch "broker-server=${main_server_pid}"
  --watch "broker-tunnel=${tunnel_pid}")

echo "== 1. 1 KiB GETs, ${connections} keep-alive connections, ${duration} s =="
tp_direct="$(run tp-direct closed --url "${origin}/bytes/1024" \
  --connections "${connections}" --duration "${duration}" \
  --threads "${loadgen_threads}")"
echo "direct: ${tp_direct}"
tp_tunnel="$(run tp-tunnel closed --url "${tunnel}/bytes/1024" \
  --connections "${connections}" --duration "${duration}" \
  --threads "${loadgen_threads}")"
echo "tunnel: ${tp_tunnel}"

show_rss

echo "== 2. open loop, ${rate} requests/s, ${duration} s =="
lat_direct="$(run lat-direct open --url "${origin}/bytes/1024" \
  --rate "${rate}" --duration "${duration}")"
echo "direct: ${lat_direct}"
lat_tunnel="$(run lat-tunnel open --url "${tunnel}/bytes/1024" \
  --rate "${rate}" --duration "${duration}")"
echo "tunnel: ${lat_tunnel}"

show_rss

echo "== 3. one download and one upload of ${big_bytes} bytes =="
dl_direct="$(run dl-direct download --url "${origin}/bytes/${big_bytes}")"
echo "direct download: ${dl_direct}"
dl_tunnel="$(run dl-tunnel download --url "${tunnel}/bytes/${big_bytes}" \
  "${watch[@]}")"
echo "tunnel download: ${dl_tunnel}"
up_direct="$(run up-direct upload --url "${origin}/sink" --bytes "${big_bytes}")"
echo "direct upload: ${up_direct}"
up_tunnel="$(run up-tunnel upload --url "${tunnel}/sink" --bytes "${big_bytes}" \
  "${watch[@]}")"
echo "tunnel upload: ${up_tunnel}"

show_rss

echo "== 4. head-of-line: a reader at ${slow_rate} B/s while ${rate} requests/s run =="
slow_seconds=$((duration + 3))
timeout $((slow_seconds + 60)) "${load_gen}" download \
  --url "${tunnel}/bytes/${big_bytes}" --rate "${slow_rate}" \
  --max-seconds "${slow_seconds}" "${watch[@]}" >"${work}/slow.json" 2>"${work}/slow.err" &
slow_pid=$!
pids+=("${slow_pid}")
sleep 1
hol_tunnel="$(run hol-tunnel open --url "${tunnel}/bytes/1024" \
  --rate "${rate}" --duration "${duration}")"
echo "tunnel, with the slow reader: ${hol_tunnel}"
wait "${slow_pid}" || true
slow="$(cat "${work}/slow.json")"
echo "slow reader: ${slow}"

show_rss

rss_end_server="$(rss_kib "${main_server_pid}")"
rss_end_tunnel="$(rss_kib "${tunnel_pid}")"

echo "== 5. ${idle_workers} idle workers (${lanes} lanes each) on a fresh broker-server =="
start_server idle-server
idle_server_pid="${server_pid}"
sleep 1
rss_before="$(rss_kib "${idle_server_pid}")"
"${idle_bin}" --target "127.0.0.1:${server_tunnel_port}" \
  --workers "${idle_workers}" --lanes "${lanes}" \
  >"${work}/idle.json" 2>"${work}/idle.err" &
idle_pid=$!
pids+=("${idle_pid}")
idle="$(wait_for "${work}/idle.json" '"ready":true' 180)"
sleep 2  # let the server finish parking the last lanes
rss_after="$(rss_kib "${idle_server_pid}")"
kill -TERM "${idle_pid}"
wait "${idle_pid}" || true
echo "idle workers: ${idle}"
echo "server VmRSS: ${rss_before} KiB before, ${rss_after} KiB with the workers"
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- the table ------------------------------------------------------------------

# verdict OK_EXPRESSION ERRORS: PASS/FAIL, FAIL when there were errors.
verdict() {
  if [ "$2" != 0 ]; then
    echo "FAIL (errors)"
  elif [ "$(awk "BEGIN { print (($1) ? 1 : 0) }")" = 1 ]; then
    echo "PASS"
  else
    echo "FAIL"
  fi
}
errs() { echo "$(num "$1" errors)/$(num "$2" errors)"; }
row() { printf '| %-37s | %9s | %9s | %13s | %-16s | %6s | %-13s |\n' "$@"; }
dashes() { printf -- '-%.0s' $(seq "$1"); }
rule() { row "$(dashes 37)" "$(dashes 9)" "$(dashes 9)" "$(dashes 13)" \
  "$(dashes 16)" "$(dashes 6)" "$(dashes 13)"; }
f1() { printf '%.1f' "$1"; }
sf1() { printf '%+.1f' "$1"; }
mib() { printf '%.1f MiB' "$(calc "$1 / 1024")"; }

tp_d="$(num "${tp_direct}" req_per_s)"
tp_t="$(num "${tp_tunnel}" req_per_s)"
tp_ratio="$(calc "${tp_d} > 0 ? 100 * ${tp_t} / ${tp_d} : 0")"
tp_errs="$(errs "${tp_direct}" "${tp_tunnel}")"
tp_err_sum=$(($(num "${tp_direct}" errors) + $(num "${tp_tunnel}" errors)))

lat_d50="$(num "${lat_direct}" p50_us)"
lat_t50="$(num "${lat_tunnel}" p50_us)"
lat_d99="$(num "${lat_direct}" p99_us)"
lat_t99="$(num "${lat_tunnel}" p99_us)"
lat_added="$(calc "${lat_t99} - ${lat_d99}")"
lat_errs="$(errs "${lat_direct}" "${lat_tunnel}")"
lat_err_sum=$(($(num "${lat_direct}" errors) + $(num "${lat_tunnel}" errors)))

dl_d="$(num "${dl_direct}" mb_per_s)"
dl_t="$(num "${dl_tunnel}" mb_per_s)"
up_d="$(num "${up_direct}" mb_per_s)"
up_t="$(num "${up_tunnel}" mb_per_s)"
dl_err_sum=$(($(num "${dl_direct}" errors) + $(num "${dl_tunnel}" errors)))
up_err_sum=$(($(num "${up_direct}" errors) + $(num "${up_tunnel}" errors)))

hol_t99="$(num "${hol_tunnel}" p99_us)"
hol_rise="$(calc "${hol_t99} - ${lat_t99}")"
# The slow reader must really have been reading (200, bytes flowing).
slow_bytes="$(num "${slow}" bytes)"
slow_ok=0
if [ "$(num "${slow}" status)" != 200 ] || [ "${slow_bytes}" = 0 ]; then
  slow_ok=1
fi
hol_err_sum=$(($(num "${hol_tunnel}" errors) + slow_ok))

idle_welcomed="$(num "${idle}" welcomed)"
idle_err_sum=$(($(num "${idle}" failed) + $(num "${idle}" lanes_failed)))
if [ "${idle_welcomed}" != "${idle_workers}" ]; then
  idle_err_sum=$((idle_err_sum + 1))
fi
per_worker="$(calc "${idle_welcomed} > 0 ? (${rss_after} - ${rss_before}) / ${idle_welcomed} : 0")"

echo
echo "== data path, one run: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') =="
echo "load average before ${load_before}, after ${load_after} (other work on the machine skews every figure)"
echo
{
row "scenario" "direct" "tunnel" "tunnel/direct" "target" "errors" "result"
rule
row "1 KiB GET x${connections} conns: req/s" "$(printf '%.0f' "${tp_d}")" \
  "$(printf '%.0f' "${tp_t}")" "$(f1 "${tp_ratio}") %" ">= 30 %" \
  "${tp_errs}" "$(verdict "${tp_ratio} >= 30" "${tp_err_sum}")"
row "  p50 latency (us)" "$(num "${tp_direct}" p50_us)" \
  "$(num "${tp_tunnel}" p50_us)" "" "" "" ""
row "  p99 latency (us)" "$(num "${tp_direct}" p99_us)" \
  "$(num "${tp_tunnel}" p99_us)" "" "" "" ""
row "${rate} req/s open loop: p50 (us)" "${lat_d50}" "${lat_t50}" \
  "$(sf1 "$(calc "${lat_t50} - ${lat_d50}")") us" "" "" ""
row "  p99 (us)" "${lat_d99}" "${lat_t99}" "$(sf1 "${lat_added}") us" \
  "added <= 1000 us" "${lat_errs}" \
  "$(verdict "${lat_added} <= 1000" "${lat_err_sum}")"
row "${big_bytes} B download: MB/s" "$(f1 "${dl_d}")" "$(f1 "${dl_t}")" \
  "$(f1 "$(calc "${dl_d} > 0 ? 100 * ${dl_t} / ${dl_d} : 0")") %" \
  ">= 1000 MB/s" "$(errs "${dl_direct}" "${dl_tunnel}")" \
  "$(verdict "${dl_t} >= 1000" "${dl_err_sum}")"
for side in server tunnel; do
  growth="$(num "${dl_tunnel}" "broker-${side}_growth_kib")"
  row "  broker-${side} RSS growth" "" "$(mib "${growth}")" "" "<= 16 MiB" "" \
    "$(verdict "${growth} <= 16384" "${dl_err_sum}")"
done
row "${big_bytes} B upload: MB/s" "$(f1 "${up_d}")" "$(f1 "${up_t}")" \
  "$(f1 "$(calc "${up_d} > 0 ? 100 * ${up_t} / ${up_d} : 0")") %" \
  ">= 1000 MB/s" "$(errs "${up_direct}" "${up_tunnel}")" \
  "$(verdict "${up_t} >= 1000" "${up_err_sum}")"
for side in server tunnel; do
  growth="$(num "${up_tunnel}" "broker-${side}_growth_kib")"
  row "  broker-${side} RSS growth" "" "$(mib "${growth}")" "" "<= 16 MiB" "" \
    "$(verdict "${growth} <= 16384" "${up_err_sum}")"
done
row "slow reader + ${rate} req/s: p99 (us)" "${lat_t99}" "${hol_t99}" \
  "$(sf1 "${hol_rise}") us" "rise <= 1000 us" \
  "0/$(num "${hol_tunnel}" errors)" \
  "$(verdict "${hol_rise} <= 1000" "${hol_err_sum}")"
row "${idle_workers} idle workers: KiB/worker" "" \
  "$(f1 "${per_worker}")" "" "<= 64 KiB" "${idle_err_sum}" \
  "$(verdict "${per_worker} <= 64" "${idle_err_sum}")"
} | tee "${work}/table.txt"
echo
echo "slow-reader row: 'direct' is the tunnel p99 without the slow reader" \
  "(scenario 2); the reader got $((slow_bytes / 1024)) KiB while the" \
  "server grew $(mib "$(num "${slow}" broker-server_growth_kib)") and the" \
  "worker $(mib "$(num "${slow}" broker-tunnel_growth_kib)")."
echo "errors are direct/tunnel: connect and I/O failures, non-2xx answers," \
  "requests never answered."
echo "VmRSS after start-up: broker-server ${rss_start_server} KiB," \
  "broker-tunnel ${rss_start_tunnel} KiB; at the end: broker-server" \
  "${rss_end_server} KiB, broker-tunnel ${rss_end_tunnel} KiB."
echo "$(grep -c 'FAIL' "${work}/table.txt" || true) of 9 targets missed."
