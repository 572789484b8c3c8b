#!/usr/bin/env bash
# README command 2: set up (with the test extra), then run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export JAX_PLATFORMS=cpu
set +e
.venv/bin/python -m pytest tests -q -p no:cacheprovider --timeout=600 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
