#!/usr/bin/env bash
# Fails when clang-format would change a tracked C++ or proto file.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.h' '*.cc' '*.proto')
if [ ${#files[@]} -eq 0 ]; then exit 0; fi
bad=()
for f in "${files[@]}"; do
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
done
if [ ${#bad[@]} -gt 0 ]; then
  echo "clang-format would change: ${bad[*]}" >&2
  echo "run: clang-format -i ${bad[*]}" >&2
  exit 1
fi
echo "format: ${#files[@]} files clean"
