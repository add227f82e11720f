"""The reference notebooks' Keras notebook job as one script, for the end-to-end row of the benchmark.

    KERAS_BACKEND=tensorflow python -m experiments.benchmark.notebook [--tfds_data_dir=DIR] [--workdir=DIR]

What "Classify images of clothing" does, in its order: import Keras and TensorFlow, load
Fashion-MNIST through tfds, fit the reference MLP (Flatten, Dense 128 ReLU, Dense 10; Adam 1e-3, batch
32) for 10 epochs holding out 5,000 training images for validation, evaluate on the test set, save
the model, predict one image. The benchmark times the whole process from outside.
"""

from __future__ import annotations

import argparse
import os


def load_splits(tfds_data_dir: str | None) -> tuple:
    """((train images, labels), (test images, labels)) as a Keras notebook loads them through tfds
    (no download: the prepared directory), the images scaled to [0, 1]."""
    import tensorflow_datasets as tfds

    (train_images, train_labels), (test_images, test_labels) = tfds.as_numpy(
        tfds.load(
            "fashion_mnist",
            split=["train", "test"],
            batch_size=-1,
            as_supervised=True,
            data_dir=tfds_data_dir,
            download=False,
        )
    )
    return (train_images / 255.0, train_labels), (test_images / 255.0, test_labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tfds_data_dir", default=None)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    import keras
    import numpy as np

    (train_images, train_labels), (test_images, test_labels) = load_splits(args.tfds_data_dir)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        train_images,
        train_labels,
        epochs=args.epochs,
        batch_size=32,
        validation_split=5000 / 60000,
        verbose=2,
    )
    _, accuracy = model.evaluate(test_images, test_labels, verbose=2)
    os.makedirs(args.workdir, exist_ok=True)
    model.save(os.path.join(args.workdir, "model.keras"))
    probabilities = keras.layers.Softmax()(model.predict(test_images[:1], verbose=0))
    print(f"test accuracy {accuracy:.4f}; image 0: class {int(np.argmax(probabilities))}")


if __name__ == "__main__":
    main()
