#!/usr/bin/env bash
# README command 2: set up (with the test extra), then check formatting and lint (ruff) and run the whole test
# suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export JAX_PLATFORMS=cpu
# Formatting and lint (ruff.toml) first: a change that breaks either fails in seconds.
.venv/bin/ruff format --check --quiet . || { echo "ruff format: files above need formatting (.venv/bin/ruff format .)" >&2; exit 1; }
.venv/bin/ruff check --quiet . || { echo "ruff check: fix the problems above (.venv/bin/ruff check --fix .)" >&2; exit 1; }
set +e
# Two worker processes, one test file each at a time (module fixtures built once): most tests wait on XLA's
# single-threaded compiler, so two cores run two files side by side. JAXTUNE_TEST_WORKERS=0 runs in one process.
# Files in collection order (tests/conftest.py puts the long ones first), not xdist's largest-count-first.
.venv/bin/python -m pytest tests -q -p no:cacheprovider --timeout=600 \
  -n "${JAXTUNE_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --junitxml=.pytest-report.xml "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
