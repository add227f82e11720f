"""The search's record: an Optuna study in a storage that any number of workers share.

`config.search.storage` names the storage: empty for an SQLite file in the workdir
(`DIR/search.db`, which `optuna-dashboard sqlite:///DIR/search.db` opens), or a database URL such
as `postgresql://user@host/db` that workers on other machines reach too. `config.search.study`
names the study (empty: the workdir's name). The study holds every trial: its parameters, each
epoch's objective as an intermediate value, its state (complete, pruned, failed) and the rest as
user attributes (both validation curves, epochs, why it stopped, whether it learned, the worker).

Optuna's samplers and pruners are declared here by name (`SAMPLERS`, `PRUNERS`). A sampler is made
afresh for each ask, seeded from the search's seed and the study's trial count: a worker that
resumes asks exactly what it asked before, and workers that ask at once get different seeds.

Workers keep their trials alive with heartbeats from a thread; a trial whose worker stopped
beating for `_GRACE` heartbeats is failed by whichever worker notices first and queued again as a
waiting trial (`_retry`), which the next ask of any worker takes before anything new.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging
from ml_collections import ConfigDict

from fmnist_jax.errors import UserError
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.tuning import objectives
from fmnist_jax.tuning.search_space import Dimension

DATABASE_FILE = "search.db"
WORKER_FILE = "worker.json"
_GRACE = 6  # heartbeats a trial may miss before another worker retries it
_MAX_RETRIES = 3  # retries of one trial whose workers keep dying (e.g. it runs out of memory)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """`build(seed, count, space)`: Optuna's sampler for the ask after `count` trials."""

    build: Callable[[int, int, list[Dimension]], Any]
    needs: str = ""  # a library beyond Optuna


def _seed(seed: int, count: int) -> int:
    return int(np.random.SeedSequence([seed, count]).generate_state(1)[0])


def _qmc(kind: str) -> Sampler:
    # The sequence's scrambling is the search's; its position is kept in the study, so every
    # worker continues one sequence. Choices are drawn at random, seeded per ask.
    def build(seed: int, count: int, space: list[Dimension]) -> Any:
        import optuna

        return optuna.samplers.QMCSampler(
            qmc_type=kind,
            scramble=True,
            seed=seed,
            independent_sampler=optuna.samplers.RandomSampler(seed=_seed(seed, count)),
            warn_independent_sampling=False,
            warn_asynchronous_seeding=False,
        )

    return Sampler(build)


def _seeded(name: str, needs: str = "") -> Sampler:
    def build(seed: int, count: int, space: list[Dimension]) -> Any:
        import optuna

        if name == "GridSampler":  # its seed orders the grid: one order for every ask
            grid = {d.key: [encode(v) for v in d.values()] for d in space}
            return optuna.samplers.GridSampler(grid, seed=seed)
        return getattr(optuna.samplers, name)(seed=_seed(seed, count))

    return Sampler(build, needs)


SAMPLERS = {
    "grid": _seeded("GridSampler"),
    "random": _seeded("RandomSampler"),
    "halton": _qmc("halton"),
    "sobol": _qmc("sobol"),
    "tpe": _seeded("TPESampler"),
    "gp": _seeded("GPSampler", needs="torch"),
}


def _pruner(search: ConfigDict) -> Any:
    import optuna

    p = optuna.pruners
    return {
        "none": lambda: p.NopPruner(),
        "hyperband": lambda: p.HyperbandPruner(1, search.max_epochs, search.factor),
        "successive_halving": lambda: p.SuccessiveHalvingPruner(1, search.factor),
        "median": lambda: p.MedianPruner(),
        "dominated": lambda: p.NopPruner(),
    }[search.pruner]()


PRUNERS = ("none", "hyperband", "successive_halving", "median", "dominated")


