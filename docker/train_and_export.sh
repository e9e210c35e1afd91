#!/bin/sh
# One-shot trainer of docker-compose.yml: train on a dataset, export a bundle into the shared volume.
#
#   HASHREC_TRAIN_DATA   dataset path inside the container (default: generate the synthetic demo data)
#   HASHREC_TRAIN_ARGS   extra `hashrec train` arguments (default: a short CPU run)
#   HASHREC_BUNDLES      bundles directory shared with the API (default /bundles)
#   HASHREC_RETRAIN=1    train again even when a bundle is already published
set -eu

BUNDLES="${HASHREC_BUNDLES:-/bundles}"
RUN_DIR="${HASHREC_RUN_DIR:-/work/runs/model}"

if [ -e "$BUNDLES/current" ] && [ "${HASHREC_RETRAIN:-0}" != "1" ]; then
    echo "trainer: $BUNDLES/current exists; nothing to do (set HASHREC_RETRAIN=1 to train again)"
    exit 0
fi

DATA="${HASHREC_TRAIN_DATA:-}"
if [ -z "$DATA" ]; then
    DATA=/work/data/interactions.csv
    hashrec data synth "$DATA"
fi

# shellcheck disable=SC2086  # HASHREC_TRAIN_ARGS is a list of arguments on purpose
hashrec train --data "$DATA" --out "$RUN_DIR" --force --time-budget "${HASHREC_TRAIN_MINUTES:-5}" ${HASHREC_TRAIN_ARGS:-}
hashrec export "$RUN_DIR" --out "$BUNDLES"
hashrec bundle verify "$BUNDLES"
echo "trainer: bundle published in $BUNDLES"
