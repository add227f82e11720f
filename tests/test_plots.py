"""Figures that experiments write (run figures are checked end to end in test_train)."""

from PIL import Image

from fmnist_jax.reports import plots


def test_comparison_figure_of_variants_with_seed_spread(tmp_path):
    def history(top):
        return [
            {
                "epoch": e,
                "train_accuracy": top * e / 3,
                "val_accuracy": top * e / 3.2,
                "val_accuracy_std": 0.01,
            }
            for e in (1, 2, 3)
        ]

    histories = {
        "adam": history(0.95),
        "sgd": history(0.85),
        "no validation": [{"epoch": 1, "train_accuracy": 0.5}],
    }
    summaries = {
        "adam": {"test_accuracy": 0.91, "test_accuracy_std": 0.002},
        "sgd": {"test_accuracy": 0.86, "test_accuracy_std": 0.004},
        "no validation": {"test_accuracy": 0.5},
    }
    path = tmp_path / "figures" / "comparison.png"
    plots.save(plots.comparison(histories, summaries), str(path))
    with Image.open(path) as image:
        image.verify()
        assert image.size[0] > 800


def test_curves_to_target_figure(tmp_path):
    path = tmp_path / "target.png"
    figure = plots.curves_to_target(
        [1, 2, 3],
        {"seed 0": [0.5, 0.97, 0.98], "seed 1": [0.4, 0.6, 0.7]},
        0.96,
        "training accuracy",
    )
    plots.save(figure, str(path))
    with Image.open(path) as image:
        image.verify()
