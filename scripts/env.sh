#!/usr/bin/env bash
# Creates (once) the project's virtualenv in .venv and installs toyformer into it.
# Sourced by demo.sh and test.sh; safe to run again: it only installs what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.toyformer-installed"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  # torch first and pinned, so that pip takes the local CPU build where one exists instead of a CUDA wheel.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[dev,wiki,ray,lens,tensorboard,wandb]"
  touch "$stamp"
fi
# The browser test of the report pages drives Debian's headless Chromium and its driver.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "scripts/env.sh: no apt-get to install chromium and chromium-driver; the browser test will be skipped" >&2
  fi
fi
export PATH="$venv/bin:$PATH"
