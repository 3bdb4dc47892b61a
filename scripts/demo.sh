#!/usr/bin/env bash
# The demo: sets up the environment, then runs the synthetic experiments and checks their claims.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec toyformer demo "$@"
