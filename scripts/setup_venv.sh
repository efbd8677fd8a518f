#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment with every extra the README commands need.
# Usage: scripts/setup_venv.sh [VENV_DIR]   (default .venv). Re-running is cheap: it reinstalls only when
# pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
python3 -m venv "$venv"
pip_args=(--disable-pip-version-check -q)
# This workplace keeps the CPU build of torch on local disk; elsewhere pip resolves it from the index.
if [ -d /opt/wheels ]; then pip_args+=(--find-links /opt/wheels); fi
echo "[setup] installing saxgpt-jax[all,dev] into $venv (first run takes a few minutes)..."
"$venv/bin/python" -m pip install "${pip_args[@]}" --upgrade pip wheel setuptools
"$venv/bin/python" -m pip install "${pip_args[@]}" -e ".[all,dev]"
rm -f "$venv"/.installed-*
touch "$stamp"
echo "[setup] done: $venv"
