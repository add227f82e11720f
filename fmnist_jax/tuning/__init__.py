"""Many runs compared: a sweep (`sweep`: a grid of settings x seeds in one compiled program) and a
hyperparameter search (`search`: trials of a space checked by `search_space`, asked from an Optuna
`study` that several workers may share, trained side by side in a `population` of slots, judged
and stopped by `search_record`, the best one trained in `best/`)."""