def require(algorithm: str) -> None:
    """Refuses, in one paragraph, a search whose libraries are not installed."""
    for library in ("optuna", SAMPLERS[algorithm].needs):
        if not library:
            continue
        try:
            __import__(library)
        except ImportError as e:
            raise UserError(
                f"search.algorithm={algorithm!r} needs {library.capitalize()}, which is not "
                f"installed: pip install 'fmnist_jax[search]'"
                + (f" {library}" if library != "optuna" else "")
                + ", or choose another search.algorithm ("
                + ", ".join(a for a in SAMPLERS if not SAMPLERS[a].needs)
                + ")."
            ) from e


def storage_url(config: ConfigDict, workdir: str) -> str:
    """The storage's URL: `search.storage`, or the SQLite file in the workdir."""
    url = config.search.storage
    if not url:
        return "sqlite:///" + os.path.abspath(os.path.join(workdir, DATABASE_FILE))
    if url.startswith("postgresql://"):  # SQLAlchemy's default PostgreSQL driver is psycopg2
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def study_name(config: ConfigDict, workdir: str) -> str:
    return config.search.study or os.path.basename(os.path.abspath(workdir))


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: numbers as they are, widths as text ("16x32")."""
    return "x".join(map(str, value)) if isinstance(value, (tuple, list)) else value


def distribution(d: Dimension) -> Any:
    from optuna import distributions

    if d.kind == "int":
        low, high, step = d.args
        return distributions.IntDistribution(low, high - (high - low) % step, step=step)
    if d.kind == "choice":
        return distributions.CategoricalDistribution([encode(v) for v in d.values()])
    return distributions.FloatDistribution(*d.args, log=d.kind == "log_uniform")


def decode(space: list[Dimension], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as the config takes them (a choice back to its value)."""
    out = {}
    for d in space:
        value = params[d.key]
        if d.kind == "choice":
            value = d.values()[[encode(v) for v in d.values()].index(value)]
        out[d.key] = value
    return out


class Study:
    """The search's study, as one worker (this workdir) sees it."""

    def __init__(self, config: ConfigDict, workdir: str, space: list[Dimension]):
        import optuna

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.config, self.space = config, space
        self.url, self.name = storage_url(config, workdir), study_name(config, workdir)
        self.distributions = {d.key: distribution(d) for d in space}
        self.worker, self.place = _worker(workdir)
        try:
            self.storage, self.study = _open(config, self.url, self.name)
        except Exception as e:  # noqa: BLE001 - the storage's driver raises its own kinds
            raise unreachable(config, e) from None
        self.held: set[int] = set()  # the trial ids this worker trains, kept alive
        self._beating = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._beating.wait(self.config.search.heartbeat_seconds):
            for trial_id in list(self.held):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 - a missed beat is retried next time
                    logging.warning("Heartbeat to %s failed: %s", self.name, e)

    def close(self) -> None:
        self._beating.set()
        self._thread.join()

    def trials(self) -> dict[int, Any]:
        """The study's trials (Optuna's FrozenTrial) by number, as the storage holds them now."""
        return {t.number: t for t in self.study.get_trials(deepcopy=False)}

    def keep_alive(self, trial: Any) -> None:
        self.storage.record_heartbeat(trial._trial_id)
        self.held.add(trial._trial_id)

    def release(self, trial: Any) -> None:
        self.held.discard(trial._trial_id)

    def fail_stale(self) -> None:
        """Fails the trials whose worker stopped beating; `_retry` queues them again."""
        import optuna

        optuna.storages.fail_stale_trials(self.study)

    def ask(self, budget: int) -> Any | None:
        """The next trial for this worker: a waiting (retried) one first, else a new one while
        the study has fewer than `budget` trials of its own (retries are not counted again)."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and sum("failed_trial" not in t.system_attrs for t in trials) >= budget:
            return None
        s = self.config.search
        self.study.sampler = SAMPLERS[s.algorithm].build(s.seed, len(trials), self.space)
        trial = self.study.ask(self.distributions)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("workdir", self.place)
        self.keep_alive(trial)
        return trial

    def tell(self, trial: Any, value: float | list[float] | None = None, state: Any = None) -> None:
        """Ends `trial`. Told by a neutral sampler: the grid's own would try to stop an optimize
        loop, which ask-and-tell does not have, once its last point is told."""
        import optuna

        self.study.sampler = optuna.samplers.RandomSampler()
        self.study.tell(trial, value, state=state)

    def own(self, number: int) -> Any:
        """The running trial `number` as a trial this worker reports to (after a restart)."""
        import optuna

        trial = optuna.Trial(self.study, self.trials()[number]._trial_id)
        self.keep_alive(trial)
        return trial

    def unfinished(self) -> bool:
        """Whether a trial of any worker still trains, waits, or was failed as stale and is not
        yet queued again (another worker is between the two steps)."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        retries: dict[int, list[int]] = {}
        for t in trials:
            if "failed_trial" in t.system_attrs:
                retries.setdefault(t.system_attrs["failed_trial"], []).append(t.number)
        for t in trials:
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                return True
            stale = t.state == TrialState.FAIL and "stopped" not in t.user_attrs
            original = t.system_attrs.get("failed_trial", t.number)
            tries = retries.get(original, [])
            if stale and len(tries) < _MAX_RETRIES and not any(n > t.number for n in tries):
                return True
        return False

    def taken_by_me(self) -> list[int]:
        """The trials this worker took, oldest first, in any state."""
        return [
            n for n, t in sorted(self.trials().items()) if t.user_attrs.get("worker") == self.worker
        ]


