"""Each kind of extension is declared in one place, and a run sees it with no other edit
(docs/design.md, "How to add"): here an optimizer, added in the test itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax.config import checks as config_checks
from fmnist_jax.config import optimizers
from fmnist_jax.engine import optim
from fmnist_jax.errors import UserError
from fmnist_jax.training import train

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
