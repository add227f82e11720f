#!/usr/bin/env bash
# Does search beat the reference CNN's hand-picked recipe? 3 searches (configs/search_cnn.py,
# seeds 0-2) against the recipe (configs/cnn.py) trained with seeds 0-2, then the table.
# Usage: bash experiments/search_cnn/run.sh [ROOT]
set -euo pipefail
root=${1:-runs/search_cnn}
for seed in 0 1 2; do
  /usr/bin/time -f "search seed $seed: %e s wall" python -m experiments.search \
    --config=configs/search_cnn.py --workdir="$root/search_$seed" \
    --config.seed="$seed" --config.search.seed="$seed"
  /usr/bin/time -f "recipe seed $seed: %e s wall" python -m fmnist_jax.main \
    --config=configs/cnn.py --workdir="$root/recipe_$seed" --config.seed="$seed"
done
python experiments/search_cnn/summarize.py "$root"
