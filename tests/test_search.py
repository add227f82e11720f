"""Search: its space and samplers, Hyperband's plan, trials riding the run axis, the whole search
on mock data (resumed to the same result), and the refusals."""

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fmnist_jax import config as config_lib
from fmnist_jax import run_axis, search, search_space, train
from fmnist_jax.errors import UserError

SPACE = (
    ("model.hidden_sizes", ("int", 8, 24, 8)),
    ("optimizer.learning_rate", ("log_uniform", 1e-4, 1e-2)),
)


def test_every_sampler_stays_in_the_space_and_repeats_from_its_seed():
    space = search_space.dimensions(SPACE)
    for algorithm in ("random", "halton", "tpe"):
        first = search_space.Sampler(algorithm, space, seed=3, maximize=True).ask(6)
        again = search_space.Sampler(algorithm, space, seed=3, maximize=True).ask(6)
        assert first == again, algorithm
        for trial in first:
            assert trial["model.hidden_sizes"] in (8, 16, 24)
            assert 1e-4 <= trial["optimizer.learning_rate"] <= 1e-2
    halton = search_space.Sampler("halton", space, seed=0, maximize=True).ask(8)
    assert len({t["model.hidden_sizes"] for t in halton}) == 3  # low discrepancy: every width
    grid = search_space.dimensions((SPACE[0], ("optimizer.learning_rate", ("choice", (0.1, 0.01)))))
    trials = search_space.Sampler("grid", grid, seed=0, maximize=True).ask(100)
    assert [(t["model.hidden_sizes"], t["optimizer.learning_rate"]) for t in trials] == [
        (w, lr) for w in (8, 16, 24) for lr in (0.1, 0.01)
    ]


def test_tpe_learns_from_what_it_is_told():
    space = search_space.dimensions((("optimizer.learning_rate", ("uniform", 0.0, 1.0)),))
    sampler = search_space.Sampler("tpe", space, seed=0, maximize=True)
    for _ in range(4):
        batch = sampler.ask(8)
        for trial in batch:  # the objective peaks at 0.9
            sampler.tell(trial, -abs(trial["optimizer.learning_rate"] - 0.9))
    late = [t["optimizer.learning_rate"] for t in sampler.ask(8)]
    assert sum(abs(x - 0.9) < 0.25 for x in late) >= 5  # random would put ~4 of 8 there


def test_hyperband_brackets_are_li_et_al():
    assert search_space.hyperband_brackets(10, 3) == [
        [(9, 1), (3, 3), (1, 10)],
        [(5, 3), (1, 10)],
        [(3, 10)],
    ]
    assert search_space.hyperband_brackets(27, 3)[0] == [(27, 1), (9, 3), (3, 9), (1, 27)]


@pytest.mark.slow
def test_trials_as_rows_of_a_grid_train_as_their_own_runs(tiny_config, tmp_path):
    """Trials riding the run axis as rows of values: each one trains as a run of its own would."""
    rows = ((1e-3, 0.0), (5e-3, 0.3))
    tiny_config.grid = ((("optimizer.learning_rate", "model.dropout_rate"), rows),)
    assert run_axis.members(tiny_config) == [
        {"optimizer.learning_rate": lr, "model.dropout_rate": d} for lr, d in rows
    ]
    train.train_and_evaluate(tiny_config, str(tmp_path / "rows"))
    together = [json.loads(line) for line in open(tmp_path / "rows" / "metrics.jsonl")]
    for member, (lr, dropout) in enumerate(rows):
        alone = config_lib.with_values(
            tiny_config, {"optimizer.learning_rate": lr, "model.dropout_rate": dropout}
        )
        train.train_and_evaluate(alone, str(tmp_path / f"alone{member}"))
        single = [json.loads(line) for line in open(tmp_path / f"alone{member}" / "metrics.jsonl")]
        for key in ("train_loss", "val_loss"):
            assert [r[f"{key}_seeds"][member] for r in together] == pytest.approx(
                [r[key] for r in single], rel=2e-5
            )


def _search_config(tiny_config, algorithm="hyperband"):
    c = tiny_config
    c.search.space = SPACE
    c.search.algorithm = algorithm
    c.search.max_epochs, c.search.factor, c.search.trials = 3, 3, 4
    c.search.final_epochs = 2
    return c


