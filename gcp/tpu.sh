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
#   gcp/tpu.sh stop      NAME ZONE                SIGTERM the run on every worker (it saves a checkpoint and exits 75)
#   gcp/tpu.sh delete    NAME ZONE
#   gcp/tpu.sh supervise NAME ACCELERATOR ZONE -- CMD [ARG...]
#                                                 create (if needed), set up, run, and restart until the run is
#                                                 complete (below). The run resumes from its latest checkpoint.
#
# Settings (environment): TPU_VERSION (runtime image, default v2-alpha-tpuv5), SPOT=1, QUEUED=1, PROJECT (gcloud
# --project), BUCKET + MOUNT (gcsfuse, default mount /mnt/gcs), GCLOUD (the gcloud command, default gcloud),
# READY_TIMEOUT (seconds to wait for a slice to become READY, default 3600; queued resources may need more).
# Runs can keep run_dir in gs://BUCKET/... directly; a gcsfuse mount is needed only for ArrayRecord data.
# Every worker's job writes ~/jaxtune/logs/job.log, job.pid (its process group) and, when it ends, job.rc (its
# exit status).
#
# supervise: done when the job exited 0 on every worker and RUN_DIR/completed.json exists (for a sweep, exit 0 on
# every worker: `jaxtune sweep` exits 0 only when every cell is complete). RUN_DIR (train) or SWEEP_DIR (sweep) name
# the run folder; by default the job's last run_dir=... argument, a sweep when the job runs scripts/sweep.sh or
# `sweep`. Every POLL_SECONDS (default 60) one `ssh --worker=all` reads every worker's job state, and worker 0
# reads the run's heartbeat.json (for a sweep the newest among its cells) with jaxtune's own storage code:
#   - slice PREEMPTED/TERMINATED/STOPPED/FAILED/SUSPENDED or missing: delete, recreate, set up, start again;
#   - exit 75 on any worker (stopped early, state saved), or the job gone from every worker: a preemption;
#   - any other non-zero exit on any worker, the job gone on some workers while others run, exit 0 without the
#     marker: a failure;
#   - a heartbeat older than HANG_SECONDS (default 1800) in the phases "training" and "saving", or older than
#     COMPILE_HANG_SECONDS (default twice that) in the others and before the job's first heartbeat (long stretches
#     without a refresh: a restore, XLA compiling a large model, a suite generating, a sweep between cells): a hang;
#   - exit 2 on any worker (bad input): stop the job everywhere, print the end of each worker's log, exit 2.
# Before any restart the job is stopped on every worker (SIGTERM and SIGCONT to its process group,
# STOP_GRACE_SECONDS (default 120), SIGKILL) and no process of it may survive: a survivor would hold the run's lease
# (and the chips); when one does, the slice is deleted and recreated (a failure).
# Restarts of a jaxtune train or sweep add checkpoint.force_takeover=true: the previous job is known gone (stopped
# with no survivor, or its slice deleted), but a recreated slice's hostnames differ from the lease holder's.
# A failed create (no capacity, a quota) is retried from the failure budget. Started on a slice whose job runs on
# every worker, supervise takes that job over (a supervisor restarted after its own machine went down).
# Preemptions draw on MAX_PREEMPTIONS (default 100), failures and hangs on MAX_FAILURES (default 3); past either,
# supervise exits 1. Each restart prints one line (time, kind, reason, budgets left); the end prints the restarts by
# kind and the total time.
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

# ---- supervise: restart until the run's completion marker exists ----------------------------------------------
# One poll reads every worker's job state with one `ssh --worker=all` (one line per worker, parsed below) and, while
# the job runs or once every worker exited 0, worker 0's view of RUN_DIR/heartbeat.json and RUN_DIR/completed.json.

