#!/usr/bin/env bash
# Each optimizer's learning-rate sweep on the reference CNN (configs/cnn.py): 3 rates x 2 seeds,
# 2 epochs, one compiled program per optimizer. Usage: bash experiments/cnn_optimizers_tuned/run.sh [ROOT]
set -euo pipefail
root=${1:-runs/cnn_optimizers_tuned}
common=(--config=configs/cnn.py --seeds=2 --config.num_epochs=2)
sweep() { name=$1; shift; /usr/bin/time -f "$name: %e s wall" python -m experiments.sweep "${common[@]}" --workdir="$root/$name" "$@"; }
sweep sgd_momentum --config.optimizer.name=sgd --config.optimizer.momentum=0.9 --grid=optimizer.learning_rate=0.01,0.03,0.1
sweep adam --grid=optimizer.learning_rate=3e-4,1e-3,3e-3
sweep adamw --config.optimizer.name=adamw --config.optimizer.weight_decay=4e-3 --grid=optimizer.learning_rate=3e-4,1e-3,3e-3
sweep adadelta --config.optimizer.name=adadelta --config.optimizer.rho=0.95 --config.optimizer.eps=1e-6 --grid=optimizer.learning_rate=0.3,1.0,3.0
sweep rmsprop --config.optimizer.name=rmsprop --grid=optimizer.learning_rate=1e-4,3e-4,1e-3
python experiments/cnn_optimizers_tuned/summarize.py "$root"
