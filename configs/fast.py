"""Speed config: >= 0.94 test accuracy as fast as possible (issue 6's speed bar).

VGG-style CNN (two blocks of two 3x3 convolutions with batch norm, 32 and 64 channels, max pooling,
Dense 256 with dropout), Adam with a warm-up + cosine schedule at batch 128, on-device flips and
2-pixel random crops, label smoothing, an EMA of the weights and flip test-time augmentation.

    python -m fmnist_jax.main --config=configs/fast.py --workdir=/tmp/fmnist/fast

Measured: see WORKSPACE.md ("Strong configs") for accuracy and time per machine.
"""

import ml_collections

from configs import cnn


def get_config():
    config = cnn.get_config()
    config.num_epochs = 12
    config.batch_size = 128
    config.model = ml_collections.ConfigDict(
        {
            **cnn.get_config().model.to_dict(),
            "conv_channels": (32, 64),
            "convs_per_block": 2,
            "batch_norm": True,
            "conv_dropout_rate": 0.1,
            "hidden_sizes": (256,),
            "dropout_rate": 0.3,
        }
    )
    config.optimizer.learning_rate = 2e-3
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0
    config.augment.flip = True
    config.augment.crop_padding = 2
    config.loss.label_smoothing = 0.1
    config.ema_decay = 0.998
    config.test_time_flip = True
    return config
