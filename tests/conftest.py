"""Shared fixtures. JAX runs on the CPU backend for every test, whatever the machine has, unless
JAX_PLATFORMS names another (`JAX_PLATFORMS=cuda python -m pytest` runs the suite on a GPU)."""

import fcntl
import glob
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fmnist_jax import config as config_lib  # noqa: E402
from fmnist_jax import data  # noqa: E402

MOCK_EXAMPLES = 48


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """Programs compiled once per session, as the CLI keeps them between runs: the tests build the
    same small programs many times over."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _prepared_data_dir(tmp_path_factory) -> str:
    """One tfds data dir for the whole session: pytest-xdist's workers share their parent's temp dir.
    $FMNIST_JAX_PREPARED_TFDS_DIR names a data dir prepared already (CI's lower-bounds environment has
    no TensorFlow to prepare one)."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    return os.environ.get("FMNIST_JAX_PREPARED_TFDS_DIR") or str(root / "tfds")


def _uses_real_data(item: pytest.Item) -> bool:
    return "prepared_tfds_dir" in item.fixturenames


def _prepare(data_dir: str) -> None:
    """Prepares the real data in `data_dir` once: whoever holds the lock first prepares it, the
    others wait, then find it prepared."""
    cfg = config_lib.default().data
    cfg.tfds_data_dir = data_dir
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, ".prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data.prepare(cfg)


@pytest.fixture(scope="session", autouse=True)
def prepare_in_the_background(request, tmp_path_factory):
    """Starts preparing the real data (~45 CPU-s in a TensorFlow process) when a session that needs
    it starts, so that it overlaps the mock-data tests instead of stalling the first real-data test
    and the other worker waiting for it."""
    if not any(_uses_real_data(item) for item in request.session.items):
        return

    def prepare():
        try:
            _prepare(_prepared_data_dir(tmp_path_factory))
        except Exception:  # `prepared_tfds_dir` tries again and reports it
            pass

    threading.Thread(target=prepare, daemon=True).start()


@pytest.fixture(scope="session")
def prepared_tfds_dir(tmp_path_factory):
    """A tfds data dir with the real fashion_mnist prepared from the local copy (Debian's package).

    Missing data is a failure, not a skip: CI installs dataset-fashion-mnist, and the real-data
    tests are the ones that prove the whole path works.
    """
    data_dir = _prepared_data_dir(tmp_path_factory)
    _prepare(data_dir)
    return data_dir


def tolerance(rtol: float) -> dict[str, float]:
    """`assert_allclose` tolerances for results that two programs should compute alike: `rtol` on
    XLA:CPU; on a GPU, whose kernels sum in other orders, 10x that and 1e-7 absolute (measured on an
    H100: batched and single runs up to 3e-5 apart relative, pooling gradients 3e-8 absolute)."""
    if jax.default_backend() == "cpu":
        return {"rtol": rtol}
    return {"rtol": 10 * rtol, "atol": 1e-7}


def write_mock_dataset(data_dir: str, num_examples: int = MOCK_EXAMPLES, seed: int = 0) -> str:
    """A prepared data dir holding `num_examples` random images and labels per split (what tfds'
    mock_data gives), in the arrays file that every run reads."""
    directory = os.path.join(data_dir, data.DATASET, data.VERSION)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, data.DATASET_INFO_FILE), "w") as f:
        f.write('{"name": "mock fashion_mnist"}\n')
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in data.SPLITS:
        arrays[f"{split}_images"] = rng.integers(0, 256, (num_examples, 28, 28, 1), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 10, num_examples).astype(np.int32)
    data.write_arrays(directory, arrays, [f"class {k}" for k in range(10)])
    return data_dir


@pytest.fixture(scope="session")
def mock_tfds_dir(tmp_path_factory):
    return write_mock_dataset(str(tmp_path_factory.mktemp("mock_tfds")))


@pytest.fixture
def tiny_config(mock_tfds_dir):
    """A config that trains in well under a second on the mock data, drawing no figures (the tests
    that check them turn `plots` on)."""
    c = config_lib.default()
    c.plots = False
    c.num_epochs = 2
    c.batch_size = 8
    c.eval_batch_size = 16
    c.data.num_validation = 16
    c.data.tfds_data_dir = mock_tfds_dir
    c.model.hidden_sizes = (16,)
    return c


@pytest.fixture(scope="session")
def without_tensorflow(tmp_path_factory):
    """The environment of a machine without TensorFlow, for subprocesses: `import tensorflow` fails."""
    blocker = tmp_path_factory.mktemp("no_tensorflow")
    (blocker / "tensorflow").mkdir()
    (blocker / "tensorflow" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n"
    )
    search_path = [str(blocker), os.getcwd(), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in search_path if p)}


def tiny_cli_args(tfds_dir: str, epochs: int) -> list[str]:
    """`tiny_config` as command-line flags over configs/mlp.py (for tests that start processes)."""
    return [
        "--config=configs/mlp.py",
        "--config.plots=False",
        f"--config.data.tfds_data_dir={tfds_dir}",
        f"--config.num_epochs={epochs}",
        "--config.batch_size=8",
        "--config.eval_batch_size=16",
        "--config.data.num_validation=16",
        "--config.model.hidden_sizes=(16,)",
    ]


def noise(stderr: str) -> list[str]:
    """The lines of a command's stderr that look like trouble: errors, warnings, tracebacks, probes."""
    return [
        line
        for line in stderr.splitlines()
        if re.match(r"[EWF]\d{4} |Traceback|.*(cuInit|Unable to initialize|CUDA|error)", line)
    ]


def pytest_collection_modifyitems(items):
    """Every test on the real data is in the slow tier: preparing it and training on it take ~40 s."""
    for item in items:
        if _uses_real_data(item):
            item.add_marker(pytest.mark.slow)


def kill_after_checkpoint(
    command: list[str],
    latest: pathlib.Path,
    step: int,
    signal_number: int = signal.SIGKILL,
    log: pathlib.Path | None = None,
) -> int:
    """Starts `command` and sends it `signal_number` once `latest` holds a checkpoint of step `step`
    or later (or after 300 s): a process stopped with its work half done. Its stderr goes to `log`
    (a file: a pipe left unread would fill up and stall it); returns its exit status."""
    with open(log or os.devnull, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)

        def newest() -> int:
            steps = [int(p.name) for p in latest.glob("*") if p.name.isdigit()]
            return max(steps, default=0)

        deadline = time.time() + 300
        while time.time() < deadline and newest() < step:
            time.sleep(0.05)
        process.send_signal(signal_number)
        return process.wait(timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on localhost (Debian's `postgresql`, which .ci/setup
    installs), with an empty database; its URL. Where it is not installed the test is skipped,
    except in CI, where that is a failure."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        message = "PostgreSQL is not installed: apt-get install postgresql (bash .ci/setup does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    data = tempfile.mkdtemp(prefix="fmnist_jax_pg_")
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*args):
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    pg(f"{bindirs[-1]}/initdb", "-D", data, "-A", "trust", "-U", "postgres")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg(f"{bindirs[-1]}/pg_ctl", "-D", data, "-o", options, "-l", f"{data}/log", "-w", "start")
    try:
        pg(
            f"{bindirs[-1]}/createdb",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "search",
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/search"
    finally:
        pg(f"{bindirs[-1]}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)
