"""The seeds' baseline MLP (TensorFlow tutorial "Classify images of clothing").

Flatten -> Dense(128, relu) -> Dense(10): 101,770 parameters; Adam 1e-3, batch 32, 10 epochs,
5,000 validation examples carved from train.

    python -m fmnist_jax.main --config=configs/mlp.py --workdir=/tmp/fmnist/mlp

Measured (WORKSPACE.md): see the table there for accuracy and time on this 2-core CPU.
"""

from fmnist_jax.config import default


def get_config():
    return default()
