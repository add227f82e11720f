"""The TensorFlow tutorial "Introduction to the Keras Tuner", as its own code runs it: the peer of
`python -m experiments.search --config=configs/search_mlp.py`.

    KERAS_BACKEND=tensorflow python -m experiments.benchmark.keras_tuner_tutorial --workdir=DIR \
        [--tfds_data_dir=DIR] [--seed=0]

Hyperband over the MLP's width (32-512, step 32) and Adam's learning rate (1e-2, 1e-3, 1e-4),
max_epochs=10, factor=3, validation_split=0.2, early stopping on val_loss (patience 5); then the
best hyperparameters trained for 50 epochs, the best epoch on validation accuracy, the model
retrained to it and evaluated on the test split. Prints one JSON line: the seconds of each phase,
the best values, the best epoch and the test accuracy. The data comes from the same prepared tfds
directory, without a download.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tfds_data_dir", default=None)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()

    import keras
    import keras_tuner as kt
    import numpy as np

    from experiments.benchmark.notebook import load_splits

    keras.utils.set_random_seed(args.seed)
    (img_train, label_train), (img_test, label_test) = load_splits(args.tfds_data_dir)

    def model_builder(hp):  # the tutorial's, word for word
        model = keras.Sequential()
        model.add(keras.layers.Flatten(input_shape=(28, 28)))
        hp_units = hp.Int("units", min_value=32, max_value=512, step=32)
        model.add(keras.layers.Dense(units=hp_units, activation="relu"))
        model.add(keras.layers.Dense(10))
        hp_learning_rate = hp.Choice("learning_rate", values=[1e-2, 1e-3, 1e-4])
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=hp_learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    tuner = kt.Hyperband(
        model_builder,
        objective="val_accuracy",
        max_epochs=10,
        factor=3,
        seed=args.seed,
        directory=args.workdir,
        project_name="intro_to_kt",
    )
    stop_early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5)
    searched = time.perf_counter()
    tuner.search(
        img_train, label_train, epochs=50, validation_split=0.2, callbacks=[stop_early], verbose=0
    )
    best_hps = tuner.get_best_hyperparameters(num_trials=1)[0]
    fitted = time.perf_counter()
    model = tuner.hypermodel.build(best_hps)
    history = model.fit(img_train, label_train, epochs=50, validation_split=0.2, verbose=0)
    val_acc_per_epoch = history.history["val_accuracy"]
    best_epoch = val_acc_per_epoch.index(max(val_acc_per_epoch)) + 1
    retrained = time.perf_counter()
    hypermodel = tuner.hypermodel.build(best_hps)
    hypermodel.fit(img_train, label_train, epochs=best_epoch, validation_split=0.2, verbose=0)
    _, test_accuracy = hypermodel.evaluate(img_test, label_test, verbose=0)
    end = time.perf_counter()
    print(
        json.dumps(
            {
                "trials": len(tuner.oracle.trials),
                "units": best_hps.get("units"),
                "learning_rate": best_hps.get("learning_rate"),
                "best_epoch": best_epoch,
                "test_accuracy": float(np.float32(test_accuracy)),
                "search_seconds": fitted - searched,
                "fit_seconds": retrained - fitted,
                "retrain_and_test_seconds": end - retrained,
                "seconds": end - start,
            }
        )
    )


if __name__ == "__main__":
    main()
