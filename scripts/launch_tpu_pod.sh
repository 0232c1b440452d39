#!/usr/bin/env bash
# bv's trainer on every host of a Cloud TPU VM slice (a pod slice has several hosts), from your machine.
#
# usage: scripts/launch_tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]
#
#   scripts/launch_tpu_pod.sh my-v4-32 us-central2-b bv.vit.configs.vit_s16_i1k gs://my-bucket/bv/s16
#
# What it does (the flow of big_vision's run_tpu.sh, for bv):
#   1. copies this script (and CONFIG, if it is a local .py file, and any WHEELS) to every host;
#   2. on every host at once (gcloud ... ssh --worker=all): makes ~/bv_venv with Python 3.11 and
#      installs jax[tpu] and bv into it, unless it is already there (REINSTALL=1 redoes it);
#   3. mounts WORKDIR's bucket with gcsfuse when WORKDIR is gs://BUCKET/PATH (bv writes through the
#      filesystem, and every host must see the same workdir), then runs on every host
#        BV_JAX_INIT=1 bv-train --config CONFIG --workdir WORKDIR ...
#      BV_JAX_INIT=1 makes bv.core.distributed.initialize_from_env() let jax find the other hosts.
#
# Environment:
#   BV_PACKAGES    what to pip install, default "bv-vit" (it pulls in bv-core)
#   JAX_SPEC       the jax to install, default "jax[tpu]==0.10.2" (bv-core needs jax >=0.10.2,<0.11)
#   WHEELS         local wheel files to install (again) instead of BV_PACKAGES, e.g.
#                  "dist/bv_core-*.whl dist/bv_vit-*.whl" (build them with ./pants package ::)
#   TFDS_DATA_DIR  where the prepared TFDS data sets are, e.g. gs://my-bucket/tensorflow_datasets
#   REINSTALL=1    recreate ~/bv_venv on every host
#   BACKGROUND=1   start the trainer under nohup (log: ~/bv_train.log on each host) and return
#   DRY_RUN=1      print the gcloud commands instead of running them
#   GCLOUD         the gcloud command, default "gcloud"
#
# Create the TPU VM first, e.g.:
#   gcloud compute tpus tpu-vm create my-v4-32 --zone us-central2-b --accelerator-type v4-32 \
#     --version tpu-ubuntu2204-base
set -euo pipefail

remote_script="bv_launch_tpu_pod.sh"  # the name of this script's copy on the TPU hosts

usage() {
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]"
  echo "  environment: BV_PACKAGES, JAX_SPEC, WHEELS, TFDS_DATA_DIR, REINSTALL, BACKGROUND, DRY_RUN (see the header)"
}

