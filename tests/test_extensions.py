"""Each kind of extension is declared in one place, and a run sees it with no other edit
(docs/design.md, "How to add"): a metric, an optimizer and a model, each added in the test
itself."""

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from fmnist_jax import inference, models
from fmnist_jax.config import checks as config_checks
from fmnist_jax.config import optimizers
from fmnist_jax.engine import optim
from fmnist_jax.errors import UserError
from fmnist_jax.models.layers import DenseStack
from fmnist_jax.records import metrics
from fmnist_jax.reports import plots
from fmnist_jax.training import train
from fmnist_jax.tuning import search

TOP_2 = metrics.Metric(
    lambda logits, labels: (jax.lax.top_k(logits, 2)[1] == labels[:, None]).any(-1), "top2"
)


def test_a_metric_is_one_entry_that_every_record_of_a_run_shows(
    monkeypatch, tiny_config, tmp_path, caplog
):
    from tensorboard.backend.event_processing import event_accumulator

    monkeypatch.setitem(metrics.METRICS, "top2_accuracy", TOP_2)
    workdir = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        summary = train.train_and_evaluate(tiny_config, str(workdir))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for split in ("train", "val"):
            assert row[f"{split}_top2_accuracy"] >= row[f"{split}_accuracy"]
            assert len(row[f"{split}_top2_accuracy_seeds"]) == 1
            assert f"{split}_top2_accuracy_std" in row
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk["test_top2_accuracy"] == summary["test_top2_accuracy"]
    assert summary["test_top2_accuracy"] >= summary["test_accuracy"]
    assert len(summary["test_top2_accuracy_seeds"]) == 1
    for run in ("train", "validation"):
        board = event_accumulator.EventAccumulator(str(workdir / "tensorboard" / run))
        board.Reload()
        assert len(board.Scalars("epoch_top2_accuracy")) == tiny_config.num_epochs
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == tiny_config.num_epochs and all(" top2 " in line for line in lines)
    figure = plots.learning_curves(rows)
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss", "accuracy", "top2_accuracy"]


LION = optimizers.Optimizer(
    lambda optax, lr, setting, static: optax.lion(
        lr, b1=setting("b1"), b2=setting("b2"), weight_decay=setting("weight_decay")
    ),
    reads=("b1", "b2"),
    decays_weights=True,
)


@pytest.fixture
def with_lion(monkeypatch):
    monkeypatch.setitem(optimizers.OPTIMIZERS, "lion", LION)


def _one_update(config, params, gradients):
    tx = optim.optimizer(config, steps_per_epoch=1)
    updates, _ = tx.update(gradients, tx.init(params), params)
    return jax.tree.map(lambda p, u: p + u, params, updates)


def test_an_optimizer_is_one_entry_that_the_checks_and_a_run_read(with_lion, tiny_config, tmp_path):
    config = tiny_config
    config.optimizer.name, config.optimizer.b2 = "lion", 0.99
    config.optimizer.learning_rate, config.optimizer.weight_decay = 1e-3, 0.1
    config_checks.validate(config)
    config.optimizer.momentum = 0.9  # Lion reads no momentum
    with pytest.raises(
        UserError, match="optimizer.momentum does nothing with optimizer.name='lion'"
    ):
        config_checks.validate(config)
    config.optimizer.momentum = 0.0
    summary = train.train_and_evaluate(config, str(tmp_path / "lion"))
    assert np.isfinite(summary["test_loss"]) and summary["epochs_run"] == config.num_epochs


def test_weight_decay_is_each_optimizers_own(with_lion, tiny_config):
    """With a zero gradient only the decay moves the weights: decoupled (inside the update,
    lr x decay x weight) for Lion and AdamW, an L2 penalty's gradient for SGD; never passed
    through Lion's sign, which would move every weight by the whole learning rate."""
    params = {"w": jnp.full((3,), 2.0)}
    zero = {"w": jnp.zeros(3)}
    config = tiny_config
    config.optimizer.learning_rate, config.optimizer.weight_decay = 0.01, 0.1
    for name, expected in (("lion", 2.0 - 0.01 * 0.1 * 2.0), ("adamw", 2.0 - 0.01 * 0.1 * 2.0)):
        config.optimizer.name = name
        np.testing.assert_allclose(_one_update(config, params, zero)["w"], expected, rtol=1e-6)
    config.optimizer.name = "sgd"
    np.testing.assert_allclose(
        _one_update(config, params, zero)["w"], 2.0 - 0.01 * 0.1 * 2.0, rtol=1e-6
    )


