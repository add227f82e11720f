"""The reference notebooks' baseline MLP (TensorFlow tutorial "Classify images of clothing").

Flatten -> Dense(128, relu) -> Dense(10): 101,770 parameters; Adam 1e-3, batch 32, 10 epochs,
5,000 validation examples carved from train.

    python -m fmnist_jax.main --config=configs/mlp.py --workdir=/tmp/fmnist/mlp

Expected (docs/benchmarks.md has the machines and versions): test accuracy 0.8811 for seed 0
(seeds 0-4: 0.8780 ± 0.0041); on a 2-core CPU 2.5-6.7 s of training + about 1-2 s of compiling; on
one H100 0.8800 in 0.51 s of training.
"""

from fmnist_jax.config import default


def get_config():
    return default()
