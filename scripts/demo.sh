#!/usr/bin/env bash
# Sets everything up, builds, and demonstrates what is built so far: a
# platform request relayed broker-server -> gRPC tunnel -> broker-tunnel ->
# origin on loopback, the accept-rule engine deciding real requests against
# Snyk's GitHub template, `broker-filter lint` reporting risky rules, and
# HA mode: dispatcher, two servers, the agent and three workers, with a
# server's SIGTERM moving its workers. (Webhooks join as they land.)
set -euo pipefail
cd "$(dirname "$0")/.."

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }

bold "1/5 Installing packages (Debian 12)"
scripts/setup.sh

bold "2/5 Building (build/release; the first build takes a few minutes)"
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DBROKER_BENCH=ON >/dev/null
cmake --build build/release -j "$(nproc)" --target broker_filter \
  broker_server_bin broker_tunnel_bin broker_dispatcher_bin \
  broker_ha_agent_bin test_origin_bin load_gen

bold "3/5 A platform request through the tunnel (all on 127.0.0.1)"
scripts/demo_tunnel.sh build/release

bold "4/5 HA mode: a dispatcher, two servers, the agent, three workers"
scripts/demo_ha.sh build/release

bold "5/5 Deciding requests with Snyk's GitHub template (tests/fixtures/accept-templates/github-com.json)"
filter=build/release/filters/broker-filter
accept=tests/fixtures/accept-templates/github-com.json
export GITHUB_TOKEN=ghp_demo_token GITHUB_API=api.github.com GITHUB_RAW=raw.githubusercontent.com

check() {
  local what=$1; shift
  printf '\n%s\n  $ broker-filter check %s\n  ' "$what" "$*"
  "$filter" check --accept "$accept" "$@"
}

check "A manifest read that Snyk makes (allowed, forwarded with the token):" \
  --list private --method GET --url /repos/acme/app/contents/package.json
check "A git tree listing late in the 320 rules:" \
  --list private --method GET --url '/repos/acme/app/git/trees/main?recursive=1'
check "A path no rule allows:" \
  --list private --method GET --url /repos/acme/app/actions/secrets
check "Encoded traversal that Snyk Broker would forward (blocked here):" \
  --list private --method GET --url '/repos/acme/app/contents/%2e%2e%2f.env'
check "A write where only reads are allowed:" \
  --list private --method DELETE --url /repos/acme/app/contents/package.json
body=$(mktemp)
trap 'rm -f "$body"' EXIT
echo '{"commits":[{"added":["package.json"],"modified":[]}]}' >"$body"
check "A GitHub push webhook touching package.json (public rules):" \
  --list public --method POST --url /webhook/github --body-file "$body"
echo '{"commits":[{"added":["README.md"],"modified":[]}]}' >"$body"
check "A push webhook that touches no manifest:" \
  --list public --method POST --url /webhook/github --body-file "$body"

printf '\nLint: rules in the template that allow more than they probably mean:\n  $ broker-filter lint %s\n' "$accept"
"$filter" lint "$accept" | sed 's/^/  /' | cut -c1-220

printf '\nTry your own: %s check --accept <your accept.json> --list private --method GET --url /path\n' "$filter"
