#!/usr/bin/env bash
# Random, Hyperband and TPE at an equal budget (the tutorial's space and 17 trials, 3 slots), 3
# repeats each: which finds the best trial soonest? Then the table and figure.
# Usage: bash experiments/search_algorithms/run.sh [ROOT]
set -euo pipefail
root=${1:-runs/search_algorithms}
declare -A settings=(
  [random]="--config.search.algorithm=random --config.search.pruner=none"
  [hyperband]="--config.search.algorithm=random --config.search.pruner=hyperband"
  [tpe]="--config.search.algorithm=tpe --config.search.pruner=hyperband"
)
for seed in 0 1 2; do
  for name in random hyperband tpe; do
    # shellcheck disable=SC2086  # the settings are separate flags
    python -m experiments.search --config=configs/search_mlp.py --workdir="$root/${name}_$seed" \
      --config.seed="$seed" --config.search.seed="$seed" --config.search.final_epochs=0 \
      ${settings[$name]}
  done
done
python experiments/search_algorithms/summarize.py "$root"
