"""Compare config variants, each trained with several seeds in one program; prints a Markdown table.

    python -m experiments.compare --config=configs/mlp.py --seeds=3 \
        --variant='width 128:model.hidden_sizes=(128,)' --variant='width 256:model.hidden_sizes=(256,)'

A variant is `label:key=value[;key=value...]` with the keys of `fmnist_jax/config/__init__.py`. Each row
reports test accuracy and loss as mean +- std over the seeds, the final train and validation
accuracy (means), the epochs run and the training seconds; workdirs go under --workdir_root
(default: a temporary directory) so every run leaves its plots and TensorBoard files there. A run
already finished in its workdir is read back, not retrained. `--plot` writes the variants' curves
and test accuracies to one PNG (default: <workdir_root>/comparison.png).
"""

from __future__ import annotations

import os
import tempfile

from absl import flags, logging
from ml_collections import ConfigDict, config_flags

from fmnist_jax import cli
from fmnist_jax import config as config_lib
from fmnist_jax.config import checks as config_checks
from fmnist_jax.errors import UserError
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.reports import figure_workers

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mlp.py", "Base config file.")
_VARIANTS = flags.DEFINE_multi_string("variant", [], "label:key=value[;key=value...]")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per variant (num_seeds).")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", None, "Where the variants' workdirs go.")
_PLOT = flags.DEFINE_string("plot", None, "Where to write the comparison figure (PNG).")


def _variant_configs() -> dict[str, ConfigDict]:
    """Each --variant's config by its label, every one checked before any trains: a bad last
    variant would otherwise stop the comparison after the others' training."""
    if not _VARIANTS.value:
        raise UserError("Nothing to compare: pass --variant='label:key=value[;key=value...]'.")
    configs = {}
    for variant in _VARIANTS.value:
        label, _, overrides = variant.partition(":")
        if not label or label in configs:
            raise UserError(
                f"Each --variant needs a label of its own before ':' (it names the variant's "
                f"workdir and row), got {variant!r}."
            )
        config = _CONFIG.value.copy_and_resolve_references()
        try:
            config_lib.apply_overrides(config, overrides)
            config.num_seeds = _SEEDS.value
            config_checks.validate(config)
        except UserError as e:
            raise UserError(f"Variant {label!r}: {e}") from e
        configs[label] = config
    return configs


def _compare() -> None:
    configs = _variant_configs()
    figure_workers.start()  # they import matplotlib while this process imports JAX
    from fmnist_jax.training import train  # after the checks: a refused comparison imports no JAX

    root = _WORKDIR_ROOT.value or tempfile.mkdtemp(prefix="compare_")
    rows = [
        "| variant | test accuracy | test loss | train acc | val acc | epochs | train s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    histories, summaries = {}, {}
    for label, config in configs.items():
        workdir = os.path.join(root, label.replace(" ", "_"))
        s = train.train_and_evaluate(config, workdir)
        histories[label] = workdir_lib.read_history(workdir)
        summaries[label] = s
        last = histories[label][-1]

        def std(key: str, s: dict = s) -> str:  # one seed's std of 0 would claim a precision
            return f" ± {s[key + '_std']:.4f}" if len(s.get(key + "_seeds", ())) > 1 else ""

        rows.append(
            f"| {label} | {s['test_accuracy']:.4f}{std('test_accuracy')} | {s['test_loss']:.4f}{std('test_loss')} | "
            f"{last['train_accuracy']:.4f} | {last.get('val_accuracy', float('nan')):.4f} | {s['restored_epoch']} | {s['train_seconds']:.1f} |"
        )
        logging.info("%s done: %s", label, rows[-1])
    plot = _PLOT.value or os.path.join(root, "comparison.png")
    figure_workers.draw([("comparison", {"histories": histories, "summaries": summaries}, plot)])
    print(
        f"{_SEEDS.value} seed(s) per variant; workdirs in {root}; figure {plot}\n" + "\n".join(rows)
    )


if __name__ == "__main__":
    cli.main(_compare)
