#!/usr/bin/env bash
# Create or refresh .venv so that it matches requirements.lock (all packages) and setup.py/settings.ini (vl_lab itself).
# Called by every Makefile target: a fresh clone needs no other set-up step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
lock_hash=$(sha256sum requirements.lock | cut -d' ' -f1)
pkg_hash=$(cat setup.py settings.ini | sha256sum | cut -d' ' -f1)
quiet() { grep -v -e 'is ignored: it is neither a file nor a directory' -e '^WARNING: Location' >&2 || true; }

if [ "$(cat .venv/.lock-hash 2>/dev/null)" != "$lock_hash" ]; then
  echo "== setting up .venv from requirements.lock (first time: a few minutes) =="
  "$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 11), "vl_lab needs Python 3.11+"'
  rm -rf .venv
  # PyTorch with its CUDA libraries makes .venv about 7 GB: say so in one line rather than fail half-way through pip
  free_gb=$(df -Pk . | awk 'NR==2 {printf "%.1f", $4 / 1048576}')
  if awk -v f="$free_gb" 'BEGIN {exit !(f < 7.5)}'; then
    echo "bootstrap: .venv needs about 7.5 GB free on the disk of $(pwd); $free_gb GB free" >&2
    exit 1
  fi
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock 2> >(quiet)
  echo "$lock_hash" > .venv/.lock-hash
  rm -f .venv/.pkg-hash
fi
if [ "$(cat .venv/.pkg-hash 2>/dev/null)" != "$pkg_hash" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2> >(quiet)
  echo "$pkg_hash" > .venv/.pkg-hash
fi
