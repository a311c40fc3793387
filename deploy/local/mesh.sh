#!/usr/bin/env bash
# The one-machine mesh. On a fresh Debian 12 machine: installs what is
# missing (scripts/setup.sh), builds the binaries (Release, build/release),
# and starts on 127.0.0.1
#
#   broker-dispatcher (in memory), two broker-servers registered with it,
#   four worker "pods" (broker-ha-agent + broker-tunnel in HA mode, one
#   token), broker-webhook in front of the workers' webhook egress, an SCM
#   (test-origin: a real git repository acme/demo served by `git
#   http-backend`, and a small GitHub-like JSON API over it) and a platform
#   that receives webhooks (a second test-origin).
#
# Then it shows: the HA log lines, the dispatcher's placement, API calls
# through /broker/<token>/..., a request the accept rules block, `git
# clone` through the tunnel, a webhook from the SCM to the platform, how
# 2000 requests spread over the four workers, and a worker's kill -9 under
# load. It leaves the mesh running with URLs to try; Ctrl-C stops every
# process it started.
#
#   deploy/local/mesh.sh [--build-dir DIR] [--no-wait]
#
#   --build-dir DIR  use the binaries already built in DIR (no package
#                    install, no build)
#   --no-wait        stop everything after the demonstration; the exit code
#                    is non-zero if a step of it failed
#
# Environment: JOBS (parallel compile jobs, default: the number of cores),
# KEEP_LOGS (keep the scratch directory with every process's log).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${repo_root}"

build_dir=""
no_wait=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir)
      [ $# -ge 2 ] || { echo "mesh.sh: --build-dir needs a directory" >&2; exit 2; }
      build_dir="$2"
      shift 2
      ;;
    --build-dir=*)
      build_dir="${1#--build-dir=}"
      shift
      ;;
    --no-wait)
      no_wait=1
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "mesh.sh: unknown argument '$1' (try --help)" >&2
      exit 2
      ;;
  esac
done

if [ -t 1 ]; then
  b=$'\033[1m' dim=$'\033[2m' red=$'\033[31m' green=$'\033[32m' off=$'\033[0m'
else
  b="" dim="" red="" green="" off=""
fi
heading() { printf '\n%s== %s ==%s\n' "${b}" "$*" "${off}"; }
say() { printf '  %s\n' "$*"; }
# Prints a command as the reader would type it.
cmd() { printf '  %s$ %s%s\n' "${dim}" "$*" "${off}"; }
indent() { sed 's/^/    /'; }

# --- 1 and 2: packages and build --------------------------------------------

targets=(broker_server_bin broker_tunnel_bin broker_dispatcher_bin
  broker_ha_agent_bin broker_webhook_bin test_origin_bin load_gen)
if [ -z "${build_dir}" ]; then
  build_dir=build/release
  heading "step 1/2: packages (Debian 12, scripts/setup.sh)"
  if command -v apt-get >/dev/null; then
    say "checking ${dim}(a fresh machine downloads a few hundred MB; apt shows its progress)${off}"
    scripts/setup.sh
  else
    say "no apt-get here: install the packages listed in scripts/setup.sh yourself"
  fi
  heading "step 2/2: build (Release, ${build_dir}; [n/N] is ninja's progress)"
  launcher=()
  if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  fi
  cmd cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBROKER_BENCH=ON
  cmake -S . -B "${build_dir}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBROKER_BENCH=ON "${launcher[@]}" >/dev/null
  cmd cmake --build "${build_dir}" --target "${targets[*]}"
  say "${dim}(the first build takes several minutes on a small machine)${off}"
  cmake --build "${build_dir}" -j "${JOBS:-$(nproc)}" --target "${targets[@]}"
fi

