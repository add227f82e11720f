"""Models: output shapes, parameter counts, summary table, pooling, config errors."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import tolerance
from flax import nnx

from configs import cnn as cnn_config
from configs import mlp as mlp_config
from fmnist_jax import models
from fmnist_jax.engine import backend
from fmnist_jax.errors import UserError
from fmnist_jax.models import layers
from fmnist_jax.models.cnn import CNN
from fmnist_jax.reports import tables


def _logits(model, batch=3):
    variables = backend.jit_unoptimized(model.init)(jax.random.key(0))
    return jax.jit(model.apply)(variables, jnp.zeros((batch, 28, 28, 1)))[0], variables


@pytest.mark.parametrize(
    "config_module, num_params", [(mlp_config, 101_770), (cnn_config, 421_642)]
)
def test_seed_models_have_the_seeds_parameter_counts(config_module, num_params):
    model = models.create(config_module.get_config().model)
    logits, variables = _logits(model)
    assert logits.shape == (3, 10)
    table, total = tables.model_table(model, (28, 28, 1))
    assert total == num_params == tables.count_params(variables["params"])
    assert f"Total Parameters: {num_params:,}" in table


def test_summary_lists_layers_in_call_order_with_shapes():
    table, _ = tables.model_table(models.create(cnn_config.get_config().model), (28, 28, 1))
    assert "\x1b" not in table  # plain text for log files
    rows = [line.split("│")[1:4] for line in table.splitlines() if line.count("│") > 4]
    layers_in_order = [(path.strip(), kind.strip()) for path, kind, _ in rows if path.strip()]
    assert layers_in_order[:3] == [("conv0", "Conv"), ("conv1", "Conv"), ("head", "DenseStack")]
    row = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") > 4}
    assert "float32[1,28,28,32]" in row["conv0"]  # SAME padding keeps 28x28
    assert "float32[1,14,14,32]" in row["conv1"] and "float32[1,14,14,64]" in row["conv1"]
    assert "18,496" in table  # conv1's parameters: 3*3*32*64 + 64


def test_mlp_accepts_hwc_batches_of_any_size():
    model = models.create(mlp_config.get_config().model)
    variables = backend.jit_unoptimized(model.init)(jax.random.key(0))
    assert model.apply(variables, jnp.ones((7, 28, 28, 1)))[0].shape == (7, 10)


@pytest.mark.slow
def test_cnn_with_batch_norm_and_dropout_keeps_statistics_apart():
    config = cnn_config.get_config().model
    config.batch_norm, config.dropout_rate, config.conv_dropout_rate = True, 0.5, 0.1
    model = models.create(config)
    _, variables = _logits(model)
    assert set(variables) == {"params", "batch_stats"}
    x = jnp.ones((2, 28, 28, 1))
    train = jax.jit(lambda v, key: model.apply(v, x, train=True, dropout_key=key))
    a, stats = train(variables, jax.random.key(1))
    b, _ = train(variables, jax.random.key(2))
    assert not np.allclose(a, b)  # dropout follows the RNG
    assert not np.allclose(stats["bn0"]["mean"], variables["batch_stats"]["bn0"]["mean"])
    evaluate = jax.jit(lambda v: model.apply(v, x)[0])
    np.testing.assert_array_equal(evaluate(variables), evaluate(variables))  # deterministic


@functools.partial(jax.jit, static_argnames=("kind", "size", "formulation"))
def _pool_and_gradient(x, cotangent, kind, size, formulation):
    """A pooling's values and its gradient for `cotangent`, compiled as a model runs it (eagerly,
    each of its ops compiles on its own)."""
    values, vjp = jax.vjp(lambda v: layers.pool(v, kind, size=size, formulation=formulation), x)
    return values, vjp(cotangent)[0]


@pytest.mark.slow
@pytest.mark.parametrize("shape,size", [((2, 28, 28, 3), 2), ((2, 7, 7, 4), 2), ((2, 8, 7, 2), 3)])
@pytest.mark.parametrize("ties", [False, True])
def test_cpu_pooling_equals_native_values_and_gradients(shape, size, ties):
    # NumPy's draws: XLA:CPU compiles a 4-d jax.random.normal in ~2 s.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    if ties:  # few distinct values: most windows hold their maximum more than once
        x = jnp.round(x)
    for kind in ("max", "avg"):
        pooled = jax.eval_shape(lambda v, k=kind: layers.pool(v, k, size=size), x)
        cotangent = jnp.asarray(rng.standard_normal(pooled.shape, np.float32))
        (cpu, cpu_gradient), (native, native_gradient) = (
            _pool_and_gradient(x, cotangent, kind, size, formulation)
            for formulation in ("cpu", "native")
        )
        np.testing.assert_allclose(cpu, native, **tolerance(1e-6))
        np.testing.assert_allclose(cpu_gradient, native_gradient, **tolerance(1e-6))


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True])
def test_cnn_cpu_formulation_trains_like_the_native_ops(batch_norm):
    """The CPU formulation is chosen by backend; on any backend both must give the same loss and gradients."""
    images = (
        jnp.asarray(
            np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1))
            * (np.arange(28) % 3 == 0)[:, None, None],
            jnp.float32,
        )
        / 255
    )
    labels = jnp.arange(8) % 10
    results = []
    for formulation in ("cpu", "native"):
        model = models.Model(CNN, {"batch_norm": batch_norm, "formulation": formulation})
        variables = backend.jit_unoptimized(model.init)(jax.random.key(0))

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply({**variables, "params": params}, images, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
    (loss_cpu, grads_cpu), (loss_native, grads_native) = results
    np.testing.assert_allclose(loss_cpu, loss_native, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_cpu, grads_native
    )


def test_unknown_formulation_is_a_clear_error():
    with pytest.raises(
        UserError, match="Unknown formulation 'gpu'; choose one of auto, native, cpu"
    ):
        layers.pool(jnp.zeros((1, 4, 4, 1)), "max", 2, formulation="gpu")


def test_unknown_model_name_and_setting_are_clear_errors():
    config = mlp_config.get_config().model
    config.name = "resnet9000"
    with pytest.raises(
        UserError,
        match="Unknown model.name='resnet9000'; choose one of \\['cnn', 'mlp', 'resnet'\\]",
    ):
        models.create(config)
    config = mlp_config.get_config().model
    config.unlock()
    config.kernel_size = 3
    with pytest.raises(UserError, match="has no setting kernel_size"):
        models.create(config)


@pytest.mark.slow
def test_resnet_blocks_start_as_the_identity_and_strided_stages_halve_the_resolution():
    from fmnist_jax.models.resnet import BasicBlock

    # Each block built and called in one compiled program: eagerly, every initializer and layer
    # compiles on its own (4.6 s instead of 0.9 s).
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 14, 14, 8), np.float32))
    identity = backend.jit_unoptimized(
        lambda x: BasicBlock(8, 8, 1, "relu", rngs=nnx.Rngs(1))(x, train=False)
    )
    np.testing.assert_allclose(identity(x), jax.nn.relu(x), atol=1e-5)
    strided = backend.jit_unoptimized(
        lambda x: BasicBlock(8, 16, 2, "relu", rngs=nnx.Rngs(1))(x, train=True)
    )
    assert strided(x).shape == (2, 7, 7, 16)
    down = nnx.eval_shape(lambda: BasicBlock(8, 16, 2, "relu", rngs=nnx.Rngs(1)))
    assert "shortcut_bn" in nnx.state(down, nnx.BatchStat)
    model = models.create(
        ml_collections.ConfigDict(
            {
                "name": "resnet",
                "stage_channels": (8, 16, 32),
                "blocks_per_stage": 1,
                "stem_channels": 8,
            }
        )
    )
    logits, variables = _logits(model)
    assert logits.shape == (3, 10) and set(variables) == {"params", "batch_stats"}
    table, _ = tables.model_table(model, (28, 28, 1))
    assert "[1,7,7,32]" in table and "[1,14,14,16]" in table


def test_cnn_blocks_of_two_convolutions():
    config = cnn_config.get_config().model
    config.convs_per_block, config.batch_norm = 2, True
    _, variables = _logits(models.create(config))
    assert sorted(variables["params"]) == [
        "bn0_0",
        "bn0_1",
        "bn1_0",
        "bn1_1",
        "conv0_0",
        "conv0_1",
        "conv1_0",
        "conv1_1",
        "head",
    ]
    assert variables["params"]["conv1_1"]["kernel"].shape == (3, 3, 64, 64)


def _paths(tree):
    return sorted("/".join(str(k.key) for k in path) for path, _ in jax.tree.leaves_with_path(tree))


def test_weights_keep_the_names_of_the_linen_release():
    """Checkpoints written before the models moved to Flax NNX restore as they are: same names."""
    mlp = jax.eval_shape(models.create(mlp_config.get_config().model).init, jax.random.key(0))
    assert _paths(mlp["params"]) == [
        f"head/Dense_{i}/{p}" for i in (0, 1) for p in ("bias", "kernel")
    ]
    config = cnn_config.get_config().model
    config.batch_norm = True
    cnn = jax.eval_shape(models.create(config).init, jax.random.key(0))
    assert _paths(cnn["batch_stats"]) == [f"bn{i}/{s}" for i in (0, 1) for s in ("mean", "var")]
    assert "conv1/kernel" in _paths(cnn["params"]) and "bn1/scale" in _paths(cnn["params"])
    resnet = ml_collections.ConfigDict(
        {"name": "resnet", "stage_channels": (8, 16), "blocks_per_stage": 1, "stem_channels": 8}
    )
    params = _paths(jax.eval_shape(models.create(resnet).init, jax.random.key(0))["params"])
    assert {"stem/kernel", "stem_bn/scale", "classifier/kernel"} <= set(params)
    assert {"stage1_block0/shortcut/kernel", "stage1_block0/shortcut_bn/bias"} <= set(params)
