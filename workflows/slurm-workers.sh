#!/usr/bin/env bash
# Template: cmkp workers as a Slurm job array against one luigid (docs/scaling.md, "Slurm").
#
#   1. On a host every node can reach (a login node, or a small job of its own):
#        luigid --port 8082 --state-path $SHARED/luigid/state --logdir $SHARED/luigid/logs
#   2. Edit the #SBATCH lines and the variables below, then:
#        sbatch --array=0-15 workflows/slurm-workers.sh
#      Each array task is one host's share: one cmkp worker process per GPU it was given (each sees only its
#      own GPU), all building the same dataset in $OUTPUT on the shared filesystem. Array tasks that start late
#      take the shards that are left; a task that ends early (preempted, out of time) leaves nothing that looks
#      complete, and the scheduler gives its task to another worker after `worker_disconnect_delay`.
#
#SBATCH --job-name=cmkp-build
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --output=logs/cmkp-worker-%A_%a.log
set -euo pipefail

SCHEDULER_HOST=${SCHEDULER_HOST:?set SCHEDULER_HOST to the host running luigid}
SCHEDULER_PORT=${SCHEDULER_PORT:-8082}
SOURCE=${SOURCE:-archive}
INPUT=${INPUT:?set INPUT to the archive directory, id file, query or release directory}
OUTPUT=${OUTPUT:?set OUTPUT to the dataset directory on the shared filesystem}
VENV=${VENV:-.venv}
# DECLINE=gpu on a partition without GPUs: its workers never take a GPU stage (needs cmkp-scheduler instead of
# luigid, the same options; docs/scaling.md, "Resources").
DECLINE=${DECLINE:-}

# GPUs Slurm gave this array task (CUDA_VISIBLE_DEVICES="0,1,2,3"), one worker process each; none: one worker.
IFS=, read -r -a gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
[ ${#gpus[@]} -gt 0 ] || gpus=("")
for gpu in "${gpus[@]}"; do
  CUDA_VISIBLE_DEVICES="$gpu" "$VENV/bin/cmkp-worker" --module pipeline.tasks BuildDataset \
    --source "$SOURCE" --input "$INPUT" --output "$OUTPUT" \
    --scheduler-host "$SCHEDULER_HOST" --scheduler-port "$SCHEDULER_PORT" --workers 1 \
    ${DECLINE:+--cluster-worker-decline "$DECLINE"} &
done
status=0
for job in $(jobs -p); do wait "$job" || status=$?; done
exit $status
