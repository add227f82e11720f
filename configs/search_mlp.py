"""The Keras Tuner tutorial's search ("Introduction to the Keras Tuner", on Fashion-MNIST).

The tutorial's model is the MLP of configs/mlp.py with a searched width: Flatten, Dense(units,
relu), Dense(10), Adam. Its search, mapped key by key:

- `hp.Int('units', min_value=32, max_value=512, step=32)` -> `model.hidden_sizes` ("int", 32,
  512, 32): a one-layer width;
- `hp.Choice('learning_rate', values=[1e-2, 1e-3, 1e-4])` -> `optimizer.learning_rate`;
- `kt.Hyperband(objective='val_accuracy', max_epochs=10, factor=3)` -> random trials
  (`search.algorithm`) stopped by Hyperband (`search.pruner`), `search.objective`,
  `search.max_epochs`, `search.factor`, and one Hyperband iteration's 17 trials (9, 5 and 3 in
  its three brackets; `search.trials`), 3 at a time (`search.population`: on a CPU every slot
  costs the widest trial's step, so few slots waste least; raise it on a GPU). Survivors of a rung
  train on where they are instead of again from the start;
- `validation_split=0.2` -> `data.num_validation=12000` (20% of the training split: Keras takes
  the last 20%, every run here the first);
- `EarlyStopping(monitor='val_loss', patience=5)` -> `early_stopping` (it cuts a trial's curve, and
  each trial of a population stops on its own);
- then "find the best epoch": the best hyperparameters trained for 50 epochs
  (`search.final_epochs`), the epoch with the best validation accuracy, the model retrained to
  that epoch and evaluated on the test split: best/ in the workdir, where the 50-epoch fit keeps
  its best epoch's weights instead of training them again (the same weights: training is
  deterministic and the rate constant).

    python -m experiments.search --config=configs/search_mlp.py --workdir=runs/search_mlp
"""

import ml_collections

from fmnist_jax.config import default


def get_config() -> ml_collections.ConfigDict:
    config = default()
    config.data.num_validation = 12_000
    config.early_stopping.enabled = True
    config.early_stopping.monitor = "val_loss"
    config.early_stopping.patience = 5
    config.search.space = (
        ("model.hidden_sizes", ("int", 32, 512, 32)),
        ("optimizer.learning_rate", ("choice", (1e-2, 1e-3, 1e-4))),
    )
    config.search.algorithm = "random"
    config.search.pruner = "hyperband"
    config.search.trials = 17
    config.search.population = 3
    config.search.objective = "val_accuracy"
    config.search.max_epochs = 10
    config.search.factor = 3
    config.search.final_epochs = 50
    return config
