#!/usr/bin/env bash
# The tests: sets up the environment, then runs the fast test suite (pass --slow for the long reproductions).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$root"
if [ "${1:-}" = "--slow" ]; then
  shift
  exec python -m pytest -m slow "$@"
fi
exec python -m pytest "$@"