server_bin="${build_dir}/services/server/broker-server"
tunnel_bin="${build_dir}/services/tunnel/broker-tunnel"
dispatcher_bin="${build_dir}/services/dispatcher/broker-dispatcher"
agent_bin="${build_dir}/services/ha-agent/broker-ha-agent"
webhook_bin="${build_dir}/services/webhook/broker-webhook"
origin_bin="${build_dir}/tests/testing/test-origin"
load_gen="${build_dir}/bench/load_gen"
for bin in "${server_bin}" "${tunnel_bin}" "${dispatcher_bin}" "${agent_bin}" \
  "${webhook_bin}" "${origin_bin}" "${load_gen}"; do
  if [ ! -x "${bin}" ]; then
    echo "mesh.sh: ${bin} is missing (build targets: ${targets[*]})" >&2
    exit 1
  fi
done
command -v git >/dev/null || { echo "mesh.sh: git is needed" >&2; exit 1; }

# --- start-up ---------------------------------------------------------------

# shellcheck source=bench/lib.sh
source bench/lib.sh
work="$(mktemp -d "${TMPDIR:-/tmp}/broker-mesh.XXXXXX")"
cleanup() {
  trap - INT TERM
  local pid live=0
  for pid in "${pids[@]}"; do
    if kill -0 "${pid}" 2>/dev/null; then live=$((live + 1)); fi
  done
  if [ "${live}" -gt 0 ]; then
    printf '\nstopping the %d processes of the mesh\n' "${live}"
  fi
  bench_cleanup
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Everything is on loopback: no proxy.
export no_proxy="127.0.0.1,localhost${no_proxy:+,${no_proxy}}"
export NO_PROXY="${no_proxy}"
# git without the user's or the system's configuration.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0

# A readable token shaped like Snyk's (a UUID). It only appears in URLs.
token=0a1b2c3d-dead-4bee-8f00-000000de0001
token_hash="$(printf %s "${token}" | sha256sum | cut -c1-64)"
failures=0
log_level="${LOG_LEVEL:-info}"

# The SCM's repository acme/demo, two commits.
git init -q -b main "${work}/src"
printf '# acme/demo\n\nA repository behind the broker.\n' >"${work}/src/README.md"
git -C "${work}/src" add README.md
git -C "${work}/src" -c user.name=Acme -c user.email=dev@acme.example \
  commit -q -m "First commit"
cat >"${work}/src/package.json" <<'EOF'
{
  "name": "demo",
  "version": "1.0.0",
  "dependencies": {
    "express": "4.18.2",
    "lodash": "4.17.21"
  }
}
EOF
git -C "${work}/src" add package.json
git -C "${work}/src" -c user.name=Acme -c user.email=dev@acme.example \
  commit -q -m "Add package.json"
mkdir -p "${work}/repos/acme"
git clone -q --bare "${work}/src" "${work}/repos/acme/demo.git"

"${origin_bin}" --git-root="${work}/repos" 0 >"${work}/scm.out" 2>&1 &
pids+=($!)
"${origin_bin}" 0 >"${work}/platform.out" 2>&1 &
pids+=($!)
scm_port="$(wait_for "${work}/scm.out" '^[0-9]+$' 20)"
platform_port="$(wait_for "${work}/platform.out" '^[0-9]+$' 20)"
scm="http://127.0.0.1:${scm_port}"
platform="http://127.0.0.1:${platform_port}"

# The server's rules: any platform request may go to the client (whose
# rules decide), and GitHub webhooks go on to the platform.
cat >"${work}/server-accept.json" <<EOF
{"public": [{"method": "any", "path": "/*"}],
 "private": [
   {"method": "POST", "path": "/webhook/github", "origin": "${platform}"},
   {"method": "POST", "path": "/webhook/github/:id", "origin": "${platform}"}]}
EOF
# The client's rules (workers and broker-webhook): reads of the SCM's API
# and git fetches out to the SCM; GitHub webhooks in.
cat >"${work}/accept.json" <<EOF
{"private": [
   {"method": "GET", "path": "/api/v3/repos/:owner/:repo", "origin": "${scm}"},
   {"method": "GET", "path": "/api/v3/repos/:owner/:repo/contents/:path+",
    "origin": "${scm}"},
   {"method": "GET", "path": "/git/:owner/:repo.git/info/refs",
    "valid": [{"queryParam": "service", "values": ["git-upload-pack"]}],
    "origin": "${scm}"},
   {"method": "POST", "path": "/git/:owner/:repo.git/git-upload-pack",
    "origin": "${scm}"}],
 "public": [
   {"method": "POST", "path": "/webhook/github"},
   {"method": "POST", "path": "/webhook/github/:id"}]}
EOF

env PORT=0 LOG_LEVEL="${log_level}" "${dispatcher_bin}" \
  >"${work}/dispatcher.out" 2>&1 &
pids+=($!)
line="$(wait_for "${work}/dispatcher.out" '"broker-dispatcher listening"' 20)"
dispatcher="http://127.0.0.1:$(num "${line}" port)"

declare -a http_port tunnel_port
for id in 0 1; do
  env ACCEPT="${work}/server-accept.json" PORT=0 BROKER_TUNNEL_PORT=0 \
    DISPATCHER_URL="${dispatcher}" HOSTNAME="broker-server-${id}" \
    BROKER_SERVER_ADVERTISE_HOST=127.0.0.1 LOG_LEVEL="${log_level}" \
    "${server_bin}" >"${work}/server${id}.out" 2>&1 &
  pids+=($!)
done
for id in 0 1; do
  line="$(wait_for "${work}/server${id}.out" '"broker-server listening"' 20)"
  http_port[id]="$(num "${line}" port)"
  tunnel_port[id]="$(num "${line}" tunnel_port)"
done
# Both registered before the first allocation (their calls are
# asynchronous): the dispatcher counted two registrations.
registered() {
  curl -s "${dispatcher}/metrics" |
    awk '/^broker_dispatcher_server_events_total\{type="registered"\}/ { print int($2) }'
}
deadline=$((SECONDS + 20))
until [ "$(registered)" = 2 ]; do
  [ "${SECONDS}" -lt "${deadline}" ] || die "the servers never registered with the dispatcher"
  sleep 0.05
done

# broker-webhook's port comes first: the workers name it in
# BROKER_CLIENT_URL, and it needs the workers' egress ports. The kernel
# picks a free one (through a test-origin that exits at once).
"${origin_bin}" 0 >"${work}/free-port.out" 2>&1 &
free_pid=$!
webhook_port="$(wait_for "${work}/free-port.out" '^[0-9]+$' 20)"
kill -TERM "${free_pid}"
wait "${free_pid}" || true
webhook="http://127.0.0.1:${webhook_port}"

pods=(0 1 2 3)
declare -a agent_port worker_pid worker_port egress_port server_of
for p in "${pods[@]}"; do
  env BROKER_TOKEN="${token}" BROKER_HA_MODE_ENABLED=true \
    BROKER_HA_AGENT_PORT=0 BROKER_DISPATCHER_BASE_URL="${dispatcher}" \
    ACCEPT="${work}/accept.json" BROKER_CLIENT_URL="${webhook}" \
    LOG_LEVEL="${log_level}" \
    "${agent_bin}" >"${work}/agent${p}.out" 2>&1 &
  pids+=($!)
done
for p in "${pods[@]}"; do
  line="$(wait_for "${work}/agent${p}.out" '"broker-ha-agent listening"' 20)"
  agent_port[p]="$(num "${line}" port)"
done
# A worker: its pod's agent says which server to dial (BROKER_SERVER_URL
# is required but, in HA mode, the dispatcher's tunnel_url wins).
start_worker() {
  local p="$1" log="$2"
  env BROKER_TOKEN="${token}" BROKER_HA_MODE_ENABLED=true \
    BROKER_HA_AGENT_ADDR="127.0.0.1:${agent_port[$p]}" \
    BROKER_SERVER_URL=http://127.0.0.1:1 ACCEPT="${work}/accept.json" \
    BROKER_CLIENT_URL="${webhook}" PORT=0 BROKER_TUNNEL_EGRESS_PORT=0 \
    LOG_LEVEL="${log_level}" \
    "${tunnel_bin}" >"${log}" 2>&1 &
  worker_pid[p]=$!
  pids+=($!)
}
for p in "${pods[@]}"; do start_worker "${p}" "${work}/worker${p}.out"; done
egress=()
for p in "${pods[@]}"; do
  line="$(wait_for "${work}/worker${p}.out" '"broker-tunnel listening"' 20)"
  worker_port[p]="$(num "${line}" port)"
  egress_port[p]="$(num "${line}" egress_port)"
  egress+=("127.0.0.1:${egress_port[p]}")
done
for p in "${pods[@]}"; do
  wait_for "${work}/worker${p}.out" 'tunnel connected to the broker server' 20 >/dev/null
  line="$(wait_for "${work}/worker${p}.out" 'broker client is connecting to broker server' 20)"
  server_of[p]="$(grep -o 'serverId=[0-9]*' <<<"${line}" | head -n1 | cut -d= -f2)"
done

env PORT="${webhook_port}" ACCEPT="${work}/accept.json" BROKER_TOKEN="${token}" \
  BROKER_TUNNEL_EGRESS_TARGET="ipv4:$(IFS=,; echo "${egress[*]}")" \
  LOG_LEVEL="${log_level}" "${webhook_bin}" >"${work}/webhook.out" 2>&1 &
pids+=($!)
wait_for "${work}/webhook.out" '"broker-webhook listening"' 20 >/dev/null
deadline=$((SECONDS + 20))
until curl -sf -o /dev/null "${webhook}/healthcheck"; do
  [ "${SECONDS}" -lt "${deadline}" ] || die "broker-webhook never became healthy"
  sleep 0.05
done

heading "The mesh on 127.0.0.1 (${#pids[@]} processes)"
printf '  %-26s %s\n' \
  "broker-dispatcher" "${dispatcher}  (in memory)" \
  "broker-server-0" "http://127.0.0.1:${http_port[0]}  tunnels on :${tunnel_port[0]}" \
  "broker-server-1" "http://127.0.0.1:${http_port[1]}  tunnels on :${tunnel_port[1]}"
for p in "${pods[@]}"; do
  printf '  %-26s %s\n' "pod ${p}: agent + worker" \
    "agent :${agent_port[p]}, worker http://127.0.0.1:${worker_port[p]} (egress :${egress_port[p]})"
done
printf '  %-26s %s\n' \
  "broker-webhook" "${webhook}  -> the 4 workers' egress" \
  "SCM (git + JSON API)" "${scm}  repository acme/demo" \
  "platform" "${platform}  (receives webhooks)"

# --- the demonstration ------------------------------------------------------

step_failed() {
  printf '  %sFAILED: %s%s\n' "${red}" "$*" "${off}"
  failures=$((failures + 1))
}

metric() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk -v name="$2" '$1 == name { printf "%d\n", $2; found = 1 } END { if (!found) print 0 }'
}
worker_counts() {
  local p out=()
  for p in "${pods[@]}"; do out+=("$(metric "${worker_port[p]}" broker_tunnel_requests_total)"); done
  echo "${out[*]}"
}
# failed JSON: requests of a load_gen run that did not get a 2xx.
failed() { echo $(($(num "$1" requests) - $(num "$1" ok) + $(num "$1" unanswered))); }

