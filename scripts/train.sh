#!/usr/bin/env bash
# Fine-tune: bash scripts/train.sh CONFIG [CONFIG ...] [key=value ...]  (e.g. configs/doit-33b.yaml
# configs/hardware/v5p-16.yaml data.selection=curated-640 run_dir=gs://BUCKET/runs/33b-c640). Resumes a run directory
# that already holds checkpoints (checkpoint.resume=auto), so rerunning after a preemption continues the run.
exec bash "$(dirname "$0")/jaxtune.sh" train "$@"
