"""Search: its space and samplers, the pruners, trials riding the run axis (masked widths, refilled
slots), the whole search on mock data (resumed to the same result), and the refusals."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import kill_after_checkpoint
from scipy import stats

from configs import mlp as mlp_config
from fmnist_jax import config as config_lib
from fmnist_jax import engine, models, reports
from fmnist_jax.config import run_axis
from fmnist_jax.engine import optim
from fmnist_jax.engine.normalizer import Normalizer
from fmnist_jax.errors import UserError
from fmnist_jax.training import train
from fmnist_jax.tuning import search
from fmnist_jax.tuning import study as study_lib

SPACE = (
    ("model.hidden_sizes", ("int", 8, 24, 8)),
    ("optimizer.learning_rate", ("log_uniform", 1e-4, 1e-2)),
)


def _study(config, workdir, algorithm="random", space=SPACE):
    config.search.space, config.search.algorithm = space, algorithm
    return study_lib.Study(config, str(workdir), search.check(config))


@pytest.mark.parametrize("algorithm", ["random", "halton", "sobol", "tpe"])
def test_every_sampler_stays_in_the_space_and_repeats_from_its_seed(
    tiny_config, tmp_path, algorithm
):
    """Two studies of one seed ask the same trials (what a resumed worker relies on); a grid
    asks every point once."""
    asked = []
    for name in ("a", "b"):
        study = _study(tiny_config, tmp_path / name, algorithm)
        trials = []
        for _ in range(6):  # QMC takes the space from the first completed trial
            trials.append(study.ask(budget=6))
            study.tell(trials[-1], 0.5)
        study.close()
        asked.append([study_lib.decode(study.space, t.params) for t in trials])
        assert study.ask(budget=6) is None  # the budget is spent
    assert asked[0] == asked[1]
    for trial in asked[0]:
        assert trial["model.hidden_sizes"] in (8, 16, 24)
        assert 1e-4 <= trial["optimizer.learning_rate"] <= 1e-2
    if algorithm in ("halton", "sobol"):  # low discrepancy: every width
        assert len({t["model.hidden_sizes"] for t in asked[0]}) == 3


def test_a_grid_asks_every_point_once(tiny_config, tmp_path):
    grid = (SPACE[0], ("optimizer.learning_rate", ("choice", (0.1, 0.01))))
    study = _study(tiny_config, tmp_path, "grid", grid)
    trials = [study.ask(budget=6) for _ in range(6)]
    study.close()
    assert sorted(
        (p["model.hidden_sizes"], p["optimizer.learning_rate"])
        for p in (study_lib.decode(study.space, t.params) for t in trials)
    ) == sorted((w, lr) for w in (8, 16, 24) for lr in (0.1, 0.01))


def test_tpe_learns_from_what_it_is_told(tiny_config, tmp_path):
    space = (("optimizer.learning_rate", ("uniform", 0.01, 1.0)),)
    study = _study(tiny_config, tmp_path, "tpe", space)
    for _ in range(32):
        trial = study.ask(budget=40)  # the objective peaks at 0.9
        study.tell(trial, -abs(trial.params["optimizer.learning_rate"] - 0.9))
    late = [study.ask(budget=40).params["optimizer.learning_rate"] for _ in range(8)]
    study.close()
    assert sum(abs(x - 0.9) < 0.25 for x in late) >= 5  # random would put ~4 of 8 there


def test_widths_as_choices_are_stored_as_text_and_read_back_as_widths(tiny_config, tmp_path):
    space = (
        ("model.hidden_sizes", ("choice", ((8, 16), (16, 32)))),
        ("optimizer.learning_rate", ("uniform", 1e-3, 1e-2)),
    )
    study = _study(tiny_config, tmp_path, "tpe", space)
    trial = study.ask(budget=1)
    study.close()
    assert trial.params["model.hidden_sizes"] in ("8x16", "16x32")
    assert study_lib.decode(study.space, trial.params)["model.hidden_sizes"] in ((8, 16), (16, 32))
    assert reports.shown((16, 32)) == "16x32" and reports.shown(0.5) == 0.5


@pytest.mark.slow
def test_a_trial_whose_worker_stops_beating_is_retried_by_another_with_its_values(
    tiny_config, tmp_path
):
    """Worker A asks a trial and dies (its heartbeats stop); after 6 missed beats worker B fails
    it and asks it again, with A's values, and the budget counts it once."""
    tiny_config.search.heartbeat_seconds = 1
    tiny_config.search.study = "shared"
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    tiny_config.search.storage = storage
    dead = _study(tiny_config, tmp_path / "a")
    lost = dead.ask(budget=2)
    dead.close()
    alive = _study(tiny_config, tmp_path / "b")
    time.sleep(7.5)
    alive.fail_stale()
    retried = alive.ask(budget=2)
    assert retried.params == lost.params and retried.number != lost.number
    alive.tell(retried, 0.5)
    fresh = alive.ask(budget=2)  # the second of the budget: new values
    assert fresh.params != lost.params
    assert alive.ask(budget=2) is None
    alive.close()


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


