"""Models: output shapes, parameter counts, summary table, pooling, config errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import models, summary
from fmnist_jax.errors import UserError
from fmnist_jax.models import layers

from configs import cnn as cnn_config
from configs import mlp as mlp_config


def _logits(model, batch=3):
    x = jnp.zeros((batch, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    return model.apply(variables, x), variables


@pytest.mark.parametrize("config_module, num_params", [(mlp_config, 101_770), (cnn_config, 421_642)])
def test_seed_models_have_the_seeds_parameter_counts(config_module, num_params):
    model = models.create(config_module.get_config().model)
    logits, variables = _logits(model)
    assert logits.shape == (3, 10)
    table, total = summary.model_table(model, (28, 28, 1))
    assert total == num_params == summary.count_params(variables["params"])
    assert f"Total params: {num_params:,}" in table


def test_summary_lists_layers_in_call_order_with_shapes():
    table, _ = summary.model_table(models.create(cnn_config.get_config().model), (28, 28, 1))
    lines = table.splitlines()
    conv0 = next(i for i, line in enumerate(lines) if line.startswith("conv0 (Conv)"))
    assert "(None, 28, 28, 32)" in lines[conv0] and "320" in lines[conv0]
    assert lines[conv0 + 1].startswith("conv1 (Conv)") and "(None, 14, 14, 64)" in lines[conv0 + 1]


def test_mlp_accepts_hwc_batches_of_any_size():
    model = models.create(mlp_config.get_config().model)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert model.apply(variables, jnp.ones((7, 28, 28, 1))).shape == (7, 10)


def test_cnn_with_batch_norm_and_dropout_keeps_statistics_apart():
    config = cnn_config.get_config().model
    config.batch_norm, config.dropout_rate, config.conv_dropout_rate = True, 0.5, 0.1
    model = models.create(config)
    _, variables = _logits(model)
    assert set(variables) == {"params", "batch_stats"}
    x = jnp.ones((2, 28, 28, 1))
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])[0]
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])[0]
    assert not np.allclose(a, b)  # dropout follows the RNG
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))  # eval is deterministic


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (2, 7, 7, 4)])
def test_reshape_pooling_equals_reduce_window(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_allclose(layers.pool(x, "max", 2), nn.max_pool(x, (2, 2), (2, 2)))
    np.testing.assert_allclose(layers.pool(x, "avg", 2), nn.avg_pool(x, (2, 2), (2, 2)), rtol=1e-6)
    gx = jax.grad(lambda v: (layers.pool(v, "max", 2) ** 2).sum())(x)
    gy = jax.grad(lambda v: (nn.max_pool(v, (2, 2), (2, 2)) ** 2).sum())(x)
    np.testing.assert_allclose(gx, gy)


def test_unknown_model_name_and_setting_are_clear_errors():
    config = mlp_config.get_config().model
    config.name = "resnet9000"
    with pytest.raises(UserError, match="Unknown model.name='resnet9000'; choose one of \\['cnn', 'mlp'\\]"):
        models.create(config)
    config = mlp_config.get_config().model
    config.unlock()
    config.kernel_size = 3
    with pytest.raises(UserError, match="has no setting kernel_size"):
        models.create(config)
