"""A search over the reference CNN's recipe (configs/cnn.py): does search beat the hand-picked one?

The hand-picked recipe is Adam at 1e-3, no dropout, no weight decay, (32, 64) channels, 10 epochs.
The search tries, with AdamW (Adam with decoupled weight decay; at decay 0 it is Adam):

- `optimizer.learning_rate` log-uniform in [1e-4, 1e-2];
- `model.dropout_rate`, the head's dropout, uniform in [0, 0.5];
- `optimizer.weight_decay` log-uniform in [1e-5, 1e-1];
- `model.conv_channels`: (16, 32), (24, 48) or (32, 64), each trial masked inside the widest.

Hyperband's first bracket (9 random trials judged after 1 and 3 epochs, the best to 9), 3 slots at
a time, chosen on the 5,000 validation examples; the best then trains the recipe's 10 epochs and
keeps its best epoch on validation (best/).

    python -m experiments.search --config=configs/search_cnn.py --workdir=runs/search_cnn
"""

import ml_collections

from configs import cnn
from fmnist_jax.config import default


def get_config() -> ml_collections.ConfigDict:
    config = cnn.get_config()
    config.optimizer.name = "adamw"
    config.optimizer.weight_decay = 1e-4  # any value: each trial's replaces it
    config.search = default().search
    config.search.space = (
        ("optimizer.learning_rate", ("log_uniform", 1e-4, 1e-2)),
        ("model.dropout_rate", ("uniform", 0.0, 0.5)),
        ("optimizer.weight_decay", ("log_uniform", 1e-5, 1e-1)),
        ("model.conv_channels", ("choice", ((16, 32), (24, 48), (32, 64)))),
    )
    config.search.algorithm = "random"
    config.search.pruner = "hyperband"
    config.search.trials = 9
    config.search.population = 3
    config.search.max_epochs = 9
    config.search.factor = 3
    config.search.final_epochs = 10
    return config