def _open(config: ConfigDict, url: str, name: str) -> tuple[Any, Any]:
    """(the storage, the study), created by whichever worker comes first. Workers that create a
    new database's tables at the same instant collide in it: the loser opens it again."""
    import optuna
    import sqlalchemy

    s = config.search
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=_engine_options(url),
                heartbeat_interval=s.heartbeat_seconds,
                grace_period=_GRACE * s.heartbeat_seconds,
                heartbeat_stale_trial_callback=_retry,
            )
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                directions=objectives.directions(config),
                pruner=_pruner(s),
                load_if_exists=True,
            )
            return storage, study
        except sqlalchemy.exc.IntegrityError:
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):  # several local processes wait for each other's writes
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}  # a server's dropped connections are opened again


def _retry(study: Any, trial: Any) -> None:
    """Queues a trial whose worker died as a waiting trial with its parameters. Optuna's own
    retry callback also copies the pruner's records of the rungs the dead trial passed, which
    would let the retried trial pass them untested."""
    import optuna

    if "stopped" in trial.user_attrs:  # its verdict was written before its worker died
        return  # (search.json lists it with that verdict; training it again would count it twice)
    original = trial.system_attrs.get("failed_trial", trial.number)
    tries = sum(t.system_attrs.get("failed_trial") == original for t in study.get_trials())
    if tries >= _MAX_RETRIES:
        logging.warning("Trial %d failed %d times with its worker: not retried.", original, tries)
        return
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={"failed_trial": original},
        )
    )


def _worker(workdir: str) -> tuple[str, str]:
    """(this workdir's worker id, kept across restarts; where it is, host:path)."""
    path = os.path.join(workdir, WORKER_FILE)
    if os.path.exists(path):
        worker = workdir_lib.read_json(path)["worker"]
    else:
        worker = uuid.uuid4().hex
        os.makedirs(workdir, exist_ok=True)
        workdir_lib.write_json(path, {"worker": worker})
    return worker, f"{socket.gethostname()}:{os.path.abspath(workdir)}"


def unreachable(config: ConfigDict, error: BaseException) -> UserError:
    """The paragraph for a storage that cannot be opened or was lost mid-search."""
    where = config.search.storage or "the workdir's search.db"
    return UserError(
        f"The search's storage ({where}) cannot be used: {type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''}. Check search.storage (e.g. "
        "postgresql://user@host:5432/db, with the password in ~/.pgpass or PGPASSWORD), that the "
        "database server runs and accepts this machine, and that its driver is installed (pip "
        "install 'fmnist_jax[search]'); then run the same command again: what was trained and "
        "recorded is kept."
    )
