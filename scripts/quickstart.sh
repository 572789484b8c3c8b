#!/usr/bin/env bash
# README command 1: set up, then run the main job on the embedded default (CPU, generated ten-ability data, two
# tiny models): the study's grid in miniature (jaxtune/demo/sweep.yaml), its report, the best run exported to HF.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
exec .venv/bin/jaxtune quickstart "$@"
