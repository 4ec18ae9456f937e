#!/usr/bin/env bash
# Create the virtual environment and install metafsl with its pinned stack, quietly.
# Only the package index is used.  learn2learn comes from a cached wheel built by
# scripts/build_learn2learn.sh; gym (imported by learn2learn at import time) is installed
# without gym_notices so that it prints no banner.
set -euo pipefail
PY="${1:-python3}"
VENV="${2:-.venv}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
step() { echo "[setup] $1"; }
run() { "$@" >>"$log" 2>&1 || { echo "[setup] failed: $*" >&2; tail -n 40 "$log" >&2; exit 1; }; }

[ -x "$VENV/bin/python" ] || { step "creating $VENV"; run "$PY" -m venv "$VENV"; }
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
run "${PIP[@]}" --upgrade pip
step "installing torch 2.14.1 + torchvision 0.29.1"
run "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
step "building/caching the learn2learn 0.2.0 wheel"
wheel="$(bash scripts/build_learn2learn.sh "$PY" 2>>"$log")" || { tail -n 40 "$log" >&2; exit 1; }
step "installing metafsl, its dependencies, the sweep plugins, the experiment loggers and ONNX export"
run "${PIP[@]}" -e ".[dev,sweep,loggers,export]"
# learn2learn's runtime needs at import time (its gsutil/qpth extras are not needed).
run "${PIP[@]}" scipy requests tqdm cloudpickle
run "${PIP[@]}" --no-deps "gym==0.26.2" "$wheel"
"$VENV/bin/pip" uninstall -y -q gym_notices >>"$log" 2>&1 || true
run "$VENV/bin/python" -c "import learn2learn, metafsl"
step "ready: $VENV"
