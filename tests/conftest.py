"""Shared fixtures. JAX runs on the CPU backend for every test, whatever the machine has."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from fmnist_jax import config as config_lib  # noqa: E402


@pytest.fixture(scope="session")
def prepared_tfds_dir(tmp_path_factory):
    """A tfds data dir with the real fashion_mnist prepared from the local copy (Debian's package).

    Missing data is a failure, not a skip: CI installs dataset-fashion-mnist, and the real-data
    tests are the ones that prove the whole path works.
    """
    from fmnist_jax import data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cfg = config_lib.default().data
    cfg.tfds_data_dir = data_dir
    data.prepare(cfg)
    return data_dir


@pytest.fixture
def tiny_config():
    """A config that trains in well under a second on tfds mock data."""
    c = config_lib.default()
    c.num_epochs = 2
    c.batch_size = 8
    c.eval_batch_size = 16
    c.data.num_validation = 16
    c.model.hidden_sizes = (16,)
    return c
