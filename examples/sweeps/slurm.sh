#!/bin/bash
# A Slurm job array recording one dataset: each array task records its shard of the grid into
# the shared dataset directory, then one last job rebuilds the index from every trace there.
#
#   jid=$(sbatch --parsable examples/sweeps/slurm.sh)
#   sbatch --dependency=afterany:"$jid" --wrap "dirtytrace index $DATASET"
#
# Shards partition the runs exactly (schemas/dataset.md), so the tasks never record the same run,
# and an index rewrite holds a lock and replaces the file atomically. If the shared file system's
# locks are not to be trusted (some NFS setups), give each task a directory of its own
# (DATASET=/scratch/ds-$SLURM_ARRAY_TASK_ID), then copy every traces/ into one dataset directory,
# with its dataset.json, and run `dirtytrace index` there: the dataset is the union.
# Re-submitting the same array resumes: finished runs are skipped, killed ones recovered.
#
#SBATCH --job-name=dirtytrace-sweep
#SBATCH --array=0-3
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
#SBATCH --output=dirtytrace-sweep-%A_%a.log
set -euo pipefail

GRID=${GRID:-examples/sweeps/grid.toml}
DATASET=${DATASET:-$PWD/dataset}
DIRTYTRACE=${DIRTYTRACE:-dirtytrace}

# Array task IDs need not start at 0: shard I of N counts from 1.
shard="$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0} + 1))/${SLURM_ARRAY_TASK_COUNT}"
exec "$DIRTYTRACE" sweep "$GRID" --output "$DATASET" --shard "$shard"
