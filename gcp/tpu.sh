#!/usr/bin/env bash
# Run jaxtune on a Cloud TPU VM slice. Every worker of a pod slice runs the same command; jax.distributed finds its
# peers from the TPU metadata, so no addresses are needed.
#
#   gcp/tpu.sh create    NAME ACCELERATOR ZONE    on-demand; SPOT=1 for spot capacity, QUEUED=1 for a queued resource
#   gcp/tpu.sh setup     NAME ZONE                copy this checkout to every worker, pinned install of jaxtune[tpu],
#                                                 mount BUCKET at MOUNT with gcsfuse when BUCKET is set
#   gcp/tpu.sh run       NAME ZONE -- CMD [ARG...]   start CMD (run in ~/jaxtune) on every worker, in the background
#   gcp/tpu.sh train     NAME ZONE CONFIG [ARG...]   = run ... scripts/train.sh CONFIG ARG...  (also: eval, sweep,
#                                                 convert -> scripts/eval.sh, sweep.sh, convert.sh)
#   gcp/tpu.sh logs      NAME ZONE                follow the log of every worker (lines prefixed by worker)
#   gcp/tpu.sh status    NAME ZONE                the slice's state and, per worker, running / exited RC
#   gcp/tpu.sh stop      NAME ZONE                SIGTERM the run on every worker (it saves a checkpoint and exits 0)
#   gcp/tpu.sh delete    NAME ZONE
#   gcp/tpu.sh supervise NAME ACCELERATOR ZONE -- CMD [ARG...]
#                                                 create (if needed), set up, run, and while the job has not finished:
#                                                 when the slice is preempted or lost, delete it, recreate it, set it
#                                                 up and start the same command again (the run resumes from its latest
#                                                 checkpoint: checkpoint.resume=auto). At most MAX_RESTARTS (default
#                                                 10) restarts; polls every POLL_SECONDS (default 60).
#
# Settings (environment): TPU_VERSION (runtime image, default v2-alpha-tpuv5), SPOT=1, QUEUED=1, PROJECT (gcloud
# --project), BUCKET + MOUNT (gcsfuse, default mount /mnt/gcs), GCLOUD (the gcloud command, default gcloud),
# READY_TIMEOUT (seconds to wait for a slice to become READY, default 3600; queued resources may need more).
# Runs can keep run_dir in gs://BUCKET/... directly; a gcsfuse mount is needed only for ArrayRecord data.
# Every worker's job writes ~/jaxtune/logs/job.log, job.pid and, when it ends, job.rc (its exit status).
set -euo pipefail

GCLOUD="${GCLOUD:-gcloud}"
VERSION="${TPU_VERSION:-v2-alpha-tpuv5}"
MOUNT="${MOUNT:-/mnt/gcs}"
root="$(cd "$(dirname "$0")/.." && pwd)"

die() { echo "gcp/tpu.sh: $*" >&2; exit 2; }
project_flags() { if [ -n "${PROJECT:-}" ]; then printf '%s\n' "--project=$PROJECT"; fi; }

tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND ...
  local flags; mapfile -t flags < <(project_flags)
  "$GCLOUD" compute tpus tpu-vm "$@" "${flags[@]}"
}

on_workers() {  # on_workers NAME ZONE WORKER COMMAND: one ssh to every worker (WORKER=all) or to one
  local name="$1" zone="$2" worker="$3" command="$4"
  tpu ssh "$name" --zone="$zone" --worker="$worker" --command="$command"
}

quote_command() {  # the arguments as one shell-safe command line
  local out="" arg
  for arg in "$@"; do out+="$(printf '%q' "$arg") "; done
  printf '%s' "${out% }"
}

state_of() {  # the slice's state (READY, CREATING, PREEMPTED, ...), or MISSING
  local name="$1" zone="$2" state
  if [ "${QUEUED:-0}" = "1" ]; then
    local flags; mapfile -t flags < <(project_flags)
    state="$("$GCLOUD" compute tpus queued-resources describe "$name" --zone="$zone" --format='value(state.state)' \
      "${flags[@]}" 2>/dev/null)" || { echo MISSING; return; }
    # A queued resource is ACTIVE once its node exists; report it as the node would.
    case "$state" in ACTIVE) state=READY;; SUSPENDED|FAILED) state=PREEMPTED;; esac
  else
    state="$(tpu describe "$name" --zone="$zone" --format='value(state)' 2>/dev/null)" || { echo MISSING; return; }
  fi
  echo "${state:-MISSING}"
}

cmd_create() {
  local name="$1" accel="$2" zone="$3" extra=() flags
  mapfile -t flags < <(project_flags)
  if [ "${SPOT:-0}" = "1" ]; then extra+=(--spot); fi
  if [ "${QUEUED:-0}" = "1" ]; then
    "$GCLOUD" compute tpus queued-resources create "$name" --node-id="$name" --zone="$zone" \
      --accelerator-type="$accel" --runtime-version="$VERSION" "${extra[@]}" "${flags[@]}"
  else
    tpu create "$name" --zone="$zone" --accelerator-type="$accel" --version="$VERSION" "${extra[@]}"
  fi
  wait_ready "$name" "$zone"
}