def _search_config(tiny_config, algorithm="random", pruner="hyperband"):
    c = tiny_config
    c.search.space = SPACE
    c.search.algorithm, c.search.pruner = algorithm, pruner
    c.search.max_epochs, c.search.factor, c.search.trials = 3, 3, 4
    c.search.final_epochs = 2
    c.search.study = "test"  # searches in several workdirs compared: one study name
    return c


@pytest.mark.slow
def test_a_hyperband_search_writes_its_trials_and_best_run_and_resumes_to_the_same(
    tiny_config, tmp_path
):
    config = _search_config(tiny_config)
    result = search.run(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "search.json").read_text())
    assert on_disk["pruner"] == "hyperband" and on_disk["best"] == result["best"]
    trials = on_disk["trials"]
    # Brackets of R=3, factor 3: 3 trials judged after 1 epoch, then 2 of 3 epochs; 4 trials.
    assert len(trials) == 4 and {t["bracket"] for t in trials} <= {0, 1}
    pruned = [t for t in trials if t["stopped"].startswith("pruned")]
    assert pruned and all(t["epochs"] < 3 and t["bracket"] == 0 for t in pruned), trials
    _the_study_holds_the_search(config, tmp_path, trials)
    for t in trials:
        assert set(t) >= {"hparams", "val_accuracy", "val_loss", "epochs", "stopped", "objective"}
        assert len(t["val_accuracy"]) == t["epochs"]
        assert t["objective"] == max(t["val_accuracy"])
    best = trials[result["best"]]
    assert best["objective"] == max(t["objective"] for t in trials)
    summary = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["restored_epoch"] == result["best_epoch"]
    # The tutorial's retrain to the best epoch gives the model that best/ restored.
    retrain = search.with_trial(config, best["hparams"])
    retrain.search = config_lib.default().search
    retrain.num_epochs = result["best_epoch"]
    retrained = train.train_and_evaluate(retrain, str(tmp_path / "retrain"))
    assert retrained["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert retrained["test_accuracy"] == summary["test_accuracy"]
    assert (tmp_path / "search.md").read_text().count("\n|") >= 3
    assert (tmp_path / "tensorboard" / "trials" / "0").is_dir()
    from fmnist_jax import inference

    classifier = inference.load(str(tmp_path / "best"))
    assert classifier.predict_proba(np.zeros((1, 28, 28, 1), np.uint8)).shape == (1, 10)
    _a_finished_search_workdir_knows_what_it_holds(config, tmp_path, result)


def _the_study_holds_the_search(config, workdir, trials):
    """search.db is an Optuna study: each trial's values, every epoch's objective, its state."""
    import optuna

    study = optuna.load_study(study_name="test", storage=f"sqlite:///{workdir / 'search.db'}")
    assert [t.number for t in study.trials] == [t["index"] for t in trials]
    for frozen, trial in zip(study.trials, trials, strict=True):
        assert frozen.params["model.hidden_sizes"] == trial["hparams"]["model.hidden_sizes"]
        assert list(frozen.intermediate_values.values()) == trial["val_accuracy"]
        pruned = trial["stopped"].startswith("pruned")
        assert frozen.state.name == ("PRUNED" if pruned else "COMPLETE")
        assert pruned or frozen.value == trial["objective"]


@pytest.mark.slow
def test_two_objectives_give_the_pareto_front_and_best_trains_its_most_accurate(
    tiny_config, tmp_path
):
    """The tutorial's space on validation accuracy and parameter count: search.json's front is
    exactly the trials no other dominates, the pruner stopped only dominated trials, best/ is the
    front's most accurate, and the study has two directions."""
    import optuna

    from configs import search_mlp

    config = _search_config(tiny_config, algorithm="tpe", pruner="dominated")
    config.search.space = search_mlp.get_config().search.space
    config.search.objectives = ("val_accuracy", "params")
    config.search.trials, config.search.max_epochs, config.search.final_epochs = 8, 3, 0
    config.plots = True  # search.png draws the trade-off
    result = search.run(config, str(tmp_path))
    assert (tmp_path / "search.png").stat().st_size > 0
    trials = {t["index"]: t for t in result["trials"]}
    for t in trials.values():  # the MLP's own count: 784 x w + w, then w x 10 + 10
        width = t["hparams"]["model.hidden_sizes"]
        assert t["params"] == 784 * width + width + 10 * width + 10
    chosen = [t for t in trials.values() if t["objective"] is not None]
    chosen = [t for t in chosen if t["learned"]] or chosen
    points = {t["index"]: (t["objective"], t["params"]) for t in chosen}

    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    front = set(result["pareto"])
    assert front and front <= set(points)
    for i, p in points.items():
        beaten = any(dominates(q, p) for j, q in points.items() if j != i)
        assert beaten == (i not in front)
    assert result["best"] == max(front, key=lambda i: (points[i][0], -points[i][1]))
    assert all(t["epochs"] in (1, 2) for t in trials.values() if t["stopped"].endswith("dominated"))
    study = optuna.load_study(study_name="test", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert len(study.directions) == 2
    assert "The Pareto front on (val_accuracy, parameters)" in (tmp_path / "search.md").read_text()
    assert (tmp_path / "best" / "summary.json").exists()


def _files(directory):
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _a_finished_search_workdir_knows_what_it_holds(config, workdir, result):
    """Run again, a finished search reports itself without compiling or writing; a training run,
    explain and predict there are refused, pointing to best/; a search config does not train."""
    from fmnist_jax import inference
    from fmnist_jax.tuning import population

    before = _files(workdir)
    built = population.Population
    population.Population = None  # building a population (compiling) would fail
    try:
        again = search.run(config, str(workdir))
    finally:
        population.Population = built
    assert again == json.loads((workdir / "search.json").read_text())
    assert again["trials"] == result["trials"] and again["best"] == result["best"]
    plain = config_lib.default()
    plain.data = config.data
    with pytest.raises(
        UserError, match=r"holds a hyperparameter search.*its best trial is the run"
    ):
        train.train_and_evaluate(plain, str(workdir))
    with pytest.raises(UserError, match=r"Pass --workdir=.*/best"):
        inference.load(str(workdir))
    assert _files(workdir) == before
    with pytest.raises(UserError, match="describes a hyperparameter search"):
        train.train_and_evaluate(config, str(workdir / "elsewhere"))
    assert not (workdir / "elsewhere").exists()
    with pytest.raises(UserError, match="holds a training run, not a search"):
        search.run(config, str(workdir / "best"))


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
        ({"space": (("model.activation", ("choice", ("relu", "tanh"))),)}, "side by side"),
        ({"pruner": "asha"}, "Unknown search.pruner"),
        ({"pruner": "dominated"}, "set search.objectives"),
        ({"objectives": ("val_accuracy",)}, "name two"),
        ({"objectives": ("val_accuracy", "params")}, "cannot judge two objectives"),
        ({"heartbeat_seconds": 0}, "search.heartbeat_seconds must be an integer >= 1"),
        ({"seed": -1}, "search.seed must be an integer >= 0, got -1. It seeds"),
        ({"final_epochs": -2}, "search.final_epochs must be an integer >= 0, got -2"),
        ({"trials": True}, "search.trials must be an integer"),
        (
            {"space": (("model.hidden_sizes", ("choice", ((8, 16), (8,)))),)},
            "widths of one depth",
        ),
        ({"space": (("model.hidden_sizes", ("choice", (8, None))),)}, "widths of one depth"),
        ({"space": (("optimizer.learning_rate", ("choice", (1e-3, True))),)}, "not booleans"),
        ({"space": (("optimizer.learning_rate", ("choice", (1e-3, None))),)}, "not booleans"),
        ({"space": (("model.hidden_sizes", ("int", True, 8, 1)),)}, "is not a range"),
    ],
)
def test_searches_that_cannot_work_are_refused_before_anything_is_written(
    tiny_config, tmp_path, change, message
):
    config = _search_config(tiny_config)
    for key, value in change.items():
        config.search[key] = value
    workdir = tmp_path / "search"
    with pytest.raises(UserError, match=message):
        search.run(config, str(workdir))
    assert not workdir.exists()


