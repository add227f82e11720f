"""fmnist_jax: Fashion-MNIST classifiers (MLPs, CNNs, ResNets) trained with JAX, Flax NNX and Optax.

The folders are the layers, each importing only those listed before it:

- `config/`: every key and its default, the checks, a run axis of members x seeds;
- `models/`: Flax NNX modules by name; `data/`: the verified splits and where they come from;
- `engine/`: the step math, optimizers, augmentation, devices, and the compiled program;
- `records/`: what a run leaves on disk (workdir, sealed checkpoints, metrics records);
- `inference/`: a restored classifier, its export, attributions, image files;
- `reports/`: what people see (TensorBoard, figures, log lines, tables);
- `training/`: one run, its loop; `tuning/`: sweeps and searches over many runs;
- the commands (`main`, `predict`, `evaluate`, `explain`, `prepare`) and what they share (`cli`,
  `interrupts`, `errors`, `shapes`) at the top.

The public API, what `experiments/`, notebooks and tests use (each documented where it lives):

- `training.train.train_and_evaluate(config, workdir) -> records.metrics.Summary`: a whole run,
  resumable; with a larger `num_epochs` a finished run trains on.
- `config.default()`, `config.checks.validate(config)`: every key, its default and its checks.
- `data.load(data_config) -> data.Splits`; `data.random_splits(...)` to time programs.
- `engine.program.build(config, splits) -> Program`: model, optimizer, engine, epoch runner and
  evaluation sets; `Program.compile()`, `Program.runner.train_epoch(state, epoch)`, `Program.evaluate`.
  `engine.program.lower_for(config, platform)`: the same programs lowered for cuda/tpu.
- `models.create(model_config) -> models.Model` (`init(key)`, `apply(weights, images)`).
- `tuning.sweep.train(config, workdir)`: a config with a `grid` (members x seeds in one program)
  and its sweep.json, table and figure; `sweep.table(result)`; `sweep.parse_grid(["key=v1,v2"])`.
- `tuning.search.run(config, workdir)`: the hyperparameter search of `config.search`, then its
  best trial trained and tested in `workdir/best`.
- `inference.load(workdir, which="final", run=None) -> inference.Classifier` (`predict_proba`,
  `predict`); `inference.report(probabilities, labels, class_names)`;
  `inference.export.export`/`load`; `inference.images.read(path) -> [28, 28, 1] uint8`.
- `records.workdir.read_history(workdir)`: a run's metrics.jsonl rows (its learning curves).
- `reports.plots`: every figure as a matplotlib `Figure`; `plots.save(fig, path)`.
- `data.kaggle`: Kaggle's CSV pair as a data source (`config.data.source_dir`).

Modules import lazily (nothing here), so a command pays only for what it uses. The modules of the
releases before the folders keep their old names here (`from fmnist_jax import export, train`):
`_MOVED` says where each one lives now.
"""

import importlib
from types import ModuleType

__version__ = "0.1.0"

_MOVED = {
    "run_axis": "config",
    **dict.fromkeys(("kaggle", "staging"), "data"),
    **dict.fromkeys(
        (
            "augment",
            "backend",
            "distributed",
            "initial_state",
            "memory",
            "normalizer",
            "optim",
            "program",
            "runner",
        ),
        "engine",
    ),
    **dict.fromkeys(("export", "images", "interpret"), "inference"),
    **dict.fromkeys(("checkpoint", "metrics", "workdir"), "records"),
    **dict.fromkeys(("early_stopping", "loop_state", "reduce_lr", "train"), "training"),
    **dict.fromkeys(
        ("objectives", "population", "search", "search_record", "search_space", "study", "sweep"),
        "tuning",
    ),
}


def __getattr__(name: str) -> ModuleType:
    """`from fmnist_jax import train` (and every other module of `_MOVED`) as before the folders."""
    if name == "config_checks":
        return importlib.import_module("fmnist_jax.config.checks")
    if name in _MOVED:
        return importlib.import_module(f"fmnist_jax.{_MOVED[name]}.{name}")
    raise AttributeError(f"module 'fmnist_jax' has no attribute {name!r}")