@pytest.mark.slow
def test_a_hyperband_search_writes_its_trials_and_best_run_and_resumes_to_the_same(
    tiny_config, tmp_path
):
    config = _search_config(tiny_config)
    result = search.run(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "search.json").read_text())
    assert on_disk["algorithm"] == "hyperband" and on_disk["best"] == result["best"]
    trials = on_disk["trials"]
    assert len(trials) == 3 + 2  # brackets of R=3, factor 3: 3 trials, then 2
    pruned = [t for t in trials if t["stopped"].startswith("pruned")]
    assert len(pruned) == 2 and all(t["epochs"] == 1 for t in pruned)
    for t in trials:
        assert set(t) >= {"hparams", "val_accuracy", "val_loss", "epochs", "stopped", "objective"}
        assert len(t["val_accuracy"]) == t["epochs"]
        assert t["objective"] == max(t["val_accuracy"])
    best = trials[result["best"]]
    assert best["objective"] == max(t["objective"] for t in trials)
    summary = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert summary["epochs_run"] == result["best_epoch"] <= 2
    assert (tmp_path / "search.md").read_text().count("\n|") >= 3
    assert (tmp_path / "tensorboard" / "trials" / "0").is_dir()
    from fmnist_jax import inference

    classifier = inference.load(str(tmp_path / "best"))
    assert classifier.predict_proba(np.zeros((1, 28, 28, 1), np.uint8)).shape == (1, 10)
    again = search.run(config, str(tmp_path))  # everything on disk: nothing trains again
    assert again["trials"] == result["trials"] and again["best"] == result["best"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"algorithm": "annealing"}, "Unknown search.algorithm"),
        ({"space": ()}, "must name at least one"),
        ({"space": (("model.hidden_sizes", ("int", 8, 4, 1)),)}, "is not a range"),
        ({"space": (("optimizer.learning_rate", ("log_uniform", 0.0, 1.0)),)}, "0 < low < high"),
        ({"space": (("model.no_such_key", ("choice", (1, 2))),)}, "not a key of the config"),
        (
            {"space": (("optimizer.learning_rate", ("uniform", 0.1, 0.2)),), "algorithm": "grid"},
            "a grid cannot",
        ),
        ({"factor": 1}, "search.factor must be an integer >= 2"),
        ({"space": (("num_epochs", ("int", 1, 5, 1)),)}, "cannot search num_epochs"),
    ],
)
def test_searches_that_cannot_work_are_refused_before_training(
    tiny_config, tmp_path, change, message
):
    config = _search_config(tiny_config)
    for key, value in change.items():
        config.search[key] = value
    with pytest.raises(UserError, match=message):
        search.run(config, str(tmp_path))
    assert not (tmp_path / "trials").exists()


def test_a_search_refuses_seeds_and_grids_of_its_own(tiny_config, tmp_path):
    config = _search_config(tiny_config)
    config.num_seeds = 2
    with pytest.raises(UserError, match="one seed per trial"):
        search.check(config)
    assert math.isfinite(len(search.ALGORITHMS))


@pytest.mark.slow
def test_a_trial_that_diverges_is_reported_and_the_others_go_on(tiny_config, tmp_path):
    config = _search_config(tiny_config, algorithm="grid")
    config.search.space = (("optimizer.learning_rate", ("choice", (1e-3, 1e30))),)
    config.search.final_epochs = 0
    result = search.run(config, str(tmp_path))
    healthy, diverged = result["trials"]
    assert diverged["stopped"] == "diverged" and diverged["objective"] is None
    assert healthy["objective"] is not None and result["best"] == healthy["index"]
    assert "1 diverged" in (tmp_path / "search.md").read_text()


_SEARCH_CONFIG = """
from fmnist_jax.config import default


def get_config():
    c = default()
    c.plots = False
    c.batch_size, c.eval_batch_size = 8, 16
    c.data.num_validation = 16
    c.data.tfds_data_dir = {data_dir!r}
    c.checkpoint.min_interval_seconds = 0
    c.search.space = {space!r}
    c.search.algorithm = "tpe"
    c.search.trials, c.search.population, c.search.max_epochs = 6, 2, 8
    c.search.final_epochs = 2
    return c
"""


@pytest.mark.slow
def test_a_search_killed_and_run_again_ends_as_the_uninterrupted_one(mock_tfds_dir, tmp_path):
    """SIGKILL in the middle of a TPE search (its sampler learns from every round), then the same
    command: the trials, their curves and the choice equal those of a search never stopped."""
    config_file = tmp_path / "search_config.py"
    config_file.write_text(_SEARCH_CONFIG.format(data_dir=mock_tfds_dir, space=SPACE))

    def command(workdir):
        return [
            sys.executable,
            "-m",
            "experiments.search",
            f"--config={config_file}",
            f"--workdir={workdir}",
        ]

    reference = subprocess.run(
        command(tmp_path / "ref"), capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    second_round = killed / "trials"
    deadline = time.time() + 300
    while time.time() < deadline and not any(second_round.glob("round1-*/checkpoints/latest/*")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "search.json").exists(), "the search finished before it could be killed"
    resumed = subprocess.run(command(killed), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def trials(workdir):
        result = json.loads((workdir / "search.json").read_text())
        return result["best"], [
            {k: v for k, v in t.items() if k != "seconds"} for t in result["trials"]
        ]

    assert trials(killed) == trials(tmp_path / "ref")