now_utc() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# Prints "job HOST running", "job HOST exited RC" or "job HOST none" (no job, or its process is gone without an
# exit status: killed, host restarted, disk wiped). A stopped (SIGSTOP) process counts as running.
JOB_PROBE='h=$(hostname); if [ -f ~/jaxtune/logs/job.rc ]; then echo "job $h exited $(cat ~/jaxtune/logs/job.rc)"; elif [ -f ~/jaxtune/logs/job.pid ] && kill -0 "$(cat ~/jaxtune/logs/job.pid)" 2>/dev/null; then echo "job $h running"; else echo "job $h none"; fi'

# SIGTERM to the job's process group (and SIGCONT, so a stopped process can act on it), STOP_GRACE_SECONDS to
# finish, then SIGKILL; prints "stopped HOST" once no process of the group is left (zombies aside), else
# "survivor HOST PGID".
stop_probe() {
  local grace="${STOP_GRACE_SECONDS:-120}"
  printf '%s' 'h=$(hostname); alive() { ps -e -o pgid=,stat= | awk -v g="$1" '"'"'$1 == g && $2 !~ /^Z/ {f=1} END {exit !f}'"'"'; }; '
  printf '%s' 'p=$(cat ~/jaxtune/logs/job.pid 2>/dev/null); if [ -n "$p" ] && alive "$p"; then '
  printf '%s' 'kill -TERM -- "-$p" 2>/dev/null; kill -CONT -- "-$p" 2>/dev/null; '
  printf 'for i in $(seq %d); do alive "$p" || break; sleep 0.1; done; ' "$((grace * 10))"
  printf '%s' 'kill -KILL -- "-$p" 2>/dev/null; for i in $(seq 100); do alive "$p" || break; sleep 0.1; done; fi; '
  printf '%s' 'if [ -n "$p" ] && alive "$p"; then echo "survivor $h $p"; else echo "stopped $h"; fi'
}

# Worker 0 reads the run's markers with jaxtune's own storage code (local, gs://): prints
# "marks DONE AGE PHASE STEP": DONE 1 when completed.json exists (train), AGE the heartbeat's age in seconds by
# worker 0's clock, or "-" when there is none; for a sweep, the newest heartbeat among its cells' run folders.
marks_probe() {  # marks_probe MODE DIR  (MODE run or sweep)
  local script
  script='import datetime, json, sys, time
from jaxtune.checkpoint.layout import COMPLETED_FILE, HEARTBEAT_FILE
from jaxtune.paths import as_path
mode, root = sys.argv[1], as_path(sys.argv[2])
def beat(folder):
    try:
        hb = json.loads((folder / HEARTBEAT_FILE).read_text())
    except Exception:
        return None
    t = hb.get("time")
    if isinstance(t, str):
        t = datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
    return time.time() - float(t), hb.get("phase") or "-", hb.get("step", "-")
beats, done = [], 0
if mode == "run":
    done = int((root / COMPLETED_FILE).exists())
    beats = [beat(root)]
elif root.exists():
    beats = [beat(cell) for cell in root.iterdir() if cell.is_dir()]
beats = sorted(b for b in beats if b)
age, phase, step = (f"{beats[0][0]:.1f}", beats[0][1], beats[0][2]) if beats else ("-", "-", "-")
print("marks", done, age, phase, step)'
  printf 'cd ~/jaxtune && .venv/bin/python -c %q %q %q 2>/dev/null || echo "marks 0 - - -"' "$script" "$1" "$2"
}

all_running() {  # all_running NAME ZONE: whether the job runs on every worker
  local lines
  lines="$(on_workers "$1" "$2" all "$JOB_PROBE" 2>/dev/null | grep '^job ')" || return 1
  ! grep -qv ' running$' <<<"$lines"
}

stop_job() {  # stop_job NAME ZONE: no process of the job is left on any worker (the run's lease is free again)
  local name="$1" zone="$2" out
  out="$(on_workers "$name" "$zone" all "$(stop_probe)" 2>/dev/null)" || true
  if grep -q '^survivor ' <<<"$out"; then
    echo "supervise: $(now_utc) a job process survived SIGKILL: $(grep '^survivor ' <<<"$out" | tr '\n' ' ')" >&2
    return 1
  fi
}

