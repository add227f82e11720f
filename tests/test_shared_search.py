"""One search across several workers: three processes share a study in a real PostgreSQL server
(started on localhost) or in one SQLite file, one of them is killed mid-search, and the others
retry its trials and finish the search; and optuna-dashboard shows a finished search, through its
HTTP API and in a real headless browser."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import free_port

from fmnist_jax.tuning import search
from fmnist_jax.tuning import study as study_lib

_CONFIG = """
from fmnist_jax.config import default


def get_config():
    c = default()
    c.plots = False
    c.batch_size, c.eval_batch_size = 8, 16
    c.data.num_validation = 16
    c.data.tfds_data_dir = {data_dir!r}
    c.checkpoint.min_interval_seconds = 0
    c.search.space = (
        ("model.hidden_sizes", ("int", 8, 24, 8)),
        ("optimizer.learning_rate", ("log_uniform", 1e-4, 1e-2)),
    )
    c.search.algorithm, c.search.pruner = "tpe", "successive_halving"
    c.search.trials, c.search.population, c.search.max_epochs = {trials}, 2, 4
    c.search.final_epochs = 0
    c.search.storage, c.search.study = {storage!r}, {study!r}
    c.search.heartbeat_seconds = 1
    return c
"""
_TRIALS = 8


def _command(tmp_path, data_dir, storage, study, workdir):
    config = tmp_path / "shared.py"
    config.write_text(
        _CONFIG.format(data_dir=data_dir, trials=_TRIALS, storage=storage, study=study)
    )
    return [
        sys.executable,
        "-m",
        "experiments.search",
        f"--config={config}",
        f"--workdir={workdir}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("shared", ["postgresql", "sqlite"])
def test_workers_share_one_search_and_a_killed_ones_trials_are_retried(
    request, mock_tfds_dir, tmp_path, shared
):
    """Three workers, one killed with SIGKILL while a trial of its trains (after 2 epochs): the two others retry its
    trials (same values, from their start), the budget is spent once (every trial trained to a
    verdict once, none lost), and the worker that finished the last trial trains best/ while the
    other names where it is."""
    import optuna

    if shared == "postgresql":
        storage = request.getfixturevalue("postgres_url")
    else:
        storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = lambda name: _command(tmp_path, mock_tfds_dir, storage, "shared", tmp_path / name)  # noqa: E731
    survivors = {}
    for name in ("a", "b"):
        log = (tmp_path / f"{name}.txt").open("w")
        survivors[name] = subprocess.Popen(command(name), stdout=log, stderr=subprocess.STDOUT)
    assert _kill_while_training(command("killed"), storage, "shared") == -9
    for name, process in survivors.items():
        assert process.wait(timeout=600) == 0, (tmp_path / f"{name}.txt").read_text()[-3000:]
    logs = {name: (tmp_path / f"{name}.txt").read_text() for name in survivors}
    assert not any("Traceback" in text for text in logs.values())

    trials = optuna.load_study(
        study_name="shared", storage=study_lib.storage_url(_config(storage), str(tmp_path))
    ).trials
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED", "FAIL"}
    stale = [t for t in trials if t.state.name == "FAIL" and "stopped" not in t.user_attrs]
    assert stale and all(t.user_attrs["workdir"].endswith("/killed") for t in stale)
    for lost in stale:  # retried once, with its values, by a survivor, to a verdict
        (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
        assert retry.params == lost.params and "stopped" in retry.user_attrs
        assert not retry.user_attrs["workdir"].endswith("/killed")
    originals = [t for t in trials if "failed_trial" not in t.system_attrs]
    judged = [t for t in trials if "stopped" in t.user_attrs]
    assert _TRIALS <= len(originals) <= _TRIALS + 2  # at most one more per other worker asking
    assert len(judged) == len(originals)  # each trial trained to its verdict exactly once
    assert {t.user_attrs["workdir"].rsplit("/", 1)[1] for t in judged} >= {"a", "b"}

    results = {n: json.loads((tmp_path / n / "search.json").read_text()) for n in survivors}
    assert results["a"]["trials"] == results["b"]["trials"]
    assert results["a"]["best_run"] == results["b"]["best_run"]
    trainer = results["a"]["best_run"].rsplit("/", 2)[1]
    other = "b" if trainer == "a" else "a"
    assert (tmp_path / trainer / "best" / "summary.json").exists()
    assert not (tmp_path / other / "best").exists()
    assert f"trains it in {results['a']['best_run']}" in logs[other]


def _kill_while_training(command, storage, study_name):
    """Starts `command` and SIGKILLs it once it has trained a still running trial 2 epochs; if
    the trial ended in the instant before the signal landed, starts it again (it resumes) and
    kills it again, until the study holds a running trial of the dead worker. Its exit status."""
    import optuna

    url = study_lib.storage_url(_config(storage), "")

    def running():
        try:
            trials = optuna.load_study(study_name=study_name, storage=url).trials
        except Exception:  # noqa: BLE001 - the study or its tables do not exist yet
            return []
        return [
            t
            for t in trials
            if t.state.name == "RUNNING"
            and t.user_attrs.get("workdir", "").endswith("/killed")
            and len(t.user_attrs.get("curves", {}).get("val_loss", [])) >= 2
        ]

    for _ in range(5):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and not running():
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        status = process.wait(timeout=300)
        if running():
            return status
    raise AssertionError("the worker never held a running trial when killed")


def _config(storage):
    from fmnist_jax import config as config_lib

    c = config_lib.default()
    c.search.storage = storage
    return c


@pytest.mark.slow
def test_the_dashboard_shows_a_finished_search_in_its_api_and_a_browser(tiny_config, tmp_path):
    """optuna-dashboard on the workdir's search.db lists the study's trials with their values and
    curves, as JSON and as the page a browser draws."""
    c = tiny_config
    c.search.space = (
        ("model.hidden_sizes", ("int", 8, 24, 8)),
        ("optimizer.learning_rate", ("log_uniform", 1e-4, 1e-2)),
    )
    c.search.trials, c.search.max_epochs, c.search.final_epochs = 3, 2, 0
    result = search.run(c, str(tmp_path))
    port = free_port()
    dashboard = subprocess.Popen(
        [
            shutil.which("optuna-dashboard", path=f"{sys.prefix}/bin"),
            f"sqlite:///{tmp_path / 'search.db'}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == tmp_path.name]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}")
        shown = {t["number"]: t for t in detail["trials"]}
        assert sorted(shown) == [t["index"] for t in result["trials"]]
        for trial in result["trials"]:
            params = {p["name"]: p["param_external_value"] for p in shown[trial["index"]]["params"]}
            assert params["model.hidden_sizes"] == str(trial["hparams"]["model.hidden_sizes"])
            curve = [v["value"] for v in shown[trial["index"]]["intermediate_values"]]
            assert curve == trial["val_accuracy"]
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            message = "no chromium (apt-get install chromium): the API was checked, not the page"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        page = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=15000",
                "--dump-dom",
                f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}/trials",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        assert "model.hidden_sizes" in page and "optimizer.learning_rate" in page
        assert f"Trial {result['trials'][-1]['index']}" in page
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def _get(url, wait=60.0):
    """JSON from `url`, once the server answers."""
    deadline = time.time() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
