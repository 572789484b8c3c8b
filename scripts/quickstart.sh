#!/usr/bin/env bash
# README command 1: set up, then run the main job on the embedded default (CPU, generated ten-ability data, a
# tiny model): train at several data volumes, evaluate each ability, print the table and draw the growth plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/jaxtune quickstart "$@"
