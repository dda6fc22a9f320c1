#!/usr/bin/env bash
# Run `flaxbert pretrain --multihost` with the given flags on every host of the slice.
# Usage: TPU=bert-v4-32 ZONE=... ./run.sh --config configs/bert_base.py --workdir gs://... [...]
set -euo pipefail
: "${ZONE:?set ZONE}" "${TPU:?set TPU}"
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd flaxbert && .venv/bin/flaxbert pretrain --multihost $ARGS"
