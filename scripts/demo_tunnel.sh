#!/usr/bin/env bash
# Starts a test origin, broker-server and broker-tunnel on loopback from the
# build directory $1, relays a few platform requests, and stops everything.
set -euo pipefail
build=${1:-build/release}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Waits until $1 has a line matching $2 (10 s at most).
wait_for() {
  for _ in $(seq 100); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "demo: $1 never said '$2'" >&2
  cat "$1" >&2
  return 1
}

# A small repository for `git clone` through the tunnel, served by the real
# `git http-backend` behind the test origin.
export GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0 HOME="$work"
git init -q -b main "$work/repos/demo.git.src"
(cd "$work/repos/demo.git.src" &&
  printf '# demo\nCloned through broker-server -> tunnel -> broker-tunnel.\n' >README.md &&
  git add README.md &&
  git -c user.name=demo -c user.email=demo@example.com commit -q -m "First commit")
git clone -q --bare "$work/repos/demo.git.src" "$work/repos/demo.git"

"$build/tests/testing/test-origin" --git-root="$work/repos" 0 >"$work/origin.out" &
pids+=($!)
wait_for "$work/origin.out" '^[0-9]'
origin=$(head -n 1 "$work/origin.out")

cat >"$work/server-accept.json" <<JSON
{"public": [{"method": "any", "path": "/*"}]}
JSON
cat >"$work/client-accept.json" <<JSON
{"private": [
  {"method": "GET", "path": "/echo", "origin": "http://127.0.0.1:$origin"},
  {"method": "POST", "path": "/echo", "origin": "http://127.0.0.1:$origin"},
  {"method": "GET", "path": "/bytes/:n", "origin": "http://127.0.0.1:$origin"},
  {"method": "GET", "path": "/git/:repo.git/info/refs",
   "valid": [{"queryParam": "service", "values": ["git-upload-pack"]}],
   "origin": "http://127.0.0.1:$origin"},
  {"method": "POST", "path": "/git/:repo.git/git-upload-pack",
   "origin": "http://127.0.0.1:$origin"}
]}
JSON

ACCEPT="$work/server-accept.json" PORT=0 BROKER_TUNNEL_PORT=0 LOG_LEVEL=info \
  "$build/services/server/broker-server" >"$work/server.out" &
pids+=($!)
wait_for "$work/server.out" 'broker-server listening'
line=$(grep 'broker-server listening' "$work/server.out")
http_port=$(echo "$line" | sed 's/.*"port":\([0-9]*\).*/\1/')
tunnel_port=$(echo "$line" | sed 's/.*"tunnel_port":\([0-9]*\).*/\1/')

token=7f9a8d7c-1b2e-4c3d-9e8f-0a1b2c3d4e5f
BROKER_TOKEN=$token BROKER_SERVER_URL="http://127.0.0.1:$tunnel_port" \
  ACCEPT="$work/client-accept.json" PORT=0 LOG_LEVEL=info \
  "$build/services/tunnel/broker-tunnel" >"$work/tunnel.out" &
pids+=($!)
wait_for "$work/server.out" 'broker client connected'
echo "broker-server on :$http_port (tunnels on :$tunnel_port), one broker-tunnel, origin on :$origin"
echo "  tunnel log: $(grep 'tunnel connected' "$work/tunnel.out" | cut -c1-160)"

show() {
  printf '\n%s\n  $ curl %s\n' "$1" "$2"
  curl -s -i "http://127.0.0.1:$http_port$2" | sed 's/^/  /' | head -n 12
  echo
}
show "A GET relayed to the origin (which echoes what it received):" \
  "/broker/$token/echo?q=1"
show "A path the client's accept rules do not allow:" "/broker/$token/admin"
show "A token with no tunnel:" "/broker/00000000-0000-4000-8000-000000000000/echo"
printf '\n100 MiB streamed through the tunnel:\n  '
curl -s -o /dev/null -w '%{http_code}, %{size_download} bytes in %{time_total} s\n' \
  "http://127.0.0.1:$http_port/broker/$token/bytes/104857600"

printf '\n`git clone` through the tunnel (fetch only: a push is not in the rules):\n'
printf '  $ git clone http://127.0.0.1:%s/broker/<token>/git/demo.git\n' "$http_port"
git clone -q "http://127.0.0.1:$http_port/broker/$token/git/demo.git" "$work/clone"
printf '  HEAD: %s\n' "$(git -C "$work/clone" log --oneline -1)"
sed 's/^/  | /' "$work/clone/README.md"
if git -C "$work/clone" push -q origin HEAD:refs/heads/other 2>/dev/null; then
  echo "  a push went through: the rules are wrong" >&2
  exit 1
fi
echo "  git push: refused, as the rules say"
