#!/usr/bin/env bash
# Starts bv's trainer on one GPU machine: ONE process that drives all of the machine's GPUs
# (JAX's default on GPU: one process per host, each seeing all of its local devices).
# Run the same command on every node of a multi-node job, each with its own NODE_RANK.
#
# usage: scripts/launch_gpu_node.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#
#   one node:
#     scripts/launch_gpu_node.sh bv.vit.configs.vit_s16_i1k:gpu8 /data/runs/s16
#   two nodes (run on both; COORDINATOR is a free port on node 0, reachable from node 1):
#     NUM_NODES=2 NODE_RANK=0 COORDINATOR=10.0.0.1:12345 scripts/launch_gpu_node.sh CONFIG /shared/runs/s16
#     NUM_NODES=2 NODE_RANK=1 COORDINATOR=10.0.0.1:12345 scripts/launch_gpu_node.sh CONFIG /shared/runs/s16
#
# Environment (all optional on one node):
#   NUM_NODES     number of nodes (processes) in the job, default 1
#   NODE_RANK     this node's rank, 0 .. NUM_NODES-1, default 0; rank 0 writes metrics.jsonl and config.json
#   COORDINATOR   host:port of rank 0, required when NUM_NODES > 1
#   GPUS          local GPUs to use, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES); default: all visible GPUs
#   BV_TRAIN      the trainer command, default "bv-train" (e.g. "python -m bv.vit.train")
#   TFDS_DATA_DIR where the prepared TFDS data sets live (read by tensorflow-datasets)
#
# With several nodes, WORKDIR must be the same shared folder on every node (NFS, Lustre, ...):
# every process reads it to resume; all processes take part in a checkpoint save and rank 0 writes the files.
set -euo pipefail

usage() {
  echo "usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]"
  echo "  environment: NUM_NODES, NODE_RANK, COORDINATOR=host:port, GPUS, BV_TRAIN, TFDS_DATA_DIR (see the script's header)"
}

if [[ $# -lt 2 || "$1" == -h || "$1" == --help ]]; then
  usage >&2
  exit 2
fi
config="$1"
workdir="$2"
shift 2

num_nodes="${NUM_NODES:-1}"
node_rank="${NODE_RANK:-0}"
if ! [[ "$num_nodes" =~ ^[1-9][0-9]*$ && "$node_rank" =~ ^[0-9]+$ ]] || ((node_rank >= num_nodes)); then
  echo "launch_gpu_node: NUM_NODES=$num_nodes must be >= 1 and NODE_RANK=$node_rank in [0, NUM_NODES)." >&2
  exit 2
fi

if [[ -n "${GPUS:-}" ]]; then
  export CUDA_VISIBLE_DEVICES="$GPUS"
fi

if ((num_nodes > 1)); then
  if ! [[ "${COORDINATOR:-}" =~ ^[^:]+:[0-9]+$ ]]; then
    echo "launch_gpu_node: NUM_NODES=$num_nodes needs COORDINATOR=host:port of rank 0, got '${COORDINATOR:-}'." >&2
    exit 2
  fi
  # Read by bv.core.distributed.initialize_from_env() at the start of the trainer. With these set, jax's
  # own cluster detection is off and the process keeps every GPU it can see.
  export BV_COORDINATOR_ADDRESS="$COORDINATOR"
  export BV_NUM_PROCESSES="$num_nodes"
  export BV_PROCESS_ID="$node_rank"
fi

# tf.data runs on the CPU: bv depends on tensorflow-cpu, so TensorFlow never claims GPU memory.
# JAX preallocates 75% of each GPU's memory; lower XLA_PYTHON_CLIENT_MEM_FRACTION to share a GPU.
read -r -a train_cmd <<<"${BV_TRAIN:-bv-train}"
echo "launch_gpu_node: node $node_rank of $num_nodes, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<all>}," \
  "coordinator ${COORDINATOR:-<none>}: ${train_cmd[*]} --config $config --workdir $workdir $*" >&2
exec "${train_cmd[@]}" --config "$config" --workdir "$workdir" "$@"
