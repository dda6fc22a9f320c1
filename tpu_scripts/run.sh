#!/usr/bin/env bash
# Run the same `flaxbert pretrain --multihost FLAGS...` on every host of the slice at once.
#
#   ZONE=us-east5-b TPU=bert-v6e-32 ./tpu_scripts/run.sh --config flaxbert:bert_base:phase1 \
#       --workdir gs://BUCKET/runs/bert1 --config.data.train=gs://BUCKET/data/s128
#   ... ./tpu_scripts/run.sh --dry-run --config ...   # print the gcloud command, run nothing
#
# The flags reach `flaxbert pretrain` on each host word for word (quoted for the remote shell).
# JAX finds the other hosts itself on a TPU slice; the workdir must be one every host sees
# (gs://), since the hosts write one Orbax checkpoint together. Rerunning the same command
# resumes from the workdir's last checkpoint.
set -euo pipefail

DRY_RUN=
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
: "${ZONE:?set ZONE}" "${TPU:?set TPU (the slice name)}"
if [[ $# -eq 0 ]]; then
  echo "run.sh: give the pretrain flags, e.g. --config flaxbert:bert_base:phase1 --workdir gs://..." >&2
  exit 2
fi

remote="cd flaxbert && .venv/bin/flaxbert pretrain --multihost$(printf ' %q' "$@")"
command=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$remote")
if [[ -n "$DRY_RUN" ]]; then
  printf '%q ' "${command[@]}" | sed 's/ $//'; echo
else
  "${command[@]}"
fi
