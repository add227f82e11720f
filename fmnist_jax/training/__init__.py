"""One run, trained: `train.train_and_evaluate(config, workdir)` builds the program, restores or
starts, runs the epochs (validating, early stopping, ReduceLROnPlateau), checkpoints, tests and
reports. `loop_state` is what the loop carries between epochs, resumable bit for bit."""
