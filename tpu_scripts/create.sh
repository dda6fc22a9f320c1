#!/usr/bin/env bash
# Create a Cloud TPU VM slice and install flaxbert (Python >= 3.11, jax[tpu]) on every host.
#
#   REPO=<git url> ZONE=us-east5-b TPU=bert-v6e-32 ACCEL=v6e-32 ./tpu_scripts/create.sh
#   ... ./tpu_scripts/create.sh --dry-run     # print the gcloud commands, run nothing
#
# REPO    the flaxbert git URL every host clones (into ~/flaxbert)
# REF     the branch, tag or commit every host checks out (default: main; a commit makes sure
#         every host runs the same code)
# ZONE, TPU (the slice's name), ACCEL (accelerator type: v4-32, v5p-64, v5litepod-32, v6e-32)
# VERSION the TPU software version (default: Google's JAX image for the ACCEL generation)
# SPOT    1 (default): a spot slice, which can be preempted; 0: on demand
#
# The images ship Python 3.10, older than flaxbert needs, so each host gets a CPython 3.11
# from uv (python-build-standalone) unless its python3 is already new enough.
set -euo pipefail

DRY_RUN=
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -gt 0 ]]; then echo "create.sh: unexpected arguments: $*" >&2; exit 2; fi
: "${ZONE:?set ZONE}" "${TPU:?set TPU (the slice name)}" "${ACCEL:?set ACCEL, e.g. v6e-32}"
: "${REPO:?set REPO to the flaxbert git URL every host clones}"
REF="${REF:-main}"
SPOT="${SPOT:-1}"

if [[ -z "${VERSION:-}" ]]; then
  case "$ACCEL" in  # cloud.google.com/tpu/docs/runtimes: the JAX / PyTorch image per generation
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) echo "create.sh: no default VERSION for ACCEL=$ACCEL; set VERSION" >&2; exit 2 ;;
  esac
fi

run() {  # the command, or with --dry-run its shell-quoted words on one line
  if [[ -n "$DRY_RUN" ]]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}

create=(gcloud compute tpus tpu-vm create "$TPU" --zone "$ZONE" --accelerator-type "$ACCEL"
        --version "$VERSION")
if [[ "$SPOT" == 1 ]]; then create+=(--spot); fi
run "${create[@]}"

# What every host runs. REPO and REF are quoted for the remote shell.
install="set -euo pipefail
if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=python3; else
  export PATH=\"\$HOME/.local/bin:\$PATH\"
  command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
  uv python install 3.11
  PY=\$(uv python find 3.11)
fi
[ -d flaxbert ] || git clone -q $(printf '%q' "$REPO") flaxbert
cd flaxbert
git fetch -q origin $(printf '%q' "$REF")
git checkout -q --detach FETCH_HEAD
[ -x .venv/bin/python ] || \$PY -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/python -m pip install -q 'jax[tpu]' -e '.[data]'
.venv/bin/flaxbert --help >/dev/null && echo \"\$(hostname): flaxbert installed (\$(.venv/bin/python --version))\""
run gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$install"
