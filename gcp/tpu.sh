#!/usr/bin/env bash
# Run jaxtune on a Cloud TPU VM slice (every worker of a pod runs the same command; jax.distributed finds its peers
# from the TPU metadata, so no addresses are needed).
#
#   gcp/tpu.sh create   NAME ACCELERATOR ZONE      e.g. gcp/tpu.sh create doit v5p-16 us-east5-a  (spot: SPOT=1)
#   gcp/tpu.sh setup    NAME ZONE                  copy this checkout to every worker and install jaxtune[tpu]
#   gcp/tpu.sh train    NAME ZONE CONFIG [k=v...]  start training on every worker (logs: ~/jaxtune/train.log)
#   gcp/tpu.sh logs     NAME ZONE                  follow worker 0's log
#   gcp/tpu.sh stop     NAME ZONE                  SIGTERM the run (it saves a checkpoint and exits; rerun resumes)
#   gcp/tpu.sh delete   NAME ZONE
#
# Every host must see the same run directory: mount a GCS bucket with gcsfuse on each worker (e.g. at /mnt/gcs,
# `gcsfuse --implicit-dirs BUCKET /mnt/gcs`) and set run_dir=/mnt/gcs/runs/NAME, so a preempted slice resumes
# elsewhere: `checkpoint.resume=auto` picks the latest complete checkpoint. (gs:// URLs are not read directly.)
set -euo pipefail
cmd="${1:?usage: gcp/tpu.sh create|setup|train|logs|stop|delete NAME ZONE ...}"
name="${2:?TPU name}"
case "$cmd" in
  create)
    accel="${3:?accelerator type, e.g. v5p-8}"; zone="${4:?zone}"
    version="${TPU_VERSION:-v2-alpha-tpuv5}"
    extra=()
    if [ "${SPOT:-0}" = "1" ]; then extra+=(--spot); fi
    gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accel" --version "$version" \
      "${extra[@]}"
    ;;
  setup)
    zone="${3:?zone}"
    root="$(cd "$(dirname "$0")/.." && pwd)"
    tar -C "$root" --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/jaxtune.tgz .
    gcloud compute tpus tpu-vm scp /tmp/jaxtune.tgz "$name":~/jaxtune.tgz --zone "$zone" --worker=all
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
      "mkdir -p ~/jaxtune && tar -C ~/jaxtune -xzf ~/jaxtune.tgz && cd ~/jaxtune && bash scripts/setup.sh tpu"
    ;;
  train)
    zone="${3:?zone}"; config="${4:?config file}"; shift 4
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
      "cd ~/jaxtune && nohup .venv/bin/jaxtune train $config $* > train.log 2>&1 &"
    ;;
  logs)
    zone="${3:?zone}"
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=0 --command "tail -f ~/jaxtune/train.log"
    ;;
  stop)
    zone="${3:?zone}"
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "pkill -TERM -f 'jaxtune train' || true"
    ;;
  delete)
    zone="${3:?zone}"
    gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
    ;;
  *)
    echo "unknown command $cmd" >&2; exit 2;;
esac
