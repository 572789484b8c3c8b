#!/usr/bin/env bash
# Fine-tune on the NVIDIA GPUs of one machine (the fallback when no TPU is at hand):
#   bash scripts/train_gpu.sh configs/doit-7b.yaml [key=value ...]
# Installs jaxtune[gpu] (CUDA 12 wheels of jaxlib) once, and selects the cuDNN attention kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/jaxtune ] && .venv/bin/python -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null \
  || bash scripts/setup.sh gpu || exit 1
config="${1:?usage: scripts/train_gpu.sh CONFIG [key=value ...]}"; shift
exec .venv/bin/jaxtune train "$config" model.attention_impl=cudnn "$@"
