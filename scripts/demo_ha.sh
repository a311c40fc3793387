#!/usr/bin/env bash
# HA mode on loopback from the build directory $1: broker-dispatcher, two
# broker-servers registered with it, broker-ha-agent, and three workers of
# one token that take their server from the agent. Shows the placement, a
# request through each server, forwarding, and a server's SIGTERM moving
# its workers without a failed request. Stops everything at the end.
set -euo pipefail
build=${1:-build/release}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap bench_cleanup EXIT

token=demo-ha-token-$$
say() { printf '\n  %s\n' "$*"; }
show() { printf '  $ %s\n' "$*"; eval "$@" | sed 's/^/    /'; echo; }

"$build/tests/testing/test-origin" 0 >"$work/origin.out" &
pids+=($!)
origin=$(wait_for "$work/origin.out" '^[0-9]+$' 20)
echo '{"public":[{"method":"GET","path":"/bytes/:n"}]}' >"$work/server.json"
echo "{\"private\":[{\"method\":\"GET\",\"path\":\"/bytes/:n\",\"origin\":\"http://127.0.0.1:$origin\"}]}" >"$work/client.json"

PORT=0 "$build/services/dispatcher/broker-dispatcher" >"$work/dispatcher.out" 2>&1 &
pids+=($!)
dport=$(num "$(wait_for "$work/dispatcher.out" 'broker-dispatcher listening' 20)" port)
dispatcher=http://127.0.0.1:$dport

declare -a http tunnel spid
for id in 0 1; do
  env ACCEPT="$work/server.json" PORT=0 BROKER_TUNNEL_PORT=0 \
    DISPATCHER_URL="$dispatcher" HOSTNAME="broker-server-$id" \
    BROKER_SERVER_ADVERTISE_HOST=127.0.0.1 \
    "$build/services/server/broker-server" >"$work/s$id.out" 2>&1 &
  spid[$id]=$!
  pids+=($!)
  line=$(wait_for "$work/s$id.out" 'broker-server listening' 20)
  http[$id]=$(num "$line" port)
  tunnel[$id]=$(num "$line" tunnel_port)
  # Registered before the first allocation (the server's own call is
  # asynchronous): the same registration, waited for.
  curl -sf -o /dev/null -X POST -H 'content-type: application/vnd.api+json' \
    -d "{\"data\":{\"attributes\":{\"tunnel_url\":\"http://127.0.0.1:${tunnel[$id]}\",\"internal_url\":\"http://127.0.0.1:${http[$id]}\"}}}" \
    "$dispatcher/internal/brokerservers/$id"
done

env BROKER_TOKEN="$token" BROKER_HA_MODE_ENABLED=true BROKER_HA_AGENT_PORT=0 \
  BROKER_DISPATCHER_BASE_URL="$dispatcher" ACCEPT="$work/client.json" \
  BROKER_CLIENT_URL=http://worker:8000 \
  "$build/services/ha-agent/broker-ha-agent" >"$work/agent.out" 2>&1 &
pids+=($!)
aport=$(num "$(wait_for "$work/agent.out" 'broker-ha-agent listening' 20)" port)
for w in 0 1 2; do
  env BROKER_TOKEN="$token" BROKER_HA_MODE_ENABLED=true \
    BROKER_HA_AGENT_ADDR="127.0.0.1:$aport" BROKER_SERVER_URL=http://127.0.0.1:1 \
    ACCEPT="$work/client.json" BROKER_CLIENT_URL=http://worker:8000 PORT=0 \
    "$build/services/tunnel/broker-tunnel" >"$work/w$w.out" 2>&1 &
  pids+=($!)
  wait_for "$work/w$w.out" 'tunnel connected to the broker server' 20 >/dev/null
done

say "The agent and a worker log what Snyk's documentation promises:"
grep -ho 'checking for HA mode (enabled=true)\|received server id (serverId=[0-9]*)' "$work/agent.out" | sort | uniq -c | sed 's/^/    /'
grep -ho 'broker client is connecting to broker server (url=[^)]*)' "$work/w0.out" | head -1 | sed 's/^/    /'

say "The dispatcher placed the three workers over both servers:"
show "curl -s $dispatcher/internal/tokens/\$(printf %s $token | sha256sum | cut -c1-64)/brokerservers"

say "A request through each server:"
for id in 0 1; do
  show "curl -s -o /dev/null -w 'server $id: %{http_code}, %{size_download} bytes\n' http://127.0.0.1:${http[$id]}/broker/$token/bytes/1000"
done

say "SIGTERM to server 0 while requests go to server 1: its workers move over."
"$build/bench/load_gen" open --url "http://127.0.0.1:${http[1]}/broker/$token/bytes/1024" \
  --rate 200 --duration 4 --warmup 0 >"$work/load.json" 2>/dev/null &
load=$!
sleep 1
kill -TERM "${spid[0]}"
wait "${spid[0]}" && echo "    server 0 drained and exited 0"
wait "$load" || true
printf '    requests during the move: %s answered, %s failed\n' \
  "$(num "$(cat "$work/load.json")" ok)" "$(num "$(cat "$work/load.json")" errors)"
show "curl -s http://127.0.0.1:${http[1]}/connection-status/$token"
