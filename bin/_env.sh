# Sourced by bin/pipeline and bin/test: create .venv at the repo root and install from the lock when needed.
# The stamp holds a hash of the lock and pyproject, so an unchanged environment costs nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
want="$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing the locked environment into .venv (first run takes about 2 minutes)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # torch first and exactly pinned: a CPU wheel lies on disk here; any other spec downloads CUDA builds.
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Quiet, local-only tooling: no analytics, Prefect state inside the project.
export DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export PREFECT_LOGGING_LEVEL="${PREFECT_LOGGING_LEVEL:-WARNING}"
