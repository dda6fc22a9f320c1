#!/usr/bin/env bash
# Create a TPU VM slice and install flaxbert on every host.
# Usage: REPO=<git url> ZONE=us-central2-b TPU=bert-v4-32 ACCEL=v4-32 [VERSION=...] [SPOT=1] ./create.sh
set -euo pipefail
: "${ZONE:?set ZONE}" "${TPU:?set TPU (the slice name)}" "${ACCEL:?set ACCEL, e.g. v4-32}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
: "${REPO:?set REPO to the flaxbert git URL to clone}"
gcloud compute tpus tpu-vm create "$TPU" --zone "$ZONE" --accelerator-type "$ACCEL" \
  --version "$VERSION" ${SPOT:+--spot}
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  git clone -q $REPO flaxbert || (cd flaxbert && git pull -q)
  cd flaxbert && python3 -m venv .venv && .venv/bin/pip install -q -U pip &&
  .venv/bin/pip install -q 'jax[tpu]' -e '.[data]'"
