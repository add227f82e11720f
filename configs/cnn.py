"""The reference notebooks' CNN: two conv blocks and a dense head, trained with Adam.

conv 32 3x3 SAME + 2x2 max pool, conv 64 3x3 SAME + 2x2 max pool, Dense 128 relu, Dense 10:
421,642 parameters; Adam 1e-3, batch 64, 10 epochs, 5,000 validation examples.

    python -m fmnist_jax.main --config=configs/cnn.py --workdir=/tmp/fmnist/cnn

Measured on the 2-core AMD EPYC dev/CI machine (CPU backend, WORKSPACE.md): test accuracy 0.9111
(0.9135 and 0.9085 with the Flax Linen models, whose initial weights came from other keys), 88.5 s of training (8.0-9.6 s per epoch, 8 unrolled steps per call) + 7.2 s
compile; session 1, before the CPU pooling and XLA options, needed 137 s. On one H100 GPU (jax 0.11.2, CUDA 13; WORKSPACE.md 2026-11-24):
0.9134 in 1.75 s of training + 5.0 s compile; `--config.dtype=bfloat16` 0.9134 in 1.46 s.
"""

import ml_collections

from fmnist_jax.config import default


def get_config():
    config = default()
    config.batch_size = 64
    config.model = ml_collections.ConfigDict(
        {
            "name": "cnn",
            "conv_channels": (32, 64),
            "kernel_size": 3,
            "pooling": "max",
            "pool_size": 2,
            "batch_norm": False,
            "conv_dropout_rate": 0.0,
            "hidden_sizes": (128,),
            "activation": "relu",
            "dropout_rate": 0.0,
            "formulation": "auto",  # pooling ops: CPU-friendly on the CPU backend, native elsewhere
        }
    )
    return config
