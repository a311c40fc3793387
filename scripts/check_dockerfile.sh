#!/usr/bin/env bash
# Checks deploy/docker/Dockerfile against the binaries of a build ($1,
# default build/gcc) without a container runtime: each service's runtime
# stage installs a Debian package for every shared library the binary
# loads (ldd, then dpkg -S), beyond what debian:12-slim already has, and
# each service stage runs as the non-root uid 10001.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/gcc}
dockerfile=deploy/docker/Dockerfile
# In debian:12-slim already.
base="libc6 libgcc-s1 zlib1g"

# The Debian packages a stage installs, with those of the stages it is
# built FROM.
stage_packages() {
  awk -v want="$1" '
    /^FROM / { stage = $NF; parent[stage] = $2; next }
    /^[[:space:]]*#/ { next }
    {
      for (i = 1; i <= NF; i++)
        if ($i ~ /^(lib[a-z0-9.+-]+|ca-certificates)$/) pkgs[stage] = pkgs[stage] " " $i
    }
    END {
      for (s = want; s != ""; s = (s in parent ? parent[s] : "")) printf "%s", pkgs[s]
      print ""
    }' "${dockerfile}"
}

# A library's candidate paths (usrmerge: /lib and /usr/lib are one).
candidates() { printf '%s\n' "$1" "${1#/usr}" "/usr$1" "$(readlink -f "$1")"; }

# Every library any of the binaries loads, and one dpkg -S for all their
# candidate paths (dpkg reads its whole file database per call).
declare -A owner
mapfile -t libraries < <(for service in server tunnel dispatcher ha-agent webhook; do
  binary="${build}/services/${service}/broker-${service}"
  [ -x "${binary}" ] && ldd "${binary}" | awk '/=>/ { print $3 }'
done | sort -u)
if [ ${#libraries[@]} -gt 0 ]; then
  while IFS= read -r line; do
    owner["${line#*: }"]="${line%%:*}"
  done < <(for library in "${libraries[@]}"; do candidates "${library}"; done |
    sort -u | xargs dpkg -S 2>/dev/null || true)
fi

# The package owning a library path.
package_of() {
  local path
  while IFS= read -r path; do
    if [ -n "${owner[${path}]:-}" ]; then
      echo "${owner[${path}]}"
      return
    fi
  done < <(candidates "$1")
  echo "unpackaged:$1"
}

failed=0
for service in server tunnel dispatcher ha-agent webhook; do
  binary="${build}/services/${service}/broker-${service}"
  [ -x "${binary}" ] || { echo "dockerfile: ${binary} is not built" >&2; exit 1; }
  if ldd "${binary}" | grep -q 'not found'; then
    echo "dockerfile: ${binary} has unresolved libraries here" >&2
    failed=1
  fi
  installed=" ${base} $(stage_packages "${service}") "
  for library in $(ldd "${binary}" | awk '/=>/ { print $3 }'); do
    package="$(package_of "${library}")"
    if [[ "${installed}" != *" ${package} "* ]]; then
      echo "dockerfile: stage ${service} lacks ${package} (for ${library})" >&2
      failed=1
    fi
  done
  user="$(awk -v want="${service}" '/^FROM / { stage = $NF } stage == want && /^USER / { print $2 }' "${dockerfile}")"
  if [ "${user}" != "10001:10001" ]; then
    echo "dockerfile: stage ${service} runs as '${user:-root}', not 10001:10001" >&2
    failed=1
  fi
done
[ "${failed}" = 0 ] || exit 1
echo "dockerfile: every stage installs what its binary loads and runs as uid 10001"
