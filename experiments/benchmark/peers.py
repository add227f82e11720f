"""One benchmark run of one peer, in its own process; prints one JSON line.

    python -m experiments.benchmark.peers --peer=torch --recipe=mlp --epochs=10 --batch_size=32

Every peer trains the same model (the reference notebooks' MLP or CNN, Keras' initializers, Adam 1e-3) on the
same real training split (55,000 images after 5,000 for validation), shuffled every epoch, without
per-epoch validation, then reports test accuracy. Epoch times cover the training steps only
(fmnist_jax evaluates the validation split between epochs, untimed, and saves one checkpoint at
the end, as no peer checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np


def _splits(tfds_data_dir: str):
    from fmnist_jax import config as config_lib
    from fmnist_jax import data

    cfg = config_lib.default().data
    cfg.tfds_data_dir = tfds_data_dir
    return data.load(cfg)


def timed_epochs(
    epochs: int, num_examples: int, batch_size: int, permutation, step, wait=lambda: None
) -> list[float]:
    """Seconds of each epoch of a per-step loop: a fresh `permutation(n)`, `step(indices)` per full batch, `wait()`."""
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = permutation(num_examples)
        for i in range(num_examples // batch_size):
            step(order[i * batch_size : (i + 1) * batch_size])
        wait()
        seconds.append(time.perf_counter() - start)
    return seconds


def run_fmnist_jax(recipe, epochs, batch_size, tfds_data_dir):
    from configs import cnn, mlp
    from fmnist_jax.training import train

    config = (mlp if recipe == "mlp" else cnn).get_config()
    config.num_epochs, config.batch_size, config.data.tfds_data_dir = (
        epochs,
        batch_size,
        tfds_data_dir,
    )
    config.checkpoint.every_epochs = (
        epochs  # one checkpoint at the end: no save thread overlaps the timed epochs
    )
    with tempfile.TemporaryDirectory() as workdir:
        summary = train.train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            seconds = [json.loads(line)["epoch_seconds"] for line in f]
    return seconds, summary["test_accuracy"], summary["compile_seconds"]


def run_keras(recipe, epochs, batch_size, tfds_data_dir):
    s = _splits(tfds_data_dir)
    import keras

    layers = [keras.Input((28, 28, 1))]
    if recipe == "cnn":
        layers += [
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
        ]
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    x = s.train_images.astype(np.float32) / 255.0
    model.fit(
        x,
        s.train_labels,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[Timer()],
    )
    _, accuracy = model.evaluate(
        s.test_images.astype(np.float32) / 255.0, s.test_labels, batch_size=1000, verbose=0
    )
    return seconds, float(accuracy), None


def run_torch(recipe, epochs, batch_size, tfds_data_dir):
    s = _splits(tfds_data_dir)
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    if recipe == "cnn":
        layers += [
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    layers += [nn.Flatten(), nn.LazyLinear(128), nn.ReLU(), nn.Linear(128, 10)]
    model = nn.Sequential(*layers)
    x = torch.from_numpy(s.train_images).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(s.train_labels).long()
    model(x[:1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()

    def step(idx):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        optimizer.step()

    seconds = timed_epochs(epochs, len(y), batch_size, torch.randperm, step)
    with torch.no_grad():
        xt = torch.from_numpy(s.test_images).permute(0, 3, 1, 2).float() / 255.0
        accuracy = (model(xt).argmax(-1).numpy() == s.test_labels).mean()
    return seconds, float(accuracy), None


def run_nnx(recipe, epochs, batch_size, tfds_data_dir):
    """A plain Flax NNX per-step `nnx.jit` loop, as the Flax tutorials write it."""
    s = _splits(tfds_data_dir)
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            convs = (
                [nnx.Conv(1, 32, (3, 3), rngs=rngs), nnx.Conv(32, 64, (3, 3), rngs=rngs)]
                if recipe == "cnn"
                else []
            )
            self.convs = nnx.List(convs)
            self.dense1 = nnx.Linear(3136 if recipe == "cnn" else 784, 128, rngs=rngs)
            self.dense2 = nnx.Linear(128, 10, rngs=rngs)

        def __call__(self, x):
            for conv in self.convs:
                x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), (2, 2))
            return self.dense2(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))

    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        grads = nnx.grad(loss_fn)(model)
        optimizer.update(model, grads)

    x_all = s.train_images.astype(np.float32) / 255.0

    def step(idx):
        return train_step(
            model, optimizer, jnp.asarray(x_all[idx]), jnp.asarray(s.train_labels[idx])
        )

    def wait():
        return jax.block_until_ready(nnx.state(model))

    seconds = timed_epochs(
        epochs, len(x_all), batch_size, np.random.default_rng(0).permutation, step, wait
    )
    logits = model(jnp.asarray(s.test_images.astype(np.float32) / 255.0))
    accuracy = float((np.asarray(logits).argmax(-1) == s.test_labels).mean())
    return seconds, accuracy, None


PEERS = {
    "fmnist_jax": run_fmnist_jax,
    "keras_tf": run_keras,
    "keras_jax": run_keras,
    "torch": run_torch,
    "flax_nnx_loop": run_nnx,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--recipe", choices=["mlp", "cnn"], required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--tfds_data_dir", default="")
    args = parser.parse_args()
    seconds, accuracy, compile_seconds = PEERS[args.peer](
        args.recipe, args.epochs, args.batch_size, args.tfds_data_dir
    )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "BENCHMARK "
        + json.dumps(
            {
                "epoch_seconds": seconds,
                "test_accuracy": accuracy,
                "compile_seconds": compile_seconds,
                "peak_rss_mb": peak_rss_mb,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