@pytest.mark.parametrize(
    "storage, phrase",
    [
        ("postgresql://nobody@127.0.0.1:9/none", "OperationalError"),
        ("nosuchdb://x", "NoSuchModuleError"),
    ],
)
def test_a_storage_that_cannot_be_used_is_one_paragraph(tiny_config, tmp_path, storage, phrase):
    config = _search_config(tiny_config)
    config.search.storage = storage
    with pytest.raises(UserError, match=f"storage \\({storage}\\) cannot be used: {phrase}"):
        search.run(config, str(tmp_path / "search"))


def test_a_range_of_a_million_integers_is_checked_by_its_ends(tiny_config):
    config = _search_config(tiny_config)
    config.search.space = (("model.hidden_sizes", ("int", 1, 3_000_000, 3)),)
    (d,) = search.check(config)
    assert d.size() == 1_000_000 and d.values_or_ends() == [1, 2_999_998]


def test_a_sampler_whose_library_is_missing_is_refused_before_anything_is_written(
    tiny_config, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    config = _search_config(tiny_config, algorithm="tpe")
    with pytest.raises(UserError, match="needs Optuna, which is not installed"):
        search.run(config, str(tmp_path / "search"))
    assert not (tmp_path / "search").exists()


def test_a_search_refuses_seeds_and_grids_of_its_own(tiny_config, tmp_path):
    config = _search_config(tiny_config)
    config.num_seeds = 2
    with pytest.raises(UserError, match="one seed per trial"):
        search.check(config)


@pytest.mark.slow
def test_a_trial_that_diverges_is_reported_and_the_others_go_on(tiny_config, tmp_path):
    config = _search_config(tiny_config, algorithm="grid")
    config.search.space = (("optimizer.learning_rate", ("choice", (1e-3, 1e30))),)
    config.search.final_epochs = 0
    result = search.run(config, str(tmp_path))
    healthy, diverged = sorted(
        result["trials"], key=lambda t: t["hparams"]["optimizer.learning_rate"]
    )
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
    c.search.algorithm = {algorithm!r}
    c.search.trials, c.search.population, c.search.max_epochs = {trials}, {population}, 8
    c.search.execution = {execution!r}
    c.search.final_epochs = 2
    c.search.study = "test"
    return c
"""


def _search_command(
    tmp_path, data_dir, workdir, algorithm="tpe", trials=6, population=2, execution="auto"
):
    config_file = tmp_path / f"{algorithm}_{trials}_{population}_{execution}.py"
    config_file.write_text(
        _SEARCH_CONFIG.format(
            data_dir=data_dir,
            space=SPACE,
            algorithm=algorithm,
            trials=trials,
            population=population,
            execution=execution,
        )
    )
    return [
        sys.executable,
        "-m",
        "experiments.search",
        f"--config={config_file}",
        f"--workdir={workdir}",
    ]


def _trials(workdir):
    """The search's choice and its trials, without their wall times."""
    result = json.loads((workdir / "search.json").read_text())
    return result["best"], [_without_times(t) for t in result["trials"]]


def _without_times(trial):
    """A trial's record without the worker's clock, its time of day or its place."""
    return {k: v for k, v in trial.items() if k not in ("seconds", "finished", "workdir")}


@pytest.mark.slow
def test_a_search_killed_and_run_again_ends_as_the_uninterrupted_one(mock_tfds_dir, tmp_path):
    """SIGKILL in the middle of a TPE search (its sampler learns from every stopped trial), then
    the same command: the trials, their curves and the choice equal those of a search never
    stopped."""
    reference = subprocess.run(
        _search_command(tmp_path, mock_tfds_dir, tmp_path / "ref"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert reference.returncode == 0, reference.stderr[-2000:]
    killed = tmp_path / "killed"
    command = _search_command(tmp_path, mock_tfds_dir, killed)
    saved = killed / "population" / "checkpoints" / "latest"
    kill_after_checkpoint(command, saved, 5)  # TPE has learnt from stopped trials
    assert not (killed / "search.json").exists(), "the search finished before it could be killed"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _trials(killed) == _trials(tmp_path / "ref")


@pytest.mark.slow
def test_sigterm_stops_a_search_in_one_line_and_a_second_search_meanwhile_is_refused(
    mock_tfds_dir, tmp_path
):
    """A search holds its workdir's lock (a second command on it is refused in one paragraph) and
    stops on SIGTERM after its current epoch, saved, in one line; the same command resumes it."""
    workdir = tmp_path / "search"
    command = _search_command(tmp_path, mock_tfds_dir, workdir)
    latest = workdir / "population" / "checkpoints" / "latest"
    log = tmp_path / "stderr.txt"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.name.isdigit() for p in latest.glob("*")):
        time.sleep(0.05)
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode != 0 and "in use by another run" in second.stderr
    assert "experiments/search.py --config=" in second.stderr  # the lock names its holder
    assert "Traceback" not in second.stderr
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == 128 + signal.SIGTERM
    stderr = log.read_text()
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("Stopped by SIGTERM")]
    assert "Re-running the same command resumes" in line
    assert not (workdir / "search.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "Resuming the search after its epoch" in resumed.stderr


@pytest.mark.slow
def test_a_search_over_8_devices_equals_the_search_on_one(mock_tfds_dir, tmp_path):
    """8 slots on 8 simulated CPU devices train one slot per device (a `runs` mesh axis, no
    all-reduce between trials), and the search takes the same trials, curves and choice as on one
    device, up to float rounding; 4 slots share each pair of devices' batches (runs x data)."""
    results = {}
    for devices, population in ((1, 8), (8, 8), (8, 4), (1, 4)):
        workdir = tmp_path / f"{devices}_{population}"
        command = _search_command(
            tmp_path, mock_tfds_dir, workdir, "random", 12, population, "side_by_side"
        )
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        runs = population if devices == 8 else 1
        mesh = f"{population} slots on a runs x data mesh of {runs} x {devices // runs} devices"
        assert mesh in done.stderr
        results[devices, population] = _trials(workdir)
    for population in (8, 4):
        (best, trials), (best_8, trials_8) = results[1, population], results[8, population]
        assert best_8 == best
        for one, eight in zip(trials, trials_8, strict=True):
            for key in ("val_accuracy", "val_loss"):
                assert eight.pop(key) == pytest.approx(one.pop(key), rel=1e-4)
            assert eight["objective"] == pytest.approx(one.pop("objective"), rel=1e-4)
            assert {k: v for k, v in eight.items() if k != "objective"} == one


@pytest.mark.slow
def test_a_refilled_slot_trains_as_a_fresh_trial_without_compiling_again(tiny_config, tmp_path):
    """Slot 0 trains trial A for an epoch, then takes trial C (another width and rate): C's curves
    and weights equal those of C in a fresh population, and nothing compiled again."""
    from fmnist_jax import data
    from fmnist_jax.records import checkpoint
    from fmnist_jax.tuning import population

    trial = {
        name: {"model.hidden_sizes": width, "optimizer.learning_rate": lr}
        for name, width, lr in (("A", 24, 1e-2), ("B", 8, 1e-3), ("C", 16, 3e-3))
    }
    splits = data.load(tiny_config.data)
    largest = {"model.hidden_sizes": (24,), "optimizer.learning_rate": 1e-2}

    def slots(name):
        checkpoints = checkpoint.Checkpoints(str(tmp_path / name), keep=1)
        p = population.Population(tiny_config, splits, largest, 2, checkpoints)
        p.compile(poll=lambda: None)
        return p

    refilled = slots("refilled")
    refilled.assign({0: trial["A"], 1: trial["B"]})
    refilled.train_epoch()
    compiled = len(refilled.program.runner._executables)
    refilled.assign({0: trial["C"]})
    curves = [refilled.train_epoch()[1][0]["loss"] for _ in range(2)]
    fresh = slots("fresh")
    fresh.assign({0: trial["C"], 1: trial["B"]})
    expected = [fresh.train_epoch()[1][0]["loss"] for _ in range(2)]
    assert curves == pytest.approx(expected, rel=1e-5)
    assert refilled.epochs.tolist() == [2, 3]
    for a, b in zip(
        jax.tree.leaves(refilled.state.params), jax.tree.leaves(fresh.state.params), strict=True
    ):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-7)
    assert len(refilled.program.runner._executables) == compiled
    assert refilled._reinitialize._cache_size() == 1  # both fillings ran one compiled program
    for p in (refilled, fresh):
        p.close()


@pytest.mark.slow
def test_a_masked_width_k_trial_is_a_width_k_model():
    """Inside a 64-wide MLP, a width-24 trial starts from a genuine width-24 model's initial
    distribution and computes and learns what that model does, step for step."""
    config = mlp_config.get_config()
    config.optimizer.name, config.optimizer.weight_decay = "adamw", 1e-3
    config.model.activation = "sigmoid"  # silent units would still pass 0.5 on without the mask
    wide = config.copy_and_resolve_references()
    wide.model.hidden_sizes = (64,)
    config.model.hidden_sizes = (24,)
    settings = {"hidden_sizes": jnp.array([24.0])}
    masked_init = models.create(wide.model).init(jax.random.key(1), settings)["params"]
    genuine_init = models.create(config.model).init(jax.random.key(2))["params"]
    for layer, (fan_in, fan_out) in {"Dense_0": (784, 24), "Dense_1": (24, 10)}.items():
        kernel = np.asarray(masked_init["head"][layer]["kernel"])
        used = kernel[:fan_in, :fan_out]
        assert not kernel[fan_in:].any() and not kernel[:, fan_out:].any()
        limit = np.sqrt(6 / (fan_in + fan_out))  # Glorot's, of the narrow layer's fans
        assert stats.kstest(used.ravel() / limit, stats.uniform(-1, 2).cdf).pvalue > 1e-3
        other = np.asarray(genuine_init["head"][layer]["kernel"]).ravel()
        assert stats.ks_2samp(used.ravel(), other).pvalue > 1e-3

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 255, (5, 32, 28, 28, 1)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, (5, 32)), jnp.int32)
    masked, masked_sums = _trained(
        wide.model, config, masked_init, {"model.hidden_sizes": jnp.array([24.0])}, images, labels
    )
    genuine, genuine_sums = _trained(
        config.model, config, _narrow(masked_init, 24), {}, images, labels
    )
    np.testing.assert_allclose(masked_sums.loss, genuine_sums.loss, rtol=1e-5)
    assert masked_sums.metrics["accuracy"] == genuine_sums.metrics["accuracy"]
    for leaf_masked, leaf_genuine in zip(
        jax.tree.leaves(_narrow(masked, 24)), jax.tree.leaves(genuine), strict=True
    ):
        np.testing.assert_allclose(leaf_masked, leaf_genuine, rtol=1e-4, atol=1e-6)
    kernel = np.asarray(masked["head"]["Dense_0"]["kernel"])
    assert (
        not kernel[:, 24:].any() and not np.asarray(masked["head"]["Dense_1"]["kernel"])[24:].any()
    )


