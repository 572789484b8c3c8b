#!/usr/bin/env bash
# Create .venv with Python 3.11 and install jaxtune with pinned versions.
#   bash scripts/setup.sh          core install (train, evaluate, report, convert)
#   bash scripts/setup.sh test     plus the test extra (PyTorch CPU reference, pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRA="${1:-}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY' || { echo "jaxtune needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip setuptools wheel 2>/dev/null || true

TARGET="."
if [ -n "$EXTRA" ]; then TARGET=".[$EXTRA]"; fi
# torch==2.13.0+cpu (test extra only) lives on PyTorch's CPU index; try the configured indexes first.
if ! "${PIP[@]}" install -q -e "$TARGET"; then
  echo "retrying with PyTorch's CPU wheel index" >&2
  "${PIP[@]}" install -q -e "$TARGET" --extra-index-url "${JAXTUNE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
fi
echo "jaxtune installed in .venv ($(.venv/bin/python --version))"
