#!/usr/bin/env bash
# The study's grid, resumable: bash scripts/sweep.sh CONFIG --selections ... [key=value ...]
exec bash "$(dirname "$0")/jaxtune.sh" sweep "$@"