def _trained(model_config, config, params, values, images, labels):
    """`params` after one step of `config`'s optimizer per batch of `images`, with the run values
    `values` (no dropout): (the params, the steps' summed loss and correct count)."""
    eng = engine.Engine(
        models.create(model_config), functools.partial(optim.optimizer, config, 10), Normalizer()
    )
    state = engine.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats={},
        opt_state=eng.tx.init(params),
        ema_params={},
    )
    sums = jax.tree.map(lambda a: a[0], engine.Sums.zeros(1))
    step = jax.jit(eng.train_step)
    for batch_images, batch_labels in zip(images, labels, strict=True):
        state, sums = step(state, sums, batch_images, batch_labels, jax.random.key(3), values)
    return state.params, sums


def _narrow(params, width):
    head = params["head"]
    return {
        "head": {
            "Dense_0": {
                "kernel": head["Dense_0"]["kernel"][:, :width],
                "bias": head["Dense_0"]["bias"][:width],
            },
            "Dense_1": {
                "kernel": head["Dense_1"]["kernel"][:width],
                "bias": head["Dense_1"]["bias"],
            },
        }
    }


@pytest.mark.slow
def test_a_masked_channels_trial_is_a_cnn_of_those_channels():
    """Inside a (16, 32)-channel CNN, an (8, 16)-channel trial starts from a genuine (8, 16) CNN's
    initial distribution, and computes and learns what that CNN does, step for step: the head
    reads only the used channels of the flattened maps."""
    from configs import cnn as cnn_config

    config = cnn_config.get_config()
    config.optimizer.name, config.optimizer.weight_decay = "adamw", 1e-3
    config.model.activation, config.model.hidden_sizes = "sigmoid", (32,)
    wide = config.copy_and_resolve_references()
    wide.model.conv_channels, config.model.conv_channels = (16, 32), (8, 16)
    settings = {"conv_channels": jnp.array([8.0, 16.0])}
    init = models.create(wide.model).init(jax.random.key(1), settings)["params"]
    narrow = _narrow_cnn(init)
    fans = {"conv0": (9 * 1, 9 * 8), "conv1": (9 * 8, 9 * 16), "head": (7 * 7 * 16, 32)}
    kernels = {
        "conv0": narrow["conv0"]["kernel"],
        "conv1": narrow["conv1"]["kernel"],
        "head": narrow["head"]["Dense_0"]["kernel"],
    }
    for name, (fan_in, fan_out) in fans.items():
        limit = np.sqrt(6 / (fan_in + fan_out))  # Glorot's, of the narrow layer's fans
        used = np.asarray(kernels[name]).ravel() / limit
        assert stats.kstest(used, stats.uniform(-1, 2).cdf).pvalue > 1e-3
    total = sum(np.count_nonzero(a) for a in jax.tree.leaves(init))
    assert total == sum(np.count_nonzero(a) for a in jax.tree.leaves(narrow))  # the rest is zero

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 255, (4, 8, 28, 28, 1)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, (4, 8)), jnp.int32)
    masked, masked_sums = _trained(
        wide.model, config, init, {"model.conv_channels": jnp.array([8.0, 16.0])}, images, labels
    )
    genuine, genuine_sums = _trained(config.model, config, narrow, {}, images, labels)
    np.testing.assert_allclose(masked_sums.loss, genuine_sums.loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(_narrow_cnn(masked)), jax.tree.leaves(genuine), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    nonzero = sum(np.count_nonzero(a) for a in jax.tree.leaves(masked))
    assert nonzero == sum(np.count_nonzero(a) for a in jax.tree.leaves(_narrow_cnn(masked)))


def _narrow_cnn(params):
    """The (8, 16)-channel CNN's weights inside a (16, 32)-channel CNN's."""
    head = params["head"]["Dense_0"]["kernel"]
    return {
        "conv0": {
            "kernel": params["conv0"]["kernel"][..., :8],
            "bias": params["conv0"]["bias"][:8],
        },
        "conv1": {
            "kernel": params["conv1"]["kernel"][..., :8, :16],
            "bias": params["conv1"]["bias"][:16],
        },
        "head": {
            "Dense_0": {
                "kernel": head.reshape(49, 32, -1)[:, :16].reshape(49 * 16, -1),
                "bias": params["head"]["Dense_0"]["bias"],
            },
            "Dense_1": params["head"]["Dense_1"],
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["side_by_side", "own_widths"])
def test_a_search_stopped_after_any_epoch_on_a_slow_disk_resumes_to_the_same(
    tiny_config, tmp_path, monkeypatch, execution
):
    """The record a checkpoint holds is the one of its weights, however late its JSON lands: with
    every metadata write 0.3 s late (a slow or busy disk), a search stopped after each epoch in
    turn and started again ends as the search never stopped."""
    import asyncio

    import orbax.checkpoint as ocp

    from fmnist_jax import interrupts

    write = ocp.JsonCheckpointHandler._save_fn

    async def late_write(self, x, directory):
        await asyncio.sleep(0.3)
        await write(self, x, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", late_write)
    config = _search_config(tiny_config, algorithm="tpe")
    config.search.trials, config.search.population, config.search.final_epochs = 5, 2, 0
    config.search.execution = execution
    reference = search.run(config, str(tmp_path / "reference"))
    epochs = json.loads((tmp_path / "reference" / "search.json").read_text())
    steps = max(t["epochs"] for t in epochs["trials"])  # a lower bound of the search's epochs
    check = interrupts.check

    def stop_at(step):
        def stopping(epoch, checkpoints, save=None):
            if epoch == step + 1:
                interrupts._requested.append(signal.SIGTERM)
            try:
                check(epoch, checkpoints, save)
            finally:
                interrupts._requested.clear()

        return stopping

    def without_seconds(trials):
        return [_without_times(t) for t in trials]

    for step in range(1, steps + 1):
        workdir = str(tmp_path / f"stopped_{step}")
        monkeypatch.setattr(interrupts, "check", stop_at(step))
        with pytest.raises(interrupts.Stopped):
            search.run(config, workdir)
        monkeypatch.setattr(interrupts, "check", check)
        resumed = search.run(config, workdir)
        assert without_seconds(resumed["trials"]) == without_seconds(reference["trials"]), step
        assert resumed["best"] == reference["best"]


def test_a_trial_that_does_not_learn_is_reported_and_never_best(tiny_config, tmp_path):
    """A trial whose validation loss blows up without a NaN stops as 'failed to learn', and one at
    chance is marked so; neither is best while another trial learned, however high its objective."""
    from fmnist_jax.tuning import search_record

    config = _search_config(tiny_config, pruner="none")
    config.search.max_epochs, config.search.trials = 2, 3
    study = study_lib.Study(config, str(tmp_path), search.check(config))

    class Slots:  # the numbers of three trials' epochs, as if trained
        epochs = np.zeros(3, np.int32)

        def assign(self, trials, fresh=True):
            pass

        def free(self, slot):
            pass

    record = search_record.Record(config, study, Slots(), 0.0, lambda hparams: 0)
    record.slots = [None] * 3
    record.fill(budget=3)
    curves = {  # (validation accuracy, loss) per epoch: blown up, at chance, learned
        0: [(0.9, 0.3), (0.1, 497.0)],
        1: [(0.1, 2.3), (0.11, 2.3)],
        2: [(0.5, 1.0), (0.7, 0.8)],
    }
    for epoch in range(2):
        train = [{"first_nonfinite_step": -1}] * 3
        validation = [
            {"accuracy": curves[s][epoch][0], "loss": curves[s][epoch][1]} for s in range(3)
        ]
        Slots.epochs[:] = epoch + 1
        record.judge(train, validation)
    study.close()
    blown, chance, good = search_record.trials(config, study)
    assert blown["stopped"].startswith("failed to learn: validation loss 497")
    assert blown["learned"] is False and blown["objective"] == 0.9
    assert chance["stopped"] == "finished 2 epochs" and chance["learned"] is False
    assert good["learned"] is True
    assert search_record.best_trial([blown, chance, good], config) is good
    assert search_record.best_trial([blown, chance], config) is blown  # none learned: the best


@pytest.mark.slow
def test_hostile_search_commands_are_one_paragraph_and_write_nothing(mock_tfds_dir, tmp_path):
    workdir = tmp_path / "search"
    command = _search_command(tmp_path, mock_tfds_dir, workdir)
    for override, phrase in (
        ("--config.search.seed=-1", "search.seed must be an integer >= 0"),
        ("--config.search.final_epochs=-1", "search.final_epochs must be an integer >= 0"),
        ("--config.search.algorithm=annealing", "Unknown search.algorithm"),
    ):
        result = subprocess.run([*command, override], capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert phrase in error
        assert not workdir.exists()
