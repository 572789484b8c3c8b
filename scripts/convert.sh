#!/usr/bin/env bash
# Hugging Face conversion: bash scripts/convert.sh import-hf HF_DIR OUT [...] | export-hf CKPT OUT_DIR [...] | check-hf HF_DIR
case "${1:-}" in
  import-hf|export-hf|check-hf) ;;
  *) echo "usage: scripts/convert.sh import-hf|export-hf|check-hf ARG..." >&2; exit 2;;
esac
exec bash "$(dirname "$0")/jaxtune.sh" "$@"