wait_ready() {
  local name="$1" zone="$2" state polls=0 poll="${POLL_SECONDS:-60}" limit="${READY_TIMEOUT:-3600}"
  while :; do
    state="$(state_of "$name" "$zone")"
    [ "$state" = READY ] && return 0
    case "$state" in PREEMPTED|TERMINATED|FAILED|MISSING) [ "$polls" -gt 0 ] && die "$name is $state";; esac
    [ $((polls * poll)) -ge "$limit" ] && [ "$polls" -gt 0 ] && die "$name not READY after ${limit}s (state $state)"
    sleep "$poll"; polls=$((polls + 1))
  done
}

cmd_setup() {
  # gcsfuse only where it is needed: jaxtune reads gs:// itself (run_dir, init_from, tokenizers, eval data, JSON
  # Lines data); ArrayRecord data (jaxtune prepare) is read by random access from a mount. With CONFIGS (config files,
  # space-separated), BUCKET is mounted only when one of them names a path under MOUNT; without CONFIGS, whenever
  # BUCKET is set. gcsfuse is installed (Google's apt repository) where it is missing.
  local name="$1" zone="$2" tarball remote mount="" config
  if [ -n "${BUCKET:-}" ]; then
    mount="BUCKET is set"
    if [ -n "${CONFIGS:-}" ]; then
      mount=""
      for config in $CONFIGS; do
        [ -f "$config" ] || die "setup: CONFIGS names $config, which does not exist"
        if grep -q -- "$MOUNT/" "$config"; then mount="$config names a path under $MOUNT"; fi
      done
    fi
  fi
  if [ -n "$mount" ]; then
    echo "gcp/tpu.sh setup: mounting gs://$BUCKET at $MOUNT with gcsfuse on every worker: $mount"
  else
    echo "gcp/tpu.sh setup: no gcsfuse mount (no config reads data under $MOUNT; gs:// paths are read directly)"
  fi
  tarball="$(mktemp -t jaxtune.XXXXXX.tgz)"
  tar -C "$root" --exclude=.venv --exclude=runs --exclude=.git -czf "$tarball" .
  tpu scp "$tarball" "$name:~/jaxtune.tgz" --zone="$zone" --worker=all
  rm -f "$tarball"
  # The pinned install: scripts/setup.sh installs jaxtune[tpu] with setup.py's exact versions.
  remote='mkdir -p ~/jaxtune && tar -C ~/jaxtune -xzf ~/jaxtune.tgz && cd ~/jaxtune && bash scripts/setup.sh tpu'
  if [ -n "$mount" ]; then
    remote+=' && (command -v gcsfuse >/dev/null || { curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg'
    remote+=' | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc]'
    remote+=' https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list'
    remote+=' >/dev/null && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; })'
    remote+=" && sudo mkdir -p $(printf '%q' "$MOUNT") && sudo chown \$USER $(printf '%q' "$MOUNT")"
    remote+=" && (mountpoint -q $(printf '%q' "$MOUNT") || gcsfuse --implicit-dirs $(printf '%q' "$BUCKET") $(printf '%q' "$MOUNT"))"
  fi
  on_workers "$name" "$zone" all "$remote"
}

cmd_run() {  # cmd_run NAME ZONE CMD...
  local name="$1" zone="$2"; shift 2
  [ "$#" -gt 0 ] || die "run: no command given (gcp/tpu.sh run NAME ZONE -- CMD ...)"
  local job remote
  job="$(quote_command "$@")"
  # The job runs detached from the ssh session (setsid + nohup), so a dropped connection does not end it; job.rc is
  # written when it ends, which is how status and supervise tell "finished" from "still running".
  remote="cd ~/jaxtune && mkdir -p logs && rm -f logs/job.rc || exit 1; "
  remote+="setsid nohup bash -c $(printf '%q' "$job; echo \$? > logs/job.rc") > logs/job.log 2>&1 < /dev/null & "
  remote+="echo \$! > logs/job.pid"
  on_workers "$name" "$zone" all "$remote"
}

cmd_logs() {
  local name="$1" zone="$2"
  on_workers "$name" "$zone" all \
    'tail -n +1 -F ~/jaxtune/logs/job.log | sed -u "s/^/[$(hostname)] /"'
}

job_state() {  # on worker 0: "running", "exited RC" or "none"
  local name="$1" zone="$2"
  on_workers "$name" "$zone" 0 \
    'cd ~/jaxtune/logs 2>/dev/null || { echo none; exit 0; }; if [ -f job.rc ]; then echo "exited $(cat job.rc)"; elif [ -f job.pid ] && kill -0 "$(cat job.pid)" 2>/dev/null; then echo running; else echo none; fi' \
    2>/dev/null || echo unreachable
}