recreate_after_survivor() {  # a process that outlives SIGKILL (stuck in the driver) keeps the chips: a new slice
  count_restart failure "a job process survived SIGKILL on $1; deleting the slice to start on a new one" || return 1
  cmd_delete "$1" "$2"
}

run_dir_of() {  # the value of the last run_dir=... argument of the job, if any
  local arg dir=""
  for arg in "$@"; do case "$arg" in run_dir=*) dir="${arg#run_dir=}";; esac; done
  printf '%s' "$dir"
}

takes_overrides() {  # whether the job is a jaxtune train or sweep (which take key=value overrides at the end)
  local arg
  for arg in "$@"; do
    case "$arg" in train|sweep|scripts/train.sh|*/scripts/train.sh|scripts/sweep.sh|*/scripts/sweep.sh) return 0;; esac
  done
  return 1
}

is_sweep() {  # whether the job is a jaxtune sweep (scripts/sweep.sh or a `sweep` subcommand)
  local arg
  for arg in "$@"; do case "$arg" in sweep|scripts/sweep.sh|*/scripts/sweep.sh) return 0;; esac; done
  return 1
}

# The verdict on one poll of a started job: "wait", "done", "bad REASON", "preempted REASON", "lost REASON" (the
# job is gone from every worker: set up and start again), "failed REASON" or "hung REASON".
judge_job() {  # judge_job NAME ZONE READ_HEARTBEAT (1: read it now)
  local name="$1" zone="$2" read_heartbeat="$3" lines line host word rc running=0 ok=0 none=0 total=0 bad="" failed="" resumable="" gone=""
  lines="$(on_workers "$name" "$zone" all "$JOB_PROBE" 2>/dev/null | grep '^job ')" || true
  while read -r line; do
    [ -n "$line" ] || continue
    read -r _ host word rc <<<"$line"; total=$((total + 1))
    case "$word $rc" in
      "running ") running=$((running + 1));;
      "exited 0") ok=$((ok + 1));;
      "exited 2") bad+=" $host";;
      "exited 75") resumable+=" $host";;
      exited*) failed+=" $host (exit $rc)";;
      *) none=$((none + 1)); gone+=" $host";;
    esac
  done <<<"$lines"
  if [ "$total" = 0 ]; then echo "wait"; return; fi  # unreachable: the slice's state decides at the next poll
  if [ -n "$bad" ]; then echo "bad exit 2 (bad input) on$bad"; return; fi
  if [ -n "$failed" ]; then echo "failed exit status on$failed"; return; fi
  if [ -n "$resumable" ]; then
    [ "$(state_of "$name" "$zone")" = READY ] || { echo "wait"; return; }  # preempted: recreate at the next poll
    echo "preempted exit 75 (state saved) on$resumable"; return
  fi
  if [ "$none" = "$total" ]; then echo "lost the job is gone from every worker"; return; fi
  if [ "$none" -gt 0 ]; then echo "failed the job is gone on$gone while other workers run it"; return; fi
  if [ "$ok" = "$total" ]; then
    [ -z "$SV_RUN_DIR" ] && { echo "done"; return; }
    read -r _ done _ <<<"$(on_workers "$name" "$zone" 0 "$(marks_probe run "$SV_RUN_DIR")" 2>/dev/null | grep '^marks ')"
    if [ "${done:-0}" = 1 ]; then echo "done"; else echo "failed exit 0 on every worker but no $SV_RUN_DIR/completed.json"; fi
    return
  fi
  if [ "$read_heartbeat" = 1 ]; then judge_heartbeat "$name" "$zone"; else echo "wait"; fi
}

