"""The Keras Tuner tutorial's whole job as a JAX user writes it with Optuna and no project code:
the peer of `python -m experiments.search --config=configs/search_mlp.py` on a CPU.

    python -m experiments.benchmark.plain_optuna [--arrays=FILE] [--seed=0]

The tutorial's model (Flatten, Dense(units, relu), Dense(10); Glorot-uniform weights, Adam,
batches of 32), its space (units 32-512 step 32, learning rate 1e-2, 1e-3 or 1e-4), 17 trials of
Optuna's TPE stopped by its Hyperband pruner (10 epochs at most, factor 3) and by early stopping on
the validation loss (patience 5); then the best values trained 50 epochs, keeping the epoch with
the best validation accuracy, and tested. Epochs are one jitted `lax.scan` over arrays kept on the
device, the learning rate an argument, so each width compiles once. The data is the prepared
arrays file (`python -m fmnist_jax.prepare`), the first 12,000 training images held out for
validation as the project does. Prints one JSON line: the seconds, the best values, the best
epoch and the test accuracy.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optuna

_ARRAYS = "~/tensorflow_datasets/fashion_mnist/3.0.1/fmnist_jax_arrays.npz"
_BATCH, _VALIDATION = 32, 12_000


def _data(path: str) -> dict[str, jax.Array]:
    z = np.load(os.path.expanduser(path))
    images = z["train_images"].reshape(-1, 784).astype(np.float32) / 255.0
    test = z["test_images"].reshape(-1, 784).astype(np.float32) / 255.0
    return {
        "x_val": jnp.asarray(images[:_VALIDATION]),
        "y_val": jnp.asarray(z["train_labels"][:_VALIDATION]),
        "x": jnp.asarray(images[_VALIDATION:]),
        "y": jnp.asarray(z["train_labels"][_VALIDATION:]),
        "x_test": jnp.asarray(test),
        "y_test": jnp.asarray(z["test_labels"]),
    }


def _init(key: jax.Array, units: int) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    glorot = jax.nn.initializers.glorot_uniform()
    return {
        "w1": glorot(k1, (784, units)),
        "b1": jnp.zeros(units),
        "w2": glorot(k2, (units, 10)),
        "b2": jnp.zeros(10),
    }


def _logits(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _loss(p: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(_logits(p, x), y).mean()


# The learning rate lives in the optimizer's state (set at `init`), so one program serves every rate.
_adam = optax.inject_hyperparams(optax.adam)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _epoch(params, opt_state, x, y, key):
    steps = x.shape[0] // _BATCH
    order = jax.random.permutation(key, x.shape[0])[: steps * _BATCH].reshape(steps, _BATCH)

    def step(carry, batch):
        params, opt_state = carry
        grads = jax.grad(_loss)(params, x[batch], y[batch])
        updates, opt_state = _adam(learning_rate=0.0).update(
            grads, opt_state, params
        )  # state's rate
        return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), order)
    return params, opt_state


@jax.jit
def _evaluate(params, x, y):
    logits = _logits(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return jnp.mean(jnp.argmax(logits, -1) == y), loss


def _fit(d, units: int, rate: float, epochs: int, seed: int, trial=None):
    """Trains `epochs` epochs (or until pruned or early stopped); (best val accuracy, its epoch,
    its weights)."""
    key = jax.random.PRNGKey(seed)
    params = _init(key, units)
    opt_state = _adam(learning_rate=rate).init(params)
    best, best_epoch, best_params, best_loss, waited = -1.0, 0, params, np.inf, 0
    for epoch in range(1, epochs + 1):
        params, opt_state = _epoch(
            params, opt_state, d["x"], d["y"], jax.random.fold_in(key, epoch)
        )
        accuracy, loss = (float(v) for v in _evaluate(params, d["x_val"], d["y_val"]))
        if accuracy > best:
            best, best_epoch, best_params = accuracy, epoch, jax.tree.map(jnp.copy, params)
        if trial is not None:
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            best_loss, waited = (loss, 0) if loss < best_loss else (best_loss, waited + 1)
            if waited >= 5:
                break
    return best, best_epoch, best_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arrays", default=_ARRAYS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    d = _data(args.arrays)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=10, reduction_factor=3),
    )

    def objective(trial: optuna.Trial) -> float:
        units = trial.suggest_int("units", 32, 512, step=32)
        rate = trial.suggest_categorical("learning_rate", [1e-2, 1e-3, 1e-4])
        return _fit(d, units, rate, 10, args.seed, trial)[0]

    study.optimize(objective, n_trials=17)
    searched = time.perf_counter()
    best = study.best_params
    _, best_epoch, params = _fit(d, best["units"], best["learning_rate"], 50, args.seed)
    accuracy, _ = _evaluate(params, d["x_test"], d["y_test"])
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "search_seconds": searched - start,
                "best": best,
                "best_epoch": best_epoch,
                "test_accuracy": float(accuracy),
            }
        )
    )


if __name__ == "__main__":
    main()