show_ha_lines() {
  heading "1. HA mode: what the agents and workers log"
  local p n line ha_lines=0
  for p in "${pods[@]}"; do
    local a w
    a="$(grep -ho 'checking for HA mode (enabled=true)\|received server id (serverId=[0-9]*)' \
      "${work}/agent${p}.out" | head -n 2)"
    w="$(grep -ho 'broker client is connecting to broker server (url=[^)]*)' \
      "${work}/worker${p}.out" | head -n 1)"
    n="$(grep -c . <<<"${a}${a:+$'\n'}${w}")"
    ha_lines=$((ha_lines + n))
    if [ "${p}" = 0 ]; then
      while IFS= read -r line; do say "pod 0 agent:  ${line}"; done <<<"${a}"
      say "pod 0 worker: ${w}"
    fi
  done
  say "pods 1-3: the same three lines (serverId=${server_of[1]}, ${server_of[2]}, ${server_of[3]})"
  [ "${ha_lines}" = 12 ] || { step_failed "expected 3 HA lines per pod, saw ${ha_lines} of 12"; return; }
}

show_placement() {
  heading "2. The dispatcher's placement of the token's four clients"
  cmd "curl -s ${dispatcher}/internal/tokens/\$(printf %s <token> | sha256sum | cut -c1-64)/brokerservers"
  local answer
  answer="$(curl -s "${dispatcher}/internal/tokens/${token_hash}/brokerservers")"
  local entry
  while IFS= read -r entry; do
    printf '    server %s: %s clients, tunnels at %s\n' \
      "$(grep -o '"id":"[^"]*"' <<<"${entry}" | cut -d'"' -f4)" \
      "$(grep -o '"clients":[0-9]*' <<<"${entry}" | cut -d: -f2)" \
      "$(grep -o '"tunnel_url":"[^"]*"' <<<"${entry}" | cut -d'"' -f4)"
  done < <(grep -o '{[^{}]*{[^{}]*}[^{}]*}' <<<"${answer}")
  local p
  for p in "${pods[@]}"; do printf '    pod %s -> server %s\n' "${p}" "${server_of[p]}"; done
  local total
  total="$(grep -o '"clients":[0-9]*' <<<"${answer}" | awk -F: '{ n += $2 } END { print n + 0 }')"
  [ "${total:-0}" = 4 ] || step_failed "the dispatcher lists ${total:-0} clients, not 4: ${answer}"
}

show_api() {
  heading "3. The platform reads the SCM's API through /broker/<token>/ (server 0)"
  local base="http://127.0.0.1:${http_port[0]}/broker/${token}" answer code
  cmd "curl -s ${base}/api/v3/repos/acme/demo"
  answer="$(curl -s -w '\n%{http_code}' "${base}/api/v3/repos/acme/demo")"
  code="${answer##*$'\n'}"
  answer="${answer%$'\n'*}"
  indent <<<"${answer}"
  if [ "${code}" != 200 ] || ! grep -q '"full_name":"acme/demo"' <<<"${answer}"; then
    step_failed "GET /api/v3/repos/acme/demo: ${code}"
  fi
  cmd "curl -s ${base}/api/v3/repos/acme/demo/contents/package.json"
  answer="$(curl -s -w '\n%{http_code}' "${base}/api/v3/repos/acme/demo/contents/package.json")"
  code="${answer##*$'\n'}"
  answer="${answer%$'\n'*}"
  # The content shortened.
  # shellcheck disable=SC2001
  sed 's/"content":"\([^"]\{0,20\}\)[^"]*"/"content":"\1..."/' <<<"${answer}" | indent
  say "its \"content\", base64-decoded:"
  grep -o '"content":"[^"]*"' <<<"${answer}" | cut -d'"' -f4 | base64 -d 2>/dev/null |
    sed 's/^/    | /'
  if [ "${code}" != 200 ] || ! grep -q '"encoding":"base64"' <<<"${answer}"; then
    step_failed "GET .../contents/package.json: ${code}"
  fi
}

show_blocked() {
  heading "4. A request the accept rules do not allow"
  local url="http://127.0.0.1:${http_port[0]}/broker/${token}/api/v3/repos/acme/demo/actions/secrets"
  cmd "curl -s -i ${url}"
  local answer
  answer="$(curl -s -i "${url}" | tr -d '\r')"
  { head -n 1 <<<"${answer}"; sed '1,/^$/d' <<<"${answer}"; } | indent
  head -n 1 <<<"${answer}" | grep -q ' 401' || step_failed "expected 401"
}

show_clone() {
  heading "5. git clone through the tunnel (server 1 this time)"
  local url="http://127.0.0.1:${http_port[1]}/broker/${token}/git/acme/demo.git"
  cmd "git clone ${url}"
  if ! git clone -q "${url}" "${work}/clone" 2>"${work}/clone.err"; then
    indent <"${work}/clone.err"
    step_failed "git clone"
    return
  fi
  git -C "${work}/clone" log --format='%h %s' | indent
  say "files: $(git -C "${work}/clone" ls-files | tr '\n' ' ')"
}

show_webhook() {
  heading "6. A webhook from the SCM to the platform"
  cat >"${work}/push.json" <<'EOF'
{"ref":"refs/heads/main","repository":{"full_name":"acme/demo"},"commits":[{"id":"4b1d","modified":["package.json"]}]}
EOF
  local before=() p
  for p in "${pods[@]}"; do before+=("$(metric "${worker_port[p]}" broker_tunnel_webhooks_total)"); done
  cmd "curl -s -X POST ${webhook}/webhook/github -H 'content-type: application/json' -H 'x-github-event: push' -H 'x-github-delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958' -d @push.json"
  local answer code
  answer="$(curl -s -w '\n%{http_code}' -X POST "${webhook}/webhook/github" \
    -H 'content-type: application/json' -H 'x-github-event: push' \
    -H 'x-github-delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958' \
    --data-binary @"${work}/push.json")"
  code="${answer##*$'\n'}"
  answer="${answer%$'\n'*}"
  say "${code}: the platform's answer, what it received (a few fields):"
  for field in method path x-github-event x-github-delivery x-snyk-broker; do
    grep -o "\"${field}\":\"[^\"]*\"" <<<"${answer}" | head -n 1 | indent
  done
  local sent got
  sent="$(sha256sum <"${work}/push.json" | cut -c1-64)"
  got="$(grep -o '"body_sha256":"[^"]*"' <<<"${answer}" | cut -d'"' -f4)"
  if [ "${sent}" = "${got}" ]; then
    say "  body: the same $(wc -c <"${work}/push.json") bytes (sha256 ${sent:0:12}...)"
  fi
  say "the platform's own log:"
  grep -m1 '^echoed POST /webhook/github' "${work}/platform.out" | indent || true
  local carried=""
  for p in "${pods[@]}"; do
    if [ "$(metric "${worker_port[p]}" broker_tunnel_webhooks_total)" -gt "${before[p]}" ]; then
      carried="${p}"
    fi
  done
  say "carried by pod ${carried:-?}'s worker (its broker_tunnel_webhooks_total went up) to server ${server_of[${carried:-0}]}"
  if [ "${code}" != 200 ] || [ "${sent}" != "${got}" ] ||
    ! grep -q '^echoed POST /webhook/github' "${work}/platform.out"; then
    step_failed "the webhook did not reach the platform intact (${code})"
  fi
}

# share_table BEFORE AFTER: per-worker requests between two worker_counts
# snapshots.
share_table() {
  local -a before after
  read -r -a before <<<"$1"
  read -r -a after <<<"$2"
  local total=0 p
  for p in "${pods[@]}"; do total=$((total + after[p] - before[p])); done
  printf '    %-8s %-8s %9s %7s\n' worker server requests share
  for p in "${pods[@]}"; do
    local n=$((after[p] - before[p]))
    printf '    pod %-4s %-8s %9d %6s%%\n' "${p}" "${server_of[p]}" "${n}" \
      "$(awk -v n="${n}" -v t="${total}" 'BEGIN { printf "%.1f", t ? 100 * n / t : 0 }')"
  done
}

# load RATE SECONDS NAME: the same open load on both servers, in the
# background (results in NAME0.json, NAME1.json).
load_pids=()
load() {
  local id
  load_pids=()
  for id in 0 1; do
    "${load_gen}" open --url "http://127.0.0.1:${http_port[id]}/broker/${token}/api/v3/repos/acme/demo" \
      --rate "$1" --duration "$2" --warmup 0 --connections 16 \
      >"${work}/$3${id}.json" 2>"${work}/$3${id}.err" &
    load_pids+=($!)
    pids+=($!)
  done
}
load_wait() {
  local pid
  for pid in "${load_pids[@]}"; do wait "${pid}" || true; done
}
load_summary() {
  local a b
  a="$(cat "${work}/${1}0.json")"
  b="$(cat "${work}/${1}1.json")"
  ms() { awk -v u="$(num "$1" "$2")" 'BEGIN { printf "%.1f", u / 1000 }'; }
  printf '    %d requests, %d answered 200, %d failed; p50 %s/%s ms, p99 %s/%s ms (server 0/1)\n' \
    $(($(num "${a}" requests) + $(num "${b}" requests))) \
    $(($(num "${a}" ok) + $(num "${b}" ok))) \
    $(($(failed "${a}") + $(failed "${b}"))) \
    "$(ms "${a}" p50_us)" "$(ms "${b}" p50_us)" \
    "$(ms "${a}" p99_us)" "$(ms "${b}" p99_us)"
}
load_failed() { echo $(($(failed "$(cat "${work}/${1}0.json")") + $(failed "$(cat "${work}/${1}1.json")"))); }

show_spread() {
  heading "7. 2000 requests: how they spread over the four workers"
  cmd "load_gen open --url http://127.0.0.1:${http_port[0]}/broker/<token>/api/v3/repos/acme/demo --rate 250 --duration 4   # and the same on server 1"
  local before after
  before="$(worker_counts)"
  load 250 4 spread
  load_wait
  after="$(worker_counts)"
  load_summary spread
  say "each worker's broker_tunnel_requests_total (GET :<worker>/metrics), the difference:"
  share_table "${before}" "${after}"
  local -a b a
  read -r -a b <<<"${before}"
  read -r -a a <<<"${after}"
  local p
  for p in "${pods[@]}"; do
    [ $((a[p] - b[p])) -gt 0 ] || step_failed "pod ${p}'s worker got no request"
  done
  [ "$(load_failed spread)" = 0 ] || step_failed "$(load_failed spread) requests failed"
}

victim=3
show_kill() {
  heading "8. kill -9 of a worker under load"
  say "400 requests/s (200 on each server) for 5 s; pod ${victim}'s worker (server ${server_of[victim]}) is killed about 1 s in"
  local start at_kill after
  start="$(worker_counts)"
  load 200 5 kill
  # About a second of load first (the counters moved by 300).
  local deadline=$((SECONDS + 15)) sum
  while :; do
    sum=0
    local -a now s
    read -r -a now <<<"$(worker_counts)"
    read -r -a s <<<"${start}"
    for p in "${pods[@]}"; do sum=$((sum + now[p] - s[p])); done
    [ "${sum}" -ge 300 ] || [ "${SECONDS}" -ge "${deadline}" ] && break
    sleep 0.05
  done
  at_kill="$(worker_counts)"
  cmd "kill -9 ${worker_pid[victim]}   # pod ${victim}'s broker-tunnel"
  kill -KILL "${worker_pid[victim]}"
  wait "${worker_pid[victim]}" 2>/dev/null || true
  load_wait
  after="$(worker_counts | awk -v v="${victim}" -v k="$(cut -d' ' -f$((victim + 1)) <<<"${at_kill}")" '{ $(v + 1) = k; print }')"
  load_summary kill
  say "requests per worker (broker_tunnel_requests_total):"
  local -a s0 k1 e2
  read -r -a s0 <<<"${start}"
  read -r -a k1 <<<"${at_kill}"
  read -r -a e2 <<<"${after}"
  printf '    %-8s %-8s %12s %12s\n' worker server "to the kill" "after it"
  for p in "${pods[@]}"; do
    printf '    pod %-4s %-8s %12d %12d%s\n' "${p}" "${server_of[p]}" \
      $((k1[p] - s0[p])) $((e2[p] - k1[p])) \
      "$([ "${p}" = "${victim}" ] && echo "   (killed)")"
  done
  local -a b a
  read -r -a b <<<"${at_kill}"
  read -r -a a <<<"${after}"
  for p in "${pods[@]}"; do
    [ "${p}" = "${victim}" ] && continue
    [ $((a[p] - b[p])) -gt 0 ] || step_failed "pod ${p}'s worker took nothing after the kill"
  done
  # Requests in flight on the dead worker may fail; a handful at most.
  local lost
  lost="$(load_failed kill)"
  [ "${lost}" -le 20 ] || step_failed "${lost} requests failed around the kill"
}

show_restart() {
  heading "9. The worker comes back"
  local t0=${SECONDS}
  cmd "broker-tunnel   # pod ${victim} again, same agent"
  start_worker "${victim}" "${work}/worker${victim}-again.out"
  local line
  line="$(wait_for "${work}/worker${victim}-again.out" '"broker-tunnel listening"' 20)"
  worker_port[victim]="$(num "${line}" port)"
  wait_for "${work}/worker${victim}-again.out" 'tunnel connected to the broker server' 20 >/dev/null
  line="$(wait_for "${work}/worker${victim}-again.out" 'broker client is connecting to broker server' 20)"
  server_of[victim]="$(grep -o 'serverId=[0-9]*' <<<"${line}" | head -n1 | cut -d= -f2)"
  say "connected to server ${server_of[victim]} again within $((SECONDS - t0 + 1)) s; 1.5 s of 400 requests/s:"
  local before after
  before="$(worker_counts)"
  load 200 1.5 back
  load_wait
  after="$(worker_counts)"
  load_summary back
  share_table "${before}" "${after}"
  local -a b a
  read -r -a b <<<"${before}"
  read -r -a a <<<"${after}"
  [ $((a[victim] - b[victim])) -gt 0 ] || step_failed "the restarted worker took nothing"
}

show_metrics() {
  heading "10. What an operator scrapes: broker-server-0's /metrics (a few lines)"
  cmd "curl -s http://127.0.0.1:${http_port[0]}/metrics | grep -E '^(http_request_total|broker_socket_connection_total|broker_server_tunnels|broker_server_lanes|broker_filter_blocks_total)'"
  local text
  text="$(curl -s "http://127.0.0.1:${http_port[0]}/metrics")"
  grep -E '^(http_request_total|broker_socket_connection_total|broker_server_tunnels|broker_server_lanes|broker_filter_blocks_total)' \
    <<<"${text}" | indent
  grep -q '^broker_socket_connection_total' <<<"${text}" ||
    step_failed "broker-server's /metrics has no broker_socket_connection_total"
  if grep -q "${token}" <<<"${text}"; then
    step_failed "the raw token is in /metrics"
  fi
  say "(docs/observability.md lists every metric of every binary)"
}

# A step runs with `set -e` off (as the left of ||): a failed command in
# it does not stop the mesh; each step checks its outcome with step_failed.
for step in show_ha_lines show_placement show_api show_blocked show_clone \
  show_webhook show_spread show_kill show_restart show_metrics; do
  "${step}" || true
done

# --- what to try ------------------------------------------------------------

heading "The mesh is running"
printf '  %-20s %s\n' "token" "${token}" \
  "platform ingress" "http://127.0.0.1:${http_port[0]}/broker/${token}/...  (broker-server-0)" \
  "" "http://127.0.0.1:${http_port[1]}/broker/${token}/...  (broker-server-1)" \
  "SCM webhooks" "${webhook}/webhook/github  (broker-webhook)" \
  "server metrics" "http://127.0.0.1:${http_port[0]}/metrics, http://127.0.0.1:${http_port[1]}/metrics" \
  "dispatcher" "${dispatcher}/healthcheck, ${dispatcher}/metrics"
for p in "${pods[@]}"; do
  printf '  %-20s %s\n' "pod ${p} worker" \
    "http://127.0.0.1:${worker_port[p]}/healthcheck, /systemcheck, /metrics"
done
say "try:"
say "  curl -s http://127.0.0.1:${http_port[0]}/broker/${token}/api/v3/repos/acme/demo/contents/README.md"
say "  git clone http://127.0.0.1:${http_port[1]}/broker/${token}/git/acme/demo.git"
say "  curl -s -X POST -H 'content-type: application/json' -d '{\"ref\":\"refs/heads/main\"}' ${webhook}/webhook/github"
say "  curl -s http://127.0.0.1:${http_port[0]}/connection-status/${token}"
if [ "${no_wait}" = 0 ] || [ -n "${KEEP_LOGS:-}" ]; then
  say "logs: ${work}/*.out"
fi

if [ "${failures}" -gt 0 ]; then
  printf '\n%s%d step(s) of the demonstration failed%s\n' "${red}" "${failures}" "${off}"
else
  printf '\n%severy step of the demonstration passed%s\n' "${green}" "${off}"
fi
if [ "${no_wait}" = 1 ]; then
  exit $((failures > 0 ? 1 : 0))
fi
say "Ctrl-C stops every process of the mesh."
sleep infinity &
pids+=($!)
wait $! || true