# ---------------------------------------------------------------------------------------------
# On a TPU host: bash ~/bv_launch_tpu_pod.sh --on-worker CONFIG WORKDIR [ARGS...]
# ---------------------------------------------------------------------------------------------
on_worker() {
  local config="$1" workdir="$2"
  shift 2
  local venv="$HOME/bv_venv"
  if [[ "${REINSTALL:-0}" == 1 ]]; then
    rm -rf "$venv"
  fi
  local uv="$HOME/.local/bin/uv"
  if [[ ! -x "$venv/bin/bv-train" || "${BV_WHEELS:-0}" == 1 ]]; then
    # TPU VM images ship an older Python; uv (installed into ~/.local/bin) fetches a Python 3.11 for the venv.
    if [[ ! -x "$uv" ]]; then
      curl -LsSf https://astral.sh/uv/install.sh | sh
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
      "$uv" venv --python 3.11 "$venv"
    fi
    local -a packages
    if [[ "${BV_WHEELS:-0}" == 1 ]]; then
      packages=(--reinstall "$HOME"/bv_wheels/*.whl)  # the wheels just copied, even if the version is unchanged
    else
      read -r -a packages <<<"${BV_PACKAGES:-bv-vit}"
    fi
    "$uv" pip install --python "$venv/bin/python" "${JAX_SPEC:-jax[tpu]==0.10.2}" "${packages[@]}"
  fi

  if [[ "$workdir" == gs://* ]]; then
    # bv writes checkpoints and logs with ordinary file calls: mount the bucket at the same path on every host.
    local bucket="${workdir#gs://}"
    bucket="${bucket%%/*}"
    local mount="$HOME/gcs/$bucket"
    if ! command -v gcsfuse >/dev/null; then
      # Cloud Storage FUSE from Google's apt repository (https://cloud.google.com/storage/docs/gcsfuse-install).
      echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" |
        sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
    fi
    if ! mountpoint -q "$mount"; then
      mkdir -p "$mount"
      # --implicit-dirs: see folders made by other hosts; --rename-dir-limit: bv renames checkpoint folders.
      gcsfuse --implicit-dirs --rename-dir-limit=1000 "$bucket" "$mount"
    fi
    workdir="$mount${workdir#gs://"$bucket"}"
  fi

  local -a cmd=(env BV_JAX_INIT=1 "$venv/bin/bv-train" --config "$config" --workdir "$workdir" "$@")
  echo "[$(hostname)] ${cmd[*]}"
  if [[ "${BACKGROUND:-0}" == 1 ]]; then
    nohup "${cmd[@]}" >"$HOME/bv_train.log" 2>&1 &
    echo "[$(hostname)] started in the background (pid $!); log: ~/bv_train.log"
  else
    exec "${cmd[@]}"
  fi
}

if [[ "${1:-}" == --on-worker ]]; then
  shift
  on_worker "$@"
  exit
fi

# ---------------------------------------------------------------------------------------------
# On your machine.
# ---------------------------------------------------------------------------------------------
if [[ $# -lt 4 || "$1" == -h || "$1" == --help ]]; then
  usage >&2
  exit 2
fi
name="$1"
zone="$2"
config="$3"
workdir="$4"
shift 4

wheel_files=()
if [[ -n "${WHEELS:-}" ]]; then
  # shellcheck disable=SC2206  # split on spaces and expand globs such as dist/bv_core-*.whl, on this machine
  wheel_files=($WHEELS)
  for wheel in "${wheel_files[@]}"; do
    if [[ ! -f "$wheel" ]]; then
      echo "launch_tpu_pod: WHEELS names $wheel, which is not a file (build them with ./pants package ::)." >&2
      exit 2
    fi
  done
fi

read -r -a gcloud <<<"${GCLOUD:-gcloud}"
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}
tpu=("${gcloud[@]}" compute tpus tpu-vm)

# 1. Copy this script, a local config file and the wheels to every host.
run "${tpu[@]}" scp "$0" "$name:$remote_script" --zone="$zone" --worker=all
config_file="${config%%:*}"
if [[ "$config_file" == *.py && -f "$config_file" ]]; then
  run "${tpu[@]}" scp "$config_file" "$name:bv_config.py" --zone="$zone" --worker=all
  config="bv_config.py${config#"$config_file"}"
fi
if ((${#wheel_files[@]})); then
  run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all --command="rm -rf ~/bv_wheels && mkdir -p ~/bv_wheels"
  run "${tpu[@]}" scp "${wheel_files[@]}" "$name:bv_wheels/" --zone="$zone" --worker=all
  export BV_WHEELS=1
fi

# 2-3. Install if needed, then train, on every host at once. Settings travel as env assignments.
remote=(env)
for var in BV_PACKAGES JAX_SPEC BV_WHEELS TFDS_DATA_DIR REINSTALL BACKGROUND; do
  if [[ -n "${!var:-}" ]]; then
    remote+=("$var=${!var}")
  fi
done
remote+=(bash "$remote_script" --on-worker "$config" "$workdir" "$@")
run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all --command="$(printf '%q ' "${remote[@]}")"
