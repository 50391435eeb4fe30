#!/usr/bin/env bash
# Trains alexnet_jax on a Cloud TPU VM: create the VM, copy (or clone) the
# code to every worker, install it on every worker, run the same training
# command on every worker at once, delete the VM. See launch/README.md.
#
# Example (v3-8, the paper's config, data prepared in a bucket):
#
#   launch/tpu_vm.sh --name=alexnet --zone=europe-west4-a \
#       --accelerator=v3-8 --config=configs/ilsvrc2010.py \
#       --data_dir=gs://MY_BUCKET/tfds --workdir=gs://MY_BUCKET/workdirs/a1
#
# --dry-run prints each command, one a line prefixed with "+ ", instead of
# running it (nothing is created, copied or contacted).
set -euo pipefail

readonly PROG="${0##*/}"
# The checkout this script belongs to (launch/..): the files copied to the VM.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# Where the code and its virtual environment live on each worker (relative
# to the remote home directory, where ssh commands start).
readonly REMOTE_DIR="alexnet_jax"
readonly REMOTE_VENV="alexnet_jax_venv"

usage() {
  cat <<EOF
Usage: ${PROG} --name=NAME --zone=ZONE --accelerator=TYPE \\
           --data_dir=gs://BUCKET/tfds --workdir=gs://BUCKET/workdir [options]

Creates a Cloud TPU VM, installs alexnet_jax on all its workers, trains with
  python -m alexnet_jax.main --config=CONFIG --workdir=WORKDIR \\
      --config.data_dir=DATA_DIR --multihost EXTRA
on all workers at once, and deletes the VM at the end (also on failure or
Ctrl-C, unless --keep).

Required:
  --name=NAME          TPU VM name.
  --zone=ZONE          Zone, e.g. europe-west4-a, us-central2-b.
  --accelerator=TYPE   Accelerator type, e.g. v3-8, v4-8, v4-32.
  --data_dir=gs://...  Prepared TFDS data (config field data_dir).
  --workdir=gs://...   Checkpoints and summaries; a bucket, because the VM is
                       deleted and all workers must write to one place.
Optional:
  --config=PATH[:ARGS] Config file (default: configs/ilsvrc2010.py).
  --version=RUNTIME    TPU software version (default from the accelerator:
                       tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite for
                       v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e).
  --extra="FLAGS"      Extra flags for alexnet_jax.main, e.g.
                       "--config.num_epochs=1 --config.batch_size=256"
                       (split by the remote shell).
  --repo=URL           git clone URL on the workers instead of copying this
                       checkout.
  --branch=REF         Branch or tag to clone (with --repo).
  --keep               Do not delete the VM at the end.
  --dry-run            Print the commands instead of running them.
  -h, --help           This help.
EOF
}

die() {
  echo "${PROG}: error: $*" >&2
  echo "Run '${PROG} --help' for usage." >&2
  exit 2
}

# Quotes one word for a POSIX shell: bare when it only holds safe
# characters, otherwise in single quotes. Used for the --dry-run listing
# and for the values put into remote command lines.
quote() {
  local word="$1"
  if [[ -n "${word}" && "${word}" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "${word}"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Runs a command, or prints it under --dry-run.
DRY_RUN=0
run() {
  if (( DRY_RUN )); then
    local line="+" word
    for word in "$@"; do
      line+=" $(quote "${word}")"
    done
    printf '%s\n' "${line}"
  else
    "$@"
  fi
}

default_version() {
  case "$1" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}

# --- Flags. Both --flag=value and --flag value; - and _ alike. -----------
NAME=""
ZONE=""
ACCELERATOR=""
VERSION=""
CONFIG="configs/ilsvrc2010.py"
WORKDIR=""
DATA_DIR=""
EXTRA=""
REPO_URL=""
BRANCH=""
KEEP=0

while (( $# )); do
  arg="$1"
  shift
  case "${arg}" in
    -h | --help) usage; exit 0 ;;
    --keep) KEEP=1; continue ;;
    --dry-run | --dry_run) DRY_RUN=1; continue ;;
    --*=*) flag="${arg%%=*}"; value="${arg#*=}" ;;
    --*)
      flag="${arg}"
      (( $# )) || die "flag ${flag} needs a value"
      value="$1"
      shift
      ;;
    *) die "unexpected argument '${arg}'" ;;
  esac
  case "${flag//_/-}" in
    --name) NAME="${value}" ;;
    --zone) ZONE="${value}" ;;
    --accelerator | --accelerator-type) ACCELERATOR="${value}" ;;
    --version) VERSION="${value}" ;;
    --config) CONFIG="${value}" ;;
    --workdir) WORKDIR="${value}" ;;
    --data-dir) DATA_DIR="${value}" ;;
    --extra) EXTRA="${value}" ;;
    --repo) REPO_URL="${value}" ;;
    --branch) BRANCH="${value}" ;;
    *) die "unknown flag ${flag}" ;;
  esac
done

