"""fmnist_jax: Fashion-MNIST classifiers (MLPs, CNNs, ResNets) trained with JAX, Flax NNX and Optax.

The public API, what `experiments/`, notebooks and tests use (each documented where it lives):

- `train.train_and_evaluate(config, workdir) -> metrics.Summary`: a whole run, resumable; with a
  larger `num_epochs` a finished run trains on.
- `config.default()`, `config_checks.validate(config)`: every key, its default and its checks.
- `data.load(data_config) -> data.Splits`; `data.random_splits(...)` to time programs.
- `program.build(config, splits) -> program.Program`: model, optimizer, engine, epoch runner and
  evaluation sets; `Program.compile()`, `Program.runner.run(state, epoch)`, `Program.evaluate`.
  `program.lower_for(config, platform)`: the same programs lowered for cuda/tpu.
- `models.create(model_config) -> models.Model` (`init(key)`, `apply(weights, images)`).
- `sweep.train(config, workdir)`: a config with a `grid` (members x seeds in one program) and its
  sweep.json, table and figure; `sweep.table(result)` (Markdown);
  `sweep.parse_grid(["key=v1,v2"])`.
- `search.run(config, workdir)`: the hyperparameter search of `config.search` (trials trained
  side by side, one program per shape), then its best trial trained and tested in `workdir/best`.
- `inference.load(workdir, which="final", run=None) -> inference.Classifier` (`predict_proba`,
  `predict`); `inference.report(probabilities, labels, class_names)`; `export.export`/`load`.
- `images.read(path) -> [28, 28, 1] uint8`: any image file as the model sees it.
- `workdir.read_history(workdir)`: a run's metrics.jsonl rows (its learning curves).
- `reports.plots`: every figure as a matplotlib `Figure` (`learning_curves`, `confusion_matrix`,
  `confident_mistakes`, `predictions`, `image_grid`, `sweep`, ...); `plots.save(fig, path)`.
- `reports.tables.model_table`: the model table.
- `kaggle`: Kaggle's CSV pair as a data source (`config.data.source_dir`).

The notebook `notebooks/classify_clothing.ipynb` uses exactly these.

Modules import lazily (nothing here), so a command pays only for what it uses.
"""

__version__ = "0.1.0"
