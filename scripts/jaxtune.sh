#!/usr/bin/env bash
# The jaxtune command on this machine, installing it first when .venv lacks it:
#   bash scripts/jaxtune.sh SUBCOMMAND [ARG...]
# The extra installed follows the machine: jaxtune[tpu] on a TPU VM, jaxtune[gpu] where nvidia-smi finds a GPU,
# plain jaxtune elsewhere (JAXTUNE_EXTRA overrides). scripts/train.sh, eval.sh, sweep.sh and convert.sh call this,
# and gcp/tpu.sh runs them on every worker of a slice.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${JAXTUNE_EXTRA+x}" ]; then
  if [ -e /dev/accel0 ] || [ -e /dev/vfio/0 ]; then JAXTUNE_EXTRA=tpu
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then JAXTUNE_EXTRA=gpu
  else JAXTUNE_EXTRA=""; fi
fi
# A failed install is a failure (1), whatever pip exited with: 2 would read as bad input to a supervisor.
[ -x .venv/bin/jaxtune ] || bash scripts/setup.sh $JAXTUNE_EXTRA || exit 1
exec .venv/bin/jaxtune "$@"