# A heartbeat older than HANG_SECONDS counts as a hang in the phases "training" and "saving" (refreshed every few
# steps, and around each save); COMPILE_HANG_SECONDS in the others (jaxtune/train/heartbeat.py: "starting" restores,
# "compiling", "evaluating" generate, "done"/"preempted" end a run or a sweep's cell) and before this job's first
# heartbeat.
judge_heartbeat() {
  local name="$1" zone="$2" mode=run dir="$SV_RUN_DIR" age phase step since limit
  [ -n "$SV_SWEEP_DIR" ] && { mode=sweep; dir="$SV_SWEEP_DIR"; }
  read -r _ _ age phase step <<<"$(on_workers "$name" "$zone" 0 "$(marks_probe "$mode" "$dir")" 2>/dev/null | grep '^marks ')"
  since=$((SECONDS - SV_JOB_STARTED))
  # A heartbeat older than this job is the previous attempt's: count from the start instead.
  if [ -z "$age" ] || [ "$age" = - ] || [ "${age%.*}" -gt "$since" ]; then age="$since"; phase=start-up; step=-; fi
  limit="$SV_HANG"; case "$phase" in training|saving) ;; *) limit="$SV_COMPILE_HANG";; esac
  if [ "${age%.*}" -gt "$limit" ]; then
    echo "hung no heartbeat for ${age%.*}s (phase $phase, step $step; limit ${limit}s)"
  else
    echo "wait"
  fi
}

supervise_summary() {  # supervise_summary OUTCOME
  echo "supervise: $(now_utc) $1 after $((SECONDS - SV_T0))s: $((SV_PREEMPTED + SV_FAILED + SV_HUNG)) restarts" \
    "(preemption $SV_PREEMPTED, failure $SV_FAILED, hang $SV_HUNG)"
}

count_restart() {  # count_restart KIND REASON: 0 when the budget allows another start, else 1 (summary printed)
  local kind="$1" reason="$2"
  case "$kind" in preemption) SV_PREEMPTED=$((SV_PREEMPTED + 1));; failure) SV_FAILED=$((SV_FAILED + 1));;
    hang) SV_HUNG=$((SV_HUNG + 1));; esac
  local p_left=$((SV_MAX_PREEMPTIONS - SV_PREEMPTED)) f_left=$((SV_MAX_FAILURES - SV_FAILED - SV_HUNG))
  if [ "$p_left" -lt 0 ] || [ "$f_left" -lt 0 ]; then
    echo "supervise: $(now_utc) $kind: $reason; no $kind budget left; giving up" >&2
    supervise_summary "gave up" >&2
    return 1
  fi
  echo "supervise: $(now_utc) restart ($kind): $reason; left: $p_left preemptions, $f_left failures"
}

