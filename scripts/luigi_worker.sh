#!/usr/bin/env bash
# One Luigi worker process for the central scheduler (luigid). `make worker`, `make workers` and
# scripts/slurm_extract.sbatch all start workers through this script, so they run the same command.
#
#   scripts/luigi_worker.sh TASK [task flags]     e.g. scripts/luigi_worker.sh Features --dataset tvr
#
# Environment:
#   PRVR_SCHEDULER_URL               the luigid to work for; default http://SCHEDULER_HOST:SCHEDULER_PORT/
#   SCHEDULER_HOST, SCHEDULER_PORT   default 127.0.0.1 and 8082
#   CUDA_VISIBLE_DEVICES             this worker's GPU (`make worker GPU=n` sets it, SLURM sets it itself)
#   PRVR_DRY_RUN=1                   print the command (and its GPU) instead of running it
set -euo pipefail
cd "$(dirname "$0")/.."  # luigi.cfg, logging.cfg and .venv are found from the repository root

url=${PRVR_SCHEDULER_URL:-http://${SCHEDULER_HOST:-127.0.0.1}:${SCHEDULER_PORT:-8082}/}
# --workers 1: one task at a time, so one process uses one GPU (Luigi's resources count across all
#   hosts, so they cannot say "one task per GPU of this host"; one process per GPU does).
# --worker-keep-alive: wait while tasks that other workers hold are pending, then take what they unblock,
#   instead of exiting as soon as this worker has nothing it can start.
# --no-lock: Luigi refuses a second process with the same command line on one host; the workers of a
#   host differ only in CUDA_VISIBLE_DEVICES.
# --retcode-already-running 0 --retcode-not-run 0: tasks that other workers ran, the root task included,
#   are how workers share a graph, not an error (luigi.cfg gives them exit codes 10 and 25, meant for a
#   single command). A worker's exit code speaks for the tasks it ran; the plain command afterwards
#   (e.g. `make features`) says whether the whole graph is done.
# Worker-only flags live here rather than in luigi.cfg so that a plain `luigi --module tasks ...` stays
# a single process that exits when it is done.
command=(.venv/bin/luigi --module tasks "$@" --scheduler-url "$url" --workers 1 --worker-keep-alive --no-lock \
         --retcode-already-running 0 --retcode-not-run 0)
if [[ "${PRVR_DRY_RUN:-}" == 1 ]]; then
    if [[ -v CUDA_VISIBLE_DEVICES ]]; then printf 'CUDA_VISIBLE_DEVICES=%q ' "$CUDA_VISIBLE_DEVICES"; fi
    printf '%q ' "${command[@]}"
    echo
else
    exec "${command[@]}"
fi