missing=()
[[ -n "${NAME}" ]] || missing+=(--name)
[[ -n "${ZONE}" ]] || missing+=(--zone)
[[ -n "${ACCELERATOR}" ]] || missing+=(--accelerator)
[[ -n "${DATA_DIR}" ]] || missing+=(--data_dir)
[[ -n "${WORKDIR}" ]] || missing+=(--workdir)
if (( ${#missing[@]} )); then
  die "missing required flag(s): ${missing[*]}"
fi
[[ "${WORKDIR}" == gs://?* ]] \
  || die "--workdir must be a gs:// path (the VM is deleted at the end and" \
         "all workers write to it), got '${WORKDIR}'"
[[ "${DATA_DIR}" == gs://?* ]] \
  || die "--data_dir must be a gs:// path that every worker reads, got" \
         "'${DATA_DIR}'"
[[ -z "${BRANCH}" || -n "${REPO_URL}" ]] || die "--branch needs --repo"
if [[ -z "${VERSION}" ]]; then
  VERSION="$(default_version "${ACCELERATOR}")" \
    || die "no default --version for accelerator '${ACCELERATOR}';" \
           "pass --version"
fi
if [[ -z "${REPO_URL}" ]]; then
  config_file="${CONFIG%%:*}"
  [[ -f "${REPO_ROOT}/${config_file}" ]] \
    || die "--config: no file ${config_file} in ${REPO_ROOT}"
fi

# --- Commands. ------------------------------------------------------------
TPU=(gcloud compute tpus tpu-vm)
ON_ALL=(--zone="${ZONE}" --worker=all)

# Runs a shell command line on every worker at once.
on_all_workers() {
  run "${TPU[@]}" ssh "${NAME}" "${ON_ALL[@]}" --command="$1"
}

# Deletes the VM when the script ends, successfully or not, so a failed
# run does not leave a TPU billing.
delete_vm() {
  local rc=$?
  trap - EXIT
  if (( KEEP )); then
    echo "${PROG}: keeping TPU VM ${NAME} (--keep); delete it with:" >&2
    echo "  ${TPU[*]} delete ${NAME} --zone=${ZONE} --quiet" >&2
  else
    run "${TPU[@]}" delete "${NAME}" --zone="${ZONE}" --quiet || rc=$?
  fi
  exit "${rc}"
}

# 1. Create the VM (all workers of the slice).
run "${TPU[@]}" create "${NAME}" --zone="${ZONE}" \
  --accelerator-type="${ACCELERATOR}" --version="${VERSION}"
trap delete_vm EXIT

# 2. The code on every worker.
if [[ -n "${REPO_URL}" ]]; then
  clone=(git clone --depth=1)
  [[ -z "${BRANCH}" ]] || clone+=(--branch="${BRANCH}")
  clone+=("${REPO_URL}" "${REMOTE_DIR}")
  clone_line="" word=""
  for word in "${clone[@]}"; do
    clone_line+="${clone_line:+ }$(quote "${word}")"
  done
  on_all_workers "${clone_line}"
else
  # Only what the install and the configs need: not the local virtual
  # environment, data or workdirs.
  sources=()
  for path in pyproject.toml setup.cfg README.md LICENSE alexnet_jax configs; do
    [[ ! -e "${REPO_ROOT}/${path}" ]] || sources+=("${path}")
  done
  cd "${REPO_ROOT}"
  on_all_workers "mkdir -p ${REMOTE_DIR}"
  run "${TPU[@]}" scp --recurse "${sources[@]}" "${NAME}:${REMOTE_DIR}/" \
    "${ON_ALL[@]}"
fi

# 3. Install on every worker, into a fresh virtual environment. The package
# needs Python >= 3.11 (jax 0.10; jax >= 0.11 needs 3.12), newer than the
# python3 of the Ubuntu 22.04 TPU images, so use the newest python3.11+
# there is and install python3.11 otherwise. jax[tpu] and the package go
# into one pip call so that pip picks a jax[tpu] (and its matching libtpu)
# inside the package's jax range, as the Colab notebook does.
# The script is written over several lines for reading and sent as one
# (each statement ends with ";"); "\$" expands on the worker, not here.
install="$(tr -s '\n ' ' ' <<EOF
set -e;
cd ${REMOTE_DIR};
PY="";
for p in python3.13 python3.12 python3.11 python3; do
  if command -v "\$p" >/dev/null
      && "\$p" -c "import sys; sys.exit(sys.version_info < (3, 11))"
          2>/dev/null; then
    PY="\$p"; break;
  fi;
done;
if [ -z "\$PY" ]; then
  sudo apt-get -q update
  && sudo DEBIAN_FRONTEND=noninteractive apt-get -q install -y
      -o DPkg::Lock::Timeout=600 python3.11 python3.11-venv
  && PY=python3.11;
fi;
"\$PY" -m venv ~/${REMOTE_VENV};
~/${REMOTE_VENV}/bin/pip install -q -U pip;
~/${REMOTE_VENV}/bin/pip install -e ".[data]" "jax[tpu]"
EOF
)"
on_all_workers "${install% }"

# 4. Train: the same command on every worker at once. --multihost makes
# main call jax.distributed.initialize(), which finds the other workers
# itself on a TPU VM (and is a one-process group on a single-host VM).
train="cd ${REMOTE_DIR} && ~/${REMOTE_VENV}/bin/python -m alexnet_jax.main"
train+=" $(quote "--config=${CONFIG}") $(quote "--workdir=${WORKDIR}")"
train+=" $(quote "--config.data_dir=${DATA_DIR}") --multihost"
[[ -z "${EXTRA}" ]] || train+=" ${EXTRA}"
on_all_workers "${train}"

# 5. Delete the VM: the EXIT trap (delete_vm).