cmd_supervise() {  # cmd_supervise NAME ACCEL ZONE CMD...
  local name="$1" accel="$2" zone="$3"; shift 3
  [ "$#" -gt 0 ] || die "supervise: no command given (gcp/tpu.sh supervise NAME ACCEL ZONE -- CMD ...)"
  SV_RUN_DIR="${RUN_DIR:-}" SV_SWEEP_DIR="${SWEEP_DIR:-}"
  if [ -z "$SV_RUN_DIR$SV_SWEEP_DIR" ]; then
    if is_sweep "$@"; then SV_SWEEP_DIR="$(run_dir_of "$@")"; else SV_RUN_DIR="$(run_dir_of "$@")"; fi
  fi
  [ -n "$SV_RUN_DIR$SV_SWEEP_DIR" ] || die "supervise: cannot tell the run directory: pass run_dir=... in the command, or set RUN_DIR (train) or SWEEP_DIR (sweep)"
  SV_MAX_PREEMPTIONS="${MAX_PREEMPTIONS:-100}" SV_MAX_FAILURES="${MAX_FAILURES:-3}"
  SV_HANG="${HANG_SECONDS:-1800}"; SV_COMPILE_HANG="${COMPILE_HANG_SECONDS:-$((2 * SV_HANG))}"
  SV_PREEMPTED=0 SV_FAILED=0 SV_HUNG=0 SV_T0=$SECONDS SV_JOB_STARTED=$SECONDS SV_HEARTBEAT_READ=0
  local state verdict reason started=0 adopt=1 first=("$@") again=("$@")
  # A restart follows a job that supervise saw end (or stopped, with no survivor) or a deleted slice: its run
  # directory's lease has no live holder, though its host may differ from the new one (a recreated slice has new
  # hostnames), which jaxtune would otherwise honour for checkpoint.lease_timeout_s.
  if takes_overrides "$@"; then again+=(checkpoint.force_takeover=true); fi
  while :; do
    state="$(state_of "$name" "$zone")"
    case "$state" in
      READY)
        if [ "$started" = 0 ] && [ "$adopt" = 1 ] && all_running "$name" "$zone"; then
          # A supervisor started again (its machine rebooted, say) takes over the job it finds running.
          started=1 SV_JOB_STARTED=$SECONDS
          echo "supervise: $(now_utc) the job is running on every worker of $name; supervising it"
        elif [ "$started" = 0 ]; then
          # ssh to a slice being preempted fails: the state, read again at the next poll, decides what follows.
          if ! cmd_setup "$name" "$zone"; then
            if [ "$(state_of "$name" "$zone")" = READY ]; then
              count_restart failure "setting up $name failed" || return 1
            fi
          else
            if ! stop_job "$name" "$zone"; then recreate_after_survivor "$name" "$zone" || return 1; continue; fi
            cmd_run "$name" "$zone" "${first[@]}" || echo "supervise: $(now_utc) starting the job failed on $name" >&2
            echo "supervise: $(now_utc) started on $name: $(quote_command "${first[@]}")"
            started=1 SV_JOB_STARTED=$SECONDS first=("${again[@]}")
          fi
        else
          # The heartbeat is read every HANG_SECONDS/4 at most (a python start on worker 0), exit statuses every poll.
          local read_heartbeat=0
          if [ $((SECONDS - SV_HEARTBEAT_READ)) -ge $((SV_HANG / 4)) ]; then read_heartbeat=1 SV_HEARTBEAT_READ=$SECONDS; fi
          verdict="$(judge_job "$name" "$zone" "$read_heartbeat")"; reason="${verdict#* }"
          case "$verdict" in
            done) supervise_summary "finished on $name"; return 0;;
            bad*)
              echo "supervise: $(now_utc) $reason: not restarting; the end of each worker's log:" >&2
              on_workers "$name" "$zone" all 'tail -n 3 ~/jaxtune/logs/job.log | sed "s/^/[$(hostname)] /"' >&2 || true
              stop_job "$name" "$zone" || true
              supervise_summary "stopped" >&2; return 2;;
            preempted*|failed*|hung*)
              local kind=failure; case "$verdict" in preempted*) kind=preemption;; hung*) kind=hang;; esac
              if ! stop_job "$name" "$zone"; then recreate_after_survivor "$name" "$zone" || return 1; started=0; continue; fi
              count_restart "$kind" "$reason" || return 1
              cmd_run "$name" "$zone" "${again[@]}" || echo "supervise: $(now_utc) starting the job failed on $name" >&2
              SV_JOB_STARTED=$SECONDS;;
            lost*) count_restart preemption "$reason" || return 1; started=0; continue;;
          esac
        fi
        adopt=0
        ;;
      CREATING|STARTING|PROVISIONING|WAITING_FOR_RESOURCES|ACCEPTED|RESTARTING|REPAIRING|STOPPING) ;;
      MISSING|PREEMPTED|TERMINATED|FAILED|STOPPED|SUSPENDED)
        if [ "$started" = 1 ]; then count_restart preemption "slice $name is $state; recreating it" || return 1; fi
        [ "$state" != MISSING ] && cmd_delete "$name" "$zone"
        adopt=0
        if ! (cmd_create "$name" "$accel" "$zone"); then  # no capacity, a quota: try again, from the failure budget
          count_restart failure "creating $name failed" || return 1
          sleep "${POLL_SECONDS:-60}"
        fi
        started=0
        continue
        ;;
      *) echo "supervise: $(now_utc) $name is in state $state; waiting" ;;
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
