#!/usr/bin/env bash
# Runs clang-tidy (.clang-tidy, warnings are errors) over the production
# sources, using the compile commands of a clang build directory ($1,
# default build/asan).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/asan}
if [ ! -f "$build/compile_commands.json" ]; then
  echo "tidy: $build/compile_commands.json is missing; configure $build first" >&2
  exit 1
fi
mapfile -t files < <(git ls-files 'common/*.cc' 'filters/*.cc' 'services/*.cc')
if [ ${#files[@]} -eq 0 ]; then exit 0; fi
printf '%s\n' "${files[@]}" |
  xargs -P "$(nproc)" -n 1 clang-tidy -quiet -p "$build" 2>/dev/null |
  tee /tmp/broker-tidy.$$ >/dev/null || true
if grep -qE '(warning|error):' /tmp/broker-tidy.$$; then
  cat /tmp/broker-tidy.$$ >&2
  rm -f /tmp/broker-tidy.$$
  echo "tidy: clang-tidy found problems" >&2
  exit 1
fi
rm -f /tmp/broker-tidy.$$
echo "tidy: ${#files[@]} files clean"