cmd_status() {
  local name="$1" zone="$2" state
  state="$(state_of "$name" "$zone")"
  echo "slice $name: $state"
  if [ "$state" = READY ]; then
    on_workers "$name" "$zone" all \
      'cd ~/jaxtune/logs 2>/dev/null && if [ -f job.rc ]; then echo "$(hostname): exited $(cat job.rc)"; elif [ -f job.pid ] && kill -0 "$(cat job.pid)" 2>/dev/null; then echo "$(hostname): running, last: $(tail -n 1 job.log)"; else echo "$(hostname): no job"; fi'
  fi
}

cmd_stop() {
  local name="$1" zone="$2"
  # SIGTERM to the job's process group: the trainer finishes its step, saves, and exits 0.
  on_workers "$name" "$zone" all \
    'if [ -f ~/jaxtune/logs/job.pid ]; then kill -TERM -- -"$(cat ~/jaxtune/logs/job.pid)" 2>/dev/null || true; fi'
}

cmd_delete() {
  local name="$1" zone="$2"
  if [ "${QUEUED:-0}" = "1" ]; then
    local flags; mapfile -t flags < <(project_flags)
    "$GCLOUD" compute tpus queued-resources delete "$name" --zone="$zone" --force --quiet "${flags[@]}"
  else
    tpu delete "$name" --zone="$zone" --quiet
  fi
}

cmd_supervise() {  # cmd_supervise NAME ACCEL ZONE CMD...
  local name="$1" accel="$2" zone="$3"; shift 3
  [ "$#" -gt 0 ] || die "supervise: no command given (gcp/tpu.sh supervise NAME ACCEL ZONE -- CMD ...)"
  local restarts=0 max="${MAX_RESTARTS:-10}" state job started=0
  while :; do
    state="$(state_of "$name" "$zone")"
    case "$state" in
      READY)
        if [ "$started" = 0 ]; then
          cmd_setup "$name" "$zone"
          cmd_run "$name" "$zone" "$@"
          started=1
          echo "supervise: started on $name (restart $restarts of at most $max)"
        else
          job="$(job_state "$name" "$zone")"
          case "$job" in
            "exited 0") echo "supervise: the job finished on $name"; return 0;;
            exited*) echo "supervise: the job failed on $name ($job); not restarting a failed job" >&2; return 1;;
            none)  # the slice came back (maintenance, host restart) without the job: start it again
              restarts=$((restarts + 1))
              [ "$restarts" -gt "$max" ] && { echo "supervise: the job was lost $restarts times; giving up" >&2; return 1; }
              echo "supervise: the job is gone from $name; starting it again (restart $restarts of $max)"
              cmd_run "$name" "$zone" "$@";;
          esac
        fi
        ;;
      CREATING|STARTING|PROVISIONING|WAITING_FOR_RESOURCES|ACCEPTED|RESTARTING|REPAIRING) ;;
      MISSING|PREEMPTED|TERMINATED|FAILED|STOPPED|SUSPENDED)
        if [ "$started" = 1 ]; then
          restarts=$((restarts + 1))
          [ "$restarts" -gt "$max" ] && { echo "supervise: $name lost $restarts times; giving up" >&2; return 1; }
          echo "supervise: $name is $state; recreating it (restart $restarts of $max)"
        fi
        [ "$state" != MISSING ] && cmd_delete "$name" "$zone"
        cmd_create "$name" "$accel" "$zone"
        started=0
        continue
        ;;
      *) echo "supervise: $name is in state $state; waiting" ;;
    esac
    sleep "${POLL_SECONDS:-60}"
  done
}

drop_dashes() { if [ "${1:-}" = "--" ]; then shift; fi; printf '%s\0' "$@"; }

cmd="${1:-}"; [ -n "$cmd" ] || die "usage: gcp/tpu.sh create|setup|run|train|eval|sweep|convert|logs|status|stop|delete|supervise NAME ..."
shift
case "$cmd" in
  create) [ "$#" -eq 3 ] || die "usage: gcp/tpu.sh create NAME ACCELERATOR ZONE"; cmd_create "$@";;
  setup|logs|status|stop|delete)
    [ "$#" -eq 2 ] || die "usage: gcp/tpu.sh $cmd NAME ZONE"; "cmd_$cmd" "$@";;
  run)
    [ "$#" -ge 3 ] || die "usage: gcp/tpu.sh run NAME ZONE -- CMD [ARG...]"
    name="$1" zone="$2"; shift 2; mapfile -d '' -t job < <(drop_dashes "$@")
    cmd_run "$name" "$zone" "${job[@]}";;
  train|eval|sweep|convert)
    [ "$#" -ge 3 ] || die "usage: gcp/tpu.sh $cmd NAME ZONE ARG..."
    name="$1" zone="$2"; shift 2
    cmd_run "$name" "$zone" bash "scripts/$cmd.sh" "$@";;
  supervise)
    [ "$#" -ge 4 ] || die "usage: gcp/tpu.sh supervise NAME ACCELERATOR ZONE -- CMD [ARG...]"
    name="$1" accel="$2" zone="$3"; shift 3; mapfile -d '' -t job < <(drop_dashes "$@")
    cmd_supervise "$name" "$accel" "$zone" "${job[@]}";;
  *) die "unknown command '$cmd' (create, setup, run, train, eval, sweep, convert, logs, status, stop, delete, supervise)";;
esac
