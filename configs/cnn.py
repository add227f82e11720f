"""The reference notebooks' CNN: two conv blocks and a dense head, trained with Adam.

conv 32 3x3 SAME + 2x2 max pool, conv 64 3x3 SAME + 2x2 max pool, Dense 128 relu, Dense 10:
421,642 parameters; Adam 1e-3, batch 64, 10 epochs, 5,000 validation examples.

    python -m fmnist_jax.main --config=configs/cnn.py --workdir=/tmp/fmnist/cnn

Expected (docs/benchmarks.md has the machines and versions): test accuracy 0.9111 for seed 0;
on a 2-core CPU about 90 s of training (8-10 s per epoch) + 7 s of compiling; on one H100 0.9134
in 1.75 s of training (`--config.dtype=bfloat16`: 1.46 s).
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
