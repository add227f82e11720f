"""Many runs compared: a sweep (`sweep`: a grid of settings x seeds in one compiled program) and a
hyperparameter search (`search`: trials of a space sampled by `search_space`, trained side by side
in a `population` of slots, judged and stopped by `search_record` and `pruning`, the best one
trained in `best/`)."""
