#!/bin/bash
# One node's share of a SLURM job started by tools/slurm/train.sbatch: srun
# runs this once on every node, and it starts torchrun there, which starts one
# process per GPU. The nodes meet at a c10d rendezvous hosted by the job's
# first node (the first host of SLURM_JOB_NODELIST, which is node 0), so no
# node needs to know another's address beforehand.
#
#   bash tools/slurm/torchrun_node.sh SCRIPT.py FLAGS...
#
# From SLURM: SLURM_JOB_ID (rendezvous id, port), SLURM_JOB_NUM_NODES,
# SLURM_NODEID, SLURM_JOB_NODELIST, SLURM_GPUS_ON_NODE. Overrides:
# GPUS_PER_NODE (processes per node), RDZV_HOST, RDZV_PORT, PYTHON.
set -euo pipefail

if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "error: not inside a SLURM job (no SLURM_JOB_ID): srun runs this, through tools/slurm/train.sbatch" >&2
    exit 2
fi
nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
node=${SLURM_NODEID:-0}
per_node=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
host=${RDZV_HOST:-}
if [ -z "$host" ]; then
    # scontrol expands SLURM's compressed list (gpu[01-04,07]) one host a line.
    mapfile -t hosts < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-${SLURM_NODELIST:?}}")
    host=${hosts[0]}
fi
# Every node derives the same port from the job id (a requeued job keeps its id).
port=${RDZV_PORT:-$((20000 + ${SLURM_JOB_ID//[!0-9]/} % 20000))}
# Node 0 hosts the rendezvous store; naming it here does not rely on the
# host name in the list matching what the node calls itself.
is_host=0
if [ "$node" = 0 ]; then is_host=1; fi

echo "=> node $node of $nodes ($(hostname)): $per_node processes, rendezvous $host:$port"
exec "${PYTHON:-python3}" -m torch.distributed.run \
    --nnodes="$nodes" --nproc-per-node="$per_node" \
    --rdzv-backend=c10d --rdzv-endpoint="$host:$port" --rdzv-id="$SLURM_JOB_ID" --rdzv-conf="is_host=$is_host" \
    "$@"
