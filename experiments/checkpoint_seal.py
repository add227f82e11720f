"""What sealing checkpoints costs: the digest written as a checkpoint commits, and checked before
it is restored, against the save itself, on the ResNet's checkpoint (configs/resnet.py: 2.8M
parameters, their EMA and SGD's momentum, as `train` saves them in `latest/`).

    python -m experiments.checkpoint_seal [--repeats=5]

Prints the checkpoint's size and, as medians over the repeats, the seconds of a synchronous save
(Orbax writing every file), of sealing it (hashing the written files) and of checking the seal
(hashing them again, what every restore adds).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np
from absl import app, flags, logging

from configs import resnet
from fmnist_jax import models
from fmnist_jax.records import checkpoint

_REPEATS = flags.DEFINE_integer("repeats", 5, "Saves to time.")


def _like_resnet() -> tuple[dict, dict]:
    """(model item, train item) of the ResNet's shapes, filled with random numbers."""
    model = models.create(resnet.get_config().model)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    rng = np.random.default_rng(0)

    def random(tree):
        return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), tree)

    params = random(shapes["params"])
    weights = {
        "params": params,
        "batch_stats": random(shapes["batch_stats"]),
        "ema_params": random(shapes["params"]),
    }
    return weights, {"step": np.int32(1), "opt_state": random(shapes["params"])}


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of every save
    weights, train = _like_resnet()
    times: dict[str, list[float]] = {"save": [], "seal": [], "check": []}
    for repeat in range(_REPEATS.value):
        workdir = tempfile.mkdtemp()
        saver = checkpoint.Checkpoints(workdir, keep=1, asynchronous=False)
        start = time.perf_counter()
        saver.save("latest", 1, weights, {"repeat": repeat}, train)
        times["save"].append(time.perf_counter() - start)  # the seal included: subtracted below
        step = os.path.join(saver.directory("latest"), "1")
        start = time.perf_counter()
        checkpoint._seal(step)
        times["seal"].append(time.perf_counter() - start)
        start = time.perf_counter()
        checkpoint._check_sealed(step)
        times["check"].append(time.perf_counter() - start)
        size = sum(
            os.path.getsize(os.path.join(folder, name))
            for folder, _, names in os.walk(step)
            for name in names
        )
        saver.close()
        shutil.rmtree(workdir)
    save, seal, check = (statistics.median(times[k]) for k in ("save", "seal", "check"))
    print(
        f"ResNet checkpoint of {size / 2**20:.1f} MiB, median of {_REPEATS.value}: save "
        f"{save - seal:.3f} s, seal {seal:.3f} s ({seal / (save - seal):.0%} of the save), check "
        f"{check:.3f} s"
    )


if __name__ == "__main__":
    app.run(main)
