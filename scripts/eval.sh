#!/usr/bin/env bash
# Evaluate a checkpoint per ability: bash scripts/eval.sh CKPT --suite doit,ceval --out DIR [key=value ...]
exec bash "$(dirname "$0")/jaxtune.sh" eval "$@"