class NormedMLP(nnx.Module):
    """A new model in one place: each image layer-normalized, then the MLP's dense stack; its
    hidden widths may differ per run (a search's trials), masked inside these."""

    PER_RUN = ("hidden_sizes",)

    def __init__(self, hidden_sizes=(128,), dropout_rate=0.0, *, image_shape, rngs):
        features = math.prod(image_shape)
        self.norm = nnx.LayerNorm(features, rngs=rngs)
        self.head = DenseStack(features, tuple(hidden_sizes), "relu", dropout_rate, 10, rngs=rngs)

    def narrow(self, widths):
        self.head.narrow(widths["hidden_sizes"])

    def use(self, widths):
        self.head.widths = nnx.data(widths["hidden_sizes"])

    def __call__(self, images, train=False, dropout_key=None):
        return self.head(self.norm(images.reshape((images.shape[0], -1))), train, dropout_key)


class FixedNormedMLP(NormedMLP):
    """The same model declaring no per-run widths: a search cannot vary them."""

    PER_RUN = ()


def test_a_model_is_one_module_and_its_entry(monkeypatch, tiny_config, tmp_path):
    monkeypatch.setitem(models.MODELS, "normed_mlp", NormedMLP)
    monkeypatch.setitem(models.MODELS, "fixed_normed_mlp", FixedNormedMLP)
    config = tiny_config
    config.model = ConfigDict({"name": "normed_mlp", "hidden_sizes": (16,)})
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(summary["test_loss"])
    classifier = inference.load(str(tmp_path / "run"))
    images = np.zeros((2, 28, 28, 1), np.uint8)
    assert classifier.attributions(images, steps=4).shape == (2, 28, 28, 1)
    assert classifier.conv_map_name is None  # no convolutions: explain draws no Grad-CAM
    config.model.kernel_size = 3
    with pytest.raises(UserError, match="has no setting kernel_size"):
        train.train_and_evaluate(config, str(tmp_path / "other"))
    del config.model.kernel_size
    config.search.space = (("model.hidden_sizes", ("int", 8, 16, 8)),)
    assert search.check(config)[0].key == "model.hidden_sizes"
    config.model.name = "fixed_normed_mlp"
    with pytest.raises(UserError, match="cannot search model.hidden_sizes"):
        search.check(config)


def test_a_width_k_trial_of_a_new_model_is_that_model_of_width_k(monkeypatch):
    """The model's own `narrow` and `use` make a masked width-8 trial inside a width-16 model
    compute what a width-8 model computes, on the same inputs and (narrowed) weights, whatever
    its masked units hold."""
    monkeypatch.setitem(models.MODELS, "normed_mlp", NormedMLP)
    wide = models.create(ConfigDict({"name": "normed_mlp", "hidden_sizes": (16,)}))
    narrow = models.create(ConfigDict({"name": "normed_mlp", "hidden_sizes": (8,)}))
    settings = {"hidden_sizes": jnp.array([8])}
    weights = wide.init(jax.random.key(0), settings)
    head = weights["params"]["head"]
    assert np.all(np.asarray(head["Dense_0"]["kernel"])[:, 8:] == 0)  # they start at zero
    head["Dense_0"]["kernel"] = head["Dense_0"]["kernel"].at[:, 8:].set(1.0)
    head["Dense_1"]["kernel"] = head["Dense_1"]["kernel"].at[8:].set(1.0)
    small = narrow.init(jax.random.key(1))
    small["params"]["norm"] = weights["params"]["norm"]
    small_head = small["params"]["head"]
    small_head["Dense_0"]["kernel"] = head["Dense_0"]["kernel"][:, :8]
    small_head["Dense_0"]["bias"] = head["Dense_0"]["bias"][:8]
    small_head["Dense_1"]["kernel"] = head["Dense_1"]["kernel"][:8]
    small_head["Dense_1"]["bias"] = head["Dense_1"]["bias"]
    x = jax.random.normal(jax.random.key(2), (4, 28, 28, 1))
    masked, _ = wide.apply(weights, x, settings=settings)
    plain, _ = narrow.apply(small, x)
    np.testing.assert_allclose(masked, plain, rtol=1e-5, atol=1e-6)
